"""Findings: plain sentences generated from a sweep's numbers (never hard-coded conclusions).

Each function looks at the tidy frames and the summary tables and says what the numbers say,
with the interval that qualifies it: which level of each factor is best and whether the CIs
separate it from the next, which advantage estimator has the lower gradient variance and by
what factor, where gold and proxy reward part ways, and how custom PPO compares with TRL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from reports import stats
from reports.stats import Interval

# Over-optimisation: gold peaked before the last evaluation and then lost at least this share
# of its gain over the initial policy, while the proxy reward was still rising.
OVEROPT_DROP = 0.1


def findings(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    factors: Sequence[str],
    table: pd.DataFrame,
    poi: pd.DataFrame,
    excluded: dict[str, int] | None = None,
) -> list[str]:
    """All findings, in reading order. ``table`` from ``stats.summarise_factors``, ``poi`` from ``stats.poi_table``."""
    out = [coverage(runs, excluded or {})]
    out += [s for s in [small_samples(table, runs)] if s]
    out += [s for f in factors if (s := best_level(table, f, "eval/gold", "final gold reward"))]
    out += [s for s in [kl_driver(table, factors)] if s]
    out += [s for s in [variance_by_advantage(runs)] if s]
    out += [s for s in [variance_by_batch(runs)] if s]
    out += poi_sentences(poi)
    out += [s for s in [over_optimisation(runs, curves, factors)] if s]
    out += [s for s in [custom_vs_trl(runs)] if s]
    return out


def _iv(row: pd.Series) -> Interval:
    return Interval(
        float(row["iqm"]), float(row["ci_low"]), float(row["ci_high"]), int(row["n"]), str(row["note"])
    )


def _lv(v) -> str:
    return f"{float(v):g}" if isinstance(v, float | np.floating) else str(v)


def coverage(runs: pd.DataFrame, excluded: dict[str, int]) -> str:
    cells = runs.groupby("cell").size() if "cell" in runs and len(runs) else pd.Series([len(runs)])
    lo, hi = int(cells.min()), int(cells.max())
    seeds = f"{lo} seed{'s' if lo != 1 else ''}" if lo == hi else f"{lo} to {hi} seeds"
    s = f"The report covers {len(runs)} finished runs in {len(cells)} sweep cells ({seeds} per cell)."
    if excluded:
        parts = [f"{n} {status.lower()}" for status, n in sorted(excluded.items())]
        s += f" Left out: {', '.join(parts)} child run{'s' if sum(excluded.values()) != 1 else ''}."
    return s


def best_level(table: pd.DataFrame, factor: str, metric: str, what: str, higher: bool = True) -> str | None:
    """'<factor> = <level> gives the highest <what>: IQM [CI] vs ... for the next best; CIs (do not) overlap.'"""
    t = table[(table["factor"] == factor) & (table["metric"] == metric)].dropna(subset=["iqm"])
    if len(t) < 2:
        return None
    t = t.sort_values("iqm", ascending=not higher)
    best, nxt = t.iloc[0], t.iloc[1]
    a, b = _iv(best), _iv(nxt)
    word = "highest" if higher else "lowest"
    if a.degenerate and b.degenerate:
        verdict = "with one run per level there is no interval, so this is not evidence of a difference"
    elif a.overlaps(b):
        verdict = "the 95% CIs overlap, so this sweep does not separate them"
    else:
        verdict = "the 95% CIs do not overlap"
    return (
        f"{factor} = {_lv(best['level'])} gives the {word} {what}: IQM {a.fmt()} against {b.fmt()} "
        f"for {factor} = {_lv(nxt['level'])}, the next best; {verdict}."
    )


def kl_driver(table: pd.DataFrame, factors: Sequence[str]) -> str | None:
    """The factor whose levels spread final KL the most (ratio of largest to smallest IQM)."""
    t = table[(table["metric"] == "eval/kl") & table["factor"].isin(list(factors))].dropna(subset=["iqm"])
    best = None
    for f, g in t.groupby("factor", sort=False):
        if len(g) < 2:
            continue
        lo, hi = g.loc[g["iqm"].idxmin()], g.loc[g["iqm"].idxmax()]
        spread = hi["iqm"] - lo["iqm"]
        if best is None or spread > best[0]:
            best = (spread, f, lo, hi)
    if best is None:
        return None
    _, f, lo, hi = best
    return (
        f"Final KL to the reference depends most on {f}: IQM {_iv(lo).fmt()} nats at {f} = {_lv(lo['level'])} "
        f"and {_iv(hi).fmt()} nats at {f} = {_lv(hi['level'])}."
    )


def _advantage_column(runs: pd.DataFrame) -> str | None:
    for col in ("advantage", "advantage.level"):
        if col in runs and runs[col].nunique() >= 2:
            return col
    return None


def variance_by_advantage(runs: pd.DataFrame, metric: str = "grad/rel_variance") -> str | None:
    """Which advantage estimator has the lower gradient variance, by what factor, with the ratio's CI."""
    col = _advantage_column(runs)
    if col is None or metric not in runs:
        return None
    r = runs[np.isfinite(runs[metric])]
    frames = {k: g for k, g in r.groupby(col) if len(g)}
    if len(frames) < 2:
        return None
    order = sorted(frames, key=lambda k: stats.iqm(frames[k][metric]))
    low, high = order[0], order[-1]
    ratio = stats.ratio_ci(stats.by_cell(frames[high], metric), stats.by_cell(frames[low], metric))
    # the same stratified intervals as the tables and figure 4
    a, b = (
        stats.bootstrap_ci(stats.by_cell(frames[low], metric)),
        stats.bootstrap_ci(stats.by_cell(frames[high], metric)),
    )
    if ratio.degenerate:
        verdict = "too few runs for an interval on the ratio"
    elif ratio.low > 1:
        verdict = f"ratio {ratio.fmt(2)} (95% stratified bootstrap CI), so the reduction is clear"
    else:
        verdict = f"ratio {ratio.fmt(2)} (95% stratified bootstrap CI) includes 1, so the difference is not reliable"
    return (
        f"{low} advantages have {stats.fmt_number(ratio.point, 2)}x lower relative gradient variance "
        f"(final probe) than {high}: IQM {a.fmt()} against {b.fmt()}; {verdict}."
    )


