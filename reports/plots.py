"""Paper figures from the tidy frames of ``reports.collect``: the only module importing matplotlib/seaborn.

Every figure function takes ``(runs, curves, factors, style)`` and returns a matplotlib
``Figure``, or ``None`` when its data is absent (no gradient probe, no TRL runs, one clip
level ...); ``fn.explain(...)`` returns the reason instead of ``None``. ``make_figures`` draws
and saves all of them as vector PDF (Type 42 fonts) + PNG (300 dpi).

No pyplot: figures are ``matplotlib.figure.Figure`` objects (no global state, nothing to close),
drawn under an rc context built from a ``Style`` (venue column widths, print-sized fonts,
seaborn's colourblind palette, no LaTeX).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from cycler import cycler
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from reports import effects, overopt, stats
from reports.stats import level_label

# ---- style ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """Venue geometry and type sizes. Widths in inches; sizes in points."""

    name: str
    single: float  # one-column figure (or half the text width on one-column venues)
    double: float  # full text width
    font: float = 8.0
    small: float = 7.0  # ticks, legends, annotations
    row: float = 1.45  # height of one row of panels

    def rc(self) -> dict[str, Any]:
        return {
            # Type 42 (TrueType) fonts: some venues reject Type 3; no LaTeX installation needed.
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "svg.fonttype": "none",
            "text.usetex": False,
            "mathtext.fontset": "dejavusans",
            "font.family": "sans-serif",
            "font.sans-serif": ["DejaVu Sans"],
            "font.size": self.font,
            "axes.titlesize": self.font,
            "axes.labelsize": self.font,
            "xtick.labelsize": self.small,
            "ytick.labelsize": self.small,
            "legend.fontsize": self.small,
            "legend.title_fontsize": self.small,
            "legend.frameon": False,
            "legend.handlelength": 1.4,
            "legend.columnspacing": 0.9,
            "legend.borderaxespad": 0.2,
            "axes.prop_cycle": cycler(color=PALETTE),
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.linewidth": 0.6,
            "axes.grid": True,
            "grid.linewidth": 0.4,
            "grid.alpha": 0.35,
            "xtick.major.width": 0.6,
            "ytick.major.width": 0.6,
            "xtick.major.size": 2.5,
            "ytick.major.size": 2.5,
            "xtick.minor.size": 1.5,
            "ytick.minor.size": 1.5,
            "lines.linewidth": 1.2,
            "lines.markersize": 3.0,
            "patch.linewidth": 0.5,
            "figure.dpi": 100,
            "savefig.dpi": 300,
            "savefig.pad_inches": 0.02,
            "figure.constrained_layout.h_pad": 0.03,
            "figure.constrained_layout.w_pad": 0.03,
        }


PALETTE = sns.color_palette("colorblind").as_hex()
STYLES: dict[str, Style] = {
    "default": Style("default", single=3.5, double=7.0),
    "icml": Style("icml", single=3.25, double=6.75),
    # One-column venues: text width 5.5 in; "single" is half of it (two figures side by side).
    "neurips": Style("neurips", single=2.7, double=5.5),
    "iclr": Style("iclr", single=2.7, double=5.5),
}


def get_style(name: str | Style = "default") -> Style:
    if isinstance(name, Style):
        return name
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown style '{name}'; choose one of {', '.join(STYLES)}") from None


@contextmanager
def styled(style: Style):
    with mpl.rc_context(style.rc()):
        yield


# ---- labels (units on every axis) ------------------------------------------------------------------

METRIC_LABELS = {
    "eval/gold": "gold reward (task score)",
    "eval/proxy": "proxy reward (RM score)",
    "eval/kl": "KL to reference (nats)",
    "episodes": "episodes (completions)",
    "grad/variance": "microbatch gradient variance (tr Cov_mb)",
    "grad/signal": "gradient signal |G|² (unbiased)",
    "grad/rel_variance": "rel. gradient variance (tr Cov_mb / |G|²)",
    "grad/noise_scale": "noise scale B_simple (completions)",
    "grad/sample_variance": "per-completion gradient variance (tr Σ)",
    "grad/batch_variance": "batch-gradient variance (tr Σ / B)",
    "grad/cosine": "microbatch gradient cosine",
    "grad/mean_norm": "norm of mean gradient ‖ḡ‖",
    "perf/tokens_per_s": "throughput (tokens/s)",
    "response/length": "response length (tokens)",
    "policy/clipfrac_avg": "clip fraction",
    "policy/approxkl_avg": "approx. KL (nats)",
    "objective/entropy": "entropy (nats/token)",
}
FACTOR_LABELS = {
    "ppo.clip_eps": "clip ε",
    "kl.coef": "KL coef. β",
    "rollout.batch_size": "batch size",
    "advantage.level": "advantage level",
    "advantage.baseline": "baseline",
    "advantage": "advantage",
    "impl": "implementation",
    "loss.agg": "loss aggregation",
    "kl.estimator": "KL estimator",
    "model.rm_pairs": "RM training pairs",
}
HEALTH_METRICS = ("policy/clipfrac_avg", "policy/approxkl_avg", "response/length", "objective/entropy")


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key)


def factor_label(key: str) -> str:
    return FACTOR_LABELS.get(key, key)


def _levels(values: pd.Series) -> list:
    return stats.sorted_levels(values)


def _k(x: float, _pos=None) -> str:
    """Tick label: 2500 -> '2.5k', 1200000 -> '1.2M'."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


