"""Figures 1 and 2: learning curves per factor level, and the final reward per factor level."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports import aggregate as A
from reports.labels import factor_label, level_label, metric_label
from reports.plots.style import (
    Style,
    band,
    episodes_axis,
    interval_bars,
    legend_above,
    new_figure,
    palette,
    panel_grid,
    skippable,
)
from reports.stats import finite_rows


@skippable
def learning_curves(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], style: Style, metric: str = "eval/gold"
) -> Figure | str:
    """IQM of ``metric`` vs episodes with bootstrap bands: one panel per factor, one line per level."""
    c = A.metric_curves(curves, metric)
    factors = A.varying(c, factors)
    if c.empty:
        return f"no {metric} history"
    if not factors:
        return "no factor with two or more levels"
    nrows, ncols = panel_grid(len(factors), style)
    width = style.double
    fig = new_figure(style, width, style.row * nrows + 0.35 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    for i, (ax, f) in enumerate(zip(axes, factors, strict=False)):
        handles, labels = [], []
        for level, j, b in A.split_bands(A.curve_bands(c, f)):
            handles.append(band(ax, b.x, b.point, b.low, b.high, palette(j), level_label(level)))
            labels.append(level_label(level))
        legend_above(ax, handles, labels, factor_label(f), width / ncols, style)
        episodes_axis(ax)
        if i % ncols == 0:
            ax.set_ylabel(metric_label(metric))
        if i >= len(factors) - ncols:
            ax.set_xlabel(metric_label("episodes"))
    for ax in axes[len(factors) :]:
        ax.set_visible(False)
    return fig


@skippable
def final_by_factor(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], style: Style, metric: str = "eval/gold"
) -> Figure | str:
    """Interval plot (IQM + ``stats.interval``, Yuen's trimmed-mean t-interval) of the final ``metric`` per level."""
    r = finite_rows(runs, metric)
    factors = A.varying(r, factors)
    if r.empty:
        return f"no final {metric}"
    if not factors:
        return "no factor with two or more levels"
    nrows, ncols = panel_grid(len(factors), style)
    max_levels = max(r[f].nunique() for f in factors)
    fig = new_figure(style, style.double, nrows * (0.45 + 0.2 * max_levels) + 0.2)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, squeeze=False)).ravel()
    for ax, f in zip(axes, factors, strict=False):
        rows = A.interval_rows(r, f, metric)
        interval_bars(ax, rows, [palette(j) for j in rows["order"]], [level_label(v) for v in rows["level"]])
        ax.set_title(factor_label(f), loc="left")
        ax.xaxis.set_major_locator(MaxNLocator(4))
    for ax in axes[len(factors) :]:
        ax.set_visible(False)
    fig.supxlabel(
        f"final {metric_label(metric)}: IQM (tick) and 95% Yuen interval (bar)", fontsize=style.font
    )
    return fig
