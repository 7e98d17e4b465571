"""train.device through ``ppo-harness train`` (cpu explicitly and auto give the same run, the device on its
MLflow run), the refusals, and ``sweep --devices`` pinning each worker (its run's device tag)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY, main_exit

CUDA = torch.cuda.is_available()


def _cli(tmp_path: Path, *args: str, runs: str = "runs") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args, "--runs-dir", str(tmp_path / runs)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)


def _refused(tmp_path: Path, capsys, monkeypatch, *args: str) -> tuple[object, str, str]:
    """A command expected to stop before any work, through the entry point ``main(argv)`` in this process."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return main_exit(capsys, *args, "--runs-dir", str(tmp_path / "runs"))


def _sets(extra: dict) -> list[str]:
    return [a for k, v in {**TINY, "train.iterations": 1, **extra}.items() for a in ("--set", f"{k}={v}")]


def _runs(tmp_path: Path, runs: str = "runs"):
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / runs / 'mlflow.db'}")
    return client, [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_cpu_and_auto_are_the_same_run_on_a_machine_without_cuda_and_tag_the_device(tmp_path):
    got = {}
    for value in ("cpu", "auto"):
        out = _cli(tmp_path, "train", *_sets({"train.device": value}), runs=value)
        assert out.returncode == 0, out.stdout + out.stderr
        client, (run,) = _runs(tmp_path, value)
        assert run.data.params["train.device"] == value
        assert run.data.tags["device"] == ("cpu" if value == "cpu" or not CUDA else run.data.tags["device"])
        got[value] = {k: v for k, v in run.data.metrics.items() if not k.startswith(("perf/", "time/"))}
    if not CUDA:
        assert got["cpu"] == got["auto"]


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the refusal of cuda is for machines without it")
def test_cuda_on_a_machine_without_it_is_one_line_and_nothing_is_created(tmp_path, capsys, monkeypatch):
    code, _, err = _refused(tmp_path, capsys, monkeypatch, "train", *_sets({"train.device": "cuda"}))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.device 'cuda': no CUDA device"), err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (none here)")
def test_a_run_on_cuda_trains_and_tags_its_gpu(tmp_path):
    out = _cli(tmp_path, "train", *_sets({"train.device": "cuda", "train.iterations": 2}))
    assert out.returncode == 0, out.stdout + out.stderr
    _, (run,) = _runs(tmp_path)
    assert run.data.tags["device"].startswith("cuda:0 (") and run.info.status == "FINISHED"


def _spec(tmp_path: Path) -> Path:
    spec = {"name": "pinned", "base": {**TINY, "train.iterations": 1, "train.threads": 1, "train.device": "auto"},
            "grid": {"kl.coef": [0.0, 0.2]}, "seeds": [0]}
    path = tmp_path / "pinned.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_each_sweep_worker_runs_pinned_to_its_device(tmp_path):
    """The coordinator's pinning through the real sweep (run_sweep; the CLI's check that the devices exist
    is skipped so a CPU machine can run it): each child run's tag shows its worker's CUDA_VISIBLE_DEVICES."""
    from harness.sweep.coordinator import run_sweep
    from harness.sweep.study import SweepEnd

    end = run_sweep(_spec(tmp_path), workers=2, runs_dir=tmp_path / "runs", devices=["0", "1"])
    assert end is SweepEnd.DONE
    _, runs = _runs(tmp_path)
    children = [r for r in runs if r.data.tags.get("sweep.role") == "child"]
    assert len(children) == 2
    seen = {r.data.tags["device"].rsplit("CUDA_VISIBLE_DEVICES=", 1)[-1].rstrip(")") for r in children}
    assert seen <= {"0", "1"} and all("CUDA_VISIBLE_DEVICES=" in r.data.tags["device"] for r in children)


@pytest.mark.skipif(CUDA, reason="this machine has CUDA devices")
def test_sweep_devices_that_do_not_exist_are_refused_and_dry_run_shows_the_pinning(tmp_path, capsys, monkeypatch):
    spec = _spec(tmp_path)
    code, _, err = _refused(tmp_path, capsys, monkeypatch, "sweep", str(spec), "--devices", "0,1")
    assert code == 2 and err.strip() == "error: --devices: CUDA device 0 does not exist on this machine (0 visible)"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    code, _, err = _refused(tmp_path, capsys, monkeypatch, "sweep", str(spec), "--devices", "x")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--devices" in err
    code, out, err = _refused(tmp_path, capsys, monkeypatch, "sweep", str(spec), "--devices", "0,1", "--dry-run")
    assert code == 0 and "worker k on CUDA device [0, 1][k % 2]" in out, out + err
