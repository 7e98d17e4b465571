"""reports.plots.noise: figure 4 draws the NoiseStats of reports.aggregate and nothing else."""

from __future__ import annotations

import numpy as np

from reports.aggregate import NoiseStats
from reports.plots.noise import gradient_variance
from reports.plots.style import get_style

FACTORS = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]


def test_figure_4_draws_what_it_is_given(frames):
    runs, curves = frames
    style = get_style("default")
    noise = NoiseStats.of(runs, curves)
    fig = gradient_variance(runs, curves, [], style, noise=noise)
    ax_a, ax_b = [a for a in fig.axes if a.get_visible()]
    assert ax_a.get_xscale() == "log" and ax_a.get_yscale() == "log"
    labels = [t.get_text() for t in ax_a.get_legend().get_texts()]
    assert any(lab.startswith("sequence/rloo: slope -") for lab in labels) and "1/B (slope -1)" in labels
    # the plotted points are the IQMs of effects.batch_variance_points, nothing recomputed
    seq = noise.points[noise.points["level"] == "sequence/rloo"].sort_values("batch_size")
    drawn = [ln for ln in ax_a.get_lines() if len(ln.get_xdata()) == len(seq)]
    assert any(np.allclose(ln.get_ydata(), seq["iqm"]) for ln in drawn)
    # the 1/B reference is the line NoiseStats.reference gives
    b, ref = noise.reference()
    assert any(np.allclose(ln.get_xdata(), b) and np.allclose(ln.get_ydata(), ref) for ln in drawn)
    # token's signal is noise around 0 in the fake sweep: marked unresolved, not drawn as a number
    assert any("unresolved" in t.get_text() for t in ax_b.texts)
    assert [t.get_text() for t in ax_b.get_yticklabels()] == ["sequence/rloo", "token"]
    assert not noise.scales.set_index("level").loc["token", "resolved"]


def test_no_probe_skips_the_figure(frames):
    runs, curves = frames
    style = get_style("default")
    no_grad = curves[~curves["metric"].str.startswith("grad/")]
    assert gradient_variance(runs, no_grad, FACTORS, style) is None
    assert "probe was off" in gradient_variance.explain(runs, no_grad, FACTORS, style)
