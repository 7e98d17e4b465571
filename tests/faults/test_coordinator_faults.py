"""Two coordinators of one study at once (as on two machines, here on one journal): each waits for the
(cell, seed)s the other is running, so both end with the whole sweep's summary and exit 0; each writes its
own worker logs; no worker's command line holds a path, a URL or a password.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from tests.faults.faultkit import assert_done_once, cmdline, finish, start, wait_for, workers_of, write_spec

pytestmark = pytest.mark.slow


def test_two_coordinators_both_report_the_whole_sweep_and_keep_their_worker_logs_apart(tmp_path):
    spec = write_spec(tmp_path, "twoc", iterations=4)
    journal = str(tmp_path / "runs" / "sweeps" / "twoc.journal")
    from harness.tracking import Store

    Store(tmp_path / "runs")  # the MLflow SQLite file exists before the two race to open it
    procs = [start(tmp_path, spec, "--workers", "1") for _ in range(2)]
    try:
        for p in procs:  # what `ps` shows of a worker: nothing but the entry point
            pid = wait_for("a worker", lambda p=p: workers_of(p.pid))[0]
            assert cmdline(pid)[1:] == ["-m", "harness.sweep", "--worker", "-"], cmdline(pid)
    finally:
        outs = [finish(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for out in outs:
        assert "4/4 done, 0 failed, 0 running elsewhere" in out, out
        assert "Traceback" not in out

    logs = sorted((tmp_path / "runs" / "sweeps").rglob("worker-*.log"))
    assert sorted({int(re.match(r"worker-(\d+)-\d+\.log", p.name).group(1)) for p in logs}) == sorted(
        p.pid for p in procs)  # worker-<coordinator pid>-<i>.log
    for log in logs:  # one worker each: never two processes' lines interleaved in one file
        assert log.read_text().count("no more work after") == 1, log.read_text()
    assert_done_once(tmp_path, journal, "twoc")


def test_a_coordinator_left_without_work_waits_for_the_other_then_exits_with_the_sweeps_code(tmp_path):
    from tests.faults.faultkit import running_mid_trial

    spec = write_spec(tmp_path, "waits", iterations=6, seeds=[0], grid={"kl.coef": [0.0]})  # one (cell, seed)
    journal = str(tmp_path / "runs" / "sweeps" / "waits.journal")
    first = start(tmp_path, spec, "--workers", "1")
    log2 = tmp_path / "second.out"
    try:
        _, worker = wait_for("the trial mid-run", lambda: running_mid_trial(journal, "waits"), timeout=240)
        os.kill(worker, signal.SIGSTOP)  # the first coordinator's trial holds still while the second looks
        second = start(tmp_path, spec, "--workers", "1", out=log2)  # finds it running in another coordinator
        wait_for("the second coordinator to wait", lambda: "waiting for 1 run(s)" in log2.read_text(), timeout=120)
        assert second.poll() is None  # it waits rather than exiting with "1 running elsewhere"
        os.kill(worker, signal.SIGCONT)
        second.wait(timeout=240)
    finally:
        out1 = finish(first)
    out2 = log2.read_text()
    print(out2)
    assert first.returncode == 0 and second.returncode == 0, (out1, out2)
    assert "nothing to run" in out2
    assert "1/1 done, 0 failed, 0 running elsewhere" in out2  # the whole sweep's summary, not "1 running"
    assert_done_once(tmp_path, journal, "waits", slots=1)
