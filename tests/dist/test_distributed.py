"""One run over several processes (gloo on the CPU): the math of N ranks is the math of one process, the launch
is checked before anything starts, rank 0 alone logs, a killed rank ends the run FAILED in bounded time, and
two launchers meeting at a rendezvous on 127.0.0.1 train one run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, main_exit, tiny_args

pytestmark = pytest.mark.slow

TIMEOUT_S = 20  # train.dist_timeout_s of the fault tests: a rank waits at most this long for a dead peer


def _runs(runs_dir: Path) -> list:
    from harness.tracking import Store

    store = Store(runs_dir)
    return store.find_runs("ppo-harness") if (runs_dir / "mlflow.db").exists() else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


# ---- the math ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eq") / "eq.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(ROOT / "tests" / "dist" / "equivalence_worker.py"), str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


CASES = ["token-gae-whiten", "token-fp-shared-trunk", "token-micro", "seq-rloo", "seq-batch-mean-whiten",
         "seq-reinforce-pp", "token-probe", "fsdp-token-gae-whiten", "fsdp-token-micro", "fsdp-seq-rloo"]


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_step_as_one_process(equivalence, case):
    """Same rollout, rank 1 holding a quarter of rank 0's tokens: every logged statistic (losses, approx KL,
    clip fractions, advantages' moments, the KL, explained variance, the pre-clip gradient norm), the clipped
    gradients and the parameters after two epochs agree with one process on the whole batch. The fsdp- cases:
    the ranks' models sharded (FSDP2), against one process with whole models."""
    c = equivalence[case]
    assert c["tokens"][1] * 3 < c["tokens"][0]  # uneven: the second half was cut to 1-2 tokens a row
    single, ranks = c["single"], c["ranks"]
    assert set(single["metrics"]) == set(ranks["metrics"])
    for key, v in single["metrics"].items():
        if key.startswith("grad/") and key != "grad/norm" and key != "grad/value_norm":
            continue  # the probe's parts differ (a random split in one process); compared below on one split
        # offpolicy/* at staleness 0 measure the float rounding between the sampler and the training forward
        # (~1e-7): the sharded ranks' training forward is Hugging Face's, the one process's the packed GPT-2 one
        noise = 2e-6 if key.startswith("offpolicy/") and case.startswith("fsdp-") else 1e-7
        assert ranks["metrics"][key] == pytest.approx(v, rel=2e-5, abs=noise), key
    g1, g2 = single["grads"], ranks["grads"]
    scale = max(abs(x) for x in g1)
    assert max(abs(a - b) for a, b in zip(g1, g2, strict=True)) <= 1e-5 * scale
    assert max(abs(a - b) for a, b in zip(single["params"], ranks["params"], strict=True)) <= 1e-6
    assert single["params"] != ranks["params"] or g1 == g2  # the step moved something either way
    if case.startswith("fsdp-"):  # sharded: rank 0 holds half of the weights (FSDP2 pads a shard by < 1 row)
        assert ranks["held"] == pytest.approx(0.5, abs=0.01)


def test_rank_gradients_are_the_probe_parts(equivalence):
    """probe.microbatches=2 over 2 ranks: each rank's gradient of its own half is one of the K parts; the grad/*
    equal the one-process probe given the same two halves."""
    c = equivalence["token-probe"]
    ref = c["single"]["probe_split"]
    assert set(ref) >= {"grad/variance", "grad/signal", "grad/noise_scale", "grad/cosine"}
    for key, v in ref.items():
        assert c["ranks"]["metrics"][key] == pytest.approx(v, rel=1e-5, abs=1e-9), key


