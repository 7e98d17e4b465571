"""Aggregates over seeds, their bootstrap intervals and the probability of improvement.

Pure: numpy, scipy and (for the frame helpers at the end) pandas; no I/O, no MLflow, no plotting.

Follows rliable (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice"):

- IQM: the interquartile mean, ``scipy.stats.trim_mean(x, 0.25)``: robust to one bad seed,
  less noisy than the median.
- Stratified bootstrap: resample seeds *within* each stratum (a task, or one cell of a sweep),
  never across strata. ``scipy.stats.bootstrap`` with one sample per stratum does exactly that
  (each sample is resampled independently at its own size); the percentile method, as rliable.
- Probability of improvement P(X > Y): the Mann-Whitney U statistic over (n * m), averaged
  over strata.

A fixed bootstrap seed makes every report reproducible. Small samples never crash: n = 0
gives NaN with a note, n = 1 a degenerate interval (low = high = the value) with a note,
n = 2 an interval flagged as crude.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as st

CONFIDENCE = 0.95
N_RESAMPLES = 2000  # rliable uses 2000 (figures) to 50000 (papers); 2000 is stable to ~2 decimals
SEED = 0  # the fixed bootstrap seed: same runs -> same report


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval over ``n`` observations."""

    point: float
    low: float
    high: float
    n: int
    note: str = ""  # why the interval is degenerate or crude; "" when it is a proper interval

    @property
    def degenerate(self) -> bool:
        return self.n < 2 or self.low == self.high

    def overlaps(self, other: Interval) -> bool:
        return not (self.high < other.low or other.high < self.low)

    def fmt(self, digits: int = 3) -> str:
        """'0.512 [0.431, 0.598]' with ``digits`` significant digits."""
        if not np.isfinite(self.point):
            return "n/a"
        return f"{fmt_number(self.point, digits)} [{fmt_number(self.low, digits)}, {fmt_number(self.high, digits)}]"


def fmt_number(x: float, digits: int = 3) -> str:
    """``digits`` significant digits; integers for large values, exponent for tiny ones; 'n/a' for NaN."""
    if not np.isfinite(x):
        return "n/a"
    if abs(x) >= 10**digits:
        return f"{x:.0f}"
    if x != 0 and abs(x) < 10 ** -(digits - 1):
        return f"{x:.{digits - 1}e}"
    s = f"{x:#.{digits}g}"
    return s.rstrip(".") if "e" not in s else s


# ---- point aggregates ---------------------------------------------------------------------------


def _clean(x) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    return a[np.isfinite(a)]


