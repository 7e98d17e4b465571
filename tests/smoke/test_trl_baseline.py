"""The TRL baseline end to end (``train --impl trl``) and its refusals (exit 2, key named)."""

from __future__ import annotations

import pytest

pytest.importorskip("trl.experimental.ppo")

from baselines.trl_ppo import ABSENT, REFUSED, check_expressible  # noqa: E402
from harness.config import build_config  # noqa: E402
from harness.tracking import Store  # noqa: E402
from tests.conftest import main_exit, run_cli, tiny_args  # noqa: E402

# the schema keys (harness/schema.py) the TRL baseline maps; ABSENT lists the ones TRL cannot produce
MAPPED = (
    "objective/scores", "objective/gold", "objective/kl", "objective/rlhf_reward", "objective/kl_coef",
    "objective/entropy", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg",
    "val/clipfrac_avg", "grad/norm", "grad/value_norm", "response/length", "response/eos_frac", "eval/gold", "eval/proxy", "eval/kl",
    "eval/length", "perf/tokens_per_s", "perf/rollout_s", "perf/update_s", "episodes",
)

# one refused value per refused key (and what else it needs to be a valid config)
REFUSALS = {
    "advantage.level": {"advantage.level": "sequence"},
    "advantage.whiten": {"advantage.whiten": False},
    "kl.estimator": {"kl.estimator": "k2"},
    "kl.placement": {"kl.placement": "loss", "kl.estimator": "k3"},
    "kl.target": {"kl.target": 6.0},
    "loss.agg": {"loss.agg": "seq-mean-token-mean"},
    "ppo.entropy_coef": {"ppo.entropy_coef": 0.01},
    "ppo.target_kl": {"ppo.target_kl": 0.02},
    "model.value_trunk": {"model.value_trunk": "shared"},
    "ppo.ratio_level": {"ppo.ratio_level": "sequence", "ppo.clip_eps": 0.001},
    "ppo.clip_eps_high": {"ppo.clip_eps_high": 0.28},
    "ppo.dual_clip": {"ppo.dual_clip": 3.0},
    "train.truncated": {"train.truncated": "mask"},
    "ppo.loss_mode": {"ppo.loss_mode": "sapo"},
    "rollout.staleness": {"rollout.staleness": 2},
    "rollout.correction": {"rollout.correction": "tis"},
    "rollout.filter_groups": {"rollout.filter_groups": True},
    "train.overlong_buffer": {"train.overlong_buffer": 4},
    "train.device": {"train.device": "cuda:1"},
    "train.checkpoint_every": {"train.checkpoint_every": 5},
    "train.dtype": {"train.dtype": "fp16", "train.device": "cpu"},
    "rollout.top_k": {"rollout.top_k": 5},
    "rollout.top_p": {"rollout.top_p": 0.9},
    "rollout.min_new_tokens": {"rollout.min_new_tokens": 2},
    "rollout.stop": {"rollout.stop": ["."]},
    "task.chat_template": {"task.chat_template": True},
    "ppo.micro_batch_size": {"ppo.micro_batch_size": 2},
    "model.lora.r": {"model.lora.r": 4},
}


@pytest.mark.slow
def test_train_impl_trl_logs_the_schema_into_one_mlflow_run(tmp_path):
    runs = tmp_path / "runs"
    r = run_cli("train", "--task", "sentiment", "--seed", "1", "--impl", "trl", *tiny_args({"probe.every": 1}),
                "--runs-dir", str(runs), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr and "===training policy===" not in r.stdout, r.stderr
    run_id = r.stdout.split("run id", 1)[1].split()[0]
    store = Store(runs)
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["impl"] == "trl" and run.data.params["impl"] == "trl"
    metrics = set(run.data.metrics)
    assert set(MAPPED) <= metrics, set(MAPPED) - metrics
    assert not metrics & set(ABSENT), metrics & set(ABSENT)  # absent, not faked (probe.every=1 asked for them)
    assert {k for k in metrics if k.startswith("grad/")} == {"grad/norm", "grad/value_norm"}
    assert [s for s, _ in store.metric_history(run_id, "eval/gold")] == [0, 1, 2]
    assert [v for _, v in store.metric_history(run_id, "episodes")] == [0, 8, 16]
    kl = dict(store.metric_history(run_id, "eval/kl"))
    assert abs(kl[0]) < 1e-5 and kl[2] > 1e-3  # the policy starts at the reference; TRL's updates moved it
    assert run.data.metrics["objective/kl_coef"] == 0.05 and run.data.metrics["response/length"] == 6.0
    artifacts = {a.path for a in store.client.list_artifacts(run_id)}
    assert {"config.yaml", "samples.parquet"} <= artifacts


def test_the_defaults_are_expressible():
    check_expressible(build_config())
    check_expressible(build_config(overrides={"kl.estimator": "k3", "ppo.value_clip": None, "model.reward": "gold",
                                              "ppo.max_grad_norm": None, "rollout.group_size": 1, "probe.every": 2}))


def test_every_refused_key_has_a_case():
    assert set(REFUSALS) == set(REFUSED)


@pytest.mark.parametrize("key", sorted(REFUSALS))
def test_check_expressible_names_the_refused_key_in_one_line(key):
    cfg = build_config(overrides=REFUSALS[key])
    with pytest.raises(ValueError) as e:
        check_expressible(cfg)
    msg = str(e.value)
    assert f"config key '{key}'" in msg and "cannot be expressed by TRL's PPOTrainer" in msg and "\n" not in msg


@pytest.mark.parametrize("cmd, key", [("train", "advantage.level"), ("compare", "kl.estimator")])
def test_refused_key_exits_2_before_any_run(tmp_path, capsys, cmd, key):
    runs = tmp_path / "runs"
    args = ["--set", f"{key}={next(iter(REFUSALS[key].values()))}", "--runs-dir", str(runs)]
    if cmd == "train":
        args += ["--impl", "trl"]
    code, out, err = main_exit(capsys, cmd, *args)  # the entry point, in-process
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"'{key}'" in lines[0], lines
    assert not runs.exists()
