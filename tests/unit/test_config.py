import pytest
import yaml
from pydantic import ValidationError

from harness.config import (
    ConfigError,
    RunConfig,
    build_config,
    field_kind,
    known_keys,
    load_config,
    parse_override,
)


def test_defaults_and_overrides():
    cfg = build_config(None, ["ppo.clip_eps=0.3", "advantage.level=sequence", "kl.target=null", "seed=7"])
    assert cfg.ppo.clip_eps == 0.3
    assert cfg.advantage.level == "sequence"
    assert cfg.kl.target is None
    assert cfg.seed == 7
    assert RunConfig().ppo.clip_eps == 0.2  # defaults untouched


def test_values_parse_as_yaml_scalars():
    assert parse_override("ppo.lr=1e-4") == ("ppo.lr", 1e-4)
    assert parse_override("advantage.whiten=false") == ("advantage.whiten", False)
    assert parse_override("kl.target=null") == ("kl.target", None)


def test_frozen():
    cfg = RunConfig()
    with pytest.raises(ValidationError):
        cfg.ppo.clip_eps = 0.5  # type: ignore[misc]


def test_yaml_file_then_set(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"task": {"name": "sort"}, "ppo": {"clip_eps": 0.1}}))
    cfg = load_config(p, ["ppo.clip_eps=0.3"])
    assert cfg.task.name == "sort" and cfg.ppo.clip_eps == 0.3


def test_hash_depends_on_content():
    assert RunConfig().hash() == build_config({}).hash()
    assert RunConfig().hash() != build_config(None, ["seed=1"]).hash()