# ---- results -------------------------------------------------------------------------------------


@dataclass
class FigureResult:
    stem: str  # file name without suffix, e.g. "fig1_learning_curves"
    title: str
    files: list[Path] = field(default_factory=list)  # [pdf, png] when drawn
    skipped: str | None = None  # why it was not drawn
    meta: dict[str, Any] = field(default_factory=dict)  # facts for the caption


def _skippable(fn: Callable[..., Figure | str]) -> Callable[..., Figure | None]:
    """fn returns a Figure or a skip reason; the public function returns the Figure or None."""

    @functools.wraps(fn)
    def public(*args, **kwargs) -> Figure | None:
        out = fn(*args, **kwargs)
        return None if isinstance(out, str) else out

    public.explain = fn  # type: ignore[attr-defined]
    return public


def _figure(style: Style, width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


# ---- shared drawing helpers ------------------------------------------------------------------------


def _finite(frame: pd.DataFrame, col: str) -> pd.DataFrame:
    if col not in frame:
        return frame.iloc[0:0]
    return frame[np.isfinite(pd.to_numeric(frame[col], errors="coerce"))]


def _metric_curves(curves: pd.DataFrame, metric: str) -> pd.DataFrame:
    if curves is None or curves.empty or "metric" not in curves:
        return pd.DataFrame()
    c = curves[(curves["metric"] == metric) & np.isfinite(curves["value"]) & np.isfinite(curves["episodes"])]
    return c


def aggregate_curve(c: pd.DataFrame, n_points: int = 30) -> tuple[np.ndarray, ...] | None:
    """IQM and pointwise percentile-bootstrap band (``stats.curve_band``) over runs on a shared episodes grid.

    c: long rows (run_id, episodes, value) of one metric for one group of runs. Runs with other
    batch sizes see other episode counts: each run is linearly interpolated onto the grid,
    which spans [0, the fewest episodes any run reached] (compare at equal samples only).
    Returns (x, iqm, low, high, n_runs) or None.
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
    return xs, point, low, high, len(per_run)


def _legend_above(ax, handles, labels, title: str, width_in: float, style: Style) -> None:
    """A legend in a band above the axes, as many columns as fit the panel width."""
    char_w = style.small / 72 * 0.55  # average glyph width, inches
    widths = [0.35 + len(lab) * char_w for lab in labels]
    ncol = len(labels)
    while ncol > 1 and sum(sorted(widths, reverse=True)[:ncol]) > width_in:
        ncol -= 1
    rows = int(np.ceil(len(labels) / ncol))
    # matplotlib fills legend columns first; permute so the levels read left to right, row by row.
    order = [r * ncol + c for c in range(ncol) for r in range(rows) if r * ncol + c < len(labels)]
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        title=title,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=ncol,
        handletextpad=0.4,
    )


def _grid(n: int, style: Style, max_cols: int | None = None) -> tuple[int, int]:
    cols = max_cols or (4 if style.double >= 6.5 else 2)
    cols = min(n, cols)
    return int(np.ceil(n / cols)), cols


def _band(ax, x, point, low, high, color, label, marker=None) -> Any:
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    (line,) = ax.plot(x, point, color=color, label=label, marker=marker, markersize=2.5)
    return line


def _interval_rows(
    ax,
    rows: pd.DataFrame,
    colors: Sequence[str],
    labels: Sequence[str],
) -> None:
    """rliable-style interval plot: one horizontal CI bar + IQM tick per row, top to bottom."""
    y = np.arange(len(rows))[::-1]
    for yi, (_, r), color in zip(y, rows.iterrows(), colors, strict=True):
        ax.barh(
            yi, r["ci_high"] - r["ci_low"], left=r["ci_low"], height=0.6, color=color, alpha=0.45, linewidth=0
        )
        ax.plot([r["iqm"], r["iqm"]], [yi - 0.3, yi + 0.3], color=color, linewidth=1.6, solid_capstyle="butt")
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.grid(axis="y", visible=False)


def _log_axis(axis) -> None:
    """Log ticks at 1, 2, 5 x 10^k, labelled as plain numbers (0.5, 2, 10), no minor labels."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _xfmt_episodes(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.xaxis.set_major_formatter(FuncFormatter(_k))


# ---- figure 1: learning curves ------------------------------------------------------------------------


@_skippable
def learning_curves(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], style: Style, metric: str = "eval/gold"
) -> Figure | str:
    """IQM of ``metric`` vs episodes with bootstrap bands: one panel per factor, one line per level."""
    c = _metric_curves(curves, metric)
    factors = [f for f in factors if f in c and c[f].nunique() >= 2]
    if c.empty:
        return f"no {metric} history"
    if not factors:
        return "no factor with two or more levels"
    nrows, ncols = _grid(len(factors), style)
    width = style.double
    fig = _figure(style, width, style.row * nrows + 0.35 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    for i, (ax, f) in enumerate(zip(axes, factors, strict=False)):
        handles, labels = [], []
        for j, level in enumerate(_levels(c[f])):
            agg = aggregate_curve(c[c[f] == level])
            if agg is None:
                continue
            x, point, low, high, _ = agg
            handles.append(_band(ax, x, point, low, high, PALETTE[j % len(PALETTE)], level_label(level)))
            labels.append(level_label(level))
        _legend_above(ax, handles, labels, factor_label(f), width / ncols, style)
        _xfmt_episodes(ax)
        if i % ncols == 0:
            ax.set_ylabel(metric_label(metric))
        if i >= len(factors) - ncols:
            ax.set_xlabel(metric_label("episodes"))
    for ax in axes[len(factors) :]:
        ax.set_visible(False)
    return fig


# ---- figure 2: final reward per factor level -------------------------------------------------------------


@_skippable
def final_by_factor(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], style: Style, metric: str = "eval/gold"
) -> Figure | str:
    """Interval plot (IQM + ``stats.interval``, Yuen's trimmed-mean t-interval) of the final ``metric`` per level."""
    r = _finite(runs, metric)
    factors = [f for f in factors if f in r and r[f].nunique() >= 2]
    if r.empty:
        return f"no final {metric}"
    if not factors:
        return "no factor with two or more levels"
    nrows, ncols = _grid(len(factors), style)
    max_levels = max(r[f].nunique() for f in factors)
    fig = _figure(style, style.double, nrows * (0.45 + 0.2 * max_levels) + 0.2)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, squeeze=False)).ravel()
    for ax, f in zip(axes, factors, strict=False):
        table = stats.summarise_by(r, f, metric)
        levels = table["level"].tolist()
        colors = [PALETTE[j % len(PALETTE)] for j in range(len(levels))]
        _interval_rows(ax, table, colors, [level_label(v) for v in levels])
        ax.set_title(factor_label(f), loc="left")
        ax.xaxis.set_major_locator(MaxNLocator(4))
    for ax in axes[len(factors) :]:
        ax.set_visible(False)
    fig.supxlabel(
        f"final {metric_label(metric)}: IQM (tick) and 95% Yuen interval (bar)", fontsize=style.font
    )
    return fig


