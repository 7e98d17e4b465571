"""reports.plots.impl: figure 6, custom PPO against TRL on matched settings."""

from __future__ import annotations

from reports.plots.impl import custom_vs_trl
from reports.plots.style import get_style

FACTORS = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]


def test_no_trl_runs_skips_the_figure(frames):
    runs, curves = frames
    style = get_style("default")
    custom_only = runs[runs["impl"] == "custom"]
    assert custom_vs_trl(custom_only, curves, FACTORS, style) is None
    assert custom_vs_trl.explain(custom_only, curves, FACTORS, style) == (
        "the sweep has no cell run by both custom and trl"
    )


def test_panels_and_legend(frames):
    runs, curves = frames
    fig = custom_vs_trl(runs, curves, FACTORS, get_style("default"))
    assert len(fig.axes) == 3  # gold, KL, throughput
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["custom", "trl"]
    assert [t.get_text() for t in fig.axes[2].get_yticklabels()] == ["custom", "trl"]
