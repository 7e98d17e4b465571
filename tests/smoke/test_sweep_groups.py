"""`ppo-harness sweep --procs-per-run N`: each trial one run over N processes (gloo on the CPU), the worker rank 0.

Trials finish as runs of world size N logged once; Optuna's prune decision reaches every rank (all of them stop
at the same evaluation, none waits for a peer that left); a follower that dies fails its trial and the worker
goes on; a killed worker takes its followers with it; what cannot run over N ranks is refused before anything
exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import TINY, main_exit
from tests.smoke.test_sweep import mlflow_runs, study_trials, sweep, write_spec

pytestmark = pytest.mark.slow

TIMEOUT_S = 30  # train.dist_timeout_s: a rank waits at most this long for a peer
BASE = {**TINY, "train.dist_timeout_s": TIMEOUT_S}
OBJECTIVE = {"metric": "eval/kl", "direction": "maximize"}  # differs from run to run (eval/gold, eval/proxy are flat here)


def _followers(root: int) -> list[psutil.Process]:
    """The follower processes below process ``root``."""
    try:
        kids = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            if "--follower" in p.cmdline():
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_for_follower(root: int, timeout: float = 120) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := _followers(root):
            return found[0]
        time.sleep(0.2)
    raise AssertionError("no follower process started")


def _worker_log(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in (tmp_path / "runs" / "sweeps").glob("*/worker-*.log"))


def test_two_trials_each_run_over_two_ranks_and_log_once(tmp_path):
    spec = write_spec(tmp_path, "g2", base=BASE, grid={"kl.coef": [0.0, 0.2]}, seeds=[0], objective=OBJECTIVE)
    out = sweep(tmp_path, spec, "--workers", "1", "--procs-per-run", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "done 2/2" in out.stdout

    store, parents, children = mlflow_runs(tmp_path, "g2")
    assert len(parents) == 1 and len(children) == 2  # rank 1 of each trial logged nothing of its own
    assert len(store.find_runs("g2")) == 3
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["world_size"] == "2"
        assert run.data.params["train.threads"] == str(max(1, len(os.sched_getaffinity(0)) // 2))
        steps = [step for step, _ in store.metric_history(run.info.run_id, "eval/kl")]
        assert steps == [0, 1, 2]  # each evaluation logged once (rank 0 alone)
    trials = study_trials(str(tmp_path / "runs" / "sweeps" / "g2.journal"))
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]
    by_run = {r.info.run_id: r for r in children}
    for t in trials:
        run = by_run[t.user_attrs["mlflow.run_id"]]
        assert t.value == run.data.metrics["eval/kl"]
        assert run.data.tags["optuna.trial"] == str(t.number)
    assert len({t.value for t in trials}) == 2  # two different runs, each told as its own
    assert "ended with" not in _worker_log(tmp_path)  # every follower left on its own, exit 0


def test_a_pruned_trial_stops_every_rank_at_the_same_evaluation(tmp_path, capfd):
    """The worker (here: this process) is rank 0; the study's pruner prunes at the first evaluation after
    iteration 0. The trial is PRUNED, its run ends after evaluation 1, and rank 1 ends because rank 0 told it
    (exit 0, saying why), not because its peer left (which would end it with exit code 1)."""
    import optuna

    from harness.sweep.spec import load_spec
    from harness.sweep.study import open_storage
    from harness.sweep.worker import Worker
    from harness.tracking import Store

    path = write_spec(tmp_path, "pr", base={**BASE, "train.iterations": 4}, sampler="random", n_trials=1,
                      search={"kl.coef": {"choices": [0.1]}}, seeds=[0], prune={"n_startup_trials": 0},
                      objective=OBJECTIVE)
    spec = load_spec(path)
    storage = open_storage(str(tmp_path / "pr.journal"))
    # a pruner that prunes at any reported value (MedianPruner's decision depends on the runs' numbers)
    study = optuna.create_study(storage=storage, study_name="pr", direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=1e30))
    store = Store(tmp_path / "runs")
    worker = Worker(spec, storage, study, store, None, 1, procs_per_run=2)
    trial, _ = worker.sample()
    t0 = time.monotonic()
    worker.run(trial)
    assert time.monotonic() - t0 < 3 * TIMEOUT_S
    out, err = capfd.readouterr()

    (t,) = study.get_trials(deepcopy=False)
    assert t.state.name == "PRUNED" and sorted(t.intermediate_values) == [0, 1]
    (run,) = store.find_runs("pr")
    assert run.info.status == "FAILED" and "pruned" in run.data.tags["sweep.pruned"]
    assert run.data.tags["world_size"] == "2"
    assert [s for s, _ in store.metric_history(run.info.run_id, "eval/kl")] == [0, 1]
    assert "rank 1: rank 0 stopped the run (TrialPruned: pruned" in err, out + err
    assert "ended with" not in out + err  # rank 1 left with exit 0: told, not orphaned
    assert not _followers(os.getpid())


def _wait_for_evaluation(tmp_path: Path, experiment: str, trial: int, timeout: float = 180) -> None:
    """Until trial ``trial``'s run has logged its first evaluation (a collective: every rank has joined)."""
    from harness.tracking import Store

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (tmp_path / "runs" / "mlflow.db").exists():
            store = Store(tmp_path / "runs")
            for r in store.find_runs(experiment):
                if r.data.tags.get("optuna.trial") == str(trial) and store.metric_history(r.info.run_id, "eval/kl"):
                    return
        time.sleep(0.5)
    raise AssertionError(f"trial {trial} logged no evaluation")


