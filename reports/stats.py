"""Aggregates over seeds, their intervals and the probability of improvement.

Pure: numpy, scipy and (for the frame helpers at the end) pandas; no I/O, no MLflow, no plotting.

- IQM: the interquartile mean, ``scipy.stats.trim_mean(x, 0.25)`` (rliable, Agarwal et al.
  2021): robust to one bad seed, less noisy than the median.
- ``interval``: the interval every per-level IQM in the report carries: Yuen's (1974)
  trimmed-mean t-interval (25% trimmed, winsorised variance, h - 1 degrees of freedom).
  Chosen by measured coverage (tests/unit/reports/test_reports_coverage.py, 20000 draws,
  nominal 95%): about 93.5-94.5% on normal and lognormal(0, 0.5) samples at n = 5 and 10,
  where the percentile bootstrap covers 74% at n = 3, 89-90% at n = 5, 93% at n = 10.
- ``mean_interval``: Student's t-interval of a mean (Yuen's with no trimming), for matched
  differences (``reports.effects``).
- ``bootstrap_ci`` / ``curve_band``: the stratified percentile bootstrap, kept only where no
  better interval exists (pointwise learning-curve bands); its coverage is low at small n.
- Probability of improvement P(X > Y): the Mann-Whitney U statistic over (n * m), averaged
  over strata.

Small samples never crash: n = 0 gives NaN with a note, n = 1 a degenerate interval
(low = high = the value) with a note.
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
TRIM = 0.25  # the IQM's trimming: 25% from each end
# What ``interval`` is, for captions and method notes: the coverage is the one the simulation
# test measures (and asserts to be at least 93%).
INTERVAL_NAME = "Yuen trimmed-mean t-interval"
INTERVAL_DESCRIPTION = (
    "Yuen's trimmed-mean t-interval (25% trimmed, winsorised variance, h - 1 df; nominal 95%, "
    "measured coverage 93.5-94.5% on normal and lognormal samples at n = 5 and 10)"
)


# Metrics that cannot be negative: their intervals are bounded below at 0 (a t-interval of a
# skewed positive quantity can reach below 0; no value there is possible).
NONNEGATIVE = frozenset({"perf/tokens_per_s"})


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

    def at_least(self, bound: float) -> Interval:
        """The interval with its ends bounded below at ``bound`` (a quantity that cannot go lower)."""
        return Interval(self.point, max(self.low, bound), max(self.high, bound), self.n, self.note)

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


def trimmed_interval(samples, trim: float = TRIM, confidence: float = CONFIDENCE) -> Interval:
    """Trimmed mean of the finite ``samples`` with Yuen's (1974) t-interval.

    With n values, g = int(trim * n) trimmed from each end (scipy's ``trim_mean`` rounding) and
    h = n - 2g kept: the winsorised sample (the g lowest set to the (g+1)-th value, the g highest
    to the (n-g)-th) has variance s_w^2 (ddof=1); the standard error of the trimmed mean is
    sqrt((n - 1) s_w^2 / (h (h - 1))) (the form scipy's Yuen test uses), and the interval is
    point +- t_{h-1, (1+confidence)/2} * se. ``trim=0`` is Student's t-interval of the mean.
    Degenerate (low = high = point, with a note) for n = 1, equal values or zero winsorised
    variance; NaN for no data.
    """
    a = np.sort(_clean(samples))
    n = int(a.size)
    nan = float("nan")
    if n == 0:
        return Interval(nan, nan, nan, 0, "no data")
    g = int(trim * n)
    h = n - 2 * g
    point = float(a[g : n - g].mean())
    if n == 1:
        return Interval(point, point, point, 1, "n=1: no interval")
    if h < 2:  # trim >= 0.5 leaves fewer than two values: no variance estimate
        return Interval(point, point, point, n, f"n={n}: too few values after trimming")
    w = np.clip(a, a[g], a[n - g - 1])  # winsorised
    var_w = float(w.var(ddof=1))
    if var_w == 0:
        note = f"n={n}: all values equal" if a[0] == a[-1] else f"n={n}: winsorised variance is 0"
        return Interval(point, point, point, n, note)
    se = np.sqrt((n - 1) * var_w / (h * (h - 1)))
    half = float(st.t.ppf(0.5 + confidence / 2, h - 1) * se)
    note = f"n={n}: {h - 1} df, wide interval" if h - 1 < 2 else ""
    return Interval(point, point - half, point + half, n, note)


def interval(samples, confidence: float = CONFIDENCE) -> Interval:
    """The report's interval for an IQM: 25% trimmed mean with Yuen's t-interval (``trimmed_interval``).

    Returns an ``Interval`` (point = the IQM, as ``iqm``; low, high; n; note). Its coverage of
    the population's 25% trimmed mean is measured by a simulation test (normal and lognormal
    samples, n = 5 and 10: at least 93% for nominal 95%).
    """
    return trimmed_interval(samples, TRIM, confidence)


def mean_interval(samples, confidence: float = CONFIDENCE) -> Interval:
    """Mean of the finite ``samples`` with Student's t-interval (n - 1 df): ``trimmed_interval`` untrimmed."""
    return trimmed_interval(samples, 0.0, confidence)


def welch_interval(x, y, confidence: float = CONFIDENCE) -> Interval:
    """mean(y) - mean(x) of two independent samples with Welch's t-interval (Satterthwaite df).

    n = the smaller sample's size (what a call needs per level). NaN with a note when a side has
    fewer than 2 finite values; degenerate when both sides are constant. Coverage is measured by
    a unit test (normal samples, unequal variances).
    """
    a, b = _clean(x), _clean(y)
    n = int(min(a.size, b.size))
    nan = float("nan")
    if n < 2:
        point = float(b.mean() - a.mean()) if a.size and b.size else nan
        return Interval(point, nan, nan, n, "needs 2 or more runs on each side for an interval")
    point = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return Interval(point, point, point, n, "all values equal")
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(st.t.ppf(0.5 + confidence / 2, df) * np.sqrt(va + vb))
    return Interval(point, point - half, point + half, n)


def slope_interval(x, y, confidence: float = CONFIDENCE) -> Interval:
    """Least-squares slope of y on x with its t-interval (n - 2 df; exact for normal residuals).

    Pairs with a non-finite x or y are dropped. NaN with a note for fewer than 3 pairs or fewer
    than 2 distinct x; degenerate for a perfect fit.
    """
    xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    n = int(xa.size)
    nan = float("nan")
    if n < 3 or np.unique(xa).size < 2:
        return Interval(nan, nan, nan, n, "needs 3 points at 2 or more x values for a slope interval")
    fit = st.linregress(xa, ya)
    half = float(st.t.ppf(0.5 + confidence / 2, n - 2) * fit.stderr)
    return Interval(float(fit.slope), float(fit.slope) - half, float(fit.slope) + half, n)


def ratio_interval(x, y, confidence: float = CONFIDENCE) -> tuple[Interval, bool]:
    """mean(x) / mean(y) over paired observations with Fieller's interval; (interval, resolved).

    x, y: 1-D, one pair per unit (e.g. a run's mean sample variance and mean signal); pairs
    with a non-finite member are dropped. Fieller's theorem (exact for bivariate normal
    means): the set of r with (xbar - r ybar)^2 <= t^2 (v_xx - 2 r v_xy + r^2 v_yy), v the
    covariance of the means, t at n - 1 df. It is a bounded interval exactly when ybar^2 >
    t^2 v_yy, i.e. when the t-interval of mean(y) excludes 0: only then is the ratio
    ``resolved``; otherwise the interval is (NaN, NaN) and the point is NaN too (no ratio is
    quoted when the denominator is not resolved from 0).
    """
    xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    n = int(xa.size)
    nan = float("nan")
    if n < 2:
        return Interval(nan, nan, nan, n, "fewer than 2 runs: no interval"), False
    mx, my = float(xa.mean()), float(ya.mean())
    c = np.cov(xa, ya, ddof=1) / n  # covariance of the two means
    vxx, vyy, vxy = float(c[0, 0]), float(c[1, 1]), float(c[0, 1])
    t2 = float(st.t.ppf(0.5 + confidence / 2, n - 1)) ** 2
    a = my * my - t2 * vyy
    if a <= 0 or my <= 0:
        return Interval(nan, nan, nan, n, "denominator not resolved from 0"), False
    b = -2 * (mx * my - t2 * vxy)
    cc = mx * mx - t2 * vxx
    disc = max(b * b - 4 * a * cc, 0.0)
    lo, hi = (-b - np.sqrt(disc)) / (2 * a), (-b + np.sqrt(disc)) / (2 * a)
    if np.all(xa > 0):  # a positive numerator over a positive denominator: the ratio is > 0, so the
        lo = max(lo, 0.0)  # confidence set is intersected with (0, inf) (coverage cannot drop)
    return Interval(mx / my, float(lo), float(hi), n), True


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


def finite_rows(frame: pd.DataFrame, col: str) -> pd.DataFrame:
    """The rows of ``frame`` whose ``col`` is a finite number (none when ``col`` is absent)."""
    if col not in frame:
        return frame.iloc[0:0]
    return frame[np.isfinite(pd.to_numeric(frame[col], errors="coerce"))]


def summarise_by(
    frame: pd.DataFrame,
    factor: str,
    value: str,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """One row per level of ``factor``: n, iqm, ci_low, ci_high, mean, median, std, note.

    The interval is ``interval`` (Yuen's trimmed-mean t-interval) over all runs of the level,
    pooled over the other factors' cells (their spread counts as run-to-run spread: a mixture of
    cells, where its coverage was measured at 91.5-92%, below the nominal 95%). ``NONNEGATIVE``
    metrics have it bounded below at 0. Rows with
    a non-finite ``value`` are dropped. Levels keep their sorted order.
    """
    cols = ["level", "n", "iqm", "ci_low", "ci_high", "mean", "median", "std", "note"]
    if factor not in frame or value not in frame:
        return pd.DataFrame(columns=cols)
    df = frame[np.isfinite(pd.to_numeric(frame[value], errors="coerce"))]
    rows = []
    for level, g in df.groupby(factor, sort=True, dropna=False):
        ci = interval(g[value].to_numpy(float), confidence)
        if value in NONNEGATIVE:
            ci = ci.at_least(0.0)
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
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Long table: one row per (factor, level, metric) with n, iqm, ci_low, ci_high, mean, median, std, note.

    Intervals from ``summarise_by`` (``interval``). Metrics absent from ``frame`` or without a
    finite value are left out.
    """
    parts = []
    for f in factors:
        for m in metrics:
            if m not in frame or not np.isfinite(pd.to_numeric(frame[m], errors="coerce")).any():
                continue
            t = summarise_by(frame, f, m, confidence)
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
    levels = sorted_levels(df[factor])
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


def sorted_levels(values) -> list:
    """The distinct non-missing levels of ``values``: numbers ascending, then text in order."""
    return sorted(pd.Series(values).dropna().unique().tolist(), key=_sort_key)


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, int | float | np.number) else (1, 0.0, str(v))


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