def test_public_dotted_keys_exist():
    keys = known_keys()
    for k in (
        "seed", "impl", "task.name", "task.response_length", "model.policy", "model.reward", "rollout.batch_size",
        "rollout.group_size", "rollout.temperature", "ppo.clip_eps", "ppo.epochs", "ppo.minibatches", "ppo.lr",
        "ppo.max_grad_norm", "ppo.vf_coef", "ppo.value_clip", "ppo.entropy_coef", "ppo.target_kl", "kl.coef",
        "kl.estimator", "kl.placement", "kl.target", "advantage.level", "advantage.baseline", "advantage.gamma",
        "advantage.lam", "advantage.whiten", "loss.agg", "train.iterations", "eval.every", "eval.prompts",
        "probe.every", "probe.microbatches", "model.value_trunk", "train.dtype",
    ):
        assert k in keys, k


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["ppo.clip_eps=-0.1"], "ppo.clip_eps"),
        (["rollout.group_size=3"], "rollout.group_size"),
        (["advantage.level=sequence", "advantage.baseline=rloo", "rollout.group_size=1"], "advantage.baseline"),
        (["task.nope=1"], "task.nope"),
        (["ppo.epochs=many"], "ppo.epochs"),
        (["kl.estimator=k4"], "kl.estimator"),
        (["task.name=chess"], "task.name"),
        (["ppo.minibatches=5"], "ppo.minibatches"),
        (["loss.agg=sum"], "loss.agg"),
        (["kl.coef=0", "kl.target=1.0"], "kl.coef"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        build_config(None, overrides)
    msg = str(e.value)
    assert f"'{key}'" in msg and "\n" not in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_kl_in_the_loss_with_k1_is_refused_by_name():
    with pytest.raises(ConfigError) as e:
        build_config(None, {"kl.placement": "loss", "kl.estimator": "k1"})
    msg = str(e.value)
    assert msg.startswith("config key 'kl.estimator'") and "zero expected gradient" in msg and "\n" not in msg
    for est in ("k2", "k3"):
        assert build_config(None, {"kl.placement": "loss", "kl.estimator": est}).kl.estimator == est
    assert build_config(None, {"kl.placement": "reward", "kl.estimator": "k1"}).kl.estimator == "k1"


@pytest.mark.parametrize("over, key, says", [
    ({"train.checkpoint_every": 2, "rollout.staleness": 1}, "train.checkpoint_every", "not checkpointed"),
    ({"ppo.micro_batch_size": 2, "ppo.loss_mode": "clip_cov"}, "ppo.micro_batch_size", "covariance"),
    ({"ppo.micro_batch_size": 2, "ppo.loss_mode": "kl_cov"}, "ppo.micro_batch_size", "covariance"),
])
def test_checkpoints_and_micro_batches_refuse_what_they_do_not_cover(over, key, says):
    with pytest.raises(ConfigError) as e:
        build_config(None, {"rollout.batch_size": 8, "ppo.minibatches": 2, **over})
    assert str(e.value).startswith(f"config key '{key}'") and says in str(e.value) and "\n" not in str(e.value)
    for k, v in over.items():  # each alone is accepted
        assert build_config(None, {"rollout.batch_size": 8, "ppo.minibatches": 2, k: v}).flat()[k] == v


@pytest.mark.parametrize("over, key, says", [
    ({"impl": "trl"}, "impl", "impl=custom"),
    ({"model.lora.r": 4}, "model.lora.r", "LoRA"),
    ({"model.value_trunk": "shared"}, "model.value_trunk", "separate value model"),
    ({"probe.every": 1, "probe.microbatches": 2}, "probe.every", "reduce-scatters"),
    ({"rollout.staleness": 1}, "rollout.staleness", "whole copy"),
    ({"rollout.filter_groups": True}, "rollout.filter_groups", "rounds"),
    ({"train.dtype": "fp16"}, "train.dtype", "bf16"),
    ({"train.checkpoint_every": 1}, "train.checkpoint_every", "sharded checkpoints"),
    ({"train.save_policy": True}, "train.save_policy", "not saved whole"),
])
def test_sharding_refuses_what_assumes_whole_weights(over, key, says):
    """train.parallel=fsdp with each option that needs whole, local weights: one line naming that option's key;
    the option alone, and fsdp alone, are accepted."""
    base = {"rollout.batch_size": 8, "ppo.minibatches": 2}
    with pytest.raises(ConfigError) as e:
        build_config(None, {**base, **over, "train.parallel": "fsdp"})
    assert str(e.value).startswith(f"config key '{key}'") and says in str(e.value) and "\n" not in str(e.value)
    assert build_config(None, {**base, **over}).flat()[key] == over[key]
    assert build_config(None, {**base, "train.parallel": "fsdp"}).train.parallel == "fsdp"


def test_every_key_is_documented_with_its_type_and_default():
    from harness.config import describe

    docs = {d.key: d for d in describe()}
    assert set(docs) == known_keys()  # every dotted key, nothing else
    undocumented = [k for k, d in docs.items() if len(d.description) < 15]
    assert not undocumented, undocumented
    flat = RunConfig().flat()
    assert all(docs[k].default == flat[k] for k in flat)  # the listed default is the real one
    assert docs["kl.estimator"].type == "k1 | k2 | k3 | k1+ | k3+"
    assert docs["ppo.max_grad_norm"].type == "float | null"


@pytest.mark.parametrize("typo, nearest", [("ppo.clip_esp", "ppo.clip_eps"), ("kl.clip_eps", "ppo.clip_eps"),
                                           ("advantage.lambda", "advantage.lam")])
def test_an_unknown_key_names_the_nearest_known_one(typo, nearest):
    with pytest.raises(ConfigError, match=f"'{typo}': unknown key \\(did you mean '{nearest}'\\?\\)"):
        build_config(None, [f"{typo}=1"])
    with pytest.raises(ConfigError, match=f"did you mean '{nearest}'"):  # the nested (YAML) spelling too
        section, leaf = typo.split(".")
        build_config({section: {leaf: 1}})


def test_config_command_lists_every_key():
    from typer.testing import CliRunner

    from harness.cli import app

    out = CliRunner().invoke(app, ["config"]).output
    for key in known_keys():
        assert f"\n{key} " in "\n" + out
    only = CliRunner().invoke(app, ["config", "kl."]).output
    assert "kl.estimator" in only and "ppo.clip_eps" not in only


# ---- strict input: YAML files, types, finite numbers, seeds ---------------------------------------

FLOAT_KEYS = sorted(k for k in known_keys() if field_kind(k) == "float")


def one_line(fn, *args) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_config_files_are_read_strictly(tmp_path):
    p = tmp_path / "run.yaml"
    body = b"ppo:\n  lr: 0.001\n# caf\xe9\n"
    p.write_bytes(body)
    assert one_line(load_config, p) == f"config file '{p}': not UTF-8 text (byte 0xe9 at offset {body.index(0xE9)})"
    p.write_text("ppo:\n  lr: 0.001\nkl:\n  coef: 0.1\n  target: 1.0\n  horizon: 5\n  coef: 0.2\n")
    assert one_line(load_config, p) == f"config file '{p}': duplicate key 'kl.coef' (line 7)"
    p.write_text("ppo: &p {lr: 0.001}\nkl: *p\n")
    assert one_line(load_config, p) == f"config file '{p}': YAML aliases (*p) are not supported (line 2)"
    p.write_text("ppo: {lr: 0.001\n")
    assert one_line(load_config, p).startswith(f"config file '{p}': not valid YAML (")  # today's message


def test_a_key_has_one_spelling_in_a_config_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("kl.coef: 0.1\nkl:\n  coef: 0.2\n")
    assert one_line(load_config, p) == (
        "config key 'kl.coef': given twice, as 'kl.coef' and as 'kl: {coef}' (one spelling per key)"
    )
    p.write_text("kl.coef: 0.1\nppo.lr: 1e-3\n")  # dotted keys alone are the nested ones
    assert load_config(p) == build_config({"kl": {"coef": 0.1}, "ppo": {"lr": 1e-3}})
    assert one_line(build_config, {"ppo": 3}) == "config key 'ppo': a section: expected a mapping of ppo.* keys, got 3"
    assert "unknown key" in one_line(build_config, {"optim": {}})


@pytest.mark.parametrize("data, key, problem", [
    ({"ppo": {"epochs": True}}, "ppo.epochs", "expected an integer, got a boolean (true)"),
    ({"ppo": {"epochs": "2"}}, "ppo.epochs", "expected an integer, got the string '2'"),
    ({"ppo": {"epochs": 2.0}}, "ppo.epochs", "expected an integer, got 2.0"),
    ({"ppo": {"epochs": [True, 2]}}, "ppo.epochs", "expected an integer, got a list"),
    ({"kl": {"coef": False}}, "kl.coef", "expected a number, got a boolean (false)"),
    ({"kl": {"coef": "0.1"}}, "kl.coef", "expected a number, got the string '0.1'"),
    ({"advantage": {"whiten": 1}}, "advantage.whiten", "expected true or false, got 1"),
    ({"advantage": {"whiten": "yes"}}, "advantage.whiten", "expected true or false, got the string 'yes'"),
    ({"task": {"name": 3}}, "task.name", "expected a string, got 3"),
    ({"seed": "1"}, "seed", "expected an integer, got the string '1'"),
])
def test_types_are_strict(data, key, problem):
    assert one_line(build_config, data) == f"config key '{key}': {problem}"


def test_ints_are_numbers_and_the_cli_still_reads_numbers(tmp_path):
    assert build_config({"kl": {"coef": 0}}).kl.coef == 0.0
    cfg = build_config(None, ["ppo.epochs=2", "ppo.lr=1e-4", "kl.coef=0", "advantage.whiten=false", "seed=3"])
    assert (cfg.ppo.epochs, cfg.ppo.lr, cfg.kl.coef, cfg.advantage.whiten, cfg.seed) == (2, 1e-4, 0.0, False, 3)
    assert isinstance(cfg.kl.coef, float)
    p = tmp_path / "run.yaml"
    p.write_text("ppo:\n  lr: 1e-4\n  epochs: 2\nkl:\n  coef: 0\n")  # 1e-4 unquoted: a number, as people read it
    assert load_config(p).ppo.lr == 1e-4
    p.write_text("ppo:\n  lr: '1e-4'\n")  # quoted: a string, refused
    assert one_line(load_config, p) == "config key 'ppo.lr': expected a number, got the string '1e-4'"
    assert one_line(build_config, None, ["ppo.epochs=true"]) == (
        "config key 'ppo.epochs': expected an integer, got a boolean (true)"
    )


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("text, shown", [("inf", "inf"), ("1e309", "inf"), (".inf", "inf"), ("-inf", "-inf"),
                                         ("-.inf", "-inf"), ("nan", "nan"), (".nan", "nan"), ("1.0e+400", "inf")])
def test_every_float_key_refuses_non_finite_numbers(key, text, shown):
    assert one_line(build_config, None, [f"{key}={text}"]) == f"config key '{key}': must be a finite number (got {shown})"
    section, leaf = key.rsplit(".", 1)  # model.lora.alpha: the section model.lora
    value = float(shown)
    assert one_line(build_config, {section: {leaf: value}}) == (
        f"config key '{key}': must be a finite number (got {shown})"
    )


def test_non_finite_numbers_from_a_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("ppo:\n  lr: 1e309\n")
    assert one_line(load_config, p) == "config key 'ppo.lr': must be a finite number (got inf)"
    p.write_text("kl:\n  coef: .nan\n")
    assert one_line(load_config, p) == "config key 'kl.coef': must be a finite number (got nan)"


def test_seeds_fit_every_rng_the_runs_seed():
    import random

    import numpy as np
    import torch

    from harness.config import SEED_LIMIT

    top = SEED_LIMIT - 1
    assert build_config(None, [f"seed={top}"]).seed == top
    np.random.seed(top), torch.manual_seed(top), random.Random(top)  # what transformers.set_seed calls (TRL)
    with pytest.raises(ValueError):
        np.random.seed(SEED_LIMIT)  # the tightest of them: numpy's legacy seeding is 32-bit
    for bad in (SEED_LIMIT, 2**63, 2**64, 2**70, -1):
        msg = one_line(build_config, None, [f"seed={bad}"])
        assert msg.startswith("config key 'seed': expected an integer in [0, 2**32)") and str(bad) in msg


def test_odd_characters_in_a_key_are_shown():
    msg = one_line(build_config, None, ["kl.coef\u200b=1"])
    assert msg == "config key 'kl.coef\\u200b': unknown key (did you mean 'kl.coef'?)"
    assert one_line(build_config, {"kl": {"co\u0435f": 1}}).startswith("config key 'kl.co\\u0435f': unknown key")


def test_override_values_are_read_by_the_strict_loader():
    assert one_line(build_config, None, ["kl.coef=*a"]) == "config key 'kl.coef': cannot parse value '*a'"
    assert parse_override("model.policy=./models/x") == ("model.policy", "./models/x")
    assert parse_override("ppo.lr=inf")[1] == float("inf")  # the CLI's own reading of a number ...
    assert parse_override("task.name=inf") == ("task.name", "inf")  # ... for number keys only


def test_readme_set_examples_still_build():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text().replace("\\\n", " ")
    setting = r"--set ([a-z_.]+=[^\s`)]+)"
    # a command is a line of a fenced block or an inline code span: its --set options build together
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    commands = [line for b in blocks for line in b.splitlines()]
    commands += re.findall(r"`([^`]+)`", re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S))
    groups = [re.findall(setting, c) for c in commands]
    sets = {s for g in groups for s in g}
    assert len(sets) == len(set(re.findall(setting, text)))  # every --set of the README is in some command
    assert {"ppo.clip_eps=0.3", "kl.coef=0", "advantage.level=sequence", "advantage.baseline=rloo"} <= sets
    for g in groups:
        if g:
            build_config(None, g)


