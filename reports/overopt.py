"""Reward over-optimisation as in Gao, Schulman and Hilton (2022), "Scaling Laws for Reward Model
Over-optimization": gold and proxy reward gain against d = sqrt(KL), the RL functional form fitted
per proxy-RM size, its peak, and the onsets the runs logged.

Pure: numpy, pandas, ``reports.stats`` and ``reports.labels``; no I/O, no plotting. Frames are those of
``reports.collect`` (``runs``: one row per run; ``curves``: long histories).

- Points, one per (run, evaluation step): d = sqrt(max(KL, 0)) with KL = ``eval/kl`` (nats; a
  slightly negative estimate early in training is clipped at 0), and the gain over the initial
  policy R = gold(step) - gold(step 0) (step 0: the run's first evaluation, the initial policy),
  likewise for the proxy. R(0) = 0 by construction.
- Fit of Gao's RL form

      R(d) = d (alpha - beta ln d)

  by linear least squares in (alpha, beta) on the regressors (d, -d ln d), no intercept, over the
  points with d > 0. R^2 = 1 - SS_res / SS_tot, SS_tot = sum (R - mean R)^2.
- Peak: dR/dd = alpha - beta - beta ln d = 0 at d* = exp(alpha / beta - 1), a maximum when beta > 0
  (d^2 R / dd^2 = -beta / d < 0); KL* = d*^2, ln KL* = 2 (alpha / beta - 1). With beta <= 0 the
  fitted curve has no interior peak ("no peak within the fit").
- Per level of ``model.rm_pairs`` (one group when it is not in the runs): one fit per seed, on the
  points of that seed's runs pooled over the other factors (every kl.coef level, ...), giving
  per-seed alpha, beta and ln KL*; the level's alpha and beta are the means over seeds with Student's
  t-interval (``stats.mean_interval``), KL* is exp(mean ln KL*) with the t-interval of ln KL*
  mapped back (over the seeds whose fit has a peak). The pooled fit (all the level's points) gives
  R^2 and the curve drawn in the figure.
- Located peak: the fit locates a peak only when the pooled beta > 0, the seeds' beta interval
  excludes 0 (beta -> 0+ sends KL* = exp(2 (alpha / beta - 1)) to any size), and KL* lies within
  ``LOCATE_FACTOR`` x the largest KL the level reached; otherwise ``unlocated`` says why and no KL*
  is reported (nor a peak shift that needs it).
- Empirical peak: per run, the KL at the evaluation with the highest gold; the median over the
  level's runs (a run whose gold is highest at its last evaluation only bounds its peak from below).
- Peak shift with more RM data: ln KL* at the largest minus the smallest ``model.rm_pairs`` over
  seeds, Welch's t-interval (``stats.welch_interval``), exponentiated to a ratio KL*_large / KL*_small.
- Onsets: ``eval/overopt_onset_kl``, logged once by a run at the evaluation where over-optimisation
  started (gold had fallen by more than its standard errors allow while the proxy rose:
  ``harness.onset``, 5% run-wide false alarms on curves without a fall); absent when it never happened. Its step is that metric's step in ``curves`` when collected, else the evaluation whose
  KL matches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reports import stats
from reports.labels import ALL_RUNS, level_label
from reports.stats import Interval, sorted_levels

GOLD, PROXY, KL, ONSET = "eval/gold", "eval/proxy", "eval/kl", "eval/overopt_onset_kl"
RM = "model.rm_pairs"
COEF = "kl.coef"
ALL = ALL_RUNS  # the one group's label when ``model.rm_pairs`` is not in the runs

POINT_COLUMNS = ["run_id", "step", "kl", "d", "gold", "proxy", "gold_gain", "proxy_gain"]
SEED_FIT_COLUMNS = ["level", "seed", "alpha", "beta", "r2", "n", "has_peak", "log_kl_star", "kl_star"]
SUMMARY_COLUMNS = ["level", "value", "n_seeds", "n_runs", "n_points", "alpha_pooled", "beta_pooled", "r2",
                   "has_peak", "kl_star_pooled", "alpha", "alpha_low", "alpha_high", "beta", "beta_low",
                   "beta_high", "n_peak", "kl_star", "kl_star_low", "kl_star_high", "kl_max",
                   "empirical_kl", "n_empirical", "n_peak_at_end", "unlocated"]  # fmt: skip
LOCATE_FACTOR = 10.0  # a fitted KL* beyond this many times the largest KL reached is not located

ONSET_COLUMNS = ["run_id", "level", "coef", "onset", "onset_kl", "onset_d", "onset_step", "onset_gold",
                 "onset_proxy", "onset_gold_gain", "onset_proxy_gain"]  # fmt: skip


# ---- the fit -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaoFit:
    """Least-squares fit of R(d) = d (alpha - beta ln d) over ``n`` points with d > 0."""

    alpha: float
    beta: float
    r2: float
    n: int
    note: str = ""

    @property
    def has_peak(self) -> bool:
        """Whether the fitted curve has an interior maximum (beta > 0)."""
        return bool(np.isfinite(self.beta) and np.isfinite(self.alpha) and self.beta > 0)

    @property
    def log_kl_star(self) -> float:
        """ln KL* = 2 (alpha / beta - 1); NaN without a peak."""
        return float(2.0 * (self.alpha / self.beta - 1.0)) if self.has_peak else float("nan")

    @property
    def d_star(self) -> float:
        """d* = exp(alpha / beta - 1), the argmax of the fitted curve; NaN without a peak."""
        with np.errstate(over="ignore"):
            return float(np.exp(self.log_kl_star / 2.0))

    @property
    def kl_star(self) -> float:
        """KL* = d*^2 (nats); NaN without a peak."""
        with np.errstate(over="ignore"):
            return float(np.exp(self.log_kl_star))

    def predict(self, d) -> np.ndarray:
        """R(d) = d (alpha - beta ln d), with R(0) = 0 (the limit as d -> 0)."""
        x = np.asarray(d, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = x * (self.alpha - self.beta * np.log(x))
        return np.where(x > 0, r, 0.0)


def fit_gao(d, r) -> GaoFit:
    """Fit R = alpha d - beta d ln d (regressors d and -d ln d, no intercept) by linear least squares.

    Points with a non-finite member or d <= 0 are dropped. R^2 = 1 - SS_res / SS_tot with SS_tot taken
    about the mean of R. NaN with a note for fewer than 3 points or fewer than 2 distinct d (the two
    regressors are then not separable from the data).
    """
    x, y = np.asarray(d, dtype=float).ravel(), np.asarray(r, dtype=float).ravel()
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    n = int(x.size)
    nan = float("nan")
    if n < 3 or np.unique(x).size < 2:
        return GaoFit(nan, nan, nan, n, "needs 3 points at 2 or more KL values with KL > 0")
    design = np.column_stack([x, -x * np.log(x)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    alpha, beta = float(coef[0]), float(coef[1])
    ss_res = float(np.sum((y - design @ coef) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else nan
    return GaoFit(alpha, beta, r2, n)


# ---- points ---------------------------------------------------------------------------------------


def has_kl_curves(curves: pd.DataFrame | None) -> bool:
    """Whether ``curves`` hold any finite ``eval/kl`` history (the analysis needs it)."""
    if curves is None or curves.empty or "metric" not in curves:
        return False
    kl = curves.loc[curves["metric"] == KL, "value"]
    return bool(np.isfinite(pd.to_numeric(kl, errors="coerce")).any())


def run_points(curves: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (run, evaluation step) with gold and KL: d = sqrt(max(KL, 0)), gains over step 0.

    Columns ``POINT_COLUMNS``: kl (clipped at 0), d, gold, proxy (NaN when not logged), gold_gain =
    gold - gold at the run's first evaluation (step 0, the initial policy), proxy_gain likewise.
    Sorted by run and step.
    """
    if not has_kl_curves(curves):
        return pd.DataFrame(columns=POINT_COLUMNS)
    c = curves[curves["metric"].isin([GOLD, PROXY, KL]) & np.isfinite(curves["value"])]
    wide = c.pivot_table(index=["run_id", "step"], columns="metric", values="value", aggfunc="last")
    for m in (GOLD, PROXY, KL):
        if m not in wide:
            wide[m] = np.nan
    wide = wide.dropna(subset=[GOLD, KL]).reset_index().sort_values(["run_id", "step"], kind="stable")
    if wide.empty:
        return pd.DataFrame(columns=POINT_COLUMNS)
    kl = np.maximum(wide[KL].to_numpy(float), 0.0)
    first = wide.groupby("run_id")
    out = pd.DataFrame(
        {
            "run_id": wide["run_id"].to_numpy(),
            "step": wide["step"].to_numpy(int),
            "kl": kl,
            "d": np.sqrt(kl),
            "gold": wide[GOLD].to_numpy(float),
            "proxy": wide[PROXY].to_numpy(float),
            "gold_gain": (wide[GOLD] - first[GOLD].transform("first")).to_numpy(float),
            "proxy_gain": (wide[PROXY] - first[PROXY].transform("first")).to_numpy(float),
        }
    )
    return out.reset_index(drop=True)[POINT_COLUMNS]