# ---- figure 3: reward vs KL frontier ------------------------------------------------------------------


def frontier_hue(runs: pd.DataFrame, factors: Sequence[str]) -> str | None:
    """The factor that colours the frontier: the KL coefficient when swept, else the first factor."""
    for f in ("kl.coef", *factors):
        if f in runs and runs[f].nunique() >= 2:
            return f
    return None


@_skippable
def reward_kl_frontier(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], style: Style
) -> Figure | str:
    """Gold and proxy reward against KL: per-run final points and per-level IQM trajectories."""
    r = _finite(_finite(runs, "eval/kl"), "eval/gold")
    if r.empty:
        return "no final eval/kl and eval/gold"
    panels = ["eval/gold"] + (["eval/proxy"] if not _finite(r, "eval/proxy").empty else [])
    hue = frontier_hue(r, factors)
    levels = _levels(r[hue]) if hue else [None]
    fig = _figure(style, style.double if len(panels) > 1 else style.single, style.row + 0.45)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, squeeze=False)).ravel()
    kl = _metric_curves(curves, "eval/kl")
    onsets = overopt.onset_table(r, curves)
    onsets = onsets[onsets["onset"]] if not onsets.empty else onsets
    handles, labels = [], []
    for ax, metric in zip(axes, panels, strict=True):
        y = _metric_curves(curves, metric)
        for j, level in enumerate(levels):
            color = PALETTE[j % len(PALETTE)]
            sel = r if hue is None else r[r[hue] == level]
            ax.scatter(sel["eval/kl"], sel[metric], s=7, color=color, alpha=0.45, linewidths=0, zorder=2)
            on = onsets[onsets["run_id"].isin(set(sel["run_id"]))] if not onsets.empty else onsets
            if len(on):
                col = "onset_gold" if metric == "eval/gold" else "onset_proxy"
                ax.scatter(on["onset_kl"], on[col], marker=ONSET_MARKER, s=22, color=color, zorder=5,
                           edgecolors="black", linewidths=0.4)  # fmt: skip
            traj = _trajectory(kl, y, sel["run_id"])
            if traj is not None:
                (line,) = ax.plot(traj[0], traj[1], color=color, marker="o", markersize=2.2, zorder=3)
                peak = int(np.argmax(traj[1])) if metric == "eval/gold" else None
                if peak is not None and peak < len(traj[1]) - 1:
                    ax.plot(
                        traj[0][peak],
                        traj[1][peak],
                        marker="*",
                        markersize=7,
                        color=color,
                        zorder=4,
                        markeredgecolor="black",
                        markeredgewidth=0.4,
                    )
                if metric == "eval/gold":
                    handles.append(line)
                    labels.append(level_label(level) if hue else "all runs")
        ax.set_ylabel(metric_label(metric))
        ax.set_xlabel(metric_label("eval/kl"))
        ax.xaxis.set_major_locator(MaxNLocator(5))
    if len(onsets):
        handles.append(_onset_handle())
        labels.append("onset (run)")
    if hue or len(onsets):
        fig.legend(handles, labels, title=factor_label(hue) if hue else None, loc="outside right center")
    return fig


