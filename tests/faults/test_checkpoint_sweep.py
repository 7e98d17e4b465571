"""A sweep killed with SIGKILL (coordinator and workers) mid-trial, its trial checkpointing
(train.checkpoint_every): the rerun of the same command continues that trial's MLflow run from its
checkpoint, and the run's metrics equal those of the same config trained without interruption."""

from __future__ import annotations

import os
import signal

import pytest

from harness import checkpoint
from harness.tracking import Store
from tests.conftest import run_cli
from tests.faults.faultkit import finish, run, runs, start, wait_for, write_spec

pytestmark = pytest.mark.slow


def _history(store: Store, run_id: str) -> dict[str, dict[int, float]]:
    run_ = store.get_run(run_id)
    return {k: dict(store.metric_history(run_id, k)) for k in run_.data.metrics if not k.startswith("perf/")}


def test_a_killed_sweep_trial_resumes_from_its_checkpoint_on_a_rerun(tmp_path):
    spec = write_spec(tmp_path, "ckpt", iterations=6, seeds=[0], grid={"kl.coef": [0.1]})
    text = spec.read_text().replace("base:\n", "base:\n  train.checkpoint_every: 1\n", 1)
    spec.write_text(text)
    folder = tmp_path / "runs" / "checkpoints"
    proc = start(tmp_path, spec, "--workers", "1")
    try:
        wait_for("the checkpoint of iteration 3", lambda: list(folder.glob("*/iter-000003")), timeout=300, every=0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its worker, as a lost node
    finally:
        finish(proc)
    (killed_id,) = [p.name for p in folder.iterdir()]

    again = run(tmp_path, spec, "--workers", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    _, children = runs(tmp_path, "ckpt")
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == [killed_id] and finished[0].data.tags["resumed"] == "1"

    # the same config, trained in one go
    config = checkpoint.latest(folder / killed_id) / "config.yaml"
    plain = run_cli("train", "--config", str(config), "--runs-dir", str(tmp_path / "plain"), "-q", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    plain_id = plain.stdout.split("run id", 1)[1].split()[0]
    got, want = _history(Store(tmp_path / "runs"), killed_id), _history(Store(tmp_path / "plain"), plain_id)
    assert got == want and len(want["objective/kl"]) == 6
