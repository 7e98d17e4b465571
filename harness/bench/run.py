"""``run_bench``: validate the options, run the implementations interleaved, print and write the figures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.bench.child import spawn
from harness.bench.peak import matmul_peak_gflops
from harness.bench.results import document, print_table, write_json
from harness.bench.workload import SIZES, VARIANTS, make_tokenizer
from harness.errors import InputError

REFERENCES = ("trl",)  # --vs


def check_options(*, size: str, vs: str | None, iterations: int, warmup: int, repeats: int, threads: int,
                  variant: str) -> None:
    """ValueError (one line, naming the option) for the first invalid option."""
    for option, value, known in (("--size", size, sorted(SIZES)), ("--variant", variant, list(VARIANTS)),
                                 ("--vs", vs, REFERENCES)):
        if value is not None and value not in known:
            raise ValueError(f"{option} '{value}': expected one of {', '.join(known)}")
    for option, value, least in (("--iterations", iterations, 1), ("--warmup", warmup, 0),
                                 ("--repeats", repeats, 1), ("--threads", threads, 1)):
        if value < least:
            raise ValueError(f"{option} must be >= {least}")


def check_json_path(json: Path | None) -> None:
    """ValueError (one line naming --json) when the JSON file could not be written: checked before any work."""
    if json is None:
        return
    path = Path(json)
    if path.is_dir():
        raise ValueError(f"--json '{path}': is a folder, expected a file")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ValueError(f"--json '{path}': a symbolic link or not a regular file; give a new file's path")
    if path.exists() and path.stat().st_size and not is_bench_json(path):
        raise ValueError(f"--json '{path}': exists and is not a bench result; the harness never overwrites a "
                         "file it did not write")
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"--json '{path}': cannot be created, '{ancestor}' is a file")


def is_bench_json(path: Path) -> bool:
    """A JSON document ``bench --json`` wrote (its FLOP model and measured peak keys)."""
    import json as js

    try:
        doc = js.loads(path.read_bytes()[: 1 << 24])
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"flop_formula", "matmul_peak_gflops", "workload"} <= doc.keys()


def measure(size: str, iterations: int, warmup: int, threads: int, impls: list[str], repeats: int,
            variant: str) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, float]]]:
    """Each implementation ``repeats`` times in a fresh child, interleaved (custom, trl, custom, ...);
    the matmul peak before the first child and after every one. (children by impl, peaks)"""
    runs: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
    peaks = [matmul_peak_gflops(threads)]
    for _ in range(repeats):
        for impl in impls:
            runs[impl].append(spawn(impl, size, iterations, warmup, threads, variant))
            peaks.append(matmul_peak_gflops(threads))
    return runs, peaks


def run_bench(
    *, size: str = "S", vs: str | None = None, iterations: int = 5, warmup: int = 1, repeats: int = 1,
    threads: int = 2, variant: str = "equal", json: Path | None = None,
) -> dict[str, Any]:
    """Benchmark the custom core (and TRL's PPOTrainer with ``vs="trl"``); print the table, write
    ``json`` if given; the result document. An invalid option raises ``BenchInputError`` before any work;
    a failed child ``RuntimeError``; JSON that could not be written ``OSError`` (naming --json)."""
    try:
        check_options(size=size, vs=vs, iterations=iterations, warmup=warmup, repeats=repeats, threads=threads,
                      variant=variant)
        check_json_path(json)
    except ValueError as e:
        raise BenchInputError(str(e)) from None
    impls = ["custom", "trl"] if vs == "trl" else ["custom"]
    load_before = os.getloadavg()[0]
    runs, peaks = measure(size, iterations, warmup, threads, impls, repeats, variant)
    doc = document(size=size, variant=variant, iterations=iterations, warmup=warmup, repeats=repeats,
                   threads=threads, vocab=len(make_tokenizer()), runs=runs, peaks=peaks, load_before=load_before)
    print_table(doc)
    if json is not None:
        try:
            write_json(doc, Path(json))
        except OSError as e:
            raise OSError(f"--json '{json}': not written ({e.strerror or e})") from None
    return doc


class BenchInputError(InputError):
    """An invalid benchmark option: one line naming it."""
