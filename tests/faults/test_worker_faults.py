"""kill -9 of one worker: the coordinator fails its trial as stale, KILLs its run, re-queues the (cell, seed) and
starts a replacement, within a budget (2 x --workers); beyond it the sweep stops in one line and a rerun resumes.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.faults.faultkit import (
    MID_RUN,
    assert_done_once,
    assert_one_line_no_traceback,
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


def test_a_worker_killed_mid_trial_is_replaced_and_the_sweep_completes(tmp_path):
    spec = write_spec(tmp_path, "deadw", iterations=MID_RUN["train.iterations"])
    journal = str(tmp_path / "runs" / "sweeps" / "deadw.journal")
    proc = start(tmp_path, spec, "--workers", "1")  # one worker: its death used to end the sweep at once
    try:
        number, pid = wait_for("a trial mid-run", lambda: running_mid_trial(journal, "deadw"))
        os.kill(pid, signal.SIGKILL)
    finally:
        out = finish(proc)
    assert proc.returncode == 0, out
    assert f"pid {pid}" in out and "exited with code -9" in out and "starting a replacement" in out
    assert "Traceback" not in out
    ts, _, children = assert_done_once(tmp_path, journal, "deadw")
    killed = next(t for t in ts if t.number == number)
    assert killed.state.name == "FAIL" and killed.user_attrs["sweep.fail_kind"] == "stale"
    assert "died" in killed.user_attrs["sweep.fail_reason"]
    assert {r.info.status for r in children if r.data.tags["optuna.trial"] == str(number)} == {"KILLED"}


def test_workers_dying_past_the_budget_stop_the_sweep_in_one_line_and_a_rerun_resumes(tmp_path):
    spec = write_spec(tmp_path, "budget", seeds=[0], grid={"kl.coef": [0.0]})  # one (cell, seed)
    journal = str(tmp_path / "runs" / "sweeps" / "budget.journal")
    proc = start(tmp_path, spec, "--workers", "1")
    killed: list[int] = []
    try:
        for _ in range(3):  # the budget is 2 x --workers = 2 replacements: the third death stops the sweep
            pid = wait_for("a new worker", lambda: [p for p in workers_of(proc.pid) if p not in killed], every=0.05)[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    finally:
        out = finish(proc)
    assert proc.returncode == 1, out
    assert_one_line_no_traceback(out, "3 worker processes died")
    assert not [t for t in trials(journal, "budget") if t.state.name == "RUNNING"]
    parents, children = runs(tmp_path, "budget")
    assert "RUNNING" not in {r.info.status for r in [*parents, *children]}

    again = run(tmp_path, spec, "--workers", "1")  # what the line says: rerun the same command
    assert again.returncode == 0, again.stdout + again.stderr
    assert_done_once(tmp_path, journal, "budget", slots=1)
