"""What the fault tests share: the tiny sweep, running it as real processes, finding its workers, and the
one end state every fault must lead to after its documented recovery step (usually: rerun the same command).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import TINY

# eval/gold is reported to Optuna at every iteration (eval.every=1): a trial is "mid-run" once it has reported
MID_RUN = {"train.iterations": 6}
# MLflow's client gives up on a refused connection after about 3 s (its defaults: about a minute)
QUICK_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def write_spec(tmp_path: Path, name: str, iterations: int | None = None, **kw) -> Path:
    """2 cells x 2 seeds on the tiny config: kl.coef 0 / 0.2, seeds 0 / 1; one torch thread per worker."""
    base = dict(TINY, **{"train.threads": 1})
    if iterations:
        base["train.iterations"] = iterations
    d = {"name": name, "base": base, "grid": {"kl.coef": [0.0, 0.2]}, "seeds": [0, 1]}
    d.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def sweep_cmd(tmp_path: Path, spec: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "sweep", str(spec), "--runs-dir", str(tmp_path / "runs"), *args]


def start(tmp_path: Path, spec: Path, *args: str, env: dict | None = None, out: Path | None = None) -> subprocess.Popen:
    """The sweep in the background, in its own process group (a terminal's Ctrl-C reaches the whole group);
    its output piped (read it with ``finish``), or written to ``out`` (to read while it runs)."""
    sink = open(out, "w") if out else subprocess.PIPE  # noqa: SIM115 - the child's; closed below
    try:
        return subprocess.Popen(sweep_cmd(tmp_path, spec, *args), cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True, env={**os.environ, **(env or {})})
    finally:
        if out:
            sink.close()


def run(tmp_path: Path, spec: Path, *args: str, env: dict | None = None, timeout: int = 300):
    out = subprocess.run(sweep_cmd(tmp_path, spec, *args), cwd=tmp_path, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    print(f"$ sweep {' '.join(args)} -> {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-3000:]}")
    return out


def finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    """The background sweep's output once it exits; after ``timeout`` it is killed (with its group) and the
    test fails, showing what it printed."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        print(f"$ sweep (background) did not exit in {timeout}s; killed\n{out[-5000:]}")
        raise AssertionError(f"the sweep did not exit in {timeout}s") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"$ sweep (background) -> {proc.returncode}\n{out[-5000:]}")
    return out


def workers_of(pid: int) -> list[int]:
    """The coordinator's worker processes (``python -m harness.sweep``), from /proc."""
    out = []
    for child in _children(pid):
        if "harness.sweep" in " ".join(cmdline(child)):
            out.append(child)
    return out


def _children(pid: int) -> list[int]:
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in threads:
        try:
            kids += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return kids


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")[:-1]
    except OSError:
        return []


def wait_for(what: str, check, timeout: float = 180, every: float = 0.1):
    """Poll ``check()`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


_RDB: dict[str, object] = {}  # one engine per PostgreSQL URL: polling must not use up the server's connections


def trials(url: str, name: str):
    import optuna

    from harness.sweep.study import is_rdb, open_storage

    if is_rdb(url):
        st = _RDB.get(url) or _RDB.setdefault(url, open_storage(url))
    else:
        st = open_storage(url)  # a journal is read afresh (a test may have cut it)
    (s,) = [s for s in st.get_all_studies() if s.user_attrs.get("sweep.name") == name]
    return optuna.load_study(study_name=s.study_name, storage=st).get_trials(deepcopy=False)


def running_mid_trial(url: str, name: str, pids: list[int] | None = None):
    """(trial number, worker pid) of a RUNNING trial that has reported an objective (its MLflow run exists)."""
    try:
        ts = trials(url, name)
    except Exception:  # no study yet
        return None
    for t in ts:
        owner = t.user_attrs.get("sweep.worker")
        if t.state.name == "RUNNING" and owner and t.intermediate_values and (pids is None or owner["pid"] in pids):
            return t.number, owner["pid"]
    return None


def runs(tmp_path: Path, experiment: str, tracking_uri: str | None = None):
    from harness.tracking import Store

    store = Store(tmp_path / "runs", tracking_uri)
    found = store.find_runs(experiment)
    parents = [r for r in found if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in found if r.data.tags.get("sweep.role") == "child"]
    return parents, children


def assert_done_once(tmp_path: Path, url: str, name: str, tracking_uri: str | None = None, slots: int = 4):
    """Every (cell, seed) has exactly one COMPLETE trial and exactly one FINISHED child run; nothing is
    RUNNING or WAITING in Optuna, nothing RUNNING in MLflow (parent and children), the parent FINISHED."""
    ts = trials(url, name)
    complete = collections.Counter((t.user_attrs["sweep.cell"], t.user_attrs["seed"])
                                   for t in ts if t.state.name == "COMPLETE")
    assert len(complete) == slots and set(complete.values()) == {1}, complete
    assert not [t.number for t in ts if t.state.name in ("RUNNING", "WAITING")]
    parents, children = runs(tmp_path, name, tracking_uri)
    finished = collections.Counter((r.data.tags["sweep.cell"], r.data.tags["seed"])
                                   for r in children if r.info.status == "FINISHED")
    assert len(finished) == slots and set(finished.values()) == {1}, finished  # no duplicates
    assert "RUNNING" not in {r.info.status for r in [*parents, *children]}, [
        (r.data.tags.get("sweep.role"), r.info.status) for r in [*parents, *children]]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    return ts, parents, children


def assert_one_line_no_traceback(out: str, *needles: str) -> None:
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith("sweep stopped: ")]
    assert len(lines) == 1, out
    assert "Rerun the same command to resume" in lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
