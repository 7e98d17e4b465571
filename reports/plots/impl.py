"""Figure 6: custom PPO against every other registered implementation the sweep ran, on the settings all ran."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.schema import REFERENCE_IMPL
from reports import aggregate as A
from reports.labels import metric_label
from reports.plots.style import (
    Style,
    band,
    episodes_axis,
    interval_bars,
    new_figure,
    palette,
    skippable,
    thousands_axis,
)
from reports.stats import finite_rows


@skippable
def custom_vs_trl(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], style: Style
) -> Figure | str:
    """Custom vs the other implementations on matched settings: gold and KL vs episodes, and throughput."""
    m = A.matched_impl_runs(runs)
    if m.empty:
        return "the sweep has no cell run by both custom and another implementation"
    impls = A.impls_present(m)
    ids = set(m["run_id"])
    panels = [k for k in ("eval/gold", "eval/kl") if not A.metric_curves(curves, k).empty]
    has_tps = not finite_rows(m, "perf/tokens_per_s").empty
    n = len(panels) + int(has_tps)
    if n == 0:
        return "no eval curves or throughput for the matched runs"
    fig = new_figure(style, style.double, style.row + 0.45)
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)).ravel()
    handles = []
    for ax, metric in zip(axes, panels, strict=False):
        c = A.metric_curves(curves, metric)
        handles = []
        for impl, j, b in A.split_bands(A.curve_bands(c[c["run_id"].isin(ids)], "impl", impls)):
            line = band(ax, b.x, b.point, b.low, b.high, palette(j), impl)
            line.set_linestyle("-" if impl == REFERENCE_IMPL else "--")  # visible where they coincide
            handles.append(line)
        ax.set_ylabel(metric_label(metric))
        ax.set_xlabel(metric_label("episodes"))
        episodes_axis(ax)
    if has_tps:
        ax = axes[-1]
        rows = A.interval_rows(m, "impl", "perf/tokens_per_s", impls)
        interval_bars(ax, rows, [palette(j) for j in rows["order"]], rows["level"].tolist())
        ax.set_xlabel(metric_label("perf/tokens_per_s"))
        thousands_axis(ax.xaxis)
    if handles:
        fig.legend(handles, impls[: len(handles)], loc="outside upper center", ncol=len(impls))
    return fig
