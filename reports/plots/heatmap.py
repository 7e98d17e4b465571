"""Figure 5: sensitivity of the final reward to clip ε and the KL coefficient, one panel per advantage level
and level of the other swept factors (pooled beyond six panels, and said so)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports import aggregate as A
from reports import stats
from reports.labels import factor_label, in_advantage, level_label, metric_label
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
    advantage level and level of each other swept factor (those beyond ``MAX_PANELS`` pooled, said above
    the panels); each square shows its IQM and, where squares differ in it, its number of runs."""
    if (key := A.single_level(runs, metric, (rows, cols))) is not None:
        return f"a single {key} level: nothing to map"
    grid = A.sensitivity_grid(runs, metric, rows, cols, by=factors)
    ylv, xlv, panels = grid.row_levels, grid.col_levels, grid.panels
    ncols = min(len(panels), 3 if len(panels) > 4 else 4)
    nrows = -(-len(panels) // ncols)
    cell = min(0.42, (style.double - 1.0) / (ncols * len(xlv)))
    width = min(style.double, ncols * (len(xlv) * cell + 0.45) + 1.0)
    top = 0.35 if grid.pooled else 0.0
    fig = new_figure(style, width, nrows * (len(ylv) * cell + 0.75) + 0.15 + top)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    cmap = mpl.colormaps["viridis"]
    norm = mpl.colors.Normalize(grid.vmin, grid.vmax if grid.vmax > grid.vmin else grid.vmin + 1e-12)
    counts = {int(n) for c in grid.counts for n in c.ravel() if n > 0}
    image = None
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for i, (ax, p, z) in enumerate(zip(axes, panels, grid.values, strict=False)):
        image = ax.imshow(z, origin="lower", cmap=cmap, norm=norm, aspect="auto")
        _annotate(ax, z, grid.counts[i] if len(counts) > 1 else None, cmap, norm, style)
        ax.set_xticks(range(len(xlv)), [level_label(v) for v in xlv])
        ax.set_yticks(range(len(ylv)), [level_label(v) for v in ylv])
        ax.grid(False)
        for s in ax.spines.values():
            s.set_visible(False)
        ax.tick_params(length=0)
        if i // ncols == nrows - 1 or i + ncols >= len(panels):
            ax.set_xlabel(factor_label(cols))
        if i % ncols == 0:
            ax.set_ylabel(factor_label(rows))
        if p is not None:
            ax.set_title(panel_title(grid.panel_keys, p), fontsize=style.small)
    if grid.pooled:
        fig.suptitle("each square pools " + ", ".join(factor_label(k) for k in grid.pooled)
                     + f" (n = {_n_text(counts)} runs per square)", fontsize=style.small)
    cb = fig.colorbar(image, ax=list(axes[: len(panels)]), shrink=0.9, aspect=15, pad=0.02)
    seeds = f"IQM over n = {_n_text(counts)} runs"
    cb.set_label(f"final {metric_label(metric)}\n({seeds})", fontsize=style.small)
    cb.ax.tick_params(labelsize=style.small)
    cb.ax.yaxis.set_major_locator(MaxNLocator(4))
    return fig


def panel_title(keys: Sequence[str], panel) -> str:
    """A panel's title: the advantage level alone, or its lines ``token`` / ``batch size 32`` for several factors."""
    values = panel if isinstance(panel, tuple) else (panel,)
    parts = []
    for k, v in zip(keys, values, strict=True):
        parts.append(level_label(v) if in_advantage(k) else f"{factor_label(k)} {level_label(v)}")
    return "\n".join(parts)


def _n_text(counts: set[int]) -> str:
    return str(min(counts)) if len(counts) == 1 else f"{min(counts)}-{max(counts)}"


def _annotate(ax, z: np.ndarray, n: np.ndarray | None, cmap, norm, style: Style) -> None:
    """Each finite cell's value (and its ``n`` runs, when given), in black on light colours, white on dark."""
    for (yi, xi), v in np.ndenumerate(z):
        if np.isfinite(v):
            rgb = cmap(norm(v))[:3]
            light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.5
            text = stats.fmt_number(v, 2) + (f"\nn={int(n[yi, xi])}" if n is not None else "")
            ax.text(xi, yi, text, ha="center", va="center", fontsize=style.small - 1,
                    color="black" if light else "white")  # fmt: skip
