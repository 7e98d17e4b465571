import pytest
import yaml
from pydantic import ValidationError

from harness.config import ConfigError, RunConfig, build_config, known_keys, load_config, parse_override


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
        "probe.every", "probe.microbatches", "model.value_trunk", "train.autocast",
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


def test_every_key_is_documented_with_its_type_and_default():
    from harness.config import describe

    docs = {d.key: d for d in describe()}
    assert set(docs) == known_keys()  # every dotted key, nothing else
    undocumented = [k for k, d in docs.items() if len(d.description) < 15]
    assert not undocumented, undocumented
    flat = RunConfig().flat()
    assert all(docs[k].default == flat[k] for k in flat)  # the listed default is the real one
    assert docs["kl.estimator"].type == "k1 | k2 | k3"
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
