"""Checkpoints of a run over two ranks (gloo on the CPU, train.parallel=ddp): a run stopped after a checkpoint and
continued with ``train --resume RUN_ID --nproc-per-node 2`` logs the metrics of the uninterrupted run, in the
same MLflow run; a checkpoint continues only at the world size it was written at."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import checkpoint
from harness.tracking import Store
from tests.conftest import ROOT, main_exit, tiny_args

pytestmark = pytest.mark.slow

STOP_AT = 2
ARGS = [*tiny_args({"train.iterations": 4, "train.checkpoint_every": STOP_AT, "train.keep_checkpoints": 0,
                    "eval.every": 2}), "--nproc-per-node", "2", "-q"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=_env())


def _history(store: Store, run_id: str) -> dict[str, dict[int, str]]:
    """Every metric but the timings, step -> repr(value) (NaN equals NaN; the last logged: a resumed run redoes
    the iterations after its checkpoint)."""
    run = store.get_run(run_id)
    return {k: {s: repr(v) for s, v in store.metric_history(run_id, k)} for k in run.data.metrics
            if not k.startswith("perf/")}


def _stopped_run(runs: Path, cwd: Path) -> str:
    """Start the run over 2 ranks, SIGTERM its launcher once the checkpoint of iteration STOP_AT is whole (a
    scheduler's stop: the ranks stopped, the run KILLED); its run id."""
    proc = subprocess.Popen([sys.executable, "-m", "harness", "train", *ARGS, "--runs-dir", str(runs)], cwd=cwd,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            found = list((runs / "checkpoints").glob(f"*/{checkpoint.PREFIX}{STOP_AT:06d}"))
            if found:
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 130, err[-2000:]
                return found[0].parent.name
            assert proc.poll() is None, "the run ended before it could be stopped"
            time.sleep(0.05)
        raise AssertionError("no checkpoint appeared")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _refusals(capsys, monkeypatch, runs: Path, run_id: str) -> None:
    """Another world size, a rank of torchrun's, several machines: one line naming the option, exit 2, the run
    and its checkpoints untouched."""
    store = Store(runs)
    folder = checkpoint.run_folder(runs, run_id)
    before = ({p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")},
              store.get_run(run_id).data.tags)
    cases = [([], "--nproc-per-node"), (["--nproc-per-node", "1"], "--nproc-per-node"),
             (["--nproc-per-node", "4"], "--nproc-per-node"),
             (["--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:29999"], "--nnodes")]
    for extra, named in cases:
        code, _, err = main_exit(capsys, "train", "--resume", run_id, "--runs-dir", str(runs), *extra)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and named in lines[0], (extra, err)
    with monkeypatch.context() as m:  # plain torchrun: every rank would read the runs dir
        m.setenv("WORLD_SIZE", "2")
        m.setenv("RANK", "0")
        code, _, err = main_exit(capsys, "train", "--resume", run_id, "--runs-dir", str(runs))
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--nproc-per-node" in err, err
    assert ({p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")},
            store.get_run(run_id).data.tags) == before
    assert store.get_run(run_id).info.status == "KILLED" and len(store.find_runs("ppo-harness")) == 1


def test_two_ranks_stopped_and_resumed_equal_the_uninterrupted_run(tmp_path, capsys, monkeypatch):
    """A: 4 iterations over 2 ranks, a checkpoint every 2. B: the same run stopped after its iteration-2
    checkpoint, refused at other world sizes, then ``--resume`` with ``--nproc-per-node 2``: FINISHED in the same
    MLflow run, reported once, every metric of every iteration equal to A's (determinism at a world size).

    What it catches: rank 1 restarting from its fresh random state (its prompts and tokens differ), the
    optimiser's state, the weights or the scheduler restored on rank 0 only (rank 1's replica moves apart), the
    recorder's or the KL controller's state lost, a checkpoint that holds rank 0's random state alone."""
    full = _train(*ARGS, "--runs-dir", str(tmp_path / "full"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    full_id = full.stdout.split("run id", 1)[1].split()[0]

    runs = tmp_path / "runs"
    stopped = _stopped_run(runs, tmp_path)
    store = Store(runs)
    assert store.get_run(stopped).info.status == "KILLED"
    ckpts = checkpoint.checkpoint_dirs(checkpoint.run_folder(runs, stopped))
    assert [it for it, _ in ckpts] == [STOP_AT]  # the resume below starts at iteration 3
    path = ckpts[-1][1]
    assert {"rng.pt", "rng-rank-1.pt"} <= {p.name for p in path.iterdir()} and checkpoint.world_size(path) == 2
    import torch

    rank0, rank1 = (torch.load(path / checkpoint.rng_file(r), weights_only=True) for r in (0, 1))
    assert rank0["random"] != rank1["random"]  # each rank's own prompt sampler

    monkeypatch.chdir(tmp_path)
    _refusals(capsys, monkeypatch, runs, stopped)

    resumed = _train("--resume", stopped, "--runs-dir", str(runs), "--nproc-per-node", "2", "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("run id") == 1 and resumed.stdout.split("run id", 1)[1].split()[0] == stopped
    run = store.get_run(stopped)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "1" and run.data.tags["world_size"] == "2"
    assert len(store.find_runs("ppo-harness")) == 1  # no second run
    got, want = _history(store, stopped), _history(Store(tmp_path / "full"), full_id)
    assert sorted(want["objective/kl"]) == [1, 2, 3, 4] and sorted(want["eval/gold"]) == [0, 2, 4]
    assert set(got) == set(want)
    assert got == want  # every step of every metric, bit for bit
    assert [it for it, _ in checkpoint.checkpoint_dirs(checkpoint.run_folder(runs, stopped))] == [2, 4]
