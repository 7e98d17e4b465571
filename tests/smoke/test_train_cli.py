"""`ppo-harness train` end to end as a subprocess, against a real MLflow SQLite store."""

from __future__ import annotations

import pytest

from harness.ppo.variance import KEYS as VARIANCE_KEYS
from harness.tracking import Store
from tests.conftest import ROOT, main_exit, run_cli, tiny_args

SCHEMA = (
    "objective/scores", "objective/gold", "objective/kl", "objective/rlhf_reward", "objective/kl_coef",
    "objective/entropy", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg",
    "val/clipfrac_avg", "val/explained_var", "adv/mean", "adv/std", "grad/norm", "grad/value_norm",
    *VARIANCE_KEYS, "response/length", "response/eos_frac", "eval/gold",
    "eval/proxy", "eval/kl", "perf/tokens_per_s", "perf/rollout_s", "perf/update_s", "episodes",
)


@pytest.mark.slow
def test_train_logs_one_complete_run(tmp_path):
    runs = tmp_path / "runs"
    r = run_cli("train", "--task", "sentiment", "--seed", "1", *tiny_args({"probe.every": 1}), "--runs-dir", str(runs),
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.split("run id", 1)[1].split()[0]
    assert "eval/gold" in r.stdout and str(runs / "mlflow.db") in r.stdout

    store = Store(runs)
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert set(SCHEMA) <= set(run.data.metrics), set(SCHEMA) - set(run.data.metrics)
    assert run.data.params["ppo.clip_eps"] == "0.2" and run.data.params["seed"] == "1"
    assert run.data.tags["task"] == "sentiment" and run.data.tags["impl"] == "custom"
    assert run.data.tags["advantage.level"] == "token" and "git_commit" in run.data.tags
    # TINY changes the RM's recipe (model.rm_pairs=64), not the SFT policy's: shipped SFT, local RM
    assert run.data.tags["artifacts.sft"] == "shipped" and run.data.tags["artifacts.version"]
    assert run.data.tags["artifacts.rm"] == "local build" and len(run.data.tags["artifacts.rm_sha256"]) == 16
    assert [s for s, _ in store.metric_history(run_id, "eval/gold")] == [0, 1, 2]
    assert [v for _, v in store.metric_history(run_id, "episodes")] == [0, 8, 16]
    artifacts = {a.path for a in store.client.list_artifacts(run_id)}
    assert {"config.yaml", "samples.parquet", "samples.md"} <= artifacts


@pytest.mark.slow
def test_an_fp16_run_logs_its_loss_scale(tmp_path):
    """train.dtype=fp16 through the CLI: a FINISHED run whose metrics are finite, with the loss scale and the
    skipped steps logged at every iteration (2^16 or halved by overflows: a power of two)."""
    import math

    runs = tmp_path / "runs"
    r = run_cli("train", *tiny_args({"train.dtype": "fp16", "train.device": "cpu"}), "--runs-dir", str(runs),
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.split("run id", 1)[1].split()[0]
    store = Store(runs)
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.dtype"] == "fp16"
    scales = store.metric_history(run_id, "amp/loss_scale")
    skipped = store.metric_history(run_id, "amp/skipped_steps")
    assert [s for s, _ in scales] == [1, 2] and [s for s, _ in skipped] == [1, 2]
    for _, v in scales:
        assert v <= 2.0**16 and math.log2(v).is_integer()
    assert all(0 <= v <= 2 for _, v in skipped)  # TINY: 2 optimiser steps an iteration
    for key in ("loss/policy_avg", "loss/value_avg", "objective/kl", "eval/gold", "grad/norm"):
        assert all(math.isfinite(v) for _, v in store.metric_history(run_id, key)), key


@pytest.mark.parametrize(
    "args, key",
    [
        (["--set", "ppo.clip_eps=-1"], "ppo.clip_eps"),
        (["--set", "rollout.group_size=3"], "rollout.group_size"),
        (["--set", "advantage.level=sequence", "--set", "rollout.group_size=1"], "advantage.baseline"),
        (["--set", "ppo.nope=1"], "ppo.nope"),
        (["--set", "ppo.epochs=two"], "ppo.epochs"),
        (["--config", "missing.yaml"], "missing.yaml"),
        (["--set", "model.policy=./no/such/model"], "model.policy"),
        (["--task", "chess"], "task.name"),
        (["--set", "train.autocast=bf16"], "train.autocast"),
        (["--set", "train.dtype=fp8"], "train.dtype"),
        (["--impl", "trl", "--set", "train.device=cpu", "--set", "train.dtype=fp16"], "train.dtype"),
    ],
)
def test_bad_input_exits_2_and_logs_nothing(tmp_path, monkeypatch, capsys, args, key):
    """Through ``ppo-harness``'s entry point ``main(argv)`` in this process (a subprocess per row would add
    seconds of imports; tests/smoke/test_bad_input.py runs rows through the installed script too)."""
    runs = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)  # where --config missing.yaml is looked for
    code, out, err = main_exit(capsys, "train", *args, "--runs-dir", str(runs))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and lines[0].startswith("error:")
    assert not runs.exists()


@pytest.mark.parametrize("cmd", ["train", "tasks", "compare", "sweep", "report", "bench", "ui"])
def test_every_command_has_help(cmd, capsys):
    code, out, _ = main_exit(capsys, cmd, "--help")
    assert code == 0 and "Usage" in out


def test_tasks_lists_the_builtin_tasks():
    r = run_cli("tasks", cwd=ROOT, timeout=120)
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.strip().splitlines()]
    assert {"sentiment", "sort", "length"} <= set(names)


def test_sigterm_stops_train_as_ctrl_c_does(tmp_path):
    """``timeout``/``kill`` send SIGTERM: the run is marked KILLED (not left RUNNING), one line, exit 130, and no
    half-built warm start (``.build-*``) is left in the model cache."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    cache = tmp_path / "cache"
    args = tiny_args({"train.iterations": 100000})
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "train", *args, "--runs-dir", str(tmp_path / "runs")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PPO_HARNESS_CACHE": str(cache)})
    db, deadline = tmp_path / "runs" / "mlflow.db", time.time() + 300
    try:
        while True:  # until the run exists and is RUNNING
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no RUNNING run after 300 s"
            try:
                with sqlite3.connect(db) as c:
                    if c.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]:
                        break
            except sqlite3.Error:
                pass
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines() == ["error: interrupted; the run is marked KILLED"], err[-2000:]
    with sqlite3.connect(db) as c:
        assert [r[0] for r in c.execute("select status from runs")] == ["KILLED"]
    assert not [p for p in cache.rglob("*") if ".build-" in p.name]