def _groups(runs: pd.DataFrame) -> pd.DataFrame:
    """run_id -> level (label of ``model.rm_pairs`` or ``ALL``), value (raw level), seed, coef."""
    out = pd.DataFrame({"run_id": runs["run_id"].to_numpy()})
    if RM in runs:
        out["value"] = runs[RM].to_numpy()
        out["level"] = [level_label(v) for v in runs[RM]]
    else:
        out["value"], out["level"] = ALL, ALL
    out["seed"] = runs["seed"].to_numpy() if "seed" in runs else runs["run_id"].to_numpy()
    out["coef"] = runs[COEF].to_numpy() if COEF in runs else np.nan
    return out


def grouped_points(runs: pd.DataFrame, curves: pd.DataFrame | None) -> pd.DataFrame:
    """``run_points`` of the runs in ``runs``, with their level, value, seed and coef joined on."""
    pts = run_points(curves)
    if pts.empty or runs is None or runs.empty or "run_id" not in runs:
        return pts.assign(level=pd.Series(dtype=object), value=pd.Series(dtype=object),
                          seed=pd.Series(dtype=object), coef=pd.Series(dtype=float))  # fmt: skip
    return pts.merge(_groups(runs), on="run_id", how="inner")


def _levels(points: pd.DataFrame) -> list[tuple[str, object]]:
    """(label, raw value) of each level, numbers ascending."""
    if points.empty:
        return []
    first = points.drop_duplicates("level").set_index("level")["value"]
    values = sorted_levels(first)
    return [(level_label(v), v) for v in values]


