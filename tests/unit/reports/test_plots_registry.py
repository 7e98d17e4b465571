"""reports.plots.registry: every figure from a synthetic tidy frame; valid PDF (Type 42) + PNG; clean skips."""

from __future__ import annotations

import struct

import pytest

from reports.plots import registry
from reports.plots.style import STYLES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FACTORS = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]


@pytest.fixture(scope="module")
def drawn(frames, tmp_path_factory):
    runs, curves = frames
    out = tmp_path_factory.mktemp("figures")
    return registry.make_figures(runs, curves, FACTORS, "icml", out), out


def test_every_figure_is_written_as_pdf_and_png(drawn):
    results, out = drawn
    assert [r.stem for r in results] == [f.stem for f in registry.FIGURES.values()]
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
    data = (out / "fig1_learning_curves.png").read_bytes()
    width_px = struct.unpack(">I", data[16:20])[0]  # IHDR width
    assert width_px == pytest.approx(STYLES["icml"].double * 300, rel=0.02)


def test_the_registry_is_ordered_and_carries_caption_facts(drawn, frames):
    runs, _ = frames
    results, _ = drawn
    assert [f.stem for f in registry.FIGURES.values()] == [f"fig{i}_{name}" for i, name in enumerate(
        ["learning_curves", "final_reward", "reward_kl_frontier", "gradient_variance", "sensitivity",
         "custom_vs_trl", "training_health", "overoptimisation"], start=1)]  # fmt: skip
    meta = {r.stem: r.meta for r in results}
    assert all(m["n_runs"] == len(runs) for m in meta.values())
    assert meta["fig3_reward_kl_frontier"]["hue"] == "kl.coef" and meta["fig3_reward_kl_frontier"]["proxy"]
    trl_cells = set(runs.loc[runs["impl"] == "trl", "cell"])
    assert meta["fig6_custom_vs_trl"]["n_matched"] == int(runs["cell"].isin(trl_cells).sum()) > 0
    assert meta["fig8_overoptimisation"] == {"n_runs": len(runs), "onsets": 0, "grouped": False}


def test_make_figures_reports_skips_and_writes_nothing_for_them(frames, tmp_path):
    runs, curves = frames
    runs = runs[runs["impl"] == "custom"].drop(columns=["eval/gold"])
    curves = curves[curves["metric"] == "eval/gold"]  # only what figure 1 needs
    results = {r.stem: r for r in registry.make_figures(runs, curves, ["kl.coef"], "neurips", tmp_path)}
    assert results["fig1_learning_curves"].files and results["fig1_learning_curves"].skipped is None
    assert results["fig2_final_reward"].skipped == "no final eval/gold"
    assert results["fig4_gradient_variance"].skipped
    assert results["fig6_custom_vs_trl"].skipped
    assert results["fig7_training_health"].skipped
    assert not list(tmp_path.glob("fig4_*")) and not list(tmp_path.glob("fig6_*"))