def test_a_dead_follower_fails_its_trial_and_the_worker_goes_on(tmp_path):
    """Trial 0's follower is killed before it joins (rank 0's rendezvous times out after train.dist_timeout_s,
    before any run exists), trial 1's after the first evaluation (rank 0's next collective fails, the run
    FAILED): both trials FAIL, never taken for a store outage; trial 2 then runs over two fresh ranks."""
    spec = write_spec(tmp_path, "df", base={**BASE, "train.iterations": 6, "train.dist_timeout_s": 20},
                      grid={"kl.coef": [0.0, 0.1, 0.2]}, seeds=[0], objective=OBJECTIVE)
    proc = sweep(tmp_path, spec, "--workers", "1", "--procs-per-run", "2", background=True)
    try:
        first = _wait_for_follower(proc.pid)
        first.send_signal(signal.SIGKILL)  # still starting: it never joins
        _wait_for_evaluation(tmp_path, "df", 1)
        (second,) = _followers(proc.pid)
        second.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out  # two trials failed: a rerun would retry them
    assert "2 run(s) failed" in out
    trials = sorted(study_trials(str(tmp_path / "runs" / "sweeps" / "df.journal")), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE"]  # not re-queued as an outage
    assert [t.user_attrs["sweep.fail_kind"] for t in trials[:2]] == ["error", "error"]
    _, _, children = mlflow_runs(tmp_path, "df")
    status = {r.data.tags["optuna.trial"]: r.info.status for r in children}
    assert status == {"1": "FAILED", "2": "FINISHED"}  # trial 0's group never formed: no run was started
    assert "timed out" in trials[0].user_attrs["sweep.fail_reason"].lower()
    log = _worker_log(tmp_path)
    for victim in (first, second):
        assert f"rank 1 (pid {victim.pid}) ended with signal SIGKILL" in log


def test_a_killed_worker_takes_its_followers_with_it(tmp_path):
    spec = write_spec(tmp_path, "kw", base={**BASE, "train.iterations": 20}, grid={"kl.coef": [0.0]}, seeds=[0])
    proc = sweep(tmp_path, spec, "--workers", "1", "--procs-per-run", "2", background=True)
    follower = None
    try:
        follower = _wait_for_follower(proc.pid)
        worker = psutil.Process(follower.ppid())
        assert "--worker" in worker.cmdline()
        worker.send_signal(signal.SIGKILL)
        gone, _ = psutil.wait_procs([follower], timeout=10)
        assert gone, "the follower outlived its worker"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        if follower is not None and follower.is_running():  # orphaned by a failure of this test: not left behind
            follower.kill()


def _head(without: str = "") -> str:
    return "name: bad\nseeds: [0]\nbase:\n" + "".join(f"  {k}: {v}\n" for k, v in TINY.items() if k != without)


HEAD, FREE_BATCH = _head(), _head(without="rollout.batch_size")


@pytest.mark.parametrize(("body", "args", "says"), [
    (HEAD + "grid: {kl.coef: [0.1]}\n", ["--procs-per-run", "0"], "--procs-per-run: expected at least 1, got 0"),
    (HEAD + "grid: {kl.coef: [0.1]}\n", ["--procs-per-run", "3"],
     "base.rollout.batch_size: 8 does not split over 3 ranks"),
    (FREE_BATCH + "grid: {rollout.batch_size: [8, 6]}\n", ["--procs-per-run", "2"],
     "grid.rollout.batch_size: 6 does not split over 2 ranks"),
    (HEAD + "grid: {impl: [custom, trl]}\n", ["--procs-per-run", "2"], "grid.impl: trl runs in one process"),
    (HEAD + "  train.checkpoint_every: 1\ngrid: {kl.coef: [0.1]}\n", ["--procs-per-run", "2"],
     "base.train.checkpoint_every: a run over 2 ranks writes no checkpoints"),
    (FREE_BATCH + "sampler: random\nn_trials: 2\nsearch: {rollout.batch_size: {low: 8, high: 16}}\n",
     ["--procs-per-run", "2"], "search.rollout.batch_size: a range cannot be checked to split over --procs-per-run 2"),
    (FREE_BATCH + "sampler: random\nn_trials: 2\nsearch: {rollout.batch_size: {choices: [8, 10]}}\n",
     ["--procs-per-run", "2"], "search.rollout.batch_size: 10 does not split over 2 ranks"),
    (HEAD + "grid: {kl.coef: [0.1]}\n", ["--procs-per-run", "2", "--devices", "0,1,2"],
     "--devices: 3 device(s) do not split into groups of --procs-per-run 2"),
    (HEAD + "grid: {kl.coef: [0.1]}\n", ["--procs-per-run", "2", "--workers", "2", "--devices", "0,1"],
     "--devices: 2 worker(s) x --procs-per-run 2 need 4 devices, got 2"),
])
def test_what_cannot_run_over_the_ranks_is_refused_in_one_line(tmp_path, capsys, monkeypatch, body, args, says):
    spec = tmp_path / "bad.yaml"
    spec.write_text(body)
    monkeypatch.chdir(tmp_path)
    code, out, err = main_exit(capsys, "sweep", str(spec), *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no runs/, no journal, no mlflow.db

