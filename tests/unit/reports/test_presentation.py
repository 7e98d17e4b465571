"""How a report shows its numbers: one figure numbering, labels that fit, ticks where the data is,
LaTeX a paper can include, the over-optimisation figure only with a reported fit, the words for a sweep
without an independent gold, and one sentence where two findings seem to disagree."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from reports import overopt, render, stats
from reports.plots.health import training_health
from reports.plots.noise import gradient_variance
from reports.plots.overopt import overoptimisation
from reports.plots.registry import FigureResult
from reports.plots.style import get_style

FACTORS = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]


def test_captions_headings_and_files_share_one_number(tmp_path):
    png, pdf = tmp_path / "fig7_training_health.png", tmp_path / "fig7_training_health.pdf"
    png.write_bytes(b"png")
    pdf.write_bytes(b"pdf")
    figures = [FigureResult("fig6_custom_vs_trl", "Custom PPO vs TRL", skipped="no TRL runs"),
               FigureResult("fig7_training_health", "Training health", files=[pdf, png])]
    content = render.ReportContent("s", [], [], pd.DataFrame(), None, figures,
                                   {"fig7_training_health": ("one", "two")})
    md = render.report_markdown(content, tmp_path)
    assert "### Figure 7. Training health" in md and "**Figure 7.** one" in md
    assert "Figure 6, Custom PPO vs TRL: no TRL runs" in md and "Figure 1." not in md
    html = render.report_html(content, tmp_path)
    assert "<h3>Figure 7. Training health</h3>" in html


@pytest.mark.parametrize("style", ["default", "icml"])
def test_health_row_labels_do_not_overlap(frames, style):
    runs, curves = frames
    fig = training_health(runs, curves, FACTORS, get_style(style))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = sorted((ax.yaxis.label.get_window_extent(renderer) for ax in fig.axes if ax.get_ylabel()),
                   key=lambda b: b.y0)
    assert len(boxes) == 4
    for lower, upper in zip(boxes, boxes[1:], strict=False):
        assert lower.y1 <= upper.y0, (lower, upper)  # each label within its own height band


def test_figure4_ticks_at_the_batch_sizes_and_series_offset(frames):
    runs, curves = frames
    fig = gradient_variance(runs, curves, FACTORS, get_style("default"))
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [16, 32] and [t.get_text() for t in ax.get_xticklabels()] == ["16", "32"]
    xs = [line.get_xdata() for line in ax.lines if line.get_marker() == "o"]
    assert len(xs) == 2 and not np.allclose(xs[0], xs[1])  # two levels, side by side
    assert np.allclose(np.sqrt(np.asarray(xs[0]) * np.asarray(xs[1])), [16, 32])  # centred on the batch size


def test_overopt_figure_only_where_the_fit_is_reported(sweep3):
    runs, curves = sweep3
    analysis = overopt.analyse(runs, curves)
    assert overopt.reported_levels(analysis.summary)  # this sweep's fits are reported: drawn
    assert overoptimisation(runs, curves, [], get_style("default"), analysis=analysis) is not None
    summary = analysis.summary.assign(alpha=np.nan)  # per-seed fits failed: the report says alpha = n/a
    blank = overopt.Analysis(**{**analysis.__dict__, "summary": summary})
    why = overoptimisation.explain(runs, curves, [], get_style("default"), analysis=blank)
    assert isinstance(why, str) and "no Gao et al. fit is reported" in why


def _long_table() -> pd.DataFrame:
    rows = []
    for level, kl_low in ((0.1, -0.02), (0.2, 0.3)):
        rows.append({"factor": "ppo.clip_eps", "level": level, "metric": "eval/gold", "iqm": 5.88e-3,
                     "ci_low": -0.0012, "ci_high": 0.0123, "n": 5, "note": ""})
        rows.append({"factor": "ppo.clip_eps", "level": level, "metric": "eval/kl", "iqm": 0.05,
                     "ci_low": kl_low, "ci_high": 0.4, "n": 5, "note": ""})
    return pd.DataFrame(rows)


def test_latex_tables_are_floats_with_labels_numbers_and_bounds(frames, tmp_path):
    runs, curves = frames
    written = render.write_tables(_long_table(), None, runs, tmp_path)
    tex = written["final_by_factor.tex"].read_text()
    assert tex.count(r"\begin{table}") == 1 and r"\caption{" in tex and r"\label{tab:final-by-factor}" in tex
    assert r"Clip $\epsilon$" in tex and "ppo.clip\\_eps" not in tex
    assert r"\num{5.88e-3} [\num{-1.20e-3}, \num{0.0123}]" in tex  # a gold reward may be negative
    assert r"\num{0.0500} [\num{0.00}, \num{0.400}]" in tex  # a KL interval is cut at 0 ...
    assert r"\num{0.0500} [\num{0.300}, \num{0.400}]" in tex  # ... only where it went below
    assert "$-$0" not in tex and "e$-$" not in tex
    md = written["final_by_factor.md"].read_text()
    assert "0.0500 [0.00, 0.400]" in md  # the same bound in Markdown
    assert render.latex_effect("kl.coef x ppo.clip_eps: (0.1 - 0.02) x (0.2 - 0.1)") == (
        r"KL coef.\ $\beta$ $\times$ Clip $\epsilon$: (\num{0.1} $-$ \num{0.02}) $\times$ (\num{0.2} $-$ \num{0.1})")


def test_interval_cut_at_zero_keeps_its_coverage():
    """Cutting the interval of a non-negative quantity at 0 loses no coverage: measured by simulation on a
    true value near 0 with a symmetric t-interval (often below 0)."""
    rng = np.random.default_rng(0)
    true, hits, hits_cut = 0.01, 0, 0
    for _ in range(4000):
        x = rng.normal(true, 0.05, 5)
        iv = stats.mean_interval(x)
        lo, hi = float(iv.low), float(iv.high)
        hits += lo <= true <= hi
        hits_cut += max(lo, 0.0) <= true <= hi
    assert hits == hits_cut and abs(hits / 4000 - 0.95) < 0.015


def test_a_reconciling_sentence_follows_an_effect_that_excludes_0_for_a_factor_whose_intervals_overlap():
    """``reconcile`` on the two sentences ``findings`` writes (their verdict phrases taken from the module, so
    a reworded verdict breaks this test): one sentence right after the effect of the factor whose level
    intervals overlap; none for a factor whose intervals do not, nor for an effect on another metric."""
    from reports.findings import IVS, reconcile

    said = [
        f"ppo.clip_eps = 0.1 gives the highest final gold reward: IQM 0.58 [0.54, 0.62] against 0.54 [0.47, 0.62] "
        f"for ppo.clip_eps = 0.2, the next best; the {IVS} overlap, so this sweep does not separate them.",
        f"kl.coef = 0 gives the highest final gold reward: IQM 0.7 [0.6, 0.8] against 0.3 [0.2, 0.4] for "
        f"kl.coef = 0.1, the next best; the {IVS} do not overlap.",
        "Main effect ppo.clip_eps: 0.2 - 0.1 on gold reward (final): -0.07 [-0.1, -0.03]; the fixed-effects "
        "interval excludes 0, so it is negative.",
        "Main effect kl.coef: 0.1 - 0 on gold reward (final): -0.4 [-0.5, -0.3]; it excludes 0, so it is negative.",
        "Main effect ppo.clip_eps: 0.2 - 0.1 on KL (final): 1.2 [0.5, 1.9]; it excludes 0, so it is positive.",
    ]
    out = reconcile(said, ["ppo.clip_eps", "kl.coef"])
    assert len(out) == len(said) + 1
    assert out[3].startswith("Both hold for ppo.clip_eps: its level intervals pool")
    assert not any(s.startswith("Both hold for kl.coef") for s in out)
    assert reconcile(said[1:], ["ppo.clip_eps", "kl.coef"]) == said[1:]  # no overlap sentence: nothing added


def test_without_an_independent_gold_the_words_change_and_no_overopt_is_drawn(frames, tmp_path):
    from reports.labels import NO_GOLD, metric_label, no_independent_gold
    from reports.plots import make_figures
    from reports.report import NO_GOLD_SKIPS, _gold_words, _overopt, no_gold

    runs, curves = frames
    assert not no_gold(runs.assign(gold_source="task sentiment"))
    assert no_gold(runs.assign(gold_source="optimised reward (no independent gold)"))
    with no_independent_gold(True):
        assert metric_label("eval/gold") == NO_GOLD
        res = {r.stem: r for r in make_figures(runs, curves, FACTORS, "default", tmp_path, skip=NO_GOLD_SKIPS)}
    assert metric_label("eval/gold") == "held-out gold reward"
    assert res["fig8_overoptimisation"].skipped.startswith("no independent gold")
    assert not (tmp_path / "fig8_overoptimisation.png").exists() and (tmp_path / "fig1_learning_curves.png").exists()
    assert _gold_words("Final gold reward per level") == "Final optimised reward per level"
    assert _overopt("3 of 8 runs over-optimised the proxy reward: ...") and _overopt("Gao et al. (2022) fit ...")
    assert not _overopt("Main effect kl.coef: 0.1 - 0.02 on gold reward (final): ...")


def test_the_tex_number_cells_parse():
    assert render._latex_number_cell("0.512 [0.431, 0.598]") == r"\num{0.512} [\num{0.431}, \num{0.598}]"
    assert render._latex_number_cell("n/a") == "n/a"
    assert re.fullmatch(r"\\num\{-7.69e-3\}", render._latex_number_cell("-7.69e-03"))