def test_a_logged_config_yaml_reads_back_as_the_same_config(tmp_path):
    cfg = build_config(None, ["ppo.adam_eps=1e-8", "kl.target=0.5", "seed=7", "advantage.level=sequence"])
    p = tmp_path / "config.yaml"
    p.write_text(cfg.to_yaml())  # what harness/run.py logs as config.yaml
    assert load_config(p) == cfg


# ---- ratio level, clip-higher, dual clip, aggregation, straight-through KL, truncation ---------

LEVEL_KEYS = ("ppo.ratio_level", "ppo.clip_eps_high", "ppo.dual_clip", "loss.norm_length", "train.truncated")


def test_ratio_clip_and_aggregation_keys_exist_with_their_defaults():
    cfg = RunConfig()
    assert set(LEVEL_KEYS) <= known_keys()
    assert (cfg.ppo.ratio_level, cfg.ppo.clip_eps_high, cfg.ppo.dual_clip) == ("token", None, None)
    assert (cfg.loss.norm_length, cfg.train.truncated) == (None, "penalty")


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        ({"ppo.ratio_level": "sequence"}, "ppo.clip_eps", ("GSPO's clip ranges are ~1e-4..1e-3", "got 0.2")),
        ({"ppo.ratio_level": "sequence-token", "ppo.clip_eps": 0.05}, "ppo.clip_eps", ("got 0.05",)),
        ({"ppo.ratio_level": "sequence", "ppo.clip_eps": 3e-4, "ppo.clip_eps_high": 0.28}, "ppo.clip_eps_high",
         ("geometric means", "got 0.28")),
        ({"ppo.dual_clip": 1.0}, "ppo.dual_clip", ("greater than 1",)),
        ({"ppo.dual_clip": 0.5}, "ppo.dual_clip", ("greater than 1",)),
        ({"ppo.clip_eps_high": 0.0}, "ppo.clip_eps_high", ("greater than 0",)),
        ({"ppo.clip_eps_high": 1.0}, "ppo.clip_eps_high", ("less than 1",)),
        ({"loss.norm_length": 64}, "loss.norm_length", ("seq-mean-token-sum-norm",)),
        ({"loss.agg": "token-sum", "loss.norm_length": 64}, "loss.norm_length", ("token-sum",)),
        ({"loss.agg": "seq-mean-token-sum-norm", "loss.norm_length": 0}, "loss.norm_length", ("greater than or equal",)),
        ({"kl.estimator": "k3+"}, "kl.estimator", ("only change the gradient of a KL loss term",)),
        ({"kl.estimator": "k1+", "kl.placement": "reward"}, "kl.estimator", ("kl.placement=loss",)),
        ({"kl.estimator": "k2+", "kl.placement": "loss"}, "kl.estimator", ()),
        ({"train.truncated": "drop"}, "train.truncated", ()),
        ({"advantage.level": "sequence", "advantage.baseline": "reinforce_pp_baseline", "rollout.group_size": 1},
         "advantage.baseline", ("group_size >= 2",)),
        ({"impl": "trl-ppo"}, "impl", ()),
    ],
)
def test_issue_14_refusals_are_one_line_naming_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as e:
        build_config(None, overrides)
    msg = str(e.value)
    assert msg.startswith(f"config key '{key}'") and "\n" not in msg, msg
    assert all(w in msg for w in words), msg