ONSET_MARKER = "X"  # a run's logged over-optimisation onset (eval/overopt_onset_kl), figures 3 and 8


def _onset_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], linestyle="none", marker=ONSET_MARKER, markersize=5, color="0.5",
                  markeredgecolor="black", markeredgewidth=0.4)  # fmt: skip


def _trajectory(kl: pd.DataFrame, y: pd.DataFrame, run_ids) -> tuple[np.ndarray, np.ndarray] | None:
    """IQM over runs, per eval step, of (KL, reward): the path a level takes during training."""
    ids = set(run_ids)
    if kl.empty or y.empty:
        return None
    a = kl[kl["run_id"].isin(ids)][["run_id", "step", "value"]]
    b = y[y["run_id"].isin(ids)][["run_id", "step", "value"]]
    m = a.merge(b, on=["run_id", "step"], suffixes=("_kl", "_y"))
    if m.empty:
        return None
    g = m.groupby("step")
    xs = g["value_kl"].apply(lambda s: stats.iqm(s)).to_numpy(float)
    ys = g["value_y"].apply(lambda s: stats.iqm(s)).to_numpy(float)
    return xs, ys


# ---- figure 4: gradient noise ----------------------------------------------------------------------


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
        group = stats.advantage_column(noisy, 1)
        return cls(
            group,
            effects.batch_variance_points(noisy, group),
            effects.batch_variance_slopes(noisy, group),
            effects.noise_scale_by(noisy, group),
        )


