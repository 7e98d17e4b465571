"""Per-iteration rows -> the benchmark's JSON document, the printed table and the JSON file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.bench.workload import (
    BATCH,
    EPOCHS,
    FLOP_FORMULA,
    MINIBATCHES,
    PROMPT_TOKENS,
    RESPONSE_TOKENS,
    SIZES,
    VARIANTS,
    flops_per_iteration,
    matmul_params,
    uses_bf16,
    uses_shared_trunk,
)

ENV_KEYS = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "MKL_NUM_THREADS", "LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_")
RATIO_KEYS = ("iterations_per_s", "generated_tokens_per_s", "gflops", "peak_rss_mb")


def summarise(child: dict[str, Any], size: str, vocab: int, peak: float, shared_trunk: bool = False) -> dict[str, Any]:
    """Per-iteration rows -> rates, time split (seconds per iteration and shares), FLOP rates."""
    rows = child["rows"]
    wall = sum(r["wall_s"] for r in rows)
    n = len(rows)
    split = {k: sum(r[f"{k}_s"] for r in rows) / n for k in ("generation", "scoring", "update")}
    per_it = wall / n
    split["other"] = max(0.0, per_it - sum(split.values()))
    mean_len = sum(r["tokens"] for r in rows) / n / BATCH
    flops = flops_per_iteration(size, vocab, mean_len, shared_trunk)
    gflops = flops["total"] * n / wall / 1e9
    return {
        "iterations": n,
        "iterations_per_s": n / wall,
        "seconds_per_iteration": per_it,
        # CPU seconds of the whole process per iteration: robust to a loaded machine at 1 thread
        "cpu_seconds_per_iteration": sum(r["cpu_s"] for r in rows) / n,
        "generated_tokens_per_s": sum(r["tokens"] for r in rows) / wall,
        "mean_response_tokens": mean_len,
        "flops_per_iteration": flops,
        "time_s": split,
        "time_share": {k: v / per_it for k, v in split.items()},
        "peak_rss_mb": child["peak_rss_mb"],
        "gflops": gflops,
        "peak_share": gflops / peak,
        "threads": child["threads"],
        "iteration_s": [r["wall_s"] for r in rows],
    }


def median_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat with the median iterations/s (a real run, not a mix of runs)."""
    ordered = sorted(results, key=lambda r: r["iterations_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def _results(runs: dict[str, list[dict[str, Any]]], size: str, vocab: int, peak: float, variant: str) -> dict[str, Any]:
    """impl -> its median repeat's summary, with every repeat's iterations/s."""
    results = {}
    for impl, children in runs.items():
        shared = impl == "custom" and uses_shared_trunk(variant)
        summaries = [summarise(c, size, vocab, peak, shared) for c in children]
        results[impl] = median_result(summaries)
        results[impl]["repeats_iterations_per_s"] = sorted(r["iterations_per_s"] for r in summaries)
    return results


def document(
    *, size: str, variant: str, iterations: int, warmup: int, repeats: int, threads: int, vocab: int,
    runs: dict[str, list[dict[str, Any]]], peaks: list[dict[str, float]], load_before: float,
) -> dict[str, Any]:
    """The JSON document: workload, FLOP model, the measured peak, per-implementation results, ratios."""
    import torch
    import transformers
    import trl

    by_kernel = {k: max(p[k] for p in peaks) for k in peaks[0]}
    peak = max(by_kernel.values())
    results = _results(runs, size, vocab, peak, variant)
    n_lm, n_cls = matmul_params(size, vocab)
    doc: dict[str, Any] = {
        "size": size,
        "variant": {"name": variant, "equal_math": variant == "equal", "custom_overrides": VARIANTS[variant],
                    "trl_bf16": uses_bf16(variant)},
        "workload": {
            **SIZES[size], "vocab": vocab, "batch": BATCH, "prompt_tokens": PROMPT_TOKENS,
            "response_tokens": RESPONSE_TOKENS, "epochs": EPOCHS, "minibatches": MINIBATCHES, "dtype": "float32",
            "threads": threads, "iterations": iterations, "warmup": warmup, "repeats": repeats,
            "matmul_params_lm": n_lm, "matmul_params_classifier": n_cls,
        },
        "flops_per_iteration": flops_per_iteration(size, vocab),  # at the full response length
        "flop_formula": FLOP_FORMULA,
        "matmul_peak_gflops": peak,
        "matmul_peak_by_kernel": by_kernel,
        "results": results,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        # a busy machine slows both sides unevenly (2-thread OpenMP teams suffer most): say how busy it was
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1m_before": load_before,
            "loadavg_1m_after": os.getloadavg()[0],
            "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
        },
    }
    if "trl" in results:
        c, t = results["custom"], results["trl"]
        doc["ratio_custom_over_trl"] = {k: c[k] / t[k] for k in RATIO_KEYS}
        # TRL's CPU seconds per iteration over custom's: the speed-up in work done, robust to a busy machine
        doc["ratio_custom_over_trl"]["cpu_time_speedup"] = t["cpu_seconds_per_iteration"] / c["cpu_seconds_per_iteration"]
    return doc


def _title(doc: dict[str, Any]) -> str:
    w, v = doc["workload"], doc["variant"]
    title = (f"ppo-harness bench {doc['size']}: GPT-2 {w['n_layer']}x{w['n_embd']}, batch {w['batch']}, "
             f"{w['epochs']}x{w['minibatches']} PPO, {w['threads']} threads, fp32 matmul peak "
             + " / ".join(f"{k} {x:.0f}" for k, x in doc["matmul_peak_by_kernel"].items()) + " GFLOP/s")
    if not v["equal_math"]:
        switches = ", ".join(f"{k}={x}" for k, x in v["custom_overrides"].items())
        title += f"\nvariant {v['name']} ({switches}): changes the math, not the equal-math figure"
    return title


def print_table(doc: dict[str, Any]) -> None:
    """The results as a rich table: one column per implementation, and custom / trl when both ran."""
    from rich.console import Console
    from rich.table import Table

    res = doc["results"]
    impls = list(res)
    table = Table(title=_title(doc))
    table.add_column("metric")
    for impl in impls:
        table.add_column(impl, justify="right")
    ratio = doc.get("ratio_custom_over_trl", {})
    if ratio:
        table.add_column("custom / trl", justify="right")

    def row(label: str, key: str | None, fmt: str, getter) -> None:
        cells = [fmt.format(getter(res[i])) for i in impls]
        if ratio:
            cells.append(f"{ratio[key]:.2f}x" if key in ratio else "")
        table.add_row(label, *cells)

    row("iterations/s", "iterations_per_s", "{:.2f}", lambda r: r["iterations_per_s"])
    row("generated tokens/s", "generated_tokens_per_s", "{:,.0f}", lambda r: r["generated_tokens_per_s"])
    row("  mean response tokens", None, "{:.1f}", lambda r: r["mean_response_tokens"])
    for part in ("generation", "scoring", "update", "other"):
        row(
            f"  {part} s/it (share)" if part != "scoring" else "  scoring+ref/value s/it (share)",
            None,
            "{}",
            lambda r, p=part: f"{r['time_s'][p]:.3f} ({r['time_share'][p]:.0%})",
        )
    row("CPU s/it (all threads)", "cpu_time_speedup", "{:.3f}", lambda r: r["cpu_seconds_per_iteration"])
    row("peak RSS MB", "peak_rss_mb", "{:.0f}", lambda r: r["peak_rss_mb"])
    row("GFLOP/s", "gflops", "{:.1f}", lambda r: r["gflops"])
    row("share of matmul peak", None, "{:.1%}", lambda r: r["peak_share"])
    Console().print(table)


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