@pytest.mark.parametrize(
    "overrides",
    [
        {"ppo.ratio_level": "sequence", "ppo.clip_eps": 3e-4, "ppo.clip_eps_high": 4e-4},  # GSPO's own ranges
        {"ppo.ratio_level": "sequence-token", "ppo.clip_eps": 0.01},
        {"ppo.clip_eps_high": 0.28, "ppo.dual_clip": 3.0},  # DAPO clip-higher + dual clip, token level
        {"ppo.clip_eps_high": 0.28},  # token level: a large upper range is fine
        {"loss.agg": "seq-mean-token-sum-norm", "loss.norm_length": 64},
        {"loss.agg": "seq-mean-token-sum-norm"},
        {"loss.agg": "token-sum"},
        {"kl.estimator": "k3+", "kl.placement": "loss"},
        {"kl.estimator": "k1+", "kl.placement": "loss"},  # k1+ has k2's gradient: allowed in the loss
        {"train.truncated": "mask"},
        {"advantage.level": "sequence", "advantage.baseline": "reinforce_pp", "rollout.group_size": 1},
        {"advantage.level": "sequence", "advantage.baseline": "reinforce_pp_baseline"},
        {"impl": "trl-grpo"},
        {"impl": "trl-rloo"},
    ],
)
def test_issue_14_combinations_that_build(overrides):
    cfg = build_config(None, overrides)
    assert all(cfg.flat()[k] == v for k, v in overrides.items())


def test_issue_14_keys_are_documented_in_the_config_command():
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.config import describe

    docs = {d.key: d for d in describe()}
    assert "orders of magnitude smaller" in docs["ppo.ratio_level"].description
    assert "GRPOTrainer" in docs["impl"].description and "RLOOTrainer" in docs["impl"].description
    assert docs["impl"].type == "custom | trl | trl-grpo | trl-rloo"
    assert "token-sum | seq-mean-token-sum-norm" in docs["loss.agg"].type
    assert "reinforce_pp | reinforce_pp_baseline" in docs["advantage.baseline"].type
    out = CliRunner().invoke(app, ["config", "ppo"]).output
    for key in ("ppo.ratio_level", "ppo.clip_eps_high", "ppo.dual_clip"):
        assert f"\n{key} " in "\n" + out, key
    for key in ("loss.norm_length", "train.truncated"):
        assert f"\n{key} " in "\n" + CliRunner().invoke(app, ["config", key]).output
