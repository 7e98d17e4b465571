"""Custom core vs TRL's PPOTrainer at equal settings over N seeds -> a side-by-side table with CIs.

Both implementations get the same RunConfig (only ``impl`` differs), run one after the other
for every seed, and log to MLflow as ordinary runs tagged ``compare=<id>``. Per implementation
the table gives, over seeds, the mean and its 95% Student-t interval (reports.stats.mean_interval,
whose coverage a test measures) of the final ``eval/gold`` and ``eval/kl`` and of the run's mean
``perf/tokens_per_s``, and says whether the two CIs overlap.
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

IMPLS = ("custom", "trl")
# (metric, how one run is summarised): the final evaluation, or the mean over iterations
METRICS: tuple[tuple[str, str], ...] = (("eval/gold", "final"), ("eval/kl", "final"), ("perf/tokens_per_s", "mean"))


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per (impl, seed): run_id, seconds, one column per metric
    table: pd.DataFrame  # tidy: metric, impl, n, point, low, high (one row per metric x impl)
    settings: dict[str, Any]  # the shared config overrides, task, seeds

    def overlap(self, metric: str) -> bool:
        rows = {r.impl: r for r in self.table[self.table.metric == metric].itertuples()}
        a, b = rows["custom"], rows["trl"]
        return not (a.high < b.low or b.high < a.low)

    def markdown(self) -> str:
        """The side-by-side table (mean [95% CI] over seeds) with the settings above it."""
        from reports.stats import Interval

        s = self.settings
        lines = [
            f"custom vs TRL on `{s['task']}`, seeds {', '.join(map(str, s['seeds']))}; "
            f"overrides: {', '.join(f'{k}={v}' for k, v in s['overrides'].items()) or 'none (defaults)'}",
            "",
            "| metric | custom: mean [95% CI] | TRL: mean [95% CI] | CIs overlap |",
            "|---|---|---|---|",
        ]
        for metric, how in METRICS:
            cells = []
            for impl in IMPLS:
                r = self.table[(self.table.metric == metric) & (self.table.impl == impl)].iloc[0]
                cells.append(Interval(r.point, r.low, r.high, int(r.n)).fmt(3))
            label = metric if how == "final" else f"{metric} (run mean)"
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | {'yes' if self.overlap(metric) else 'NO'} |")
        per_run = self.runs.groupby("impl")["seconds"].mean()
        lines += ["", "wall time per run (s, mean over seeds): "
                  + ", ".join(f"{impl} {per_run.get(impl, float('nan')):.0f}" for impl in IMPLS)]
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


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Tidy table of the mean + 95% t-interval per (metric, impl) over seeds (reports.stats.mean_interval)."""
    from reports.stats import mean_interval

    rows = []
    for metric, _ in METRICS:
        for impl in IMPLS:
            vals = runs.loc[runs.impl == impl, metric].to_numpy(dtype=float)
            ci = mean_interval(vals[np.isfinite(vals)])
            rows.append({"metric": metric, "impl": impl, "n": ci.n, "point": ci.point, "low": ci.low,
                         "high": ci.high, "note": ci.note})
    return pd.DataFrame(rows)


def comparable_config(task: str, overrides: dict[str, Any] | None, seed: int, impl: str) -> RunConfig:
    """The RunConfig of one run: the shared overrides + task, seed, impl (ConfigError when invalid)."""
    return build_config(overrides={**(overrides or {}), "task.name": task, "seed": seed, "impl": impl})


# keys compare sets itself for every run: an override of one would be silently replaced
OWN_KEYS = {"impl": "compare runs both implementations, custom and trl", "seed": "compare sets it from --seeds",
            "task.name": "compare sets it from --task"}
MAX_SEEDS = 1000  # two runs per seed; a typo like --seeds 50000 is refused, not queued


def check_comparable(task: str, seeds: int | Sequence[int], overrides: dict[str, Any] | None) -> list[int]:
    """The seed list, after checking that every run's config is valid and expressible by TRL.

    Raises ConfigError / ValueError with one line naming the offending key or option.
    """
    from baselines.trl_ppo import check_expressible

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
        comparable_config(task, overrides, seed, "custom")
        check_expressible(comparable_config(task, overrides, seed, "trl"))
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
) -> Comparison:
    """Train custom and TRL for every seed (sequentially), tabulate, save under ``out`` if given.

    seeds: N (seeds 0..N-1) or explicit seeds. overrides: dotted keys shared by both impls.
    Raises ConfigError / ValueError (one line naming the key) before any run when the settings are
    invalid or not expressible by TRL.
    """
    from harness.run import execute

    seed_list = check_comparable(task, seeds, overrides)
    overrides = dict(overrides or {})
    tag = f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = []
    total = len(seed_list) * len(IMPLS)
    for seed in seed_list:
        for impl in IMPLS:
            cfg = comparable_config(task, overrides, seed, impl)
            t0 = time.perf_counter()
            result = execute(cfg, store, experiment=experiment, run_name=f"compare-{task}-{impl}-s{seed}",
                             tags={"compare": tag}, progress=progress)
            seconds = time.perf_counter() - t0
            row = {"impl": impl, "seed": seed, "run_id": result.run_id, "seconds": seconds}
            row.update({m: run_value(result.history, m, how) for m, how in METRICS})
            rows.append(row)
            echo(f"[{len(rows)}/{total}] {impl:<6} seed {seed}: eval/gold {row['eval/gold']:+.3f}  "
                 f"eval/kl {row['eval/kl']:.3f}  {row['perf/tokens_per_s']:.0f} tok/s  ({seconds:.0f} s)")
    runs = pd.DataFrame(rows)
    comparison = Comparison(runs=runs, table=summarise(runs),
                            settings={"task": task, "seeds": seed_list, "overrides": overrides, "compare": tag})
    if out is not None:
        comparison.save(Path(out))
    return comparison
