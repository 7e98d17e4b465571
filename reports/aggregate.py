"""Everything the figures draw, computed from the tidy frames of ``reports.collect``.

The figure code (``reports.plots``) calls these and only draws what they return: frames and small
dataclasses, no matplotlib here. As in rliable, statistics (``reports.stats``) come first, then
their aggregation into frames (this module), then the figures.

- ``aggregate_curve`` / ``curve_bands``: IQM and pointwise bootstrap band of a metric's curves over
  the runs of each level, on a shared episodes grid (figures 1, 6 and 7).
- ``interval_rows``: per-level IQM with its interval, one row per level (figures 2 and 6).
- ``Frontier``: final points, onsets and per-level IQM KL-reward trajectories (figure 3).
- ``NoiseStats``: batch-gradient variance per batch size, its slopes and the noise scale per
  advantage level (figure 4, from ``reports.effects``).
- ``SensitivityGrid``: the IQM of the final metric over two factors, per advantage level (figure 5).
- the facts the captions quote (``frontier_hue``, ``logged_onsets``, ``matched_impl_runs``).

Pure: numpy, pandas and the ``reports`` statistics modules; no I/O, no plotting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from harness.schema import IMPLEMENTATIONS, REFERENCE_IMPL
from reports import effects, overopt, stats
from reports.labels import advantage_column
from reports.stats import finite_rows, sorted_levels

BAND_COLUMNS = ["level", "order", "x", "point", "low", "high", "n_runs"]


# ---- selection -----------------------------------------------------------------------------------


def varying(frame: pd.DataFrame, factors: Sequence[str]) -> list[str]:
    """The ``factors`` that are columns of ``frame`` with two or more levels, in order."""
    return [f for f in factors if f in frame and frame[f].nunique() >= 2]


def metric_curves(curves: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    """The rows of ``curves`` of one metric with a finite value and episode count (empty when none)."""
    if curves is None or curves.empty or "metric" not in curves:
        return pd.DataFrame()
    c = curves[(curves["metric"] == metric) & np.isfinite(curves["value"]) & np.isfinite(curves["episodes"])]
    return c


def single_level(runs: pd.DataFrame, metric: str, keys: Sequence[str]) -> str | None:
    """The first of ``keys`` with fewer than two levels among the runs with a finite ``metric``; None if all vary."""
    r = finite_rows(runs, metric)
    return next((k for k in keys if k not in r or r[k].nunique() < 2), None)


# ---- curves --------------------------------------------------------------------------------------


class Band(NamedTuple):
    """A curve aggregated over runs: x grid, IQM, band low and high (each (G,)), runs aggregated."""

    x: np.ndarray
    point: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int


def aggregate_curve(c: pd.DataFrame, n_points: int = 30) -> Band | None:
    """IQM and pointwise percentile-bootstrap band (``stats.curve_band``) over runs on a shared episodes grid.

    c: long rows (run_id, episodes, value) of one metric for one group of runs. Runs with other
    batch sizes see other episode counts: each run is linearly interpolated onto the grid,
    which spans [0, the fewest episodes any run reached] (compare at equal samples only).
    Returns a ``Band`` (x, iqm, low, high, n_runs) or None.
    """
    if c.empty:
        return None
    c = c.sort_values(["run_id", "episodes"], kind="stable")
    ids = c["run_id"].to_numpy()
    x, y = c["episodes"].to_numpy(float), c["value"].to_numpy(float)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])  # contiguous: sorted by run_id
    per_run = [(x[a:b], y[a:b]) for a, b in zip(starts, np.r_[starts[1:], len(ids)], strict=True)]
    lo = max(float(px[0]) for px, _ in per_run)
    hi = min(float(px[-1]) for px, _ in per_run)
    xs = np.unique(x)
    xs = xs[(xs >= lo) & (xs <= hi)]
    if xs.size > n_points:
        xs = np.linspace(lo, hi, n_points)
    if xs.size == 0:
        return None
    v = np.stack([np.interp(xs, px, py) for px, py in per_run])
    point, low, high = stats.curve_band(v)
    return Band(xs, point, low, high, len(per_run))


def curve_bands(c: pd.DataFrame, by: str, levels: Sequence | None = None, n_points: int = 30) -> pd.DataFrame:
    """``aggregate_curve`` of the rows of ``c`` at each level of ``by``: long rows, one per grid point.

    levels: the levels in drawing order (default: the sorted levels of ``c[by]``). Columns
    ``BAND_COLUMNS``: level, order (the level's position in ``levels``: its colour), x, point,
    low, high, n_runs. Levels without a band (no rows, no shared grid) are left out.
    """
    levels = sorted_levels(c[by]) if levels is None else list(levels)
    parts = []
    for j, level in enumerate(levels):
        band = aggregate_curve(c[c[by] == level], n_points=n_points)
        if band is None:
            continue
        part = pd.DataFrame({"x": band.x, "point": band.point, "low": band.low, "high": band.high})
        parts.append(part.assign(level=level, order=j, n_runs=band.n)[BAND_COLUMNS])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=BAND_COLUMNS)


def split_bands(bands: pd.DataFrame) -> list[tuple[object, int, Band]]:
    """(level, order, Band) of each level of a ``curve_bands`` frame, in drawing order."""
    out = []
    for order, g in bands.groupby("order", sort=True):
        band = Band(g["x"].to_numpy(float), g["point"].to_numpy(float), g["low"].to_numpy(float),
                    g["high"].to_numpy(float), int(g["n_runs"].iloc[0]))  # fmt: skip
        out.append((g["level"].iloc[0], int(order), band))
    return out


# ---- per-level intervals -------------------------------------------------------------------------


def interval_rows(runs: pd.DataFrame, factor: str, metric: str, levels: Sequence | None = None) -> pd.DataFrame:
    """One row per level of ``factor``: ``stats.summarise_by`` of the runs' final ``metric`` (IQM, Yuen interval).

    levels: keep only these, in this order (levels without a finite value dropped); default every
    level, sorted. Column ``order``: the level's position in ``levels`` (its colour), else its row.
    """
    table = stats.summarise_by(finite_rows(runs, metric), factor, metric)
    if levels is None:
        return table.assign(order=range(len(table)))
    levels = list(levels)
    table = table.set_index("level").reindex(levels).dropna(subset=["iqm"]).reset_index()
    return table.assign(order=[levels.index(v) for v in table["level"]])


# ---- figure 3: reward against KL -----------------------------------------------------------------


def frontier_hue(runs: pd.DataFrame, factors: Sequence[str]) -> str | None:
    """The factor that colours the frontier: the KL coefficient when swept, else the first factor."""
    for f in ("kl.coef", *factors):
        if f in runs and runs[f].nunique() >= 2:
            return f
    return None


def logged_onsets(runs: pd.DataFrame) -> int:
    """How many runs logged an over-optimisation onset (``eval/overopt_onset_kl``)."""
    if overopt.ONSET not in runs:
        return 0
    return int(pd.to_numeric(runs[overopt.ONSET], errors="coerce").notna().sum())


def kl_trajectory(kl: pd.DataFrame, y: pd.DataFrame, run_ids) -> pd.DataFrame:
    """IQM over runs, per eval step, of (KL, reward): the path a level takes during training.

    kl, y: ``metric_curves`` of eval/kl and of the reward. Columns kl, value, one row per step
    both were logged at by the runs ``run_ids``; empty when none.
    """
    ids = set(run_ids)
    empty = pd.DataFrame(columns=["kl", "value"])
    if kl.empty or y.empty:
        return empty
    a = kl[kl["run_id"].isin(ids)][["run_id", "step", "value"]]
    b = y[y["run_id"].isin(ids)][["run_id", "step", "value"]]
    m = a.merge(b, on=["run_id", "step"], suffixes=("_kl", "_y"))
    if m.empty:
        return empty
    g = m.groupby("step")
    xs = g["value_kl"].apply(lambda s: stats.iqm(s)).to_numpy(float)
    ys = g["value_y"].apply(lambda s: stats.iqm(s)).to_numpy(float)
    return pd.DataFrame({"kl": xs, "value": ys})


@dataclass(frozen=True)
class Frontier:
    """What figure 3 draws: per-run final (KL, reward) points, onsets, per-level IQM trajectories.

    runs: the runs with a finite final eval/kl and eval/gold; hue: the colouring factor
    (``frontier_hue``; None: one group); levels: its levels ([None] without a hue); panels:
    eval/gold and, when logged, eval/proxy; onsets: ``overopt.onset_table`` rows of the runs
    that logged one; paths: one ``kl_trajectory`` per (metric, level order) with a boolean
    ``peak`` column marking the gold path's maximum when it lies before the path's end.
    """

    runs: pd.DataFrame
    hue: str | None
    levels: list
    panels: list[str]
    onsets: pd.DataFrame
    paths: dict[tuple[str, int], pd.DataFrame]

    @classmethod
    def of(cls, runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str]) -> Frontier:
        r = finite_rows(finite_rows(runs, "eval/kl"), "eval/gold")
        panels = ["eval/gold"] + (["eval/proxy"] if not finite_rows(r, "eval/proxy").empty else [])
        hue = frontier_hue(r, factors)
        levels = sorted_levels(r[hue]) if hue else [None]
        onsets = overopt.onset_table(r, curves) if not r.empty else pd.DataFrame(columns=overopt.ONSET_COLUMNS)
        onsets = onsets[onsets["onset"]] if not onsets.empty else onsets
        fr = cls(r, hue, levels, panels, onsets, {})
        kl = metric_curves(curves, "eval/kl")
        for metric in panels:
            y = metric_curves(curves, metric)
            for j, level in enumerate(levels):
                path = kl_trajectory(kl, y, fr.level_runs(level)["run_id"])
                if path.empty:
                    continue
                peak = np.zeros(len(path), dtype=bool)
                k = int(np.argmax(path["value"].to_numpy(float)))
                peak[k] = metric == "eval/gold" and k < len(path) - 1
                fr.paths[(metric, j)] = path.assign(peak=peak)
        return fr

    def level_runs(self, level) -> pd.DataFrame:
        """The runs at one level of the hue (all runs without a hue)."""
        return self.runs if self.hue is None else self.runs[self.runs[self.hue] == level]

    def level_onsets(self, level) -> pd.DataFrame:
        """The onset rows of the runs at one level of the hue."""
        if self.onsets.empty:
            return self.onsets
        return self.onsets[self.onsets["run_id"].isin(set(self.level_runs(level)["run_id"]))]


# ---- figure 4: gradient noise --------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseStats:
    """What figure 4 draws, computed by ``reports.effects`` (the figure computes nothing itself).

    points: ``effects.batch_variance_points``; slopes: ``effects.batch_variance_slopes``;
    scales: ``effects.noise_scale_by``; group: the advantage column (None: all runs).
    """

    group: str | None
    points: pd.DataFrame
    slopes: pd.DataFrame
    scales: pd.DataFrame

    @classmethod
    def of(cls, runs: pd.DataFrame, curves: pd.DataFrame) -> NoiseStats:
        """Per-run probe means (``effects.with_noise``) aggregated per advantage level."""
        noisy = effects.with_noise(runs, curves)
        group = advantage_column(noisy, 1)
        return cls(
            group,
            effects.batch_variance_points(noisy, group),
            effects.batch_variance_slopes(noisy, group),
            effects.noise_scale_by(noisy, group),
        )

    @property
    def has_scaling(self) -> bool:
        """Whether panel (a) has data: batch variance at two or more batch sizes."""
        return not self.points.empty and self.points["batch_size"].nunique() >= 2

    @property
    def has_scales(self) -> bool:
        """Whether panel (b) has data: a noise scale for at least one level."""
        return not self.scales.empty

    @property
    def levels(self) -> list:
        """Every level of either panel, in order of appearance (one colour each)."""
        return list(dict.fromkeys([*self.points.get("level", []), *self.scales.get("level", [])]))

    def slope(self, level) -> pd.Series | None:
        """The ``batch_variance_slopes`` row of ``level``; None when it has none."""
        slopes = self.slopes.set_index("level") if not self.slopes.empty else pd.DataFrame()
        return slopes.loc[level] if level in slopes.index else None

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The 1/B line (slope -1 on log-log axes) through the geometric mean of IQM x B: (B, c / B)."""
        pts = self.points
        b = np.asarray(sorted(pts["batch_size"].unique()), dtype=float)
        pos = pts[pts["iqm"] > 0]
        c = float(np.exp(np.mean(np.log(pos["iqm"] * pos["batch_size"])))) if len(pos) else 1.0
        return b, c / b


# ---- figure 5: sensitivity -----------------------------------------------------------------------


MAX_PANELS = 6  # figure 5: panels drawn; factors beyond that are pooled (and said so)


@dataclass(frozen=True)
class SensitivityGrid:
    """IQM of a final metric over ``rows`` x ``cols`` levels, one grid per panel.

    A panel is one level of the advantage factor and of every other varying factor in ``by`` (as many as
    fit in ``MAX_PANELS``), so a square pools only the seeds of one cell; factors that did not fit are
    ``pooled`` (a square then combines their levels, and the caption says so).
    values[i][a, b]: IQM over the runs of panel i at (row_levels[a], col_levels[b]); NaN where no run
    ran; counts[i][a, b]: how many runs that is. panels: the panel's level (one panel key) or tuple of
    levels (several; [None]: one panel of all runs); panel_keys: the columns panels are split by.
    vmin, vmax: the shared scale.
    """

    rows: str
    cols: str
    row_levels: list
    col_levels: list
    panels: list
    values: list[np.ndarray]
    vmin: float
    vmax: float
    panel_keys: tuple[str, ...] = ()
    counts: tuple[np.ndarray, ...] = ()
    pooled: tuple[str, ...] = ()


def sensitivity_grid(runs: pd.DataFrame, metric: str, rows: str, cols: str, by: Sequence[str] = ()) -> SensitivityGrid:
    """``SensitivityGrid`` of the runs' final ``metric``: panels per advantage level and per level of each
    other varying factor of ``by`` while they fit ``MAX_PANELS``."""
    from reports.labels import in_advantage

    r = finite_rows(runs, metric)
    group = advantage_column(r, 1)
    others = [k for k in dict.fromkeys(by) if k in r and r[k].nunique(dropna=True) >= 2
              and k not in (rows, cols, group) and not in_advantage(k)]
    keys = [group] if group else []
    for k in others:
        if _n_panels(r, [*keys, k]) <= MAX_PANELS:
            keys.append(k)
    pooled = tuple(k for k in others if k not in keys)
    tuples = sorted({tuple(t) for t in r[keys].itertuples(index=False)}, key=lambda t: [stats._sort_key(v) for v in t])
    combos = [None] if not keys else ([t[0] for t in tuples] if len(keys) == 1 else tuples)
    ylv, xlv = sorted_levels(r[rows]), sorted_levels(r[cols])
    grids, counts = [], []
    for p in combos:
        sel = r
        for k, v in zip(keys, (p,) if len(keys) == 1 else (p or ()), strict=True):
            sel = sel[sel[k] == v]
        z, n = np.full((len(ylv), len(xlv)), np.nan), np.zeros((len(ylv), len(xlv)), int)
        for (a, b), g in sel.groupby([rows, cols]):
            z[ylv.index(a), xlv.index(b)] = stats.iqm(g[metric])
            n[ylv.index(a), xlv.index(b)] = len(g)
        grids.append(z)
        counts.append(n)
    vmin = float(np.nanmin([np.nanmin(z) for z in grids]))
    vmax = float(np.nanmax([np.nanmax(z) for z in grids]))
    return SensitivityGrid(rows, cols, ylv, xlv, combos, grids, vmin, vmax, tuple(keys), tuple(counts), pooled)


def _n_panels(r: pd.DataFrame, keys: list[str]) -> int:
    return int(r.groupby(keys).ngroups) if keys else 1


# ---- figure 6: custom against TRL ----------------------------------------------------------------


def impls_present(runs: pd.DataFrame) -> list[str]:
    """The registered implementations (``harness.schema.IMPLEMENTATIONS``, in its order) the runs hold, when the
    reference (the first) is among them and at least one other; else []."""
    held = set(runs["impl"]) if "impl" in runs else set()
    present = [i for i in IMPLEMENTATIONS if i in held]
    return present if REFERENCE_IMPL in present and len(present) >= 2 else []


def matched_impl_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of settings (apart from impl and seed) that every implementation present finished."""
    present = impls_present(runs)
    return stats.matched(runs, "impl", present) if present else runs.iloc[0:0]
