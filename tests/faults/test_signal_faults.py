"""Ctrl-C as a terminal sends it (SIGINT to the whole process group): right after a worker starts, and twice
0.3 s apart mid-trial. Either way the sweep cleans up (nothing left RUNNING), exits 130, and a rerun completes.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.faultkit import (
    MID_RUN,
    assert_done_once,
    finish,
    run,
    running_mid_trial,
    runs,
    start,
    trials,
    wait_for,
    workers_of,
    write_spec,
)

pytestmark = pytest.mark.slow


def _nothing_running(tmp_path, journal: str, name: str, parent_status: str = "KILLED") -> None:
    assert not [t.number for t in trials(journal, name) if t.state.name == "RUNNING"]
    parents, children = runs(tmp_path, name)
    assert [r.info.status for r in parents] == [parent_status]
    assert "RUNNING" not in {r.info.status for r in children}


def test_ctrl_c_as_a_worker_starts_and_twice_mid_trial_then_a_rerun_completes(tmp_path):
    spec = write_spec(tmp_path, "sigint", iterations=MID_RUN["train.iterations"])
    journal = str(tmp_path / "runs" / "sweeps" / "sigint.journal")
    log_dir = tmp_path / "runs" / "sweeps"

    # (1) Ctrl-C in the worker's first moments: it must not be swallowed, nor the coordinator's SIGTERM ignored
    proc = start(tmp_path, spec, "--workers", "1")
    try:
        wait_for("the worker process", lambda: workers_of(proc.pid), every=0.01)
        t0 = time.time()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=25)  # well inside the coordinator's 30 s deadline for a worker that ignores SIGTERM
        waited = time.time() - t0
    finally:
        out = finish(proc)
    assert proc.returncode == 130, out
    assert waited < 20, f"the sweep took {waited:.0f}s to stop"
    assert "Traceback" not in out and "interrupted: rerun the same command to resume" in out
    logs = "".join(p.read_text() for p in log_dir.rglob("worker-*.log"))
    assert "Exception ignored" not in logs and "Traceback" not in logs, logs

    # (2) two Ctrl-C 0.3 s apart mid-trial: the second must not cut the cleanup short
    proc = start(tmp_path, spec, "--workers", "1")
    try:
        wait_for("a trial mid-run", lambda: running_mid_trial(journal, "sigint"))
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        out = finish(proc, timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "sweep sigint-" in out and "done," in out  # the summary line
    assert "interrupted: rerun the same command to resume" in out
    _nothing_running(tmp_path, journal, "sigint")
    ended = trials(journal, "sigint")
    interrupted = [t for t in ended if t.user_attrs.get("sweep.fail_kind") == "interrupted"]
    assert interrupted, (  # the in-flight trial was failed (and is retried), its run KILLED
        [(t.number, t.state.name, t.user_attrs) for t in ended],
        "".join(p.read_text() for p in log_dir.rglob("worker-*.log")),
    )
    _, children = runs(tmp_path, "sigint")
    assert {r.info.status for r in children if r.data.tags["optuna.trial"] == str(interrupted[-1].number)} == {"KILLED"}

    again = run(tmp_path, spec, "--workers", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_done_once(tmp_path, journal, "sigint")