@_skippable
def gradient_variance(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    factors: Sequence[str],
    style: Style,
    noise: NoiseStats | None = None,
) -> Figure | str:
    """(a) batch-gradient variance tr(Σ)/B vs batch size (log-log) per advantage level, IQM + Yuen
    interval, 1/B reference, fitted slope in the legend; (b) noise scale B_simple per level with its
    Fieller interval, unresolved levels marked. ``noise`` defaults to ``NoiseStats.of(runs, curves)``.
    """
    noise = noise if noise is not None else NoiseStats.of(runs, curves)
    pts, scales = noise.points, noise.scales
    has_a = not pts.empty and pts["batch_size"].nunique() >= 2
    has_b = not scales.empty
    if not has_a and not has_b:
        return "no grad/batch_variance or grad/signal histories (the variance probe was off)"
    n = int(has_a) + int(has_b)
    fig = _figure(style, style.double if n > 1 else style.single, style.row + 0.75)
    axes = list(np.atleast_1d(fig.subplots(1, n, squeeze=False)).ravel())
    levels = list(dict.fromkeys([*pts.get("level", []), *scales.get("level", [])]))
    color = {lv: PALETTE[i % len(PALETTE)] for i, lv in enumerate(levels)}
    if has_a:
        ax = axes.pop(0)
        slopes = noise.slopes.set_index("level") if not noise.slopes.empty else pd.DataFrame()
        handles, labels = [], []
        for lv, g in pts.groupby("level", sort=False):
            g = g.sort_values("batch_size")
            y = g["iqm"].to_numpy(float)
            low = np.maximum(g["ci_low"].to_numpy(float), y * 1e-3)  # a bound <= 0 runs off the log axis
            yerr = np.vstack([y - low, g["ci_high"].to_numpy(float) - y])
            h = ax.errorbar(g["batch_size"], y, yerr=yerr, fmt="o-", color=color[lv], capsize=2,
                            elinewidth=0.9, markersize=3.5)  # fmt: skip
            fit = slopes.loc[lv] if lv in slopes.index else None
            slope = (
                f"slope {stats.fmt_number(fit['slope'], 2)} [{stats.fmt_number(fit['low'], 2)}, "
                f"{stats.fmt_number(fit['high'], 2)}]"
                if fit is not None and np.isfinite(fit["slope"])
                else "slope n/a"
            )
            handles.append(h)
            labels.append(f"{lv}: {slope}")
        b = np.asarray(sorted(pts["batch_size"].unique()), dtype=float)
        pos = pts[pts["iqm"] > 0]
        c = float(np.exp(np.mean(np.log(pos["iqm"] * pos["batch_size"])))) if len(pos) else 1.0
        (ref,) = ax.plot(b, c / b, color="0.4", linestyle="--", linewidth=0.9)
        handles.append(ref)
        labels.append("1/B (slope -1)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_axis(ax.xaxis)
        _log_axis(ax.yaxis)
        ax.set_xlabel(factor_label("rollout.batch_size") + " B (completions)")
        ax.set_ylabel(_short(metric_label("grad/batch_variance")))
        ax.set_title("(a)", loc="left")
        ax.legend(handles, labels, loc="best", fontsize=style.small - 1)
    if has_b:
        ax = axes.pop(0)
        rows = scales.reset_index(drop=True)
        y = np.arange(len(rows))[::-1]
        resolved = rows[rows["resolved"]]
        for yi, r in zip(y, rows.itertuples(index=False), strict=True):
            if r.resolved:
                ax.barh(
                    yi, r.high - r.low, left=r.low, height=0.6, color=color[r.level], alpha=0.45, linewidth=0
                )
                ax.plot([r.point, r.point], [yi - 0.3, yi + 0.3], color=color[r.level], linewidth=1.6)
        if not resolved.empty:
            ax.set_xscale("log")
            _log_axis(ax.xaxis)
            x0 = float(resolved["low"].min()) / 1.25
            ax.set_xlim(x0, float(resolved["high"].max()) * 1.25)
        else:
            ax.set_xlim(0, 1)
            ax.set_xticks([])
            x0 = 0.05
        for yi, r in zip(y, rows.itertuples(index=False), strict=True):
            if not r.resolved:
                ax.text(x0, yi, "unresolved (signal ≤ 0 within its interval)", va="center", ha="left",
                        fontsize=style.small - 1, color=color[r.level], style="italic")  # fmt: skip
        ax.set_yticks(y, rows["level"].tolist())
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(metric_label("grad/noise_scale"))
        ax.set_title("(b)", loc="left")
    return fig


# ---- figure 5: sensitivity heatmap --------------------------------------------------------------------


@_skippable
def sensitivity_heatmap(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    factors: Sequence[str],
    style: Style,
    metric: str = "eval/gold",
    rows: str = "ppo.clip_eps",
    cols: str = "kl.coef",
) -> Figure | str:
    """IQM of the final ``metric`` over ``rows`` x ``cols``, one panel per advantage level."""
    r = _finite(runs, metric)
    for key in (rows, cols):
        if key not in r or r[key].nunique() < 2:
            return f"a single {key} level: nothing to map"
    group = stats.advantage_column(r, 1)
    panels = _levels(r[group]) if group else [None]
    ylv, xlv = _levels(r[rows]), _levels(r[cols])
    grids = []
    for p in panels:
        sel = r if p is None else r[r[group] == p]
        z = np.full((len(ylv), len(xlv)), np.nan)
        for (a, b), g in sel.groupby([rows, cols]):
            z[ylv.index(a), xlv.index(b)] = stats.iqm(g[metric])
        grids.append(z)
    vmin = float(np.nanmin([np.nanmin(z) for z in grids]))
    vmax = float(np.nanmax([np.nanmax(z) for z in grids]))
    cell = min(0.42, (style.double - 1.0) / (len(panels) * len(xlv)))
    width = min(style.double, len(panels) * (len(xlv) * cell + 0.45) + 1.0)
    fig = _figure(style, width, len(ylv) * cell + 0.9)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, squeeze=False)).ravel()
    cmap = mpl.colormaps["viridis"]
    norm = mpl.colors.Normalize(vmin, vmax if vmax > vmin else vmin + 1e-12)
    image = None
    for i, (ax, p, z) in enumerate(zip(axes, panels, grids, strict=True)):
        image = ax.imshow(z, origin="lower", cmap=cmap, norm=norm, aspect="auto")
        for (yi, xi), v in np.ndenumerate(z):
            if np.isfinite(v):
                rgb = cmap(norm(v))[:3]
                light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.5
                ax.text(
                    xi,
                    yi,
                    stats.fmt_number(v, 2),
                    ha="center",
                    va="center",
                    fontsize=style.small - 1,
                    color="black" if light else "white",
                )
        ax.set_xticks(range(len(xlv)), [level_label(v) for v in xlv])
        ax.set_yticks(range(len(ylv)), [level_label(v) for v in ylv])
        ax.grid(False)
        for s in ax.spines.values():
            s.set_visible(False)
        ax.tick_params(length=0)
        ax.set_xlabel(factor_label(cols))
        if i == 0:
            ax.set_ylabel(factor_label(rows))
        if p is not None:
            ax.set_title(level_label(p))
    cb = fig.colorbar(image, ax=list(axes), shrink=0.9, aspect=15, pad=0.02)
    cb.set_label(f"final {metric_label(metric)}\n(IQM over seeds)", fontsize=style.small)
    cb.ax.tick_params(labelsize=style.small)
    cb.ax.yaxis.set_major_locator(MaxNLocator(4))
    return fig