# ---- the launch ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "named"), [
    (["--nproc-per-node", "3"], "rollout.batch_size"),
    (["--nproc-per-node", "2", "--set", "ppo.minibatches=8"], "ppo.minibatches"),
    (["--nproc-per-node", "2", "--set", "impl=trl"], "impl"),
    (["--nproc-per-node", "2", "--set", "train.parallel=fsdp", "--set", "train.checkpoint_every=1"],
     "train.checkpoint_every"),
    (["--nproc-per-node", "2", "--set", "probe.every=1", "--set", "probe.microbatches=3"], "probe.microbatches"),
    (["--nproc-per-node", "2", "--set", "eval.prompts=1"], "eval.prompts"),
    (["--nproc-per-node", "0"], "--nproc-per-node"),
    (["--nproc-per-node", "1", "--nnodes", "2"], "--rdzv-endpoint"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], "--node-rank"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", "no-port"], "--rdzv-endpoint"),
    (["--nnodes", "2"], "--nnodes"),
])
def test_a_launch_the_run_cannot_have_is_one_line(capsys, tmp_path, args, named):
    runs = tmp_path / "runs"
    code, _, err = main_exit(capsys, "train", *tiny_args(), "--runs-dir", str(runs), *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], err
    assert _runs(runs) == []


def test_a_rank_of_torchrun_refuses_the_same_way(tmp_path):
    """Under plain torchrun every rank checks the launch: one line naming the key, exit 2, no run."""
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "harness",
         "train", *tiny_args({"rollout.batch_size": 6}), "--runs-dir", str(runs)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    refusals = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(refusals) == 2 and all("rollout.batch_size" in r for r in refusals), proc.stderr[-2000:]
    assert _runs(runs) == []


# ---- whole runs ----------------------------------------------------------------------------------------------


