"""Checkpoints and resume through the CLI: a run killed with SIGKILL after a checkpoint and continued with
``train --resume`` logs, step for step, the metrics of an uninterrupted run (bit-identical on one machine),
in the same MLflow run; its policy exports to a folder ``AutoModelForCausalLM`` loads in a fresh process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import checkpoint
from harness.tracking import Store
from tests.conftest import main_exit, run_cli, tiny_args

N, KILL_AT = 6, 3
ARGS = ["--task", "sentiment", "--seed", "3", *tiny_args({"train.iterations": N, "eval.every": 2,
                                                          "train.checkpoint_every": 1, "train.save_policy": "true",
                                                          "train.log_model": "true"}), "-q"]


def _history(store: Store, run_id: str) -> dict[str, dict[int, float]]:
    """Every metric but the timings, step -> value (the last logged: a resumed run redoes the steps after its
    checkpoint, with the same values)."""
    run = store.get_run(run_id)
    return {k: dict(store.metric_history(run_id, k)) for k in run.data.metrics if not k.startswith("perf/")}


def _killed_run(runs: Path, cwd: Path) -> str:
    """Start a run, SIGKILL it once its checkpoint of iteration KILL_AT is whole; its run id."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "train", *ARGS, "--runs-dir", str(runs)],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            found = list((runs / "checkpoints").glob(f"*/{checkpoint.PREFIX}{KILL_AT:06d}"))
            if found:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return found[0].parent.name
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        raise AssertionError("no checkpoint appeared")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    full = run_cli("train", *ARGS, "--runs-dir", str(tmp_path / "full"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    full_id = full.stdout.split("run id", 1)[1].split()[0]

    # train.save_policy / train.log_model: the final policy in <runs-dir>/policies/<run id>/ and in the MLflow run
    saved = tmp_path / "full" / "policies" / full_id
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in saved.iterdir()}
    full_store = Store(tmp_path / "full")
    logged = {a.path for a in full_store.client.list_artifacts(full_id, "policy")}
    assert {"policy/config.json", "policy/model.safetensors", "policy/README.md"} <= logged

    killed = _killed_run(runs, tmp_path)
    store = Store(runs)
    assert store.get_run(killed).info.status == "RUNNING"  # SIGKILL: nothing ended it
    ckpts = [it for it, _ in checkpoint.checkpoint_dirs(runs / "checkpoints" / killed)]
    # train.keep_checkpoints=1: one, or two when the kill fell between a new one made whole and the old one pruned
    assert ckpts and ckpts[-1] >= KILL_AT and len(ckpts) <= 2

    r = run_cli("train", "--resume", killed, "--runs-dir", str(runs), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("run id", 1)[1].split()[0] == killed  # the same MLflow run
    run = store.get_run(killed)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "1"
    assert len(store.find_runs("ppo-harness")) == 1  # no second run

    got, want = _history(store, killed), _history(Store(tmp_path / "full"), full_id)
    assert set(got) == set(want)
    assert got == want  # bit-identical, every step of every metric
    assert sorted(want["eval/gold"]) == [0, 2, 4, 6] and len(want["objective/kl"]) == N

    # a FINISHED run is not resumed again; an unknown id is one line, exit 2 (these and the export through the
    # entry point main(argv) in this process: a fresh Python per call costs seconds)
    monkeypatch.chdir(tmp_path)
    code, _, err = main_exit(capsys, "train", "--resume", killed, "--runs-dir", str(runs))
    assert code == 2 and "FINISHED" in err and len(err.strip().splitlines()) == 1
    code, _, err = main_exit(capsys, "train", "--resume", "0" * 32, "--runs-dir", str(runs))
    assert code == 2 and "no checkpoint" in err

    # the newest checkpoint's policy, exported and loaded by transformers in a fresh process
    out = tmp_path / "exported"
    code, _, err = main_exit(capsys, "export", killed, str(out), "--runs-dir", str(runs))
    assert code == 0, err
    card = (out / "README.md").read_text()
    assert killed in card and "seed: 3" in card and "eval/gold" in card
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        "ids = t(['the movie was'], return_tensors='pt').input_ids\n"
        "torch.manual_seed(0)\n"
        "o = m.generate(ids, do_sample=True, max_new_tokens=5, pad_token_id=t.pad_token_id)\n"
        "s = sorted(float(p.double().sum()) for p in m.parameters())\n"
        "print(json.dumps({'sums': s, 'text': t.decode(o[0])}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    loaded = json.loads(p.stdout.strip().splitlines()[-1])
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint.latest(runs / "checkpoints" / killed) / "policy.safetensors"))
    want_sums = sorted(float(v.double().sum()) for v in saved.values())
    assert loaded["sums"] == want_sums  # the trained weights, not the initial ones
    assert loaded["text"].startswith("the movie was") and len(loaded["text"].split()) > 3