# ---- figure 6: custom vs TRL ----------------------------------------------------------------------------


def matched_impl_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of settings (apart from impl and seed) that both custom and trl finished."""
    return stats.matched(runs, "impl", ["custom", "trl"])


@_skippable
def custom_vs_trl(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], style: Style
) -> Figure | str:
    """Custom vs TRL on matched settings: gold and KL vs episodes, and throughput."""
    m = matched_impl_runs(runs)
    if m.empty:
        return "the sweep has no cell run by both custom and trl"
    ids = set(m["run_id"])
    panels = [k for k in ("eval/gold", "eval/kl") if not _metric_curves(curves, k).empty]
    has_tps = not _finite(m, "perf/tokens_per_s").empty
    n = len(panels) + int(has_tps)
    if n == 0:
        return "no eval curves or throughput for the matched runs"
    fig = _figure(style, style.double, style.row + 0.45)
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)).ravel()
    impls = ["custom", "trl"]
    handles = []
    for ax, metric in zip(axes, panels, strict=False):
        c = _metric_curves(curves, metric)
        c = c[c["run_id"].isin(ids)]
        handles = []
        for j, impl in enumerate(impls):
            agg = aggregate_curve(c[c["impl"] == impl])
            if agg is not None:
                line = _band(ax, *agg[:4], PALETTE[j], impl)
                line.set_linestyle("-" if impl == "custom" else "--")  # visible where the two coincide
                handles.append(line)
        ax.set_ylabel(metric_label(metric))
        ax.set_xlabel(metric_label("episodes"))
        _xfmt_episodes(ax)
    if has_tps:
        ax = axes[-1]
        table = stats.summarise_by(_finite(m, "perf/tokens_per_s"), "impl", "perf/tokens_per_s")
        table = table.set_index("level").reindex(impls).dropna(subset=["iqm"]).reset_index()
        colors = [PALETTE[impls.index(v)] for v in table["level"]]
        _interval_rows(ax, table, colors, table["level"].tolist())
        ax.set_xlabel(metric_label("perf/tokens_per_s"))
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(FuncFormatter(_k))
    if handles:
        fig.legend(handles, impls[: len(handles)], loc="outside upper center", ncol=2)
    return fig


# ---- figure 7: training health ------------------------------------------------------------------------


@_skippable
def training_health(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], style: Style
) -> Figure | str:
    """Clip fraction, approx. KL, response length, entropy vs episodes: rows = metrics, cols = factors."""
    metrics = [k for k in HEALTH_METRICS if not _metric_curves(curves, k).empty]
    if not metrics:
        return "no training-health metrics logged"
    factors = [f for f in factors if f in curves and curves[f].nunique() >= 2]
    if not factors:
        return "no factor with two or more levels"
    factors = factors[:4]
    ncols, nrows = len(factors), len(metrics)
    width = style.double
    fig = _figure(style, width, nrows * 1.05 + 0.55)
    axes = fig.subplots(nrows, ncols, sharex="col", sharey="row", squeeze=False)
    for ci, f in enumerate(factors):
        for ri, metric in enumerate(metrics):
            ax = axes[ri, ci]
            c = _metric_curves(curves, metric)
            handles, labels = [], []
            for j, level in enumerate(_levels(c[f])):
                agg = aggregate_curve(c[c[f] == level], n_points=25)
                if agg is None:
                    continue
                handles.append(_band(ax, *agg[:4], PALETTE[j % len(PALETTE)], level_label(level)))
                labels.append(level_label(level))
            if ri == 0:
                _legend_above(ax, handles, labels, factor_label(f), width / ncols, style)
            if ci == 0:
                ax.set_ylabel(_short(metric_label(metric)))
            _xfmt_episodes(ax)
            ax.yaxis.set_major_locator(MaxNLocator(3))
    fig.align_ylabels(axes[:, 0])
    fig.supxlabel(metric_label("episodes"), fontsize=style.font)
    return fig


def _short(label: str) -> str:
    """Break 'response length (tokens)' onto two lines to fit a narrow row."""
    return label.replace(" (", "\n(", 1) if len(label) > 14 else label


# ---- figure 8: over-optimisation (Gao et al. 2022) ------------------------------------------------------


@_skippable
def overoptimisation(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    factors: Sequence[str],
    style: Style,
    analysis: overopt.Analysis | None = None,
) -> Figure | str:
    """Gold (a) and proxy (b) gain over the initial policy against d = sqrt(KL), colour = RM size.

    Thin lines: single runs' trajectories; thick line (gold): the level's pooled Gao et al. fit
    d (alpha - beta ln d); X: a run's logged onset. ``analysis`` defaults to ``overopt.analyse``;
    the figure computes nothing itself.
    """
    if analysis is None:
        if not overopt.has_kl_curves(curves):
            return "no eval/kl history"
        analysis = overopt.analyse(runs, curves)
    pts = analysis.points
    if pts.empty:
        return "no run with both eval/kl and eval/gold histories"
    panels = ["gold_gain"] + (["proxy_gain"] if np.isfinite(pts["proxy_gain"].to_numpy(float)).any() else [])
    levels = analysis.summary["level"].tolist()
    color = {lv: PALETTE[i % len(PALETTE)] for i, lv in enumerate(levels)}
    fig = _figure(style, style.double if len(panels) > 1 else style.single, style.row + 0.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, squeeze=False)).ravel()
    onsets = analysis.onsets[analysis.onsets["onset"]] if not analysis.onsets.empty else analysis.onsets
    fits = analysis.summary.set_index("level")
    handles, labels = [], []
    for k, (ax, col) in enumerate(zip(axes, panels, strict=True)):
        for lv in levels:
            sel = pts[pts["level"] == lv]
            for _, g in sel.groupby("run_id", sort=False):
                ax.plot(g["d"], g[col], color=color[lv], linewidth=0.6, alpha=0.35, zorder=2)
            if col == "gold_gain":
                c = analysis.curves[analysis.curves["level"] == lv]
                if len(c):
                    (line,) = ax.plot(c["d"], c["gain"], color=color[lv], linewidth=2.2, zorder=4)
                    f = fits.loc[lv]
                    handles.append(line)
                    a, b = stats.fmt_number(f["alpha_pooled"], 2), stats.fmt_number(f["beta_pooled"], 2)
                    labels.append(f"{lv}: α={a}, β={b}")
            on = onsets[onsets["level"] == lv] if len(onsets) else onsets
            if len(on):
                ax.scatter(on["onset_d"], on[f"onset_{col}"], marker=ONSET_MARKER, s=24, color=color[lv],
                           edgecolors="black", linewidths=0.4, zorder=5)  # fmt: skip
        ax.axhline(0.0, color="0.6", linewidth=0.5, zorder=1)
        what = "gold" if col == "gold_gain" else "proxy"
        ax.set_ylabel(f"{what} gain over initial policy")
        ax.set_xlabel("d = √KL (√nats)")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        if len(panels) > 1:
            ax.set_title(f"({'ab'[k]}) {what}", loc="left")
    from matplotlib.lines import Line2D

    handles.append(Line2D([], [], color="0.4", linewidth=0.6, alpha=0.6))
    labels.append("single runs")
    if len(onsets):
        handles.append(_onset_handle())
        labels.append("onset (run)")
    title = factor_label(overopt.RM) + " (fit)" if analysis.grouped else "Gao et al. fit"
    fig.legend(handles, labels, title=title, loc="outside right center")
    return fig


# ---- all figures -----------------------------------------------------------------------------------------

FIGURES: list[tuple[str, str, Callable[..., Figure | None]]] = [
    ("fig1_learning_curves", "Learning curves", learning_curves),
    ("fig2_final_reward", "Final gold reward per factor level", final_by_factor),
    ("fig3_reward_kl_frontier", "Reward-KL frontier", reward_kl_frontier),
    ("fig4_gradient_variance", "Policy-gradient variance", gradient_variance),
    ("fig5_sensitivity", "Sensitivity to clip ε and KL coefficient", sensitivity_heatmap),
    ("fig6_custom_vs_trl", "Custom PPO vs TRL", custom_vs_trl),
    ("fig7_training_health", "Training health", training_health),
    ("fig8_overoptimisation", "Reward vs sqrt(KL) per RM size, Gao et al. 2022 fit", overoptimisation),
]


def save_figure(fig: Figure, out_dir: str | Path, stem: str, style: Style) -> list[Path]:
    """Vector PDF (Type 42 fonts) and a 300 dpi PNG; returns [pdf, png]."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pdf, png = out / f"{stem}.pdf", out / f"{stem}.png"
    with styled(style):
        fig.savefig(pdf, metadata={"CreationDate": None, "Creator": "ppo-harness report"})
        fig.savefig(png, dpi=300, metadata={"Software": "ppo-harness report"})
    return [pdf, png]


