"""reports.plots.frontier: figure 3 draws aggregate.Frontier: final points, trajectories, onsets."""

from __future__ import annotations

import numpy as np

from reports import overopt
from reports.aggregate import Frontier
from reports.plots.frontier import reward_kl_frontier
from reports.plots.style import get_style


def _black_edged(c) -> bool:
    edge = c.get_edgecolor()
    return bool(len(c.get_offsets()) and edge.size and (edge[:, :3] == 0).all())


def test_figure_3_marks_the_logged_onsets_on_both_panels(sweep3):
    runs, curves = sweep3
    n_onsets = int(runs[overopt.ONSET].notna().sum())
    f3 = reward_kl_frontier(runs, curves, ["kl.coef"], get_style("default"))
    x_marks = [c for ax in f3.axes for c in ax.collections if _black_edged(c)]
    assert sum(len(c.get_offsets()) for c in x_marks) == 2 * n_onsets


def test_figure_3_draws_the_trajectories_it_is_given(sweep3):
    runs, curves = sweep3
    fr = Frontier.of(runs, curves, ["kl.coef"])
    assert fr.hue == "kl.coef" and fr.panels == ["eval/gold", "eval/proxy"]
    fig = reward_kl_frontier(runs, curves, ["kl.coef"], get_style("default"), frontier=fr)
    gold = fig.axes[0]
    for j, _ in enumerate(fr.levels):
        path = fr.paths[("eval/gold", j)]
        assert any(np.allclose(ln.get_ydata(), path["value"]) for ln in gold.lines)
    assert [t.get_text() for t in fig.legends[0].get_texts()][:3] == ["0", "0.05", "0.2"]


def test_no_final_kl_skips_the_figure(frames):
    runs, curves = frames
    style = get_style("default")
    no_kl = runs.drop(columns=["eval/kl"])
    assert reward_kl_frontier(no_kl, curves, [], style) is None
    assert reward_kl_frontier.explain(no_kl, curves, [], style) == "no final eval/kl and eval/gold"
