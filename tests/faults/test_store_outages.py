"""The stores going away mid-sweep, for real: PostgreSQL stopped for ~10 s, an ``mlflow server`` down for
longer than its client's retries, PostgreSQL gone for good (past the retry budget), a full runs dir.

Short outages are ridden out (the sweep completes, exit 0, no traceback); a long one stops the sweep in one
line (exit 1) and the rerun completes. Either way: every (cell, seed) FINISHED once, nothing RUNNING.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.faults.faultkit import (
    MID_RUN,
    QUICK_MLFLOW,
    assert_done_once,
    assert_one_line_no_traceback,
    cmdline,
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

PG_SECRET = "pw-Fault5ecret"  # trust auth ignores it; it must never show in a worker's command line


def _pg_spec(tmp_path, name: str, postgres, **kw):
    if os.environ.get("PPO_HARNESS_PG_URL"):
        pytest.skip("PPO_HARNESS_PG_URL names a server this test cannot stop and start")
    return write_spec(tmp_path, name, iterations=MID_RUN["train.iterations"], **kw), postgres.url(PG_SECRET)


def test_postgres_stopped_for_10s_is_ridden_out_and_no_worker_command_line_holds_the_url(tmp_path, postgres):
    spec, url = _pg_spec(tmp_path, "pgdown", postgres)
    proc = start(tmp_path, spec, "--workers", "1", "--storage", url)
    try:
        pid = wait_for("the worker", lambda: workers_of(proc.pid))[0]
        shown = " ".join(cmdline(pid))  # what `ps` shows every local user
        assert shown.endswith("-m harness.sweep --worker -"), shown
        assert PG_SECRET not in shown and "postgresql" not in shown and str(tmp_path) not in shown, shown
        wait_for("a trial mid-run", lambda: running_mid_trial(url, "pgdown"), timeout=240)
        postgres.stop("fast")  # every connection cut, new ones refused
        time.sleep(10)
        postgres.start()
    finally:
        out = finish(proc)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "retrying for up to 60s" in out and "reachable again" in out  # seen, said in one line, ridden out
    assert_done_once(tmp_path, url, "pgdown")


def test_postgres_gone_past_the_budget_stops_in_one_line_then_a_rerun_completes(tmp_path, postgres):
    spec, url = _pg_spec(tmp_path, "pggone", postgres, grid={"kl.coef": [0.0]})  # 1 cell x 2 seeds
    proc = start(tmp_path, spec, "--workers", "1", "--storage", url, env={"PPO_HARNESS_OUTAGE_S": "5"})
    try:
        wait_for("a trial mid-run", lambda: running_mid_trial(url, "pggone"), timeout=240)
        postgres.stop("fast")
        out = finish(proc, timeout=120)
    finally:
        postgres.start()
    assert proc.returncode == 1, out
    assert_one_line_no_traceback(out, "the Optuna storage postgresql://postgres:***@127.0.0.1", "unreachable for")
    assert PG_SECRET not in out
    _, children = runs(tmp_path, "pggone")  # MLflow was reachable: nothing of it left RUNNING
    assert children and "RUNNING" not in {r.info.status for r in children}

    again = run(tmp_path, spec, "--workers", "1", "--storage", url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_done_once(tmp_path, url, "pggone", slots=2)


def test_mlflow_server_down_longer_than_its_client_retries_is_ridden_out(tmp_path):
    from tests.servers import MlflowServer

    server = MlflowServer(tmp_path / "mlflow-server")
    server.start()
    spec = write_spec(tmp_path, "mlfdown", iterations=MID_RUN["train.iterations"])
    journal = str(tmp_path / "runs" / "sweeps" / "mlfdown.journal")
    try:
        proc = start(tmp_path, spec, "--workers", "1", "--tracking-uri", server.uri, env=QUICK_MLFLOW)
        try:
            wait_for("a trial mid-run", lambda: running_mid_trial(journal, "mlfdown"), timeout=240)
            server.stop()
            time.sleep(6)  # the client gives up after ~3 s; the restart below takes several seconds more
            server.start()
        finally:
            out = finish(proc)
        assert proc.returncode == 0, out
        assert "Traceback" not in out
        ts, _, children = assert_done_once(tmp_path, journal, "mlfdown", tracking_uri=server.uri)
        hit = [t for t in ts if t.user_attrs.get("sweep.fail_kind") == "outage"]
        assert hit, "the outage should have failed the trial in flight (and it was re-queued)"
        assert len(children) > 4 and {r.info.status for r in children} <= {"FINISHED", "KILLED", "FAILED"}
    finally:
        server.stop()


def test_a_full_runs_dir_is_ridden_out(tmp_path):
    """The runs dir (journal, MLflow SQLite and artifacts, worker logs) on a 64 MB tmpfs, filled mid-trial."""
    if os.getuid() != 0 or not shutil.which("mount"):
        pytest.skip("disk-full test skipped: mounting a tmpfs needs root")
    mnt = tmp_path / "runs"
    mnt.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"disk-full test skipped: cannot mount a tmpfs here ({got.stderr.strip()})")
    try:
        spec = write_spec(tmp_path, "full", iterations=MID_RUN["train.iterations"], grid={"kl.coef": [0.0]})
        journal = str(mnt / "sweeps" / "full.journal")
        proc = start(tmp_path, spec, "--workers", "1")
        try:
            wait_for("a trial mid-run", lambda: running_mid_trial(journal, "full"), timeout=240)
            filler = mnt / "filler"
            with open(filler, "wb") as f:  # every free byte taken
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
                except OSError:
                    pass
            time.sleep(8)
            filler.unlink()
        finally:
            out = finish(proc)
        assert "Traceback" not in out
        if proc.returncode != 0:  # stopped in one line: the rerun resumes
            assert_one_line_no_traceback(out)
            assert run(tmp_path, spec, "--workers", "1").returncode == 0
        assert_done_once(tmp_path, journal, "full", slots=2)
        assert not [t for t in trials(journal, "full") if t.state.name == "RUNNING"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
