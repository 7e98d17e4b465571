"""The 2025-26 menu through `ppo-harness train` and `ppo-harness config`, as subprocesses, against real MLflow."""

from __future__ import annotations

import pytest

from harness.algos.estimators import BASELINES
from harness.algos.losses import POLICY_LOSSES
from harness.algos.offpolicy import CORRECTIONS
from harness.tracking import Store
from tests.conftest import ROOT, main_exit, run_cli, tiny_args

OFFPOLICY_KEYS = ("offpolicy/kl_k1", "offpolicy/kl_k3", "offpolicy/is_mean", "offpolicy/is_max",
                  "offpolicy/is_truncated_frac", "offpolicy/is_masked_frac")


@pytest.mark.slow
def test_train_runs_a_stale_corrected_filtered_run_with_a_loss_mode(tmp_path):
    """One run with staleness, a correction, dynamic sampling, the overlong buffer, a loss mode and REINFORCE++:
    FINISHED, the new metrics logged every iteration, the new params recorded."""
    runs = tmp_path / "runs"
    extra = {"rollout.staleness": 1, "rollout.correction": "tis", "rollout.filter_groups": True,
             "train.overlong_buffer": 2, "ppo.loss_mode": "clip_cov", "ppo.cov_ratio": 0.1,
             "advantage.level": "sequence", "advantage.baseline": "reinforce_pp_baseline"}
    r = run_cli("train", *tiny_args(extra), "--runs-dir", str(runs), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.split("run id", 1)[1].split()[0]
    store = Store(runs)
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    keys = {*OFFPOLICY_KEYS, "rollout/filtered_frac", "rollout/extra_gen_frac", "policy/cov_frac"}
    assert keys <= set(run.data.metrics), keys - set(run.data.metrics)
    assert [s for s, _ in store.metric_history(run_id, "offpolicy/kl_k3")] == [1, 2]
    assert run.data.params["ppo.loss_mode"] == "clip_cov" and run.data.params["rollout.staleness"] == "1"


def test_config_lists_every_new_key_and_value():
    r = run_cli("config", cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    for key in ("ppo.loss_mode", "ppo.sapo_tau_pos", "ppo.cov_ratio", "ppo.kl_cov_coef", "rollout.staleness",
                "rollout.correction", "rollout.correction_level", "rollout.is_threshold", "rollout.is_threshold_low",
                "rollout.filter_groups", "rollout.filter_rounds", "train.overlong_buffer", "train.overlong_penalty"):
        assert key in r.stdout, key
    for name in (*POLICY_LOSSES.names(), *CORRECTIONS.names(), *BASELINES.names()):
        assert name in r.stdout, name


@pytest.mark.parametrize("args, key", [
    (["--set", "ppo.loss_mode=geo_mean"], "loss.agg"),
    (["--set", "rollout.correction=icepop", "--set", "rollout.correction_level=sequence"], "rollout.correction_level"),
    (["--set", "ppo.loss_mode=sapo", "--impl", "trl"], "ppo.loss_mode"),
])
def test_impossible_combinations_exit_2_in_one_line(tmp_path, capsys, args, key):
    runs = tmp_path / "runs"
    code, out, err = main_exit(capsys, "train", *args, "--runs-dir", str(runs))  # the entry point, in-process
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and lines[0].startswith("error:"), lines
    assert not runs.exists()
