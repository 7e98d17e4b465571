"""Factorial effects over matched cells, matched sample budgets, and gradient noise per run and level.

Pure: numpy, pandas, ``reports.stats`` and ``reports.labels``; no I/O, no plotting. Frames are those of
``reports.collect`` (``runs``: one row per run; ``curves``: long histories).

- Main effect of a factor, level a -> b: the mean over MATCHED cells (cells equal in every
  other factor, both levels present) of (cell mean at b - cell mean at a), cell mean = mean
  over seeds; Student's t-interval over those n matched differences. Factors with more than
  two levels: each level against the first (sorted) one.
  With a single matched cell (no other factor varies, e.g. a one-factor sweep or a zip group)
  the seeds are the replicates: Welch's t-interval of the difference of the two levels' means,
  and a call needs ``MIN_SEEDS`` runs per level instead of ``MIN_CELLS`` cells.
- Two-way interaction A x B (contrasts a0 -> a1, b0 -> b1): per matched quadruple (the four
  cells equal in every other factor), half the difference of A's effect at B's two levels,
  ((y11 - y01) - (y10 - y00)) / 2: the standard 2-level factorial AB contrast (Box, Hunter and
  Hunter); t-interval over the quadruples.
- Matched budgets: a factor whose levels see different numbers of episodes in otherwise equal
  cells (read from the runs' ``episodes``, not the factor's name) is compared at the last
  episode count every run reached, each run's curve linearly interpolated there.
- Gradient noise per run (``harness/ppo/variance.py`` keys): means over all of a run's
  probes; the run's noise scale B_simple = mean tr(Sigma) / mean signal (a ratio of means, as
  McCandlish et al. 2018 recommend), NaN ("unresolved") when the mean signal is <= 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from reports import factorial as F
from reports import stats
from reports.labels import ALL_RUNS, level_label
from reports.stats import Interval, finite_rows, sorted_levels

MIN_SEEDS = 5  # a finding calls a per-level difference only with at least this many runs per level
MIN_CELLS = 4  # ... and a main effect or interaction only over at least this many matched cells
TOP_INTERACTIONS = 3  # interactions are estimated among the factors with the largest |main effect|

EFFECT_COLUMNS = ["metric", "term", "effect", "factor", "level_a", "level_b", "estimate", "low", "high",
                  "n_matched", "n_runs", "over", "at", "note", "df", "p", "check_low", "check_high"]  # fmt: skip
# what an interval is taken over (the ``over`` column): matched cells' differences, the seeds of
# one cell (Welch), or every run (fixed effects: cell means, pooled within-cell variance)
CELLS, SEEDS, FIXED = "matched cells", "seeds", "cells and seeds"
MIN_DF = MIN_CELLS - 1  # a fixed-effects call needs as many error df as the matched-cell rule allows
# Per-run means over probes (columns added to ``runs`` by ``with_noise``).
SIGNAL, SAMPLE_VAR, BATCH_VAR, NOISE_SCALE, N_PROBES = (
    "noise/signal",
    "noise/sample_variance",
    "noise/batch_variance",
    "noise/noise_scale",
    "noise/n_probes",
)
PROBE_KEYS = {"grad/signal": SIGNAL, "grad/sample_variance": SAMPLE_VAR, "grad/batch_variance": BATCH_VAR}
BATCH = "rollout.batch_size"


# ---- matched cells -------------------------------------------------------------------------------


def _key(frame: pd.DataFrame, cols: Sequence[str]) -> pd.Series:
    """One text key per row naming its levels of ``cols`` ('' when there are none)."""
    if not cols or frame.empty:
        return pd.Series("", index=frame.index, dtype=object)
    return pd.Series(
        ["|".join(level_label(v) for v in row) for row in frame[list(cols)].itertuples(index=False)],
        index=frame.index,
        dtype=object,
    )


def _others(runs: pd.DataFrame, factors: Sequence[str], *exclude: str) -> list[str]:
    return [f for f in factors if f not in exclude and f in runs]


def matched_differences(
    runs: pd.DataFrame, factor: str, a, b, value: str, factors: Sequence[str]
) -> pd.Series:
    """Per matched cell: mean of ``value`` at ``factor`` = b minus its mean at ``factor`` = a.

    A matched cell is a combination of the other ``factors``' levels at which both levels ran;
    the mean is over the seeds of each cell. Index: the cell's text key.
    """
    df = finite_rows(runs, value)
    if factor not in df or df.empty:
        return pd.Series(dtype=float)
    others = _others(df, factors, factor)
    means = df.groupby([_key(df, others), df[factor].map(level_label)])[value].mean().unstack()
    la, lb = level_label(a), level_label(b)
    if la not in means or lb not in means:
        return pd.Series(dtype=float)
    return (means[lb] - means[la]).dropna()


def difference_interval(
    runs: pd.DataFrame, factor: str, a, b, value: str, factors: Sequence[str]
) -> tuple[Interval, int, str]:
    """Level b - level a of ``factor`` on ``value``: (interval, matched cells, over).

    Two or more matched cells: t-interval over the matched differences of cell means, n = cells,
    over = ``CELLS``. One matched cell: Welch's interval over that cell's seeds, n = the smaller
    level's runs, over = ``SEEDS``. No matched cell: NaN.
    """
    d = matched_differences(runs, factor, a, b, value, factors)
    if len(d) != 1:
        return stats.mean_interval(d.to_numpy(float)), len(d), CELLS
    df = finite_rows(runs, value)
    others = _others(df, factors, factor)
    cell = df[_key(df, others) == d.index[0]]
    lab = cell[factor].map(level_label)
    iv = stats.welch_interval(cell.loc[lab == level_label(a), value], cell.loc[lab == level_label(b), value])
    return iv, 1, SEEDS


def interaction_differences(
    runs: pd.DataFrame, fa: str, a: tuple, fb: str, b: tuple, value: str, factors: Sequence[str]
) -> pd.Series:
    """Per matched quadruple: ((y(a1,b1) - y(a0,b1)) - (y(a1,b0) - y(a0,b0))) / 2, cell means of ``value``.

    a = (a0, a1) levels of ``fa``, b = (b0, b1) levels of ``fb``; a quadruple is the four cells
    at one combination of the other factors' levels. Index: that combination's text key.
    """
    df = finite_rows(runs, value)
    if fa not in df or fb not in df or df.empty:
        return pd.Series(dtype=float)
    others = _others(df, factors, fa, fb)
    combo = df[fa].map(level_label) + "\x00" + df[fb].map(level_label)
    means = df.groupby([_key(df, others), combo])[value].mean().unstack()
    cols = {(i, j): f"{level_label(a[i])}\x00{level_label(b[j])}" for i in (0, 1) for j in (0, 1)}
    if any(c not in means for c in cols.values()):
        return pd.Series(dtype=float)
    m = {k: means[c] for k, c in cols.items()}
    return (((m[1, 1] - m[0, 1]) - (m[1, 0] - m[0, 0])) / 2).dropna()


# ---- fixed effects (cells and seeds) -------------------------------------------------------------


def cell_table(runs: pd.DataFrame, value: str, factors: Sequence[str]) -> pd.DataFrame:
    """One row per cell (combination of the ``factors`` present): n, mean, var (ddof 1) of ``value``.

    Index: the cell's text key (``_key`` over the factors, in order).
    """
    df = finite_rows(runs, value)
    cols = [f for f in factors if f in df]
    g = df.groupby(_key(df, cols))[value]
    return pd.DataFrame({"n": g.size(), "mean": g.mean(), "var": g.var(ddof=1)})


def _cell_keys(df: pd.DataFrame, factors: Sequence[str], **at) -> pd.Series:
    """The cell key of each row of ``df`` with the factors in ``at`` set to the given labels."""
    cols = [f for f in factors if f in df]
    return _key(df.assign(**{f: [lab] * len(df) for f, lab in at.items()}), cols)


def fixed_effect(runs: pd.DataFrame, value: str, factors: Sequence[str], weights: dict[str, float]) -> dict:
    """The contrast sum_j w_j mu_j over cells (``weights``: cell key -> weight) by the fixed-effects analysis.

    Returns dict(iv=pooled Interval (n = runs), df, p, check=Welch-Satterthwaite Interval): see
    ``reports.factorial``. The pooled variance uses every cell of ``runs``.
    """
    cells = cell_table(runs, value, factors)
    w = cells.index.map(lambda k: weights.get(k, 0.0)).to_numpy(float)
    args = (cells["mean"].to_numpy(float), cells["var"].to_numpy(float), cells["n"].to_numpy(float), w)
    est, low, high, df, p = F.pooled_contrast(*args)
    _, wl, wh, wdf, _ = F.welch_contrast(*args)
    n = int(cells["n"].sum())
    return dict(iv=Interval(est, low, high, n), df=df, p=p, check=Interval(est, wl, wh, n), check_df=wdf)


def main_weights(runs: pd.DataFrame, factor: str, a, b, value: str, factors: Sequence[str]) -> dict[str, float]:
    """Cell weights of the main effect b - a over the matched cells: +1/M at b, -1/M at a."""
    d = matched_differences(runs, factor, a, b, value, factors)
    df = finite_rows(runs, value)
    others = _others(df, factors, factor)
    keep = df[_key(df, others).isin(set(d.index))].drop_duplicates(others) if others else df.head(1)
    M = len(d)
    w = {}
    for lab, sign in ((level_label(a), -1.0), (level_label(b), 1.0)):
        for k in _cell_keys(keep.assign(**{factor: keep[factor].map(level_label)}), factors, **{factor: lab}):
            w[k] = sign / M
    return w


def interaction_weights(runs: pd.DataFrame, fa: str, a: tuple, fb: str, b: tuple, value: str,
                        factors: Sequence[str]) -> dict[str, float]:
    """Cell weights of the A x B contrast ((y11 - y01) - (y10 - y00)) / 2 averaged over Q matched quadruples."""
    d = interaction_differences(runs, fa, a, fb, b, value, factors)
    df = finite_rows(runs, value)
    others = _others(df, factors, fa, fb)
    keep = df[_key(df, others).isin(set(d.index))].drop_duplicates(others) if others else df.head(1)
    keep = keep.assign(**{fa: keep[fa].map(level_label), fb: keep[fb].map(level_label)})
    Q = len(d)
    w = {}
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        sign = 1.0 if i == j else -1.0
        for k in _cell_keys(keep, factors, **{fa: level_label(a[i]), fb: level_label(b[j])}):
            w[k] = sign / (2 * Q)
    return w


def choose(matched: tuple[Interval, int, str], fixed: dict | None, seeds_dfree: float = float("nan")) -> dict:
    """The interval an effect is read from: fixed effects when it has more error df than the matched cells.

    The matched-cell t-interval has M - 1 df (the seeds only sharpen each cell mean); the fixed-
    effects one has N - J. The matched-cell interval stays where it has as many df or more (many
    cells, one seed each), and with one matched cell (Welch over its seeds). Returns dict(iv, cells,
    over, df, p, check): check is the Welch-Satterthwaite interval of the fixed-effects contrast.
    """
    iv, cells, over = matched
    nan = float("nan")
    if over == CELLS and fixed is not None and cells >= 1 and np.isfinite(fixed["df"]) and fixed["df"] > cells - 1:
        return dict(iv=fixed["iv"], cells=cells, over=FIXED, df=fixed["df"], p=fixed["p"], check=fixed["check"])
    dfree = cells - 1.0 if over == CELLS else seeds_dfree
    return dict(iv=iv, cells=cells, over=over, df=dfree, p=F.p_from_interval(iv.point, iv.low, iv.high, dfree),
                check=Interval(nan, nan, nan, 0))


def seeds_df(runs: pd.DataFrame, factor: str, a, b, value: str, factors: Sequence[str]) -> float:
    """Welch-Satterthwaite df of the one-matched-cell comparison (``difference_interval`` over seeds)."""
    d = matched_differences(runs, factor, a, b, value, factors)
    if len(d) != 1:
        return float("nan")
    df = finite_rows(runs, value)
    cell = df[_key(df, _others(df, factors, factor)) == d.index[0]]
    lab = cell[factor].map(level_label)
    x, y = (cell.loc[lab == level_label(v), value].to_numpy(float) for v in (a, b))
    if min(x.size, y.size) < 2:
        return float("nan")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    if va + vb == 0:
        return float("nan")
    return float((va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1)))


# ---- matched sample budgets ----------------------------------------------------------------------


def budget_differs(runs: pd.DataFrame, factor: str, factors: Sequence[str]) -> bool:
    """Whether ``factor``'s levels see different numbers of episodes (completions) in otherwise equal cells.

    Read from the runs' final ``episodes``; with no matched cell, from the levels' medians.
    """
    df = finite_rows(runs, "episodes")
    if factor not in df or df[factor].nunique() < 2:
        return False
    levels = sorted_levels(df[factor])
    scale = max(float(df["episodes"].abs().max()), 1.0)
    diffs = [matched_differences(df, factor, levels[0], b, "episodes", factors) for b in levels[1:]]
    if all(d.empty for d in diffs):
        med = df.groupby(df[factor].map(level_label))["episodes"].median()
        return bool(med.max() - med.min() > 1e-9 * scale)
    return any(bool((d.abs() > 1e-9 * scale).any()) for d in diffs)


def at_episodes(curves: pd.DataFrame, metric: str, episodes: float) -> pd.Series:
    """Each run's ``metric`` curve linearly interpolated at ``episodes``; NaN where it does not reach it.

    Returns a Series indexed by run_id.
    """
    c = curves[(curves["metric"] == metric) & np.isfinite(curves["value"]) & np.isfinite(curves["episodes"])]
    out = {}
    for rid, g in c.groupby("run_id"):
        g = g.sort_values("episodes")
        x, y = g["episodes"].to_numpy(float), g["value"].to_numpy(float)
        out[rid] = float(np.interp(episodes, x, y)) if x[0] <= episodes <= x[-1] else float("nan")
    return pd.Series(out, dtype=float)


def matched_episodes(curves: pd.DataFrame, metric: str, run_ids: Sequence | None = None) -> float:
    """The last episode count every run (of ``run_ids``, default all) reached on its ``metric`` curve; NaN if none."""
    if curves is None or curves.empty or "metric" not in curves:
        return float("nan")
    c = curves[(curves["metric"] == metric) & np.isfinite(curves["value"]) & np.isfinite(curves["episodes"])]
    if run_ids is not None:
        c = c[c["run_id"].isin(set(run_ids))]
    if c.empty:
        return float("nan")
    return float(c.groupby("run_id")["episodes"].max().min())


def at_matched_budget(runs: pd.DataFrame, curves: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, float]:
    """(runs with ``metric`` replaced by its value at the matched episode count, that count).

    The count is ``matched_episodes`` over the runs; runs without a curve get NaN. (runs
    unchanged, NaN) when there is no curve of ``metric``.
    """
    e = matched_episodes(curves, metric, runs["run_id"] if "run_id" in runs else None)
    if not np.isfinite(e):
        return runs, e
    out = runs.copy()
    out[metric] = out["run_id"].map(at_episodes(curves, metric, e)).astype(float)
    return out, e


def comparison_frame(
    runs: pd.DataFrame, curves: pd.DataFrame, metric: str, factor: str, factors: Sequence[str]
) -> tuple[pd.DataFrame, str]:
    """The runs to compare ``factor``'s levels on and where: (frame, 'final' | 'at E episodes' | 'final, ...').

    Equal budgets: final values. Different budgets: values at the matched episode count when
    the curves allow it, else final values with 'budgets differ' in the label.
    """
    if not budget_differs(runs, factor, factors):
        return runs, "final"
    frame, e = at_matched_budget(runs, curves, metric)
    if np.isfinite(e):
        return frame, f"at {e:g} episodes"
    return runs, "final (sample budgets differ)"


def level_table(
    runs: pd.DataFrame, curves: pd.DataFrame | None, factors: Sequence[str], metrics: Sequence[str]
) -> pd.DataFrame:
    """``stats.summarise_factors`` with each factor compared where its budgets allow, plus how cells pool.

    A factor whose levels see different numbers of episodes is summarised at the matched episode
    count (``comparison_frame``; perf/* metrics, not curves of learning, stay as they are). Extra
    columns: at ('final', 'at E episodes' or 'final (sample budgets differ)'), cells (the level's
    cells) and unmatched (True when the levels' cells differ in the other factors' settings, so a
    level's pooled runs mix settings the other level lacks).
    """
    curves = curves if curves is not None else pd.DataFrame()
    parts = []
    for f in factors:
        for m in metrics:
            if finite_rows(runs, m).empty or f not in runs:
                continue
            frame, at = (runs, "final") if m.startswith("perf/") else comparison_frame(runs, curves, m, f, factors)
            t = stats.summarise_by(frame, f, m)
            if t.empty:
                continue
            fr = finite_rows(frame, m)
            keys = _key(fr, _others(fr, factors, f))
            combos = keys.groupby(fr[f].map(level_label)).agg(frozenset)
            t.insert(0, "metric", m)
            t.insert(0, "factor", f)
            t["at"] = at
            t["cells"] = [len(combos.get(level_label(v), ())) for v in t["level"]]
            t["unmatched"] = combos.nunique() > 1
            parts.append(t)
    cols = ["factor", "level", "metric", "n", "iqm", "ci_low", "ci_high", "mean", "median", "std", "note",
            "at", "cells", "unmatched"]  # fmt: skip
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


# ---- effects -------------------------------------------------------------------------------------


def _row(metric, term, effect, factor, la, lb, e: dict, at: str) -> dict:
    """One ``EFFECT_COLUMNS`` row from ``choose``'s reading ``e``."""
    iv, cells, over = e["iv"], e["cells"], e["over"]
    if over == FIXED:
        have, need = e["df"], MIN_DF
        k = need - have
        note = "" if have >= need else f"{have:g} error df; needs {k:g} more run{'' if k == 1 else 's'} to call it"
    else:
        need, have = (MIN_SEEDS, iv.n) if over == SEEDS else (MIN_CELLS, cells)
        note = "" if have >= need else f"{have} {over if over == CELLS else 'runs per level'}; needs {need - have} more to call it"
    low, high = (iv.low, iv.high) if iv.n >= 2 else (np.nan, np.nan)  # no replicate: no interval
    return dict(metric=metric, term=term, effect=effect, factor=factor, level_a=la, level_b=lb,
                estimate=iv.point, low=low, high=high, n_matched=cells,
                n_runs=iv.n if over in (SEEDS, FIXED) else np.nan, over=over, at=at, note=note,
                df=e["df"], p=e["p"], check_low=e["check"].low, check_high=e["check"].high)  # fmt: skip


def main_effects(
    runs: pd.DataFrame, curves: pd.DataFrame | None, factors: Sequence[str], metric: str
) -> pd.DataFrame:
    """Main effect of each factor on ``metric``: each level against the first, over matched cells.

    Columns ``EFFECT_COLUMNS``: effect 'factor: b - a', estimate = mean matched difference,
    low/high = its t-interval, n_matched, at ('final' or the matched episode count), note.
    """
    rows = []
    curves = curves if curves is not None else pd.DataFrame()
    for f in factors:
        frame, at = comparison_frame(runs, curves, metric, f, factors)
        frame = finite_rows(frame, metric)
        if f not in frame or frame[f].nunique() < 2:
            continue
        levels = sorted_levels(frame[f])
        for b in levels[1:]:
            matched = difference_interval(frame, f, levels[0], b, metric, factors)
            w = main_weights(frame, f, levels[0], b, metric, factors) if matched[1] >= 1 else {}
            fixed = fixed_effect(frame, metric, factors, w) if w else None
            e = choose(matched, fixed, seeds_df(frame, f, levels[0], b, metric, factors))
            la, lb = level_label(levels[0]), level_label(b)
            rows.append(_row(metric, "main", f"{f}: {lb} - {la}", f, la, lb, e, at))
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def interactions(
    runs: pd.DataFrame,
    curves: pd.DataFrame | None,
    factors: Sequence[str],
    metric: str,
    main: pd.DataFrame,
    top: int = TOP_INTERACTIONS,
) -> pd.DataFrame:
    """Two-way interactions among the ``top`` factors by largest |main effect| on ``metric`` (``main``).

    Each factor enters with its largest-|estimate| contrast (its only one with two levels).
    Columns ``EFFECT_COLUMNS``; effect 'A x B: (a1 - a0) x (b1 - b0)'.
    """
    m = main[(main["metric"] == metric) & np.isfinite(main["estimate"])]
    if m.empty:
        return pd.DataFrame(columns=EFFECT_COLUMNS)
    best = m.loc[m["estimate"].abs().groupby(m["factor"]).idxmax()]
    best = best.reindex(best["estimate"].abs().sort_values(ascending=False).index).head(top)
    contrast = {r.factor: (r.level_a, r.level_b) for r in best.itertuples(index=False)}
    curves = curves if curves is not None else pd.DataFrame()
    rows = []
    for fa, fb in combinations(list(contrast), 2):
        frame, at = runs, "final"
        for f in (fa, fb):  # a budget-changing factor: compare at matched episodes
            frame_f, at_f = comparison_frame(runs, curves, metric, f, factors)
            if at_f != "final":
                frame, at = frame_f, at_f
        ka = frame[fa].map(level_label) if fa in frame else None
        kb = frame[fb].map(level_label) if fb in frame else None
        if ka is None or kb is None:
            continue
        labelled = frame.assign(**{fa: ka, fb: kb})
        d = interaction_differences(labelled, fa, contrast[fa], fb, contrast[fb], metric, factors)
        (a0, a1), (b0, b1) = contrast[fa], contrast[fb]
        effect = f"{fa} x {fb}: ({a1} - {a0}) x ({b1} - {b0})"
        w = interaction_weights(labelled, fa, contrast[fa], fb, contrast[fb], metric, factors) if len(d) else {}
        fixed = fixed_effect(labelled, metric, factors, w) if w else None
        e = choose((stats.mean_interval(d.to_numpy(float)), len(d), CELLS), fixed)
        rows.append(_row(metric, "interaction", effect, f"{fa} x {fb}", "", "", e, at))
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def effects_table(
    runs: pd.DataFrame,
    curves: pd.DataFrame | None,
    factors: Sequence[str],
    metrics: Sequence[str] = ("eval/gold", "eval/kl"),
    top: int = TOP_INTERACTIONS,
) -> pd.DataFrame:
    """Main effects and top two-way interactions of every metric in ``metrics`` present in ``runs``."""
    parts = []
    for metric in metrics:
        if finite_rows(runs, metric).empty:
            continue
        main = main_effects(runs, curves, factors, metric)
        parts += [main, interactions(runs, curves, factors, metric, main, top)]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=EFFECT_COLUMNS)


# ---- gradient noise ------------------------------------------------------------------------------


def run_noise(curves: pd.DataFrame) -> pd.DataFrame:
    """Per run, means over all its probes: signal, sample variance tr(Sigma), batch variance tr(Sigma)/B.

    Columns: run_id, ``N_PROBES``, ``SIGNAL``, ``SAMPLE_VAR``, ``BATCH_VAR``, ``NOISE_SCALE``
    (= mean tr(Sigma) / mean signal, NaN when the mean signal is <= 0: unresolved).
    """
    cols = ["run_id", N_PROBES, *PROBE_KEYS.values(), NOISE_SCALE]
    if curves is None or curves.empty or "metric" not in curves:
        return pd.DataFrame(columns=cols)
    c = curves[curves["metric"].isin(list(PROBE_KEYS)) & np.isfinite(curves["value"])]
    if c.empty:
        return pd.DataFrame(columns=cols)
    wide = c.groupby(["run_id", "metric"])["value"].mean().unstack().rename(columns=PROBE_KEYS)
    for col in PROBE_KEYS.values():
        if col not in wide:
            wide[col] = np.nan
    wide[N_PROBES] = c.groupby("run_id")["step"].nunique()
    sig, sv = wide[SIGNAL].to_numpy(float), wide[SAMPLE_VAR].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        wide[NOISE_SCALE] = np.where(sig > 0, sv / sig, np.nan)
    return wide.reset_index()[cols]


def with_noise(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the ``run_noise`` columns joined on run_id (NaN for runs without probes)."""
    noise = run_noise(curves)
    out = runs.drop(columns=[c for c in noise.columns if c != "run_id" and c in runs])
    return out.merge(noise, on="run_id", how="left")


def _groups(frame: pd.DataFrame, group: str | None) -> list[tuple[str, pd.DataFrame]]:
    if group is None or group not in frame:
        return [(ALL_RUNS, frame)]
    return [(level_label(v), frame[frame[group] == v]) for v in sorted_levels(frame[group])]


def noise_scale_by(runs: pd.DataFrame, group: str | None) -> pd.DataFrame:
    """Noise scale B_simple per level of ``group`` over its runs, with Fieller's interval.

    Point = mean over runs of ``SAMPLE_VAR`` / mean over runs of ``SIGNAL`` (``stats.ratio_interval``).
    Resolved when the t-interval of the mean signal excludes 0 and it is positive (the rule
    under which Fieller's interval is bounded); unresolved levels have NaN point and bounds.
    Columns: level, n, point, low, high, resolved, signal, signal_low, signal_high.
    """
    cols = ["level", "n", "point", "low", "high", "resolved", "signal", "signal_low", "signal_high"]
    r = finite_rows(finite_rows(runs, SIGNAL), SAMPLE_VAR)
    rows = []
    for level, g in _groups(r, group):
        if g.empty:
            continue
        iv, resolved = stats.ratio_interval(g[SAMPLE_VAR], g[SIGNAL])
        s = stats.mean_interval(g[SIGNAL])
        rows.append([level, iv.n, iv.point, iv.low, iv.high, resolved, s.point, s.low, s.high])
    return pd.DataFrame(rows, columns=cols)


def batch_variance_points(runs: pd.DataFrame, group: str | None) -> pd.DataFrame:
    """Per (level of ``group``, batch size): ``stats.interval`` of log per-run ``BATCH_VAR``, exponentiated.

    A variance is positive and multiplicative (the log-log figure and slope live in log space), so
    the IQM and its interval are taken of the logs and mapped back: a geometric IQM whose interval
    never crosses 0. Columns: level, batch_size, n, iqm, ci_low, ci_high.
    """
    cols = ["level", "batch_size", "n", "iqm", "ci_low", "ci_high"]
    r = finite_rows(finite_rows(runs, BATCH_VAR), BATCH)
    r = r[r[BATCH_VAR] > 0]
    rows = []
    for level, g in _groups(r, group):
        for bs, h in g.groupby(BATCH):
            iv = stats.interval(np.log(h[BATCH_VAR].to_numpy(float)))
            rows.append([level, float(bs), iv.n, *np.exp([iv.point, iv.low, iv.high])])
    return pd.DataFrame(rows, columns=cols)


def batch_variance_slopes(runs: pd.DataFrame, group: str | None) -> pd.DataFrame:
    """Least-squares slope of log batch variance on log batch size, per level of ``group``, from per-run values.

    Theory for tr(Sigma)/B with tr(Sigma) independent of B: slope -1. Columns: level, slope,
    low, high (t-interval, n - 2 df), n (runs), n_sizes (distinct batch sizes), note.
    """
    cols = ["level", "slope", "low", "high", "n", "n_sizes", "note"]
    r = finite_rows(finite_rows(runs, BATCH_VAR), BATCH)
    r = r[(r[BATCH_VAR] > 0) & (r[BATCH] > 0)]
    rows = []
    for level, g in _groups(r, group):
        iv = stats.slope_interval(np.log(g[BATCH].to_numpy(float)), np.log(g[BATCH_VAR].to_numpy(float)))
        rows.append([level, iv.point, iv.low, iv.high, iv.n, int(g[BATCH].nunique()), iv.note])
    return pd.DataFrame(rows, columns=cols)


def variance_ratio(
    runs: pd.DataFrame, factor: str, a, b, factors: Sequence[str], value: str = SAMPLE_VAR
) -> tuple[Interval, int, str]:
    """Geometric-mean ratio of ``value`` at ``factor`` = b over ``factor`` = a: (interval, cells, over).

    exp of ``difference_interval`` of log ``value``: over matched cells (cell means of logs over
    seeds), or over the seeds of the one matched cell. Non-positive values are dropped.
    """
    r = finite_rows(runs, value)
    r = r[r[value] > 0].assign(**{value: lambda f: np.log(f[value])})
    iv, cells, over = difference_interval(r, factor, a, b, value, factors)
    ratio = Interval(float(np.exp(iv.point)), float(np.exp(iv.low)), float(np.exp(iv.high)), iv.n, iv.note)
    return ratio, cells, over
