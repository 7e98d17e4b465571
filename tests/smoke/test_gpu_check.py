"""The prepared GPU check, run on the CPU with its 2-layer model: it builds the Llama, trains, prints JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_on_the_cpu_with_a_tiny_llama(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.bench.gpu_check", "--tiny", "--device", "cpu",
                           "--iterations", "1", "--impls", "custom,custom-fsdp"], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["model"] == "llama" and 50_000 < lines[0]["parameters"] < 200_000
    for run, impl in zip(lines[1:], ("custom", "custom-fsdp"), strict=True):  # whole, then sharded (Llama blocks)
        assert run["impl"] == impl and "error" not in run, run
        assert run["tokens_per_s"] > 0 and run["max_memory_gb"] is None  # no CUDA here: no peak logged
    assert not list(tmp_path.iterdir())  # the model and its runs lived in a temporary folder