def variance_by_batch(runs: pd.DataFrame, metric: str = "grad/rel_variance") -> str | None:
    """Gradient variance at the largest vs the smallest batch, against the 1/B expectation."""
    col = "rollout.batch_size"
    if col not in runs or metric not in runs or runs[col].nunique() < 2:
        return None
    r = runs[np.isfinite(runs[metric])]
    sizes = sorted(r[col].dropna().unique())
    if len(sizes) < 2:
        return None
    small, big = sizes[0], sizes[-1]
    ratio = stats.ratio_ci(stats.by_cell(r[r[col] == small], metric), stats.by_cell(r[r[col] == big], metric))
    if not np.isfinite(ratio.point):
        return None
    return (
        f"Relative gradient variance at batch size {_lv(big)} is {stats.fmt_number(ratio.point, 2)}x lower than "
        f"at {_lv(small)} (95% CI of the ratio [{stats.fmt_number(ratio.low, 2)}, "
        f"{stats.fmt_number(ratio.high, 2)}]); averaging over more samples alone (1/B) "
        f"would give {stats.fmt_number(float(big) / float(small), 2)}x."
    )


def poi_sentences(poi: pd.DataFrame, what: str = "final gold reward") -> list[str]:
    """One sentence per unordered pair of levels, in the direction with P >= 0.5."""
    out = []
    if poi is None or poi.empty:
        return out
    seen = set()
    for row in poi.sort_values("poi", ascending=False).itertuples(index=False):
        pair = frozenset((row.a, row.b))
        if pair in seen or not np.isfinite(row.poi):
            continue
        seen.add(pair)
        how = (
            "pooled over all runs (no sweep cell ran both)"
            if row.pooled
            else f"averaged over {row.n_strata} matched cell{'s' if row.n_strata != 1 else ''}"
        )
        strength = "" if abs(row.poi - 0.5) >= 0.25 else " (close to a coin flip)"
        out.append(
            f"Probability of improvement on {what}: P({_lv(row.a)} > {_lv(row.b)}) = {row.poi:.2f}, {how}{strength}."
        )
    return out


