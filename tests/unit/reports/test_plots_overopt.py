"""reports.plots.overopt: figure 8 (Gao et al. 2022) draws overopt.analyse; its caption; its skip."""

from __future__ import annotations

from reports import overopt, render
from reports.plots.overopt import overoptimisation
from reports.plots.registry import make_figures
from reports.plots.style import get_style


def test_figure_renders_and_is_captioned(sweep3, tmp_path):
    runs, curves = sweep3
    style = get_style("default")
    fig = overoptimisation(runs, curves, ["model.rm_pairs", "kl.coef"], style)
    assert fig is not None
    gold, proxy = fig.axes[:2]
    fits = [ln for ln in gold.lines if ln.get_linewidth() > 2]
    assert len(fits) == 2 and not [ln for ln in proxy.lines if ln.get_linewidth() > 2]  # fit: gold only
    assert len(gold.lines) == 2 + len(runs) + 1  # fits, run trajectories, the zero line
    n_onsets = int(runs[overopt.ONSET].notna().sum())
    marked = sum(len(c.get_offsets()) for c in gold.collections)
    assert marked == n_onsets
    legend = fig.legends[0].get_texts()
    assert any(t.get_text().startswith("512: α=") for t in legend)
    results = {r.stem: r for r in make_figures(runs, curves, ["model.rm_pairs", "kl.coef"], style, tmp_path)}
    r = results["fig8_overoptimisation"]
    assert r.skipped is None and (tmp_path / "fig8_overoptimisation.png").read_bytes()[:4] == b"\x89PNG"
    assert r.meta["onsets"] == n_onsets
    one, two = render.captions([r, results["fig3_reward_kl_frontier"]], runs, ["model.rm_pairs"])[r.stem]
    assert one.startswith("Reward vs sqrt(KL) per RM size, Gao et al. 2022 fit") and "d (α − β ln d)" in two


def test_figure_draws_the_analysis_it_is_given(sweep3):
    runs, curves = sweep3
    analysis = overopt.analyse(runs, curves)
    fig = overoptimisation(runs, curves, ["model.rm_pairs"], get_style("default"), analysis=analysis)
    gold = fig.axes[0]
    fits = [ln for ln in gold.lines if ln.get_linewidth() > 2]
    for ln, (_, c) in zip(fits, analysis.curves.groupby("level", sort=False), strict=True):
        assert list(ln.get_ydata()) == list(c["gain"])


def test_figure_is_skipped_without_kl_curves(sweep3):
    runs, curves = sweep3
    style = get_style("default")
    no_kl = curves[curves["metric"] != "eval/kl"]
    assert overoptimisation(runs, no_kl, ["kl.coef"], style) is None
    assert overoptimisation.explain(runs, no_kl, ["kl.coef"], style) == "no eval/kl history"
