"""reports.plots.curves: figures 1 and 2 draw the bands and intervals of reports.aggregate; clean skips."""

from __future__ import annotations

import numpy as np

from reports import aggregate as A
from reports.plots.curves import final_by_factor, learning_curves
from reports.plots.style import get_style

FACTORS = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]


def test_missing_data_skips_the_figure(frames):
    runs, curves = frames
    style = get_style("default")
    assert learning_curves(runs, curves.iloc[0:0], FACTORS, style) is None
    assert learning_curves.explain(runs, curves.iloc[0:0], FACTORS, style) == "no eval/gold history"
    assert final_by_factor(runs, curves, [], style) is None
    assert final_by_factor.explain(runs, curves, [], style) == "no factor with two or more levels"


def test_learning_curves_draw_the_aggregated_bands(frames):
    runs, curves = frames
    fig = learning_curves(runs, curves, ["kl.coef"], get_style("default"))
    (ax,) = [a for a in fig.axes if a.get_visible()]
    bands = A.curve_bands(A.metric_curves(curves, "eval/gold"), "kl.coef")
    for _, _, band in A.split_bands(bands):
        assert any(np.allclose(ln.get_ydata(), band.point) for ln in ax.get_lines())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0.02", "0.1"]


def test_final_by_factor_ticks_the_iqm_of_each_level(frames):
    runs, curves = frames
    fig = final_by_factor(runs, curves, ["advantage.level"], get_style("default"))
    (ax,) = [a for a in fig.axes if a.get_visible()]
    rows = A.interval_rows(runs, "advantage.level", "eval/gold")
    ticks = sorted(ln.get_xdata()[0] for ln in ax.get_lines())
    np.testing.assert_allclose(ticks, sorted(rows["iqm"]))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sequence", "token"]
