"""Figure 7: training health (clip fraction, approx. KL, response length, entropy) per factor level."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.schema import METRICS
from reports import aggregate as A
from reports.labels import factor_label, level_label, metric_label
from reports.plots.style import Style, band, episodes_axis, legend_above, new_figure, palette, skippable

HEALTH_METRICS = ("policy/clipfrac_avg", "policy/approxkl_avg", "response/length", "objective/entropy")
MAX_COLUMNS = 4  # factors drawn, in order


@skippable
def training_health(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], style: Style
) -> Figure | str:
    """Clip fraction, approx. KL, response length, entropy vs episodes: rows = metrics, cols = factors."""
    metrics = [k for k in HEALTH_METRICS if not A.metric_curves(curves, k).empty]
    if not metrics:
        return "no training-health metrics logged"
    factors = A.varying(curves, factors)
    if not factors:
        return "no factor with two or more levels"
    factors = factors[:MAX_COLUMNS]
    ncols, nrows = len(factors), len(metrics)
    width = style.double
    fig = new_figure(style, width, nrows * 1.2 + 0.55)
    axes = fig.subplots(nrows, ncols, sharex="col", sharey="row", squeeze=False)
    for ci, f in enumerate(factors):
        for ri, metric in enumerate(metrics):
            ax = axes[ri, ci]
            bands = A.curve_bands(A.metric_curves(curves, metric), f, n_points=25)
            handles, labels = [], []
            for level, j, b in A.split_bands(bands):
                handles.append(band(ax, b.x, b.point, b.low, b.high, palette(j), level_label(level)))
                labels.append(level_label(level))
            if ri == 0:
                legend_above(ax, handles, labels, factor_label(f), width / ncols, style)
            if ci == 0:
                ax.set_ylabel(row_label(metric), fontsize=style.small)
            episodes_axis(ax)
            ax.yaxis.set_major_locator(MaxNLocator(3))
    fig.align_ylabels(axes[:, 0])
    fig.supxlabel(metric_label("episodes"), fontsize=style.font)
    return fig


def row_label(metric: str) -> str:
    """A row's y label, one short part per line so that it fits its row's height: the label, a note in
    parentheses, the unit ("approx. KL" / "(new vs old)" / "nats/token")."""
    m = METRICS.get(metric)
    if m is None:
        return metric
    name, _, note = m.label.partition(" (")
    return "\n".join(p for p in (name, f"({note}" if note else "", m.unit) if p)