def overoptimised_runs(curves: pd.DataFrame) -> pd.DataFrame:
    """Per run: peak step of gold, gold gain and drop after the peak, proxy rise after it, flag."""
    cols = ["run_id", "peak_step", "gain", "drop", "proxy_rise", "overoptimised"]
    if curves is None or curves.empty:
        return pd.DataFrame(columns=cols)
    gold = curves[curves["metric"] == "eval/gold"]
    proxy = curves[curves["metric"] == "eval/proxy"]
    rows = []
    for rid, g in gold.groupby("run_id"):
        g = g.sort_values("step")
        v = g["value"].to_numpy(float)
        if v.size < 3:
            continue
        k = int(np.argmax(v))
        gain, drop = v[k] - v[0], v[k] - v[-1]
        p = proxy[proxy["run_id"] == rid].set_index("step")["value"]
        peak_step, last_step = int(g["step"].iloc[k]), int(g["step"].iloc[-1])
        rise = float(p.get(last_step, np.nan) - p.get(peak_step, np.nan)) if len(p) else np.nan
        flag = bool(
            k < v.size - 1 and gain > 0 and drop >= OVEROPT_DROP * gain and np.isfinite(rise) and rise > 0
        )
        rows.append([rid, peak_step, gain, drop, rise, flag])
    return pd.DataFrame(rows, columns=cols)


def over_optimisation(runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str]) -> str | None:
    o = overoptimised_runs(curves)
    if o.empty or o["proxy_rise"].isna().all():
        return None
    rule = (
        f"gold reward peaked before the last evaluation and then lost at least {OVEROPT_DROP:.0%} "
        "of its gain while the proxy reward kept rising"
    )
    bad = o[o["overoptimised"]]
    if bad.empty:
        return f"No run over-optimised the proxy reward (criterion: {rule})."
    s = f"{len(bad)} of {len(o)} runs over-optimised the proxy reward: their {rule}."
    hue = next((f for f in ("kl.coef", *factors) if f in runs and runs[f].nunique() >= 2), None)
    if hue:
        per = runs.set_index("run_id").loc[bad["run_id"], hue].value_counts()
        total = runs[hue].value_counts()
        parts = [f"{n} of {int(total.get(lv, 0))} at {_lv(lv)}" for lv, n in per.sort_index().items()]
        s += f" By {hue}: {', '.join(parts)}."
    return s


def custom_vs_trl(runs: pd.DataFrame) -> str | None:
    m = stats.matched(runs, "impl", ["custom", "trl"])
    if m.empty or "eval/gold" not in m:
        return None
    key = m["cell"].map(lambda c: ", ".join(p for p in str(c).split(", ") if not p.startswith("impl=")))
    c, t = m[m["impl"] == "custom"], m[m["impl"] == "trl"]
    a, b = (
        stats.bootstrap_ci(stats.by_cell(c, "eval/gold")),
        stats.bootstrap_ci(stats.by_cell(t, "eval/gold")),
    )
    verdict = "the 95% CIs overlap" if a.overlaps(b) else "the 95% CIs do not overlap"
    s = (
        f"At the {key.nunique()} settings both implementations ran, custom PPO reaches final gold reward "
        f"IQM {a.fmt()} and TRL {b.fmt()}; {verdict}."
    )
    if "perf/tokens_per_s" in m and np.isfinite(m["perf/tokens_per_s"]).any():
        r = stats.ratio_ci(stats.by_cell(c, "perf/tokens_per_s"), stats.by_cell(t, "perf/tokens_per_s"))
        if np.isfinite(r.point):
            s += (
                f" Custom runs at {stats.fmt_number(r.point, 2)}x TRL's throughput in tokens/s "
                f"(95% CI of the ratio [{stats.fmt_number(r.low, 2)}, {stats.fmt_number(r.high, 2)}])."
            )
    return s


def small_samples(table: pd.DataFrame, runs: pd.DataFrame | None = None) -> str | None:
    """Say when intervals are degenerate or optimistic because levels or cells have few seeds."""
    t = table[table["metric"] == "eval/gold"] if "metric" in table else table
    if t.empty:
        return None
    n_min = int(t["n"].min())
    if n_min <= 2:
        few = t[t["n"] == n_min]
        names = ", ".join(f"{r.factor} = {_lv(r.level)}" for r in few.itertuples(index=False))
        if n_min <= 1:
            return f"Some levels have a single run ({names}): their intervals are degenerate; add seeds."
        return f"Some levels have only two runs ({names}): their intervals are crude; add seeds."
    if runs is not None and "cell" in runs and len(runs):
        per_cell = int(runs.groupby("cell").size().min())
        if per_cell < 3:
            return (
                f"Some sweep cells have only {per_cell} seed{'s' if per_cell != 1 else ''}: bootstrap intervals "
                "resampled within cells understate the seed-to-seed spread, so read non-overlapping CIs as "
                "tentative and add seeds before drawing conclusions."
            )
    return None
