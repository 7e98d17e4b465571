"""TRL's GRPOTrainer / RLOOTrainer end to end (``train --impl trl-grpo | trl-rloo``) and their refusals
(exit 2, key named; at sweep spec time too)."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from baselines import trl_grpo, trl_rloo  # noqa: E402
from harness.config import build_config  # noqa: E402
from harness.tracking import Store  # noqa: E402
from tests.conftest import main_exit, run_cli, tiny_args  # noqa: E402

# what each impl needs on top of TINY to be expressible; missing_eos_penalty off so that TINY's
# 6-token completions (which rarely end) still get distinct scores and a non-zero update
GRPO = {"advantage.level": "sequence", "advantage.baseline": "group_norm", "advantage.whiten": False,
        "kl.placement": "loss", "kl.estimator": "k3", "kl.coef": 0.05, "train.missing_eos_penalty": None}
RLOO = {"advantage.level": "sequence", "advantage.baseline": "rloo", "loss.agg": "seq-mean-token-sum",
        "ppo.minibatches": 1, "ppo.epochs": 1, "train.missing_eos_penalty": None}
SETTINGS = {"trl-grpo": (trl_grpo, GRPO), "trl-rloo": (trl_rloo, RLOO)}

# the schema keys both map (ABSENT lists what they cannot produce)
MAPPED = (
    "objective/scores", "objective/gold", "objective/kl", "objective/rlhf_reward", "objective/kl_coef",
    "objective/entropy", "policy/clipfrac_avg", "loss/policy_avg", "grad/norm", "response/length",
    "response/eos_frac", "eval/gold", "eval/proxy", "eval/kl", "eval/length", "perf/tokens_per_s",
    "perf/rollout_s", "perf/update_s", "episodes",
)

# one refused value per refused key (and what else it needs to be a valid config)
# what neither sequence-level trainer can express, each refused by its key
BOTH = {
    "ppo.loss_mode": {"ppo.loss_mode": "sapo"},
    "rollout.staleness": {"rollout.staleness": 2},
    "rollout.correction": {"rollout.correction": "tis"},
    "rollout.filter_groups": {"rollout.filter_groups": True},
    "train.overlong_buffer": {"train.overlong_buffer": 4},
    "train.checkpoint_every": {"train.checkpoint_every": 5},
    "train.dtype": {"train.dtype": "fp16", "train.device": "cpu"},
    "rollout.min_new_tokens": {"rollout.min_new_tokens": 2},
    "rollout.stop": {"rollout.stop": ["."]},
    "task.chat_template": {"task.chat_template": True},
    "ppo.micro_batch_size": {"ppo.micro_batch_size": 2},
    "model.lora.r": {"model.lora.r": 4},
}

REFUSALS = {
    "trl-grpo": {
        "advantage.level": {"advantage.level": "token"},
        "advantage.baseline": {"advantage.baseline": "rloo"},
        "advantage.whiten": {"advantage.whiten": True},
        "ppo.ratio_level": {"ppo.ratio_level": "sequence-token", "ppo.clip_eps": 0.001},
        "ppo.dual_clip": {"ppo.dual_clip": 1.1},
        "loss.agg": {"loss.agg": "token-sum"},
        "loss.norm_length": {"loss.agg": "seq-mean-token-sum-norm", "loss.norm_length": 99},
        "kl.placement": {"kl.placement": "reward", "kl.estimator": "k1"},
        "kl.estimator": {"kl.estimator": "k2"},
        "kl.target": {"kl.target": 6.0},
        "ppo.entropy_coef": {"ppo.entropy_coef": 0.01},
        "ppo.target_kl": {"ppo.target_kl": 0.02},
        "train.device": {"train.device": "cuda:1"},
        **BOTH,
    },
    "trl-rloo": {
        "advantage.level": {"advantage.level": "token"},
        "advantage.baseline": {"advantage.baseline": "group_norm"},
        "ppo.epochs": {"ppo.epochs": 2},
        "ppo.minibatches": {"ppo.minibatches": 2},
        "ppo.ratio_level": {"ppo.ratio_level": "sequence", "ppo.clip_eps": 0.001},
        "ppo.dual_clip": {"ppo.dual_clip": 3.0},
        "loss.agg": {"loss.agg": "token-mean"},
        "kl.placement": {"kl.placement": "loss", "kl.estimator": "k3"},
        "kl.estimator": {"kl.estimator": "k3"},
        "kl.target": {"kl.target": 6.0},
        "ppo.entropy_coef": {"ppo.entropy_coef": 0.01},
        "ppo.target_kl": {"ppo.target_kl": 0.02},
        "train.device": {"train.device": "cuda:1"},
        **BOTH,
    },
}


def as_cli(d: dict) -> dict:
    """Values as --set spells them (null, true / false)."""
    return {k: "null" if v is None else str(v).lower() if isinstance(v, bool) else v for k, v in d.items()}


@pytest.mark.slow
@pytest.mark.parametrize("impl", sorted(SETTINGS))
def test_train_logs_the_schema_into_one_mlflow_run(tmp_path, impl):
    runs = tmp_path / "runs"
    module, extra = SETTINGS[impl]
    r = run_cli("train", "--task", "sentiment", "--seed", "1", "--impl", impl,
                *tiny_args(as_cli({**extra, "probe.every": 1})), "--runs-dir", str(runs), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr
    run_id = r.stdout.split("run id", 1)[1].split()[0]
    store = Store(runs)
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["impl"] == impl and run.data.params["impl"] == impl
    metrics = set(run.data.metrics)
    assert set(MAPPED) <= metrics, set(MAPPED) - metrics
    assert not metrics & set(module.ABSENT), metrics & set(module.ABSENT)  # absent, not faked
    assert [s for s, _ in store.metric_history(run_id, "eval/gold")] == [0, 1, 2]
    assert [v for _, v in store.metric_history(run_id, "episodes")] == [0, 8, 16]
    kl = dict(store.metric_history(run_id, "eval/kl"))
    assert abs(kl[0]) < 1e-5 and kl[2] > 1e-4  # the policy starts at the reference; TRL's updates moved it
    assert run.data.metrics["objective/kl_coef"] == 0.05 and run.data.metrics["response/length"] == 6.0
    assert {"config.yaml"} <= {a.path for a in store.client.list_artifacts(run_id)}


@pytest.mark.parametrize("impl", sorted(SETTINGS))
def test_the_documented_settings_are_expressible(impl):
    module, extra = SETTINGS[impl]
    module.check_expressible(build_config(overrides=extra))


@pytest.mark.parametrize("impl", sorted(SETTINGS))
def test_every_refused_key_has_a_case(impl):
    assert set(REFUSALS[impl]) == set(SETTINGS[impl][0].REFUSED)


@pytest.mark.parametrize("impl, key", [(i, k) for i in sorted(REFUSALS) for k in sorted(REFUSALS[i])])
def test_check_expressible_names_the_refused_key_in_one_line(impl, key):
    module, extra = SETTINGS[impl]
    cfg = build_config(overrides={**extra, **REFUSALS[impl][key]})
    with pytest.raises(ValueError) as e:
        module.check_expressible(cfg)
    msg = str(e.value)
    assert f"config key '{key}'" in msg and f"cannot be expressed by TRL's {module.TRAINER}" in msg, msg
    assert "\n" not in msg and e.value.key == key


@pytest.mark.parametrize("impl", sorted(SETTINGS))
def test_refused_key_exits_2_before_any_run(tmp_path, capsys, impl):
    runs = tmp_path / "runs"
    code, out, err = main_exit(capsys, "train", "--impl", impl, "--set", "advantage.level=token",
                               "--runs-dir", str(runs))  # the entry point, in-process
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "'advantage.level'" in lines[0], lines
    assert not runs.exists()


@pytest.mark.parametrize("impl", sorted(SETTINGS))
def test_a_sweep_cell_is_checked_at_spec_time(tmp_path, capsys, impl):
    """A sweep whose grid makes a cell TRL's trainer cannot express exits 2 naming the grid key."""
    _, extra = SETTINGS[impl]
    base = "\n".join(f"  {k}: {v}" for k, v in as_cli({**extra, "impl": impl}).items())
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: t\nbase:\n{base}\ngrid:\n  ppo.target_kl: [null, 0.02]\nseeds: [0]\n")
    code, _, err = main_exit(capsys, "sweep", str(spec), "--runs-dir", str(tmp_path / "r"),
                             "--storage", str(tmp_path / "j.journal"))  # the entry point, in-process
    assert code == 2, err
    line = err.strip()
    assert "\n" not in line and "grid.ppo.target_kl" in line and "in cell ppo.target_kl=0.02" in line, line
    assert not (tmp_path / "r").exists()
