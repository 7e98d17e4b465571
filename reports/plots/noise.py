"""Figure 4: policy-gradient variance against batch size, and the gradient noise scale per advantage level."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from reports import stats
from reports.aggregate import NoiseStats
from reports.labels import factor_label, metric_label, short
from reports.plots.style import Style, log_axis, new_figure, palette, skippable

DODGE = 0.035  # (a): each advantage level's points shifted by this much in log B, so intervals do not hide each other


@skippable
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
    if not noise.has_scaling and not noise.has_scales:
        return "no grad/batch_variance or grad/signal histories (the variance probe was off)"
    n = int(noise.has_scaling) + int(noise.has_scales)
    fig = new_figure(style, style.double if n > 1 else style.single, style.row + 0.75)
    axes = list(np.atleast_1d(fig.subplots(1, n, squeeze=False)).ravel())
    color = {lv: palette(i) for i, lv in enumerate(noise.levels)}
    if noise.has_scaling:
        _variance_panel(axes.pop(0), noise, color, style)
    if noise.has_scales:
        _scale_panel(axes.pop(0), noise.scales, color, style)
    return fig


def _slope_text(fit: pd.Series | None) -> str:
    if fit is None or not np.isfinite(fit["slope"]):
        return "slope n/a"
    f = stats.fmt_number
    return f"slope {f(fit['slope'], 2)} [{f(fit['low'], 2)}, {f(fit['high'], 2)}]"


def _variance_panel(ax, noise: NoiseStats, color: dict, style: Style) -> None:
    """(a): per level, the geometric IQM of tr(Σ)/B at each batch size with its interval; the 1/B line."""
    handles, labels = [], []
    groups = list(noise.points.groupby("level", sort=False))
    for i, (lv, g) in enumerate(groups):
        g = g.sort_values("batch_size")
        y = g["iqm"].to_numpy(float)
        low = np.maximum(g["ci_low"].to_numpy(float), y * 1e-3)  # a bound <= 0 runs off the log axis
        yerr = np.vstack([y - low, g["ci_high"].to_numpy(float) - y])
        x = g["batch_size"].to_numpy(float) * np.exp(DODGE * (i - (len(groups) - 1) / 2))  # side by side
        h = ax.errorbar(x, y, yerr=yerr, fmt="o-", color=color[lv], capsize=2,
                        elinewidth=0.9, markersize=3.5)  # fmt: skip
        handles.append(h)
        labels.append(f"{lv}: {_slope_text(noise.slope(lv))}")
    (ref,) = ax.plot(*noise.reference(), color="0.4", linestyle="--", linewidth=0.9)
    handles.append(ref)
    labels.append("1/B (slope -1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_axis(ax.yaxis)
    sizes = sorted(noise.points["batch_size"].unique())
    ax.xaxis.set_major_locator(FixedLocator(sizes))  # ticks at the batch sizes run, and only there
    ax.xaxis.set_major_formatter(FixedFormatter([f"{b:g}" for b in sizes]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(sizes[0] / 1.25, sizes[-1] * 1.25)
    ax.set_xlabel(factor_label("rollout.batch_size") + " B (completions; series offset sideways)")
    ax.set_ylabel(short(metric_label("grad/batch_variance")))
    ax.set_title("(a)", loc="left")
    ax.legend(handles, labels, loc="best", fontsize=style.small - 1)


def _scale_panel(ax, scales: pd.DataFrame, color: dict, style: Style) -> None:
    """(b): per level, the noise scale's Fieller interval (bar) and point (tick); 'unresolved' as text."""
    rows = scales.reset_index(drop=True)
    y = np.arange(len(rows))[::-1]
    resolved = rows[rows["resolved"]]
    for yi, r in zip(y, rows.itertuples(index=False), strict=True):
        if r.resolved:
            ax.barh(yi, r.high - r.low, left=r.low, height=0.6, color=color[r.level], alpha=0.45, linewidth=0)
            ax.plot([r.point, r.point], [yi - 0.3, yi + 0.3], color=color[r.level], linewidth=1.6)
    if not resolved.empty:
        ax.set_xscale("log")
        log_axis(ax.xaxis)
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
