"""Shared fixtures: a persistent model cache for the test session and the tiniest config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Models the harness builds (SFT policy, proxy RM) are cached across test sessions;
# subprocesses inherit the variable. A clean clone builds them once (~1 min).
os.environ.setdefault("PPO_HARNESS_CACHE", str(ROOT / ".cache" / "test-models"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tiniest real configuration: a few iterations of every loop step.
TINY = {
    "train.iterations": 2,
    "rollout.batch_size": 8,
    "rollout.group_size": 2,
    "ppo.minibatches": 2,
    "ppo.epochs": 1,
    "eval.prompts": 8,
    "eval.every": 1,
    "task.response_length": 6,
    "model.rm_pairs": 64,
}


@pytest.fixture
def tiny() -> dict:
    return dict(TINY)


def tiny_args(extra: dict | None = None) -> list[str]:
    """TINY as repeated --set arguments for the CLI."""
    out = []
    for k, v in {**TINY, **(extra or {})}.items():
        out += ["--set", f"{k}={v}"]
    return out


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``ppo-harness ARGS`` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def main_exit(capsys, *argv: str) -> tuple[object, str, str]:
    """(exit code, stdout, stderr) of ``ppo-harness ARGS`` run in this process: ``harness.cli.main(argv)``, the
    function the installed script calls, without the seconds of imports a fresh Python costs."""
    from harness.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (``tests/servers.py``), started; one per test module.
    Skips, saying why, without Debian's PostgreSQL binaries (``.ci/run`` installs them as root)."""
    from tests.servers import Postgres

    server, why = Postgres.find()
    if server is None:
        pytest.skip(f"PostgreSQL test skipped: {why}")
    server.start()
    try:
        yield server
    finally:
        server.destroy()