# ---- per level -----------------------------------------------------------------------------------


def seed_fits(points: pd.DataFrame, gain: str = "gold_gain") -> pd.DataFrame:
    """One ``fit_gao`` per (level, seed) on the points of that seed's runs pooled over other factors.

    Columns ``SEED_FIT_COLUMNS`` (log_kl_star = ln KL*, NaN where beta <= 0).
    """
    rows = []
    if points.empty:
        return pd.DataFrame(columns=SEED_FIT_COLUMNS)
    for (level, seed), g in points.groupby(["level", "seed"], sort=False):
        f = fit_gao(g["d"], g[gain])
        rows.append([level, seed, f.alpha, f.beta, f.r2, f.n, f.has_peak, f.log_kl_star, f.kl_star])
    return pd.DataFrame(rows, columns=SEED_FIT_COLUMNS)


def empirical_peaks(points: pd.DataFrame) -> pd.DataFrame:
    """Per run: the KL at its highest gold (the first such evaluation) and whether that is its last one.

    Columns: run_id, level, kl_peak, at_end.
    """
    cols = ["run_id", "level", "kl_peak", "at_end"]
    if points.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for rid, g in points.groupby("run_id", sort=False):
        g = g.sort_values("step")
        k = int(np.argmax(g["gold"].to_numpy(float)))
        rows.append([rid, g["level"].iloc[0], float(g["kl"].iloc[k]), k == len(g) - 1])
    return pd.DataFrame(rows, columns=cols)


