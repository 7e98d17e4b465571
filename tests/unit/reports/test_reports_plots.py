"""reports.plots: every figure from a synthetic tidy frame; valid PDF (Type 42) + PNG; clean skips."""

from __future__ import annotations

import pytest

from reports import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FACTORS = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]


@pytest.fixture(scope="module")
def drawn(frames, tmp_path_factory):
    runs, curves = frames
    out = tmp_path_factory.mktemp("figures")
    return plots.make_figures(runs, curves, FACTORS, "icml", out), out


def test_every_figure_is_written_as_pdf_and_png(drawn):
    results, out = drawn
    assert [r.stem for r in results] == [stem for stem, _, _ in plots.FIGURES]
    assert all(r.skipped is None for r in results), [(r.stem, r.skipped) for r in results]
    for r in results:
        pdf, png = out / f"{r.stem}.pdf", out / f"{r.stem}.png"
        assert r.files == [pdf, png]
        assert png.read_bytes()[:8] == PNG_MAGIC
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF")
        assert b"/Type3" not in data, f"{pdf.name} embeds a Type 3 font"
        assert b"/FontFile2" in data  # the TrueType (Type 42) font program is embedded


def test_png_is_300_dpi_at_venue_width(drawn):
    results, out = drawn
    import struct

    data = (out / "fig1_learning_curves.png").read_bytes()
    width_px = struct.unpack(">I", data[16:20])[0]  # IHDR width
    assert width_px == pytest.approx(plots.STYLES["icml"].double * 300, rel=0.02)


def test_style_presets_and_rc():
    assert plots.get_style("icml").single == 3.25 and plots.get_style("icml").double == 6.75
    assert plots.get_style("neurips").double == 5.5 and plots.get_style("iclr").double == 5.5
    rc = plots.get_style("default").rc()
    assert rc["pdf.fonttype"] == 42 and rc["ps.fonttype"] == 42 and rc["text.usetex"] is False
    assert 7 <= rc["xtick.labelsize"] <= 9 and 8 <= rc["axes.labelsize"] <= 9
    with pytest.raises(ValueError, match="unknown style 'acl'"):
        plots.get_style("acl")


def test_axis_labels_carry_units():
    assert plots.metric_label("episodes") == "episodes (completions)"
    assert "(nats)" in plots.metric_label("eval/kl")
    assert "(tokens/s)" in plots.metric_label("perf/tokens_per_s")


def test_missing_data_skips_the_figure(frames):
    runs, curves = frames
    style = plots.get_style("default")
    no_grad = curves[~curves["metric"].str.startswith("grad/")]
    assert plots.gradient_variance(runs, no_grad, FACTORS, style) is None
    assert "probe was off" in plots.gradient_variance.explain(runs, no_grad, FACTORS, style)
    custom_only = runs[runs["impl"] == "custom"]
    assert plots.custom_vs_trl(custom_only, curves, FACTORS, style) is None
    one_clip = runs[runs["ppo.clip_eps"] == 0.1]
    assert "single ppo.clip_eps" in plots.sensitivity_heatmap.explain(one_clip, curves, FACTORS, style)
    assert plots.learning_curves(runs, curves.iloc[0:0], FACTORS, style) is None
    no_health = curves[~curves["metric"].isin(plots.HEALTH_METRICS)]
    assert plots.training_health(runs, no_health, FACTORS, style) is None
    assert plots.final_by_factor(runs, curves, [], style) is None


def test_make_figures_reports_skips_and_writes_nothing_for_them(frames, tmp_path):
    runs, curves = frames
    runs = runs[runs["impl"] == "custom"].drop(columns=["eval/gold"])
    curves = curves[curves["metric"] == "eval/gold"]  # only what figure 1 needs
    results = {r.stem: r for r in plots.make_figures(runs, curves, ["kl.coef"], "neurips", tmp_path)}
    assert results["fig1_learning_curves"].files and results["fig1_learning_curves"].skipped is None
    assert results["fig2_final_reward"].skipped == "no final eval/gold"
    assert results["fig4_gradient_variance"].skipped
    assert results["fig6_custom_vs_trl"].skipped
    assert results["fig7_training_health"].skipped
    assert not list(tmp_path.glob("fig4_*")) and not list(tmp_path.glob("fig6_*"))


def test_aggregate_curve_compares_at_equal_episodes(frames):
    _, curves = frames
    gold = curves[curves["metric"] == "eval/gold"]
    x, point, low, high, n = plots.aggregate_curve(gold)
    # mixed batch sizes (16 and 32): the grid stops where the smaller batch stops
    assert x[0] == 0 and x[-1] == gold.groupby("run_id")["episodes"].max().min()
    assert n == gold["run_id"].nunique()
    assert (low <= point).all() and (point <= high).all()
