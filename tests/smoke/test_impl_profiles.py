"""``ppo-harness train --impl trl-rloo`` without setting RLOO's keys runs with RLOO's default profile:
printed at the start, tagged ``impl.profile``, the run's params those values."""

from __future__ import annotations

import pytest

from harness.tracking import Store
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

SMALL = ["--set", "train.iterations=1", "--set", "rollout.batch_size=4", "--set", "eval.prompts=4",
         "--set", "task.response_length=4", "--set", "model.rm_pairs=64"]


def test_trl_rloo_runs_with_its_default_profile(tmp_path):
    runs = tmp_path / "runs"
    r = run_cli("train", "--impl", "trl-rloo", *SMALL, "--runs-dir", str(runs), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stderr.splitlines() if "default profile" in x)
    assert "advantage.level=sequence" in line and "ppo.epochs=1" in line and "rollout.group_size=2" in line
    assert "rollout.batch_size" not in line  # the user's value, not the profile's
    run = Store(runs).get_run(r.stdout.split("run id", 1)[1].split()[0])
    assert run.info.status == "FINISHED"
    assert run.data.tags["impl.profile"] == line.split("sets ", 1)[1]
    p = run.data.params
    assert (p["advantage.level"], p["advantage.baseline"], p["ppo.epochs"], p["ppo.minibatches"]) == \
        ("sequence", "rloo", "1", "1")
    assert (p["rollout.batch_size"], p["loss.agg"], p["train.missing_eos_penalty"]) == ("4", "seq-mean-token-sum", "null")
