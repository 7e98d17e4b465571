"""reports.render and reports.findings: tables parse back; sentences follow the numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports import findings, render, stats

FACTORS = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]


@pytest.fixture(scope="module")
def table(frames):
    runs, _ = frames
    return stats.summarise_factors(runs, FACTORS, render.TABLE_METRICS)


def test_wide_table_one_row_per_level(frames, table):
    runs, _ = frames
    wide = render.wide_table(table)
    assert len(wide) == sum(runs[f].nunique() for f in FACTORS)
    assert list(wide.columns) == ["factor", "level", "n", "final gold reward", "final KL (nats)", "tokens/s"]
    cell = wide.loc[(wide["factor"] == "kl.coef") & (wide["level"] == "0.02"), "final gold reward"].iloc[0]
    assert re.fullmatch(r"-?[\d.]+ \[-?[\d.]+, -?[\d.]+\]", cell)


def test_tables_parse_back(frames, table, tmp_path):
    runs, _ = frames
    poi = stats.poi_table(
        runs, "advantage", "eval/gold", strata=["ppo.clip_eps", "kl.coef", "rollout.batch_size"]
    )
    written = render.write_tables(table, poi, runs, tmp_path)
    assert {"final_by_factor.csv", "final_by_factor.md", "final_by_factor.tex", "poi_advantage.csv",
            "poi_advantage.md", "poi_advantage.tex", "runs.csv"} <= set(written)  # fmt: skip

    back = pd.read_csv(tmp_path / "final_by_factor.csv")
    assert len(back) == len(table)
    np.testing.assert_allclose(back["iqm"], table["iqm"])
    np.testing.assert_allclose(back["ci_high"], table["ci_high"])
    assert len(pd.read_csv(tmp_path / "runs.csv")) == len(runs)

    wide = render.wide_table(table)
    md = (tmp_path / "final_by_factor.md").read_text().strip().splitlines()
    assert len(md) == 2 + len(wide)  # header, separator, one line per level
    assert {line.count("|") for line in md} == {len(wide.columns) + 1}

    tex = (tmp_path / "final_by_factor.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{tabular}"):
        assert rule in tex
    rows = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len(rows) == 1 + len(wide)  # header + data rows
    assert {line.count(" & ") for line in rows} == {len(wide.columns) - 1}
    assert tex.count(r"\midrule") == 1 + len(FACTORS) - 1  # after the header, between factor blocks
    assert "usepackage" not in tex and "multirow" not in tex

    poi_md = (tmp_path / "poi_advantage.md").read_text().strip().splitlines()
    assert len(poi_md) == 2 + 2  # two advantage levels
    assert r"\toprule" in (tmp_path / "poi_advantage.tex").read_text()


def test_latex_escape():
    assert render.latex_escape("a_b & 50% #1 $x$") == r"a\_b \& 50\% \#1 \$x\$"


def test_poi_display_has_blank_diagonal():
    t = pd.DataFrame(
        {"a": ["x", "y"], "b": ["y", "x"], "poi": [0.75, 0.25], "n_strata": [2, 2], "pooled": [False] * 2}
    )
    shown = render.poi_display(t)
    assert shown.loc["x", "x"] == "-" and shown.loc["x", "y"] == "0.75" and shown.loc["y", "x"] == "0.25"


# ---- findings follow the data -----------------------------------------------------------------------


def test_best_level_says_whether_cis_overlap():
    def rows(lo_b, hi_b, n=5):
        return pd.DataFrame(
            {
                "factor": ["kl.coef"] * 2,
                "level": [0.1, 0.2],
                "metric": ["eval/gold"] * 2,
                "n": [n, n],
                "iqm": [0.8, (lo_b + hi_b) / 2],
                "ci_low": [0.75, lo_b],
                "ci_high": [0.85, hi_b],
                "note": ["", ""],
            }
        )

    apart = findings.best_level(rows(0.5, 0.6), "kl.coef", "eval/gold", "final gold reward")
    assert apart.startswith("kl.coef = 0.1 gives the highest final gold reward")
    assert "do not overlap" in apart
    close = findings.best_level(rows(0.7, 0.78), "kl.coef", "eval/gold", "final gold reward")
    assert "overlap, so this sweep does not separate them" in close
    # fewer than 5 runs per level: the same numbers are not called a difference
    few = findings.best_level(rows(0.5, 0.6, n=3), "kl.coef", "eval/gold", "final gold reward")
    assert "not called" in few and "needs 2 more seeds per level" in few and "do not overlap" not in few
    one_short = findings.best_level(rows(0.5, 0.6, n=4), "kl.coef", "eval/gold", "final gold reward")
    assert "needs 1 more seed per level" in one_short


def test_over_optimisation_detected_from_curves():
    def curve(rid, gold, proxy, se):
        rows = [(rid, s, "eval/gold", g) for s, g in enumerate(gold)]
        rows += [(rid, s, "eval/proxy", p) for s, p in enumerate(proxy)]
        rows += [(rid, s, "eval/gold_se", se) for s in range(len(gold))]
        return pd.DataFrame(rows, columns=["run_id", "step", "metric", "value"])

    rise = [0.1, 0.5, 0.9, 1.3, 1.7]
    curves = pd.concat(
        [
            curve("a", [0.2, 0.6, 0.6, 0.3, 0.3], rise, 0.02),  # a fall of 15 standard errors, proxy rises
            curve("b", [0.2, 0.4, 0.6, 0.6, 0.7], rise, 0.02),  # both rise
            # the old rule's case: a quarter of a small gain lost, but within the noise (se 0.06)
            curve("c", [0.50, 0.56, 0.55, 0.52, 0.51], rise, 0.06),
        ]
    )
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "kl.coef": [0.01, 0.1, 0.1], "eval.prompts": [64] * 3})
    o = findings.overoptimised_runs(curves, runs).set_index("run_id")
    assert o.loc["a", "overoptimised"] and o.loc["a", "onset_step"] == 3
    assert not o.loc["b", "overoptimised"] and not o.loc["c", "overoptimised"]
    assert o.loc["c", "drop"] >= 0.25 * o.loc["c", "gain"]  # what the old quarter-of-the-gain rule flagged
    s = findings.over_optimisation(runs, curves, ["kl.coef"])
    assert s.startswith("1 of 3 runs over-optimised") and "1 of 1 at 0.01" in s and "at most 5% (0.15 of 3)" in s
    no_se = curves[curves["metric"] != "eval/gold_se"]
    assert findings.over_optimisation(runs, no_se, ["kl.coef"]).startswith("Over-optimisation is not tested")


def test_findings_cover_every_factor(frames, table):
    runs, curves = frames
    poi = stats.poi_table(
        runs, "advantage", "eval/gold", strata=["ppo.clip_eps", "kl.coef", "rollout.batch_size"]
    )
    out = findings.findings(runs, curves, FACTORS, table, poi, {"FAILED": 2})
    text = "\n".join(out)
    assert "Left out: 2 failed child runs." in out[0]
    for f in FACTORS:
        assert f"{f} = " in text
    assert "Probability of improvement on final gold reward: P(sequence/rloo > token)" in text
    assert "TRL" in text


# ---- the report page ------------------------------------------------------------------------------------


@dataclass
class _Fig:
    stem: str
    title: str
    files: list[Path] = field(default_factory=list)
    skipped: str | None = None
    meta: dict = field(default_factory=dict)


def test_report_markdown_and_html(frames, table, tmp_path):
    runs, _ = frames
    figs = tmp_path / "figures"
    figs.mkdir()
    for ext in ("pdf", "png"):
        (figs / f"fig1_learning_curves.{ext}").write_bytes(b"x")
    drawn = _Fig("fig1_learning_curves", "Learning curves", [figs / "fig1_learning_curves.pdf",
                                                              figs / "fig1_learning_curves.png"])  # fmt: skip
    skipped = _Fig("fig6_custom_vs_trl", "Custom PPO vs TRL", skipped="no trl runs")
    content = render.ReportContent(
        name="quick",
        source=["Experiment: quick"],
        findings=["A finding with <angle> & ampersand."],
        table=render.wide_table(table),
        poi=None,
        figures=[drawn, skipped],
        captions=render.captions([drawn], runs, FACTORS),
    )
    md, page = render.write_report(content, tmp_path)
    text = md.read_text()
    assert "![Figure 1: Learning curves](figures/fig1_learning_curves.png)" in text
    assert "**Figure 1.**" in text and "Custom PPO vs TRL: no trl runs." in text
    one, two = content.captions["fig1_learning_curves"]
    assert one in text and two in text
    html = page.read_text()
    assert '<img src="figures/fig1_learning_curves.png"' in html
    assert "&lt;angle&gt; &amp; ampersand" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