def _history(runs_dir: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    from harness.tracking import Store

    return [(step, repr(v)) for step, v in Store(runs_dir).metric_history(run_id, key)]  # NaN equals NaN


def test_two_ranks_train_one_run_the_same_on_rerun(tmp_path):
    """``train --nproc-per-node 2`` and plain ``torchrun -m harness train``: one MLflow run each (rank 0 logs),
    FINISHED with the schema's keys, and the same learning metrics (determinism at a given world size)."""
    runs = tmp_path / "runs"
    a = _train(*tiny_args({"train.iterations": 3, "probe.every": 1, "probe.microbatches": 2}), "--runs-dir",
               str(runs), "--nproc-per-node", "2", cwd=tmp_path)
    assert a.returncode == 0, a.stderr[-2000:]
    assert a.stdout.count("run id") == 1
    b = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "harness",
         "train", *tiny_args({"train.iterations": 3, "probe.every": 1, "probe.microbatches": 2}), "--runs-dir",
         str(runs), "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert b.returncode == 0, b.stderr[-2000:]
    runs_found = _runs(runs)
    assert len(runs_found) == 2 and {r.info.status for r in runs_found} == {"FINISHED"}
    first, second = sorted(runs_found, key=lambda r: r.info.start_time)
    assert first.data.metrics["episodes"] == 24.0  # 3 iterations x the whole batch of 8, not a rank's 4
    assert first.data.tags["world_size"] == second.data.tags["world_size"] == "2"
    for key in ("objective/scores", "objective/kl", "loss/policy_avg", "grad/norm", "grad/noise_scale",
                "adv/std", "eval/gold", "eval/proxy"):
        assert key in first.data.metrics, key
        assert _history(runs, first.info.run_id, key) == _history(runs, second.info.run_id, key), key


def test_sharded_runs_learn_as_replicated_ones(tmp_path):
    """train.parallel=fsdp over 2 ranks, and over one process (a 1-rank mesh), trains as train.parallel=ddp does
    at the same world size: the same sampled batches, so the same curves to float rounding (the sharded models
    run Hugging Face's forward, the replicated ones on the CPU the packed GPT-2 forward)."""
    args = tiny_args({"train.iterations": 2, "train.threads": 1})
    for n in ("2", "1"):
        runs = tmp_path / f"runs-{n}"
        for parallel in ("ddp", "fsdp"):
            done = _train(*args, "--set", f"train.parallel={parallel}", "--runs-dir", str(runs), "--quiet",
                          *(["--nproc-per-node", n] if n == "2" else []), cwd=tmp_path, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
        found = sorted(_runs(runs), key=lambda r: r.info.start_time)
        assert [r.data.params["train.parallel"] for r in found] == ["ddp", "fsdp"]
        assert {r.info.status for r in found} == {"FINISHED"} and {r.data.tags["world_size"] for r in found} == {n}
        ddp, fsdp = found
        for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "grad/norm",
                    "eval/gold", "eval/proxy", "eval/kl", "response/length"):
            a, b = _history(runs, ddp.info.run_id, key), _history(runs, fsdp.info.run_id, key)
            assert [s for s, _ in a] == [s for s, _ in b], key
            assert [float(v) for _, v in b] == pytest.approx([float(v) for _, v in a], rel=1e-4, abs=1e-5), key


def test_two_machines_meet_at_a_rendezvous_and_train_one_run(tmp_path):
    runs, port = tmp_path / "runs", _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "harness", "train", *tiny_args(), "--runs-dir", str(runs), "--nproc-per-node", "1",
         "--nnodes", "2", "--node-rank", str(r), "--rdzv-endpoint", f"127.0.0.1:{port}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}) for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    assert "run id" in outs[0][0] and "run id" not in outs[1][0]  # machine 0 holds rank 0, which reports
    found = _runs(runs)
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    assert found[0].data.metrics["episodes"] == 16.0


# ---- faults --------------------------------------------------------------------------------------------------


def _rank_pid(launcher: int, rank: int, deadline: float) -> int:
    import psutil

    while time.monotonic() < deadline:
        for child in psutil.Process(launcher).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "harness.cli" in " ".join(child.cmdline()):
                    return child.pid
            except psutil.Error:
                continue
        time.sleep(0.5)
    raise AssertionError(f"no rank {rank} under the launcher")


def _wait_for_iteration(runs: Path, deadline: float) -> str:
    while time.monotonic() < deadline:
        for r in _runs(runs):
            if "loss/policy_avg" in r.data.metrics:
                return r.info.run_id
        time.sleep(0.5)
    raise AssertionError("the run logged no iteration")


@pytest.mark.parametrize("victim, parallel", [(1, "ddp"), (0, "ddp"), (1, "fsdp")])
def test_a_killed_rank_ends_the_run_failed_in_bounded_time(tmp_path, victim, parallel):
    """SIGKILL to rank 1 (or rank 0, which cannot mark its own run) mid-run: the launcher exits 1 with one line,
    the MLflow run is FAILED with a reason, within the collective timeout plus the launcher's grace; with the
    models sharded too (a peer then waits in FSDP's gathers)."""
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "train", *tiny_args({"train.iterations": 200, "eval.every": 100,
                                                              "train.dist_timeout_s": TIMEOUT_S,
                                                              "train.parallel": parallel}),
         "--runs-dir", str(runs), "--nproc-per-node", "2", "--quiet"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 300
        run_id = _wait_for_iteration(runs, deadline)
        os.kill(_rank_pid(proc.pid, victim, deadline), signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=TIMEOUT_S + 60)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    assert took < TIMEOUT_S + 30, took
    assert err.strip().splitlines()[-1].startswith("error: run failed: rank"), err[-2000:]
    from harness.tracking import Store

    run = Store(runs).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags.get("failure.reason")


def test_stopping_the_launcher_stops_every_rank_and_kills_the_run(tmp_path):
    """SIGTERM to the launcher (a scheduler's stop, ``timeout``): its ranks stop, exit 130 with one line and no
    traceback, the run KILLED."""
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "train", *tiny_args({"train.iterations": 200, "eval.every": 100}),
         "--runs-dir", str(runs), "--nproc-per-node", "2", "--quiet"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        run_id = _wait_for_iteration(runs, time.monotonic() + 300)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted"), err[-2000:]
    from harness.tracking import Store

    assert Store(runs).get_run(run_id).info.status == "KILLED"
