"""reports.plots.impl: figure 6, custom PPO against every other implementation on matched settings; and its
finding."""

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
        "the sweep has no cell run by both custom and another implementation"
    )


def test_panels_and_legend(frames):
    runs, curves = frames
    fig = custom_vs_trl(runs, curves, FACTORS, get_style("default"))
    assert len(fig.axes) == 3  # gold, KL, throughput
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["custom", "trl"]
    assert [t.get_text() for t in fig.axes[2].get_yticklabels()] == ["custom", "trl"]


def test_every_registered_implementation_is_drawn_and_called(frames):
    """A sweep holding trl-grpo runs too: the figure draws it beside custom and trl, the finding names it (a
    figure or finding that knew only custom and trl would leave it out)."""
    import pandas as pd

    from reports.findings import custom_vs_trl as finding

    runs, curves = frames
    trl = runs[runs["impl"] == "trl"]
    grpo = trl.assign(impl="trl-grpo", run_id=trl["run_id"] + "-grpo",
                      cell=trl["cell"].str.replace("impl=trl", "impl=trl-grpo"))
    grpo_curves = curves[curves["run_id"].isin(trl["run_id"])].assign(
        run_id=lambda c: c["run_id"] + "-grpo", impl="trl-grpo")
    runs3, curves3 = pd.concat([runs, grpo]), pd.concat([curves, grpo_curves])
    fig = custom_vs_trl(runs3, curves3, FACTORS, get_style("default"))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["custom", "trl", "trl-grpo"]
    assert [t.get_text() for t in fig.axes[2].get_yticklabels()] == ["custom", "trl", "trl-grpo"]
    two, three = finding(runs), finding(runs3)
    assert "both implementations ran" in two and "TRL GRPO" not in two
    assert "all implementations ran" in three and "TRL GRPO" in three and "TRL: " in three
