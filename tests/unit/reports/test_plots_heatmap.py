"""reports.plots.heatmap: figure 5 draws the grid of reports.aggregate.sensitivity_grid."""

from __future__ import annotations

import numpy as np
import pytest

from reports import aggregate as A
from reports.plots.heatmap import sensitivity_heatmap
from reports.plots.style import get_style

FACTORS = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]


def test_one_clip_level_skips_the_figure(frames):
    runs, curves = frames
    one_clip = runs[runs["ppo.clip_eps"] == 0.1]
    assert "single ppo.clip_eps" in sensitivity_heatmap.explain(one_clip, curves, FACTORS, get_style("default"))


def test_one_panel_per_advantage_level_showing_the_grid(frames):
    """Without other factors to split by, one panel per advantage level (the grid's panels)."""
    runs, curves = frames
    fig = sensitivity_heatmap(runs, curves, ["ppo.clip_eps", "kl.coef", "advantage.level"], get_style("default"))
    grid = A.sensitivity_grid(runs, "eval/gold", "ppo.clip_eps", "kl.coef")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["sequence/rloo", "token"] == grid.panels
    for ax, z in zip(panels, grid.values, strict=True):
        np.testing.assert_allclose(ax.images[0].get_array(), z)


def test_a_square_is_one_cell_not_the_pool_of_the_batch_sizes(frames):
    """The batch size, swept too, gets panels of its own: each square is the IQM over one cell's runs,
    recomputed here with scipy's trimmed mean over a pandas selection."""
    from scipy.stats import trim_mean

    runs, curves = frames
    custom = runs[runs["impl"] == "custom"]
    fig = sensitivity_heatmap(custom, curves, FACTORS, get_style("default"))
    panels = [ax for ax in fig.axes if ax.images]
    titles = [ax.get_title() for ax in panels]
    assert titles == ["sequence/rloo\nbatch size 16", "sequence/rloo\nbatch size 32", "token\nbatch size 16",
                      "token\nbatch size 32"]
    for ax, (adv, bs) in zip(panels, [("sequence/rloo", 16), ("sequence/rloo", 32), ("token", 16), ("token", 32)],
                             strict=True):
        z = ax.images[0].get_array()
        for a, eps in enumerate([0.1, 0.2]):
            for b, coef in enumerate([0.02, 0.1]):
                sel = custom[(custom["advantage"] == adv) & (custom["rollout.batch_size"] == bs)
                             & (custom["ppo.clip_eps"] == eps) & (custom["kl.coef"] == coef)]
                assert len(sel) == 2  # the seeds of one cell
                assert z[a, b] == pytest.approx(trim_mean(sel["eval/gold"], 0.25))
    assert fig._suptitle is None  # nothing pooled


def test_factors_beyond_the_panel_budget_are_pooled_and_said(frames, monkeypatch):
    runs, curves = frames
    monkeypatch.setattr(A, "MAX_PANELS", 2)
    custom = runs[runs["impl"] == "custom"]
    grid = A.sensitivity_grid(custom, "eval/gold", "ppo.clip_eps", "kl.coef", by=FACTORS)
    assert grid.pooled == ("rollout.batch_size",) and grid.panel_keys == ("advantage",)
    assert {int(n) for c in grid.counts for n in c.ravel()} == {4}  # 2 batch sizes x 2 seeds per square
    fig = sensitivity_heatmap(custom, curves, FACTORS, get_style("default"))
    assert "each square pools batch size (n = 4 runs per square)" in fig._suptitle.get_text()
