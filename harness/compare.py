"""Implementations at equal settings over N seeds -> a side-by-side table with CIs.

Every implementation named (``harness.impls.IMPLEMENTATIONS`` keys; default custom and trl) gets the
same RunConfig (only ``impl`` differs), all of them run one after the other for every seed, and
each run logs to MLflow as an ordinary run tagged ``compare=<id>``. Per implementation the table
gives, over seeds, the mean and its 95% Student-t interval (reports.stats.mean_interval, whose
coverage a test measures) of the final ``eval/gold`` and ``eval/kl`` and of the run's mean
``perf/tokens_per_s``; each implementation after the first is set against the first: whether
the two CIs overlap. The runs are matched by seed (same initial models, prompts and generator
seed), and the per-run table keeps them, so paired differences can be taken from runs.csv.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.config import RunConfig, build_config
from harness.impls import IMPLEMENTATIONS, check_expressible
from harness.schema import IMPLEMENTATIONS as SCHEMA_IMPLS

IMPLS = ("custom", "trl")  # the default comparison: the custom core against TRL's PPOTrainer
# (metric, how one run is summarised): the final evaluation, or the mean over iterations
METRICS: tuple[tuple[str, str], ...] = (("eval/gold", "final"), ("eval/kl", "final"), ("perf/tokens_per_s", "mean"))


def parse_impls(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"custom,trl-grpo"`` -> ("custom", "trl-grpo"): at least two known, distinct implementations.

    Raises ValueError naming --impl (an unknown name, a duplicate, fewer than two).
    """
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    for n in names:
        if n not in IMPLEMENTATIONS:
            raise ValueError(f"--impl: unknown implementation {n!r}; expected a comma list of {sorted(IMPLEMENTATIONS)}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"--impl: {dup!r} is named twice")
    if len(names) < 2:
        raise ValueError(f"--impl: name at least two implementations to compare, got {','.join(names) or 'none'}")
    return tuple(names)


LABELS = {name: label for name, (label, _) in SCHEMA_IMPLS.items()}


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per (impl, seed): run_id, seconds, one column per metric
    table: pd.DataFrame  # tidy: metric, impl, n, point, low, high (one row per metric x impl)
    settings: dict[str, Any]  # the shared config overrides, task, seeds, impls (the first is the reference)

    @property
    def impls(self) -> tuple[str, ...]:
        return tuple(self.settings.get("impls", IMPLS))

    def overlap(self, metric: str, impl: str | None = None) -> bool:
        """Whether ``impl``'s CI (default: the second implementation's) overlaps the first's."""
        rows = {r.impl: r for r in self.table[self.table.metric == metric].itertuples()}
        a, b = rows[self.impls[0]], rows[impl or self.impls[1]]
        return not (a.high < b.low or b.high < a.low)

    def markdown(self) -> str:
        """The side-by-side table (mean [95% CI] over seeds) with the settings above it."""
        from reports.stats import Interval

        s, impls = self.settings, self.impls
        names = [LABELS.get(i, i) for i in impls]
        others = impls[1:]
        overlap_heads = (["CIs overlap"] if len(impls) == 2
                         else [f"{LABELS.get(i, i)} vs {names[0]}: CIs overlap" for i in others])
        lines = [
            f"{' vs '.join(names)} on `{s['task']}`, seeds {', '.join(map(str, s['seeds']))}; "
            f"overrides: {', '.join(f'{k}={v}' for k, v in s['overrides'].items()) or 'none (defaults)'}",
            "",
            "| metric | " + " | ".join(f"{n}: mean [95% CI]" for n in names) + " | " + " | ".join(overlap_heads) + " |",
            "|---" * (1 + len(impls) + len(overlap_heads)) + "|",
        ]
        for metric, how in METRICS:
            cells = []
            for impl in impls:
                r = self.table[(self.table.metric == metric) & (self.table.impl == impl)].iloc[0]
                cells.append(Interval(r.point, r.low, r.high, int(r.n)).fmt(3))
            cells += ["yes" if self.overlap(metric, i) else "NO" for i in others]
            label = metric if how == "final" else f"{metric} (run mean)"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        per_run = self.runs.groupby("impl")["seconds"].mean()
        lines += ["", "wall time per run (s, mean over seeds): "
                  + ", ".join(f"{impl} {per_run.get(impl, float('nan')):.0f}" for impl in impls)]
        return "\n".join(lines) + "\n"

    def save(self, out: Path) -> list[Path]:
        """compare.md, compare.csv (the tidy table) and runs.csv (per run) under ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "compare.md", out / "compare.csv", out / "runs.csv"]
        paths[0].write_text(self.markdown())
        self.table.to_csv(paths[1], index=False)
        self.runs.to_csv(paths[2], index=False)
        return paths


def run_value(history: dict[str, list[tuple[int, float]]], metric: str, how: str) -> float:
    """One run's number for the table: the last logged value, or the mean over iterations >= 1."""
    points = history.get(metric, [])
    if not points:
        return float("nan")
    if how == "final":
        return float(points[-1][1])
    vals = [v for step, v in points if step >= 1]
    return float(np.mean(vals)) if vals else float("nan")


def summarise(runs: pd.DataFrame, impls: Sequence[str] = IMPLS) -> pd.DataFrame:
    """Tidy table of the mean + 95% t-interval per (metric, impl) over seeds (reports.stats.mean_interval)."""
    from reports.stats import mean_interval

    rows = []
    for metric, _ in METRICS:
        for impl in impls:
            vals = runs.loc[runs.impl == impl, metric].to_numpy(dtype=float)
            ci = mean_interval(vals[np.isfinite(vals)])
            rows.append({"metric": metric, "impl": impl, "n": ci.n, "point": ci.point, "low": ci.low,
                         "high": ci.high, "note": ci.note})
    return pd.DataFrame(rows)


def comparable_config(task: str, overrides: dict[str, Any] | None, seed: int, impl: str) -> RunConfig:
    """The RunConfig of one run: the shared overrides + task, seed, impl (ConfigError when invalid)."""
    return build_config(overrides={**(overrides or {}), "task.name": task, "seed": seed, "impl": impl})


# keys compare sets itself for every run: an override of one would be silently replaced
OWN_KEYS = {"impl": "compare sets it from --impl", "seed": "compare sets it from --seeds",
            "task.name": "compare sets it from --task"}
MAX_SEEDS = 1000  # one run per implementation per seed; a typo like --seeds 50000 is refused, not queued


def check_comparable(task: str, seeds: int | Sequence[int], overrides: dict[str, Any] | None,
                     impls: Sequence[str] = IMPLS) -> list[int]:
    """The seed list, after checking that every run's config is valid and expressible by its implementation.

    Raises ConfigError / ValueError with one line naming the offending key or option.
    """
    impls = parse_impls(impls)
    for key in overrides or {}:
        if key in OWN_KEYS:
            raise ValueError(f"--set {key}: not allowed in compare ({OWN_KEYS[key]})")
    if isinstance(seeds, int) and seeds > MAX_SEEDS:
        raise ValueError(f"compare: --seeds must be at most {MAX_SEEDS}, got {seeds}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("compare: --seeds must be at least 1")
    # the runs of 0..N-1 differ only in their seed: the first and the last stand for the range
    for seed in dict.fromkeys((seed_list[0], seed_list[-1]) if isinstance(seeds, int) else seed_list):
        for impl in impls:
            check_expressible(comparable_config(task, overrides, seed, impl))
    return seed_list


def compare(
    task: str,
    seeds: int | Sequence[int],
    overrides: dict[str, Any] | None,
    store,
    *,
    experiment: str = "compare",
    out: Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    impls: Sequence[str] = IMPLS,
) -> Comparison:
    """Train every implementation of ``impls`` for every seed (sequentially), tabulate, save under ``out``.

    seeds: N (seeds 0..N-1) or explicit seeds. overrides: dotted keys shared by all impls.
    impls: at least two distinct ``harness.impls.IMPLEMENTATIONS`` keys; the first is the reference
    the others are set against. Raises ConfigError / ValueError (one line naming the key or --impl)
    before any run when the settings are invalid or not expressible by an implementation.
    """
    from harness.run import execute

    impls = parse_impls(impls)
    seed_list = check_comparable(task, seeds, overrides, impls)
    overrides = dict(overrides or {})
    from harness.config import task_label

    shown = task_label(comparable_config(task, overrides, seed_list[0], impls[0]))  # task.prompts: its data
    tag = f"{shown.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = []
    total = len(seed_list) * len(impls)
    for seed in seed_list:
        for impl in impls:
            cfg = comparable_config(task, overrides, seed, impl)
            t0 = time.perf_counter()
            result = execute(cfg, store, experiment=experiment, run_name=f"compare-{shown.split(':')[-1]}-{impl}-s{seed}",
                             tags={"compare": tag}, progress=progress)
            seconds = time.perf_counter() - t0
            row = {"impl": impl, "seed": seed, "run_id": result.run_id, "seconds": seconds}
            row.update({m: run_value(result.history, m, how) for m, how in METRICS})
            rows.append(row)
            echo(f"[{len(rows)}/{total}] {impl:<8} seed {seed}: eval/gold {row['eval/gold']:+.3f}  "
                 f"eval/kl {row['eval/kl']:.3f}  {row['perf/tokens_per_s']:.0f} tok/s  ({seconds:.0f} s)")
    runs = pd.DataFrame(rows)
    comparison = Comparison(runs=runs, table=summarise(runs, impls),
                            settings={"task": shown, "seeds": seed_list, "overrides": overrides, "compare": tag,
                                      "impls": list(impls)})
    if out is not None:
        comparison.save(Path(out))
    return comparison
