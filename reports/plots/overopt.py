"""Figure 8: reward over-optimisation (Gao et al. 2022): gain against d = sqrt(KL) per RM size, with the fit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from reports import overopt, stats
from reports.labels import factor_label
from reports.plots.style import ONSET_MARKER, Style, new_figure, onset_handle, palette, skippable


@skippable
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
    reported = overopt.reported_levels(analysis.summary)
    if not reported:
        return "no Gao et al. fit is reported (too few points or seeds to fit α and β): nothing to draw through"
    pts = pts[pts["level"].isin(reported)]
    panels = ["gold_gain"] + (["proxy_gain"] if np.isfinite(pts["proxy_gain"].to_numpy(float)).any() else [])
    levels = reported
    color = {lv: palette(i) for i, lv in enumerate(levels)}
    fig = new_figure(style, style.double if len(panels) > 1 else style.single, style.row + 0.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, squeeze=False)).ravel()
    onsets = analysis.onsets[analysis.onsets["onset"]] if not analysis.onsets.empty else analysis.onsets
    handles, labels = [], []
    for k, (ax, col) in enumerate(zip(axes, panels, strict=True)):
        for lv in levels:
            for _, g in pts[pts["level"] == lv].groupby("run_id", sort=False):
                ax.plot(g["d"], g[col], color=color[lv], linewidth=0.6, alpha=0.35, zorder=2)
            if col == "gold_gain":
                _fit_line(ax, analysis, lv, color[lv], handles, labels)
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
    handles.append(Line2D([], [], color="0.4", linewidth=0.6, alpha=0.6))
    labels.append("single runs")
    if len(onsets):
        handles.append(onset_handle())
        labels.append("onset (run)")
    title = factor_label(overopt.RM) + " (fit)" if analysis.swept else "Gao et al. fit"
    fig.legend(handles, labels, title=title, loc="outside right center")
    return fig


def _fit_line(ax, analysis: overopt.Analysis, level: str, color: str, handles: list, labels: list) -> None:
    """The level's pooled fit (``overopt.fitted_curves``), thick, with α and β in its legend entry."""
    c = analysis.curves[analysis.curves["level"] == level]
    if not len(c):
        return
    (line,) = ax.plot(c["d"], c["gain"], color=color, linewidth=2.2, zorder=4)
    f = analysis.summary.set_index("level").loc[level]
    handles.append(line)
    a, b = stats.fmt_number(f["alpha_pooled"], 2), stats.fmt_number(f["beta_pooled"], 2)
    labels.append(f"{level}: α={a}, β={b}")