def _exp(iv: Interval) -> tuple[float, float, float]:
    with np.errstate(over="ignore"):
        return float(np.exp(iv.point)), float(np.exp(iv.low)), float(np.exp(iv.high))


def level_summary(points: pd.DataFrame, fits: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per level: pooled fit, per-seed alpha / beta intervals, KL* and the empirical peak.

    Columns ``SUMMARY_COLUMNS``: alpha_pooled, beta_pooled, r2 (pooled fit over all the level's
    points), has_peak (pooled beta > 0), kl_star_pooled; alpha, beta (mean over seeds) with their
    t-interval; n_peak (seeds whose fit has a peak), kl_star [kl_star_low, kl_star_high] =
    exp(t-interval of ln KL* over those seeds); kl_max (largest KL observed); empirical_kl (median over
    runs of the KL at their highest gold), n_empirical, n_peak_at_end (runs whose gold was highest at
    their last evaluation).
    """
    if points.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    fits = seed_fits(points) if fits is None else fits
    peaks = empirical_peaks(points)
    rows = []
    for level, value in _levels(points):
        g = points[points["level"] == level]
        pooled = fit_gao(g["d"], g["gold_gain"])
        sf = fits[fits["level"] == level]
        a, b = stats.mean_interval(sf["alpha"]), stats.mean_interval(sf["beta"])
        with_peak = sf[sf["has_peak"].astype(bool)]
        k = stats.mean_interval(with_peak["log_kl_star"])
        ks = _exp(k)
        p = peaks[peaks["level"] == level]
        rows.append([level, value, int(sf["seed"].nunique()), int(g["run_id"].nunique()), pooled.n,
                     pooled.alpha, pooled.beta, pooled.r2, pooled.has_peak, pooled.kl_star,
                     a.point, a.low, a.high, b.point, b.low, b.high, len(with_peak), *ks,
                     float(g["kl"].max()), float(p["kl_peak"].median()) if len(p) else np.nan, len(p),
                     int(p["at_end"].sum())])  # fmt: skip
        rows[-1].append(unlocated(pooled.has_peak, b, len(sf), ks[0], float(g["kl"].max())))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def unlocated(has_peak: bool, beta: Interval, n_seeds: int, kl_star: float, kl_max: float) -> str:
    """Why the fit does not locate a peak ('' when it does): see the module docstring."""
    if not has_peak:
        return "β ≤ 0, so the fitted curve has no peak within the fit (gold gain does not turn down)"
    if n_seeds >= 2 and not beta.low > 0:
        return "β's interval includes 0, so the fit does not locate a peak (KL* = exp(2(α/β − 1)) is unbounded as β → 0)"
    if not np.isfinite(kl_star):
        return "no seed's fit has a peak"
    if kl_star > LOCATE_FACTOR * kl_max:
        return (f"the fitted peak lies beyond {LOCATE_FACTOR:g}× the largest KL reached "
                f"({stats.fmt_number(kl_max)} nats): not located by this sweep")
    return ""


def fitted_curves(summary: pd.DataFrame, points: pd.DataFrame, n: int = 100) -> pd.DataFrame:
    """The pooled fit of each level evaluated on d in [0, the level's largest d]: columns level, d, gain."""
    rows = []
    for r in summary.itertuples(index=False):
        if not (np.isfinite(r.alpha_pooled) and np.isfinite(r.beta_pooled)):
            continue
        d_max = float(points.loc[points["level"] == r.level, "d"].max())
        d = np.linspace(0.0, d_max, n)
        gain = GaoFit(r.alpha_pooled, r.beta_pooled, r.r2, r.n_points).predict(d)
        rows.append(pd.DataFrame({"level": r.level, "d": d, "gain": gain}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["level", "d", "gain"])


# ---- the peak shift ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeakShift:
    """KL*_large / KL*_small: exp of Welch's interval of ln KL* (large - small) over seeds."""

    small: str
    large: str
    ratio: Interval  # point, low, high on the ratio scale; n = the smaller level's seeds with a peak
    n_small: int  # seeds with a fitted peak at each level
    n_large: int
    no_peak: tuple[str, ...] = ()  # levels whose fit locates no peak (``unlocated``)
    seeds_without_peak: dict[str, int] = field(default_factory=dict)  # level -> seeds with beta <= 0


def peak_shift(summary: pd.DataFrame, fits: pd.DataFrame) -> PeakShift | None:
    """Compare ln KL* at the largest against the smallest level of ``model.rm_pairs``; None for one level."""
    if len(summary) < 2:
        return None
    small, large = summary.iloc[0], summary.iloc[-1]
    no_peak = tuple(str(r["level"]) for r in (small, large) if r["unlocated"])

    def logs(level: str) -> np.ndarray:
        f = fits[(fits["level"] == level) & fits["has_peak"].astype(bool)]
        return f["log_kl_star"].to_numpy(float)

    x, y = logs(small["level"]), logs(large["level"])
    missing = {}
    for lv in (small["level"], large["level"]):
        f = fits[fits["level"] == lv]
        if k := int((~f["has_peak"].astype(bool)).sum()):
            missing[str(lv)] = k
    nan = float("nan")
    if no_peak:
        ratio = Interval(nan, nan, nan, int(min(x.size, y.size)), "no located peak")
    else:
        iv = stats.welch_interval(x, y)
        ratio = Interval(*_exp(iv), iv.n, iv.note)
    return PeakShift(
        str(small["level"]), str(large["level"]), ratio, int(x.size), int(y.size), no_peak, missing
    )


# ---- onsets --------------------------------------------------------------------------------------


def onset_table(
    runs: pd.DataFrame, curves: pd.DataFrame | None, points: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per run with eval points: whether it logged an onset, its KL (clipped at 0), d, step, gold there.

    Columns ``ONSET_COLUMNS``. The onset step is the step of ``eval/overopt_onset_kl`` in ``curves``
    when it was collected, else the evaluation whose KL is nearest the logged value; onset_gold /
    onset_gold_gain (and the proxy's) are the run's values at that step.
    """
    pts = grouped_points(runs, curves) if points is None else points
    if pts.empty:
        return pd.DataFrame(columns=ONSET_COLUMNS)
    logged = runs.set_index("run_id")[ONSET] if ONSET in runs else pd.Series(dtype=float)
    logged = pd.to_numeric(logged, errors="coerce")
    steps = pd.Series(dtype=float)
    if curves is not None and not curves.empty and "metric" in curves:
        oc = curves[(curves["metric"] == ONSET) & np.isfinite(curves["value"])]
        steps = oc.groupby("run_id")["step"].min()
    rows = []
    nan = float("nan")
    for rid, g in pts.groupby("run_id", sort=False):
        g = g.sort_values("step")
        v = float(logged[rid]) if rid in logged.index else nan
        base = [rid, g["level"].iloc[0], g["coef"].iloc[0]]
        if not np.isfinite(v):
            rows.append([*base, False, nan, nan, nan, nan, nan, nan, nan])
            continue
        kl = max(v, 0.0)
        if rid in steps.index and (g["step"] == steps[rid]).any():
            at = g[g["step"] == steps[rid]].iloc[0]
        else:
            at = g.iloc[int(np.argmin(np.abs(g["kl"].to_numpy(float) - kl)))]
        at_step = [float(at[c]) for c in ("gold", "proxy", "gold_gain", "proxy_gain")]
        rows.append([*base, True, kl, float(np.sqrt(kl)), int(at["step"]), *at_step])
    out = pd.DataFrame(rows, columns=ONSET_COLUMNS)
    out["onset"] = out["onset"].astype(bool)
    return out


def onset_summary(onsets: pd.DataFrame) -> pd.DataFrame:
    """Per (level, kl.coef): runs, runs with an onset, median onset KL over those. Columns level, coef,
    n_runs, n_onset, median_kl; levels and coefficients in ascending order."""
    cols = ["level", "coef", "n_runs", "n_onset", "median_kl"]
    if onsets.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    o = onsets.assign(_coef=onsets["coef"].map(lambda c: "" if pd.isna(c) else level_label(c)))
    order = {lab: i for i, lab in enumerate(level_label(v) for v in sorted_levels(o["coef"]))}
    for (level, coef), g in o.groupby(["level", "_coef"], sort=False):
        hit = g[g["onset"]]
        med = float(hit["onset_kl"].median()) if len(hit) else float("nan")
        rows.append([level, coef, len(g), len(hit), med])
    out = pd.DataFrame(rows, columns=cols)
    levels = [level_label(v) for v in sorted_levels(pd.Series([_num(x) for x in out["level"]], dtype=object))]
    out["_a"] = out["level"].map({lab: i for i, lab in enumerate(levels)})
    out["_b"] = out["coef"].map(lambda c: order.get(c, -1))
    return out.sort_values(["_a", "_b"], kind="stable").drop(columns=["_a", "_b"]).reset_index(drop=True)


def _num(label):
    """'512' -> 512.0 (ordering only); text unchanged."""
    try:
        return float(label)
    except (TypeError, ValueError):
        return label


# ---- everything at once --------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """What the findings and the figure use: points, fits, per-level summary, shift and onsets."""

    grouped: bool  # whether ``model.rm_pairs`` is in the runs (else one group, ``ALL``)
    swept: bool  # whether it has two or more levels
    points: pd.DataFrame
    fits: pd.DataFrame
    summary: pd.DataFrame
    curves: pd.DataFrame  # ``fitted_curves``
    shift: PeakShift | None
    onsets: pd.DataFrame
    onset_logged: bool  # whether ``eval/overopt_onset_kl`` is a column of the runs at all

    @property
    def empty(self) -> bool:
        return self.points.empty


def reported_levels(summary: pd.DataFrame) -> list:
    """The levels whose fit the findings report with numbers (a pooled fit and the per-seed α): the
    only ones figure 8 draws, so that its legend never shows an α the report calls n/a."""
    if summary.empty:
        return []
    ok = np.isfinite(summary["alpha_pooled"].to_numpy(float)) & np.isfinite(summary["alpha"].to_numpy(float))
    return summary.loc[ok, "level"].tolist()


def analyse(runs: pd.DataFrame, curves: pd.DataFrame | None) -> Analysis:
    """The Gao et al. analysis of a sweep (empty ``points`` when there are no eval/kl curves)."""
    pts = grouped_points(runs, curves)
    fits = seed_fits(pts)
    summary = level_summary(pts, fits)
    grouped = RM in runs
    swept = grouped and runs[RM].nunique(dropna=True) >= 2
    return Analysis(
        grouped=grouped,
        swept=bool(swept),
        points=pts,
        fits=fits,
        summary=summary,
        curves=fitted_curves(summary, pts),
        shift=peak_shift(summary, fits) if swept else None,
        onsets=onset_table(runs, curves, pts),
        onset_logged=ONSET in runs,
    )
