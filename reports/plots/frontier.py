"""Figure 3: gold and proxy reward against KL, per-run final points and per-level IQM trajectories."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports.aggregate import Frontier
from reports.labels import ALL_RUNS, factor_label, level_label, metric_label
from reports.plots.style import ONSET_MARKER, Style, new_figure, onset_handle, palette, skippable


@skippable
def reward_kl_frontier(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], style: Style, frontier: Frontier | None = None
) -> Figure | str:
    """Gold and proxy reward against KL: per-run final points and per-level IQM trajectories.

    ``frontier`` defaults to ``aggregate.Frontier.of(runs, curves, factors)``; the figure computes
    nothing itself.
    """
    fr = frontier if frontier is not None else Frontier.of(runs, curves, factors)
    if fr.runs.empty:
        return "no final eval/kl and eval/gold"
    fig = new_figure(style, style.double if len(fr.panels) > 1 else style.single, style.row + 0.45)
    axes = np.atleast_1d(fig.subplots(1, len(fr.panels), sharex=True, squeeze=False)).ravel()
    handles, labels = [], []
    for ax, metric in zip(axes, fr.panels, strict=True):
        for j, level in enumerate(fr.levels):
            color = palette(j)
            sel = fr.level_runs(level)
            ax.scatter(sel["eval/kl"], sel[metric], s=7, color=color, alpha=0.45, linewidths=0, zorder=2)
            on = fr.level_onsets(level)
            if len(on):
                col = "onset_gold" if metric == "eval/gold" else "onset_proxy"
                ax.scatter(on["onset_kl"], on[col], marker=ONSET_MARKER, s=22, color=color, zorder=5,
                           edgecolors="black", linewidths=0.4)  # fmt: skip
            path = fr.paths.get((metric, j))
            if path is None:
                continue
            (line,) = ax.plot(path["kl"], path["value"], color=color, marker="o", markersize=2.2, zorder=3)
            peak = path[path["peak"]]
            if len(peak):
                ax.plot(peak["kl"].iloc[0], peak["value"].iloc[0], marker="*", markersize=7, color=color,
                        zorder=4, markeredgecolor="black", markeredgewidth=0.4)  # fmt: skip
            if metric == "eval/gold":
                handles.append(line)
                labels.append(level_label(level) if fr.hue else ALL_RUNS)
        ax.set_ylabel(metric_label(metric))
        ax.set_xlabel(metric_label("eval/kl"))
        ax.xaxis.set_major_locator(MaxNLocator(5))
    if len(fr.onsets):
        handles.append(onset_handle())
        labels.append("onset (run)")
    if fr.hue or len(fr.onsets):
        fig.legend(handles, labels, title=factor_label(fr.hue) if fr.hue else None, loc="outside right center")
    return fig