def iqm(x, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: mean of the middle 50% (25% trimmed from each end, scipy's rounding).

    With ``axis=None`` NaNs are dropped first; an empty input gives NaN.
    """
    if axis is not None:
        return st.trim_mean(x, 0.25, axis=axis)
    a = _clean(x)
    return float(st.trim_mean(a, 0.25)) if a.size else float("nan")


def summary(x) -> dict[str, float]:
    """n, mean, median, std (ddof=1; NaN when n < 2), iqm of the finite values of ``x``."""
    a = _clean(x)
    n = int(a.size)
    nan = float("nan")
    return {
        "n": n,
        "mean": float(a.mean()) if n else nan,
        "median": float(np.median(a)) if n else nan,
        "std": float(a.std(ddof=1)) if n >= 2 else nan,
        "iqm": iqm(a),
    }


# ---- intervals ----------------------------------------------------------------------------------


def _vectorised(statistic: Callable) -> Callable:
    """statistic(x, axis) over one array -> statistic over the concatenation of all strata."""

    def stat(*samples, axis=-1):
        return statistic(np.concatenate(samples, axis=axis), axis=axis)

    return stat


def bootstrap_ci(
    samples,
    statistic: Callable = iqm,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """Point estimate and (stratified) percentile bootstrap CI of ``statistic``.

    samples: one 1-D array (one stratum, e.g. the seeds of one task), or a sequence of 1-D
      arrays, one per stratum; the statistic is computed over all of them pooled, and each
      stratum is resampled on its own. Strata of size 1 cannot be resampled: then the whole
      pool is bootstrapped as one stratum and the note says so.
    statistic: ``f(x, axis) -> reduced`` vectorised over ``axis`` (``iqm``, ``np.mean`` ...).
    """
    strata = _as_strata(samples)
    pooled = np.concatenate(strata) if strata else np.empty(0)
    n = int(pooled.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "no data")
    point = float(statistic(pooled, axis=-1))
    if n == 1:
        return Interval(point, point, point, 1, "n=1: no interval")
    if np.all(pooled == pooled[0]):
        return Interval(point, point, point, n, f"n={n}: all values equal")
    note = ""
    if len(strata) > 1 and min(s.size for s in strata) < 2:
        strata, note = [pooled], "pooled bootstrap (a stratum has one seed)"
    strata = [s for s in strata if s.size]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = st.bootstrap(
            tuple(strata),
            _vectorised(statistic),
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if n == 2:
        note = _join(note, "n=2: crude interval")
    return Interval(point, min(low, point), max(high, point), n, note)


def curve_band(
    values: np.ndarray,
    statistic: Callable = iqm,
    confidence: float = CONFIDENCE,
    n_resamples: int = 1000,
    seed: int = SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise aggregate and bootstrap band of curves: (point, low, high), each (G,).

    values: (R, G), R runs (seeds) by G points on a shared x grid; NaN-free.
    One vectorised bootstrap over all G points at once. R == 1 gives a zero-width band.
    """
    v = np.asarray(values, dtype=float)
    point = np.asarray(statistic(v, axis=0), dtype=float)
    if v.shape[0] < 2 or np.all(v == v[:1]):
        return point, point.copy(), point.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = st.bootstrap(
            (v.T,),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            axis=-1,
            rng=np.random.default_rng(seed),
        )
    low = np.nan_to_num(np.asarray(res.confidence_interval.low, dtype=float), nan=0.0)
    high = np.nan_to_num(np.asarray(res.confidence_interval.high, dtype=float), nan=0.0)
    flat = np.all(v == v[:1], axis=0)  # columns where every run agrees: the band is the point
    low, high = np.where(flat, point, np.minimum(low, point)), np.where(flat, point, np.maximum(high, point))
    return point, low, high


def ratio_ci(
    x,
    y,
    statistic: Callable = iqm,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """statistic(x) / statistic(y) with an unpaired bootstrap CI; NaN if statistic(y) is 0.

    x, y: 1-D arrays, or sequences of 1-D arrays (strata, as in ``bootstrap_ci``): each stratum
    of each side is resampled on its own; with a stratum of one value both sides are pooled.
    """
    xs, ys = _as_strata(x), _as_strata(y)
    a = np.concatenate(xs) if xs else np.empty(0)
    b = np.concatenate(ys) if ys else np.empty(0)
    nan = float("nan")
    if not a.size or not b.size:
        return Interval(nan, nan, nan, 0, "no data")
    den = float(statistic(b, axis=-1))
    if den == 0:
        return Interval(nan, nan, nan, min(a.size, b.size), "denominator is 0")
    point = float(statistic(a, axis=-1)) / den
    n = min(a.size, b.size)
    if n < 2 or (np.all(a == a[0]) and np.all(b == b[0])):
        return Interval(
            point, point, point, n, f"n={n}: no interval" if n < 2 else f"n={n}: all values equal"
        )
    xs, ys = [s for s in xs if s.size], [s for s in ys if s.size]
    note = ""
    if min(s.size for s in [*xs, *ys]) < 2:
        xs, ys, note = [a], [b], "pooled bootstrap (a stratum has one seed)"
    k = len(xs)

    def stat(*samples, axis=-1):
        num = statistic(np.concatenate(samples[:k], axis=axis), axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return num / statistic(np.concatenate(samples[k:], axis=axis), axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = st.bootstrap(
            (*xs, *ys),
            stat,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):
        return Interval(point, point, point, n, "resampled denominator hit 0: no interval")
    if n == 2:
        note = _join(note, "n=2: crude interval")
    return Interval(point, min(low, point), max(high, point), n, note)


# ---- probability of improvement --------------------------------------------------------------


def probability_of_improvement(x, y) -> float:
    """P(X > Y) + P(X = Y) / 2 = U / (n * m), the Mann-Whitney U of ``x`` against ``y``.

    1 when every x beats every y, 0.5 for identical samples, 0 when every y beats every x.
    NaN when either sample is empty.
    """
    a, b = _clean(x), _clean(y)
    if not a.size or not b.size:
        return float("nan")
    # U_x = #{(i, j): x_i > y_j} + #{x_i = y_j} / 2, the statistic scipy reports for x.
    u = st.mannwhitneyu(a, b, alternative="two-sided").statistic
    return float(u) / (a.size * b.size)


def stratified_poi(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, int]:
    """Mean over strata of P(X > Y) (rliable's average over tasks); (NaN, 0) with no usable stratum.

    pairs: (x, y) per stratum, e.g. the seeds of two levels in one matched sweep cell.
    Returns (probability, number of strata used).
    """
    vals = [probability_of_improvement(x, y) for x, y in pairs]
    vals = [v for v in vals if np.isfinite(v)]
    return (float(np.mean(vals)), len(vals)) if vals else (float("nan"), 0)


# ---- frames -------------------------------------------------------------------------------------


def summarise_by(
    frame: pd.DataFrame,
    factor: str,
    value: str,
    strata: Sequence[str] = (),
    **ci_kwargs,
) -> pd.DataFrame:
    """One row per level of ``factor``: n, iqm, ci_low, ci_high, mean, median, std, note.

    Rows with a non-finite ``value`` are dropped. ``strata`` are columns whose combinations are
    bootstrap strata within a level (e.g. the other swept axes: seeds are resampled within
    each cell); empty = one stratum. Levels keep their sorted order.
    """
    cols = ["level", "n", "iqm", "ci_low", "ci_high", "mean", "median", "std", "note"]
    if factor not in frame or value not in frame:
        return pd.DataFrame(columns=cols)
    df = frame[np.isfinite(pd.to_numeric(frame[value], errors="coerce"))]
    rows = []
    for level, g in df.groupby(factor, sort=True, dropna=False):
        strata_cols = [c for c in strata if c in g and c != factor]
        if strata_cols:
            samples = [s[value].to_numpy(float) for _, s in g.groupby(strata_cols, dropna=False)]
        else:
            samples = g[value].to_numpy(float)
        ci = bootstrap_ci(samples, **ci_kwargs)
        s = summary(g[value])
        rows.append([level, s["n"], ci.point, ci.low, ci.high, s["mean"], s["median"], s["std"], ci.note])
    return pd.DataFrame(rows, columns=cols)


def _as_strata(samples) -> list[np.ndarray]:
    if isinstance(samples, np.ndarray | pd.Series) or (
        isinstance(samples, Sequence) and samples and np.isscalar(samples[0])
    ):
        return [_clean(samples)]
    if isinstance(samples, Sequence) and not samples:
        return []
    return [_clean(s) for s in samples]


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a and b else a or b


def summarise_factors(
    frame: pd.DataFrame,
    factors: Sequence[str],
    metrics: Sequence[str],
    **ci_kwargs,
) -> pd.DataFrame:
    """Long table: one row per (factor, level, metric) with n, iqm, ci_low, ci_high, mean, median, std, note.

    Each factor's levels are stratified over the other factors (seeds resampled within a cell).
    Metrics absent from ``frame`` or without a finite value are left out.
    """
    parts = []
    for f in factors:
        strata = [a for a in factors if a != f]
        for m in metrics:
            if m not in frame or not np.isfinite(pd.to_numeric(frame[m], errors="coerce")).any():
                continue
            t = summarise_by(frame, f, m, strata=strata, **ci_kwargs)
            t.insert(0, "metric", m)
            t.insert(0, "factor", f)
            parts.append(t)
    cols = ["factor", "level", "metric", "n", "iqm", "ci_low", "ci_high", "mean", "median", "std", "note"]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]


def poi_table(frame: pd.DataFrame, factor: str, value: str, strata: Sequence[str] = ()) -> pd.DataFrame:
    """P(level a > level b) on ``value`` for every ordered pair of levels of ``factor``.

    Stratified: within each combination of ``strata`` columns holding both levels, U / (n m);
    then the mean over those strata (like-for-like). With no such stratum the samples are
    pooled (column ``pooled`` is True). Columns: a, b, poi, n_strata, pooled.
    """
    cols = ["a", "b", "poi", "n_strata", "pooled"]
    if factor not in frame or value not in frame:
        return pd.DataFrame(columns=cols)
    df = frame[np.isfinite(pd.to_numeric(frame[value], errors="coerce"))]
    levels = sorted(df[factor].dropna().unique().tolist(), key=_sort_key)
    strata = [c for c in strata if c in df and c != factor]
    groups = [g for _, g in df.groupby(strata, dropna=False)] if strata else [df]
    rows = []
    for a in levels:
        for b in levels:
            if a == b:
                continue
            pairs = [
                (g.loc[g[factor] == a, value].to_numpy(float), g.loc[g[factor] == b, value].to_numpy(float))
                for g in groups
            ]
            p, k = stratified_poi([(x, y) for x, y in pairs if x.size and y.size])
            pooled = k == 0
            if pooled:
                p = probability_of_improvement(df.loc[df[factor] == a, value], df.loc[df[factor] == b, value])
            rows.append([a, b, p, k, pooled])
    return pd.DataFrame(rows, columns=cols)


def poi_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """Square frame from ``poi_table``: entry (row a, column b) = P(a > b); NaN on the diagonal."""
    levels = list(dict.fromkeys([*table["a"], *table["b"]]))
    m = pd.DataFrame(np.nan, index=levels, columns=levels, dtype=float)
    for a, b, p in table[["a", "b", "poi"]].itertuples(index=False):
        m.loc[a, b] = p
    return m


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, int | float | np.number) else (1, 0.0, str(v))


def by_cell(frame: pd.DataFrame, value: str, cell: str = "cell") -> list[np.ndarray]:
    """Values of ``value`` split by sweep cell: the strata of ``bootstrap_ci`` (seeds resampled within cells)."""
    if cell not in frame:
        return [frame[value].to_numpy(float)]
    return [g[value].to_numpy(float) for _, g in frame.groupby(cell)]


def matched(frame: pd.DataFrame, factor: str, levels: Sequence, cell: str = "cell") -> pd.DataFrame:
    """Rows whose setting (``cell`` text minus the ``factor=`` part) was run at every one of ``levels``.

    Like-for-like selection, e.g. the cells that both ``impl=custom`` and ``impl=trl`` finished.
    """
    if factor not in frame or cell not in frame or not set(levels) <= set(frame[factor]):
        return frame.iloc[0:0]
    key = frame[cell].map(
        lambda c: ", ".join(p for p in str(c).split(", ") if not p.startswith(f"{factor}="))
    )
    present = frame.groupby(key)[factor].agg(lambda s: set(s))
    full = set(present[present.map(lambda s: set(levels) <= s)].index)
    return frame[key.isin(full) & frame[factor].isin(list(levels))]
