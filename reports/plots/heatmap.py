"""Figure 5: sensitivity of the final reward to clip ε and the KL coefficient, per advantage level."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports import aggregate as A
from reports import stats
from reports.labels import factor_label, level_label, metric_label
from reports.plots.style import Style, new_figure, skippable


@skippable
def sensitivity_heatmap(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    factors: Sequence[str],
    style: Style,
    metric: str = "eval/gold",
    rows: str = "ppo.clip_eps",
    cols: str = "kl.coef",
) -> Figure | str:
    """IQM of the final ``metric`` over ``rows`` x ``cols`` (``aggregate.sensitivity_grid``), one panel per
    advantage level."""
    if (key := A.single_level(runs, metric, (rows, cols))) is not None:
        return f"a single {key} level: nothing to map"
    grid = A.sensitivity_grid(runs, metric, rows, cols)
    ylv, xlv, panels = grid.row_levels, grid.col_levels, grid.panels
    cell = min(0.42, (style.double - 1.0) / (len(panels) * len(xlv)))
    width = min(style.double, len(panels) * (len(xlv) * cell + 0.45) + 1.0)
    fig = new_figure(style, width, len(ylv) * cell + 0.9)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, squeeze=False)).ravel()
    cmap = mpl.colormaps["viridis"]
    norm = mpl.colors.Normalize(grid.vmin, grid.vmax if grid.vmax > grid.vmin else grid.vmin + 1e-12)
    image = None
    for i, (ax, p, z) in enumerate(zip(axes, panels, grid.values, strict=True)):
        image = ax.imshow(z, origin="lower", cmap=cmap, norm=norm, aspect="auto")
        _annotate(ax, z, cmap, norm, style)
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


def _annotate(ax, z: np.ndarray, cmap, norm, style: Style) -> None:
    """Each finite cell's value, in black on light colours and white on dark ones."""
    for (yi, xi), v in np.ndenumerate(z):
        if np.isfinite(v):
            rgb = cmap(norm(v))[:3]
            light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.5
            ax.text(xi, yi, stats.fmt_number(v, 2), ha="center", va="center", fontsize=style.small - 1,
                    color="black" if light else "white")  # fmt: skip