def make_figures(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    factors: Sequence[str],
    style: str | Style = "default",
    out_dir: str | Path = "figures",
) -> list[FigureResult]:
    """Draw and save every figure that has data; skipped ones carry the reason."""
    st = get_style(style)
    results = []
    for stem, title, fn in FIGURES:
        with styled(st):
            out = fn.explain(runs, curves, list(factors), st)  # type: ignore[attr-defined]
        res = FigureResult(stem, title)
        if isinstance(out, str):
            res.skipped = out
        else:
            res.files = save_figure(out, out_dir, stem, st)
        res.meta = _meta(stem, runs, factors)
        results.append(res)
    return results


def _meta(stem: str, runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"n_runs": len(runs)}
    if stem == "fig3_reward_kl_frontier":
        meta["hue"] = frontier_hue(runs, factors)
        meta["proxy"] = not _finite(runs, "eval/proxy").empty
    if stem in ("fig3_reward_kl_frontier", "fig8_overoptimisation"):
        onset = pd.to_numeric(runs[overopt.ONSET], errors="coerce") if overopt.ONSET in runs else pd.Series(dtype=float)
        meta["onsets"] = int(onset.notna().sum())
    if stem == "fig8_overoptimisation":
        meta["grouped"] = overopt.RM in runs
    if stem == "fig6_custom_vs_trl":
        meta["n_matched"] = len(matched_impl_runs(runs))
    return meta
