"""One implementation in a fresh process, so that peak RSS is that implementation's own.

The parent calls ``spawn``; the child is ``python -m harness.bench IMPL OUT ...`` (``__main__.py``),
a hidden entry point with a minimal parser that runs one implementation and writes its rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.bench.workload import IMPLS, SIZES, VARIANTS


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_child(impl: str, size: str, iterations: int, warmup: int, threads: int, variant: str) -> dict[str, Any]:
    """One implementation in this (fresh) process; per-iteration rows + peak RSS."""
    if impl == "custom":
        from harness.bench.custom_loop import run_custom as run
    else:
        from harness.bench.trl_loop import run_trl as run
    out = run(size, iterations, warmup, threads, variant)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def spawn(impl: str, size: str, iterations: int, warmup: int, threads: int, variant: str) -> dict[str, Any]:
    """``run_child`` in a subprocess; RuntimeError with the child's output tail when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "child.json"
        cmd = [sys.executable, "-m", "harness.bench", impl, str(path), "--size", size, "--iterations", str(iterations),
               "--warmup", str(warmup), "--threads", str(threads), "--variant", variant]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError(f"bench child '{impl}' failed (exit {proc.returncode}):\n" + "\n".join(tail))
        return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    """The child's entry point (not a user command: ``ppo-harness bench`` validates and spawns it)."""
    p = argparse.ArgumentParser(prog="python -m harness.bench", description="one benchmark child (internal)")
    p.add_argument("impl", choices=IMPLS)
    p.add_argument("out", type=Path, help="write the rows and peak RSS here (JSON)")
    p.add_argument("--size", choices=sorted(SIZES), required=True)
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--variant", choices=list(VARIANTS), required=True)
    a = p.parse_args(argv)
    out = run_child(a.impl, a.size, a.iterations, a.warmup, a.threads, a.variant)
    a.out.write_text(json.dumps(out))
    return 0
