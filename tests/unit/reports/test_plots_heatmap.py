"""reports.plots.heatmap: figure 5 draws the grid of reports.aggregate.sensitivity_grid."""

from __future__ import annotations

import numpy as np

from reports import aggregate as A
from reports.plots.heatmap import sensitivity_heatmap
from reports.plots.style import get_style

FACTORS = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]


def test_one_clip_level_skips_the_figure(frames):
    runs, curves = frames
    one_clip = runs[runs["ppo.clip_eps"] == 0.1]
    assert "single ppo.clip_eps" in sensitivity_heatmap.explain(one_clip, curves, FACTORS, get_style("default"))


def test_one_panel_per_advantage_level_showing_the_grid(frames):
    runs, curves = frames
    fig = sensitivity_heatmap(runs, curves, FACTORS, get_style("default"))
    grid = A.sensitivity_grid(runs, "eval/gold", "ppo.clip_eps", "kl.coef")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["sequence/rloo", "token"] == grid.panels
    for ax, z in zip(panels, grid.values, strict=True):
        np.testing.assert_allclose(ax.images[0].get_array(), z)
