"""Text outputs of a report: Markdown / LaTeX (booktabs) / CSV tables, captions, report.md and report.html.

Nothing here computes a statistic: it formats the frames of ``reports.stats`` and the sentences
of ``reports.findings``, with the labels of ``reports.labels``. The HTML page is self-contained
(inline CSS, no scripts, no remote resources); figures are referenced relatively
(``figures/<stem>.png``), like in report.md.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.schema import IMPLEMENTATIONS
from reports import stats
from reports.diagnostics import CELL_NOTE
from reports.effects import MIN_SEEDS, budget_differs
from reports.labels import COLUMN_TITLES, LATEX_COLUMNS, LATEX_FACTORS, level_label

TABLE_METRICS = ("eval/gold", "eval/kl", "perf/tokens_per_s")
# Quantities that cannot be negative (a KL divergence, a rate, a length): their intervals are shown cut at 0.
NONNEGATIVE = frozenset({"eval/kl", "objective/kl", "perf/tokens_per_s", "response/length", "eval/length"})
LEVEL_TABLE_NOTE = f"IQM [{stats.INTERVAL_DESCRIPTION}] over the runs of each level"
EFFECT_TABLE_NOTE = (
    "Main effect: mean over matched cells (equal in every other factor) of the difference of cell means "
    "(level b - level a); interaction: half the difference of A's effect at B's two levels, over matched "
    "quadruples. low/high: where the seeds give more error df than the matched cells, the fixed-effects "
    "95% t-interval (cell means, within-cell variance pooled over every cell, N - cells df; assumes "
    "independent runs, normal within a cell, one common variance; effects.csv holds the unequal-variance "
    "Welch-Satterthwaite check); else Student's 95% t-interval over the matched differences; where only one "
    "cell holds both levels (no other factor varies), Welch's 95% t-interval over that cell's seeds. "
    "Intervals are per comparison; the findings state the family and Holm's adjusted call. 'at': final "
    "values, or at the last episode count all runs reached when the factor changes the sample budget."
)
EFFECT_COLUMNS = ["metric", "effect", "estimate", "low", "high", "interval over", "at"]


# ---- tables --------------------------------------------------------------------------------------


def wide_table(table: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS, counts: dict | None = None) -> pd.DataFrame:
    """Long ``stats.summarise_factors`` (or ``effects.level_table``) output -> one row per (factor, level).

    Columns: factor, level, n (runs with a final gold reward, else the largest n), then one
    column per metric present, titled by ``COLUMN_TITLES``; with ``effects.level_table`` columns,
    'compared at' (final values, or the matched episode count when the factor changes the sample
    budget) and 'cells' (marked 'unmatched' when the levels' cells differ in the other factors);
    with ``counts`` ({factor: ``attrition.level_counts``}), 'failed' and 'missing' runs per level.
    """
    present = [m for m in metrics if m in set(table["metric"])]
    rows = []
    for (factor, level), g in table.groupby(["factor", "level"], sort=False):
        by = g.set_index("metric")
        n = int(by.loc["eval/gold", "n"]) if "eval/gold" in by.index else int(g["n"].max())
        row = {"factor": factor, "level": level_label(level), "n": n}
        for m in present:
            if m in by.index:
                r = by.loc[m]
                low = float(r["ci_low"])
                if m in NONNEGATIVE:  # the true value is >= 0: the interval cut at 0 covers it as often
                    low = max(low, 0.0)
                row[COLUMN_TITLES.get(m, m)] = stats.Interval(float(r["iqm"]), low, float(r["ci_high"]), int(r["n"])).fmt()
            else:
                row[COLUMN_TITLES.get(m, m)] = "n/a"
        if "at" in g:
            first = by.loc["eval/gold"] if "eval/gold" in by.index else g.iloc[0]
            row["compared at"] = str(first["at"])
            row["cells"] = f"{int(first['cells'])}" + (" (unmatched)" if bool(first["unmatched"]) else "")
        if counts is not None and factor in counts:
            c = counts[factor]
            lab = level_label(level)
            row["failed"] = int(c.loc[lab, "failed"]) if lab in c.index else 0
            row["missing"] = int(c.loc[lab, "missing"]) if lab in c.index else 0
        rows.append(row)
    extra = [c for c in ("compared at", "cells", "failed", "missing") if rows and c in rows[0]]
    return pd.DataFrame(rows, columns=["factor", "level", "n", *[COLUMN_TITLES.get(m, m) for m in present], *extra])


def _budget_caption(runs: pd.DataFrame, factors: Sequence[str]) -> str:
    """' Budgets differ: ...' for the factors whose levels ran different sample budgets ('' when none)."""
    differ = [f for f in factors if f in runs and "episodes" in runs and budget_differs(runs, f, factors)]
    if not differ:
        return ""
    return (f" Sample budgets differ between the levels of {', '.join(differ)}: these final values compare "
            "budgets as well as settings (the table and findings compare them at matched episodes).")


def _at_note(wide: pd.DataFrame) -> str:
    """'; compared at matched episodes where the budgets differ' when a row is not at final values."""
    if "compared at" not in wide or (wide["compared at"] == "final").all():
        return ""
    return ("; a factor whose levels ran different sample budgets is compared at the last episode count "
            "all its runs reached ('compared at'), or says 'sample budgets differ'")


def effects_display(effects: pd.DataFrame | None) -> pd.DataFrame | None:
    """``effects.effects_table`` -> text frame with columns ``EFFECT_COLUMNS``; None when empty."""
    if effects is None or effects.empty:
        return None
    rows = [
        {
            "metric": r.metric,
            "effect": r.effect,
            "estimate": stats.fmt_number(r.estimate),
            "low": stats.fmt_number(r.low),
            "high": stats.fmt_number(r.high),
            "interval over": _interval_over(r),
            "at": r.at,
            **({"runs lost": r.lost} if "lost" in effects else {}),
        }
        for r in effects.itertuples(index=False)
    ]
    return pd.DataFrame(rows, columns=[*EFFECT_COLUMNS, *(["runs lost"] if "lost" in effects else [])])


def _interval_over(r) -> str:
    """What an effect's interval is taken over, for the effects table."""
    if r.over == "seeds" and r.n_runs == r.n_runs:
        return f"{int(r.n_runs)} seeds per level (Welch, one cell)"
    if r.over == "cells and seeds":
        return f"{int(r.n_runs)} runs, {r.df:g} error df (fixed effects, pooled within-cell variance)"
    return f"{int(r.n_matched)} matched cells"


def latex_effects(shown: pd.DataFrame, comment: str = "") -> str:
    """booktabs ``tabular`` of ``effects_display`` output."""
    lines = [
        r"\begin{tabular}{ll rrr l l}",
        r"\toprule",
        r"Metric & Effect & Estimate & Low & High & Interval over & At \\",
        r"\midrule",
    ]
    for d in shown.to_dict("records"):
        cells = [LATEX_COLUMNS.get(d["metric"], latex_escape(d["metric"])), latex_effect(str(d["effect"]))]
        cells += [_latex_number_cell(str(d[c])) for c in ("estimate", "low", "high")]
        cells += [_latex_number_cell(str(d["interval over"])), _latex_number_cell(str(d["at"]))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = ("Factorial effects over matched cells: main effects (level b $-$ level a) and two-factor "
               "interactions, with 95\\% $t$-intervals.")
    return latex_wrap(lines, caption, "tab:effects", comment)


def poi_display(poi: pd.DataFrame) -> pd.DataFrame | None:
    """``stats.poi_table`` -> square text frame 'P(row > column)', '-' on the diagonal; None if < 2 levels."""
    if poi is None or poi.empty:
        return None
    m = stats.poi_matrix(poi)
    out = m.map(lambda p: "-" if not np.isfinite(p) else f"{p:.2f}")
    out.index = [level_label(v) for v in m.index]
    out.columns = [level_label(v) for v in m.columns]
    out.index.name = "P(row > column)"
    return out


def markdown_table(df: pd.DataFrame, index: bool = False) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned, text left-aligned."""
    frame = df.reset_index() if index else df
    cols = [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |"]
    lines.append("|" + "|".join("---:" if num else ":---" for num in numeric) + "|")
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: Any) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


_NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?")


def _latex_number_cell(text: str) -> str:
    """Every number of a cell as siunitx's ``\\num{}`` (``5.88e-03`` -> ``\\num{5.88e-3}``, typeset
    5.88 x 10^-3, a true minus sign); the text around it escaped."""
    out, at = [], 0
    for m in _NUMBER.finditer(text):
        out += [latex_escape(text[at:m.start()]), r"\num{" + _exp(m.group(0)) + "}"]
        at = m.end()
    return "".join(out) + latex_escape(text[at:])


def _exp(number: str) -> str:
    mant, e, power = number.partition("e")
    return f"{mant}e{int(power)}" if e else number


def latex_wrap(tabular: list[str], caption: str, label: str, comment: str = "") -> str:
    """A ``table`` float around ``tabular`` lines, with its caption and label (packages: booktabs, siunitx)."""
    lines = [f"% {line}" for line in comment.splitlines()] if comment else []
    lines += ["% needs booktabs and siunitx", r"\begin{table}[t]", r"\centering", r"\small",
              r"\caption{" + caption + "}", r"\label{" + label + "}", *tabular, r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex_effect(effect: str) -> str:
    """An effect's name for LaTeX: factor labels for keys (``Clip $\\epsilon$``), ``$\\times$`` for x, levels as numbers."""
    parts = []
    for side in effect.split(": ", 1):
        words = []
        for w in side.split(" "):
            if w == "x":
                words.append(r"$\times$")
            elif w in LATEX_FACTORS:
                words.append(LATEX_FACTORS[w])
            elif w == "-":
                words.append("$-$")
            else:
                words.append(_latex_number_cell(w))
        parts.append(" ".join(words))
    return ": ".join(parts)


def latex_table(wide: pd.DataFrame, comment: str = "") -> str:
    """booktabs ``tabular`` of ``wide_table`` output (only \\usepackage{booktabs} needed).

    The factor name appears on the first row of its block; blocks are separated by \\midrule.
    """
    metric_cols = [c for c in wide.columns if c not in ("factor", "level", "n")]
    titles = {v: LATEX_COLUMNS[k] for k, v in COLUMN_TITLES.items()}
    head = ["Factor", "Level", "$n$", *[titles.get(c, latex_escape(c)) for c in metric_cols]]
    lines = [
        r"\begin{tabular}{ll r" + " l" * len(metric_cols) + "}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for b, (factor, g) in enumerate(wide.groupby("factor", sort=False)):
        if b:
            lines.append(r"\midrule")
        for i, d in enumerate(g.to_dict("records")):
            name = LATEX_FACTORS.get(factor, latex_escape(factor)) if i == 0 else ""
            cells = [name, _latex_number_cell(str(d["level"])), str(d["n"])]
            cells += [_latex_number_cell(str(d[c])) for c in metric_cols]
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = ("Final metrics per factor level: IQM [95\\% interval] over the runs of each level"
               + ("; intervals of non-negative quantities cut at 0." if set(metric_cols) & _NONNEG_TITLES else "."))
    return latex_wrap(lines, caption, "tab:final-by-factor", comment)


def latex_matrix(matrix: pd.DataFrame, comment: str = "") -> str:
    """booktabs ``tabular`` of a square text matrix such as ``poi_display``, in a ``table`` float."""
    lines = [
        r"\begin{tabular}{l" + " r" * len(matrix.columns) + "}",
        r"\toprule",
        r"$P(\mathrm{row} > \mathrm{column})$ & "
        + " & ".join(latex_escape(c) for c in matrix.columns)
        + r" \\",
        r"\midrule",
    ]
    for idx, row in matrix.iterrows():
        lines.append(" & ".join([latex_escape(idx), *[_latex_number_cell(str(v)) for v in row]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return latex_wrap(lines, "Probability of improvement on final gold reward, $P(\\mathrm{row} > \\mathrm{column})$, "
                      "averaged over matched sweep cells.", "tab:poi-advantage", comment)


def write_tables(
    table: pd.DataFrame,
    poi: pd.DataFrame | None,
    runs: pd.DataFrame,
    out_dir: str | Path,
    effects: pd.DataFrame | None = None,
    counts: dict | None = None,
    cells: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write tables/<name>.{csv,md,tex}; returns {relative name: path}.

    final_by_factor.csv is the long numeric table (one row per factor, level, metric);
    the .md / .tex files are its formatted wide form. effects.* (``effects.effects_table``)
    when given and not empty. poi_advantage.* when there are two or more advantage levels.
    runs.csv is one row per run with its final metrics. ``counts`` ({factor: level counts}) adds
    failed / missing runs per level to final_by_factor; ``cells`` (``attrition.cell_counts``) writes
    runs_by_cell.* (planned, finished, failed, missing per cell).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def put(name: str, text: str) -> None:
        path = out / name
        path.write_text(text)
        written[name] = path

    wide = wide_table(table, counts=counts)
    table.to_csv(out / "final_by_factor.csv", index=False)
    written["final_by_factor.csv"] = out / "final_by_factor.csv"
    put("final_by_factor.md", markdown_table(wide))
    put(
        "final_by_factor.tex",
        latex_table(wide, f"{LEVEL_TABLE_NOTE}: final metrics per factor level{_at_note(wide)}."),
    )
    if cells is not None and not cells.empty:
        shown_cells = cells.reset_index()
        shown_cells.to_csv(out / "runs_by_cell.csv", index=False)
        written["runs_by_cell.csv"] = out / "runs_by_cell.csv"
        put("runs_by_cell.md", markdown_table(shown_cells))
    shown_effects = effects_display(effects)
    if shown_effects is not None:
        effects.to_csv(out / "effects.csv", index=False)
        written["effects.csv"] = out / "effects.csv"
        put("effects.md", markdown_table(shown_effects))
        put("effects.tex", latex_effects(shown_effects, EFFECT_TABLE_NOTE))
    shown = poi_display(poi) if poi is not None else None
    if shown is not None:
        poi.to_csv(out / "poi_advantage.csv", index=False)
        written["poi_advantage.csv"] = out / "poi_advantage.csv"
        put("poi_advantage.md", markdown_table(shown, index=True))
        put("poi_advantage.tex", latex_matrix(shown, "Probability of improvement on final gold reward."))
    runs.drop(columns=[c for c in ("start_time",) if c in runs]).to_csv(out / "runs.csv", index=False)
    written["runs.csv"] = out / "runs.csv"
    return written


_NONNEG_TITLES = {COLUMN_TITLES.get(m, m) for m in NONNEGATIVE}


# ---- captions ------------------------------------------------------------------------------------


def captions(
    figures: Sequence[Any], runs: pd.DataFrame, factors: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """Two-line caption per drawn figure: what it shows; how it is aggregated / how to read it."""
    n = len(runs)
    per_level = [int(c) for f in factors if f in runs for c in runs[f].value_counts()]
    runs_per = (
        f"{min(per_level)} to {max(per_level)} runs"
        if per_level and min(per_level) != max(per_level)
        else f"{per_level[0] if per_level else n} runs"
    )
    ci = stats.INTERVAL_DESCRIPTION
    band = "pointwise percentile-bootstrap band (its coverage is not measured; low with few runs)"
    out: dict[str, tuple[str, str]] = {}
    for fig in figures:
        meta = getattr(fig, "meta", {}) or {}
        hue = meta.get("hue")
        out[fig.stem] = {
            "fig1_learning_curves": (
                "Gold reward on held-out prompts against completions seen; one panel per swept factor, "
                "one line per level.",
                f"Lines: IQM over the {runs_per} of a level; bands: {band}. {POOLED_BANDS} Runs are "
                "interpolated onto a shared episodes axis and cut at the fewest episodes any of them reached.",
            ),
            "fig2_final_reward": (
                "Final gold reward (last evaluation) for each level of each swept factor.",
                f"Tick: IQM over {runs_per}; bar: {ci}, pooled over the level's cells." + _budget_caption(runs, factors),
            ),
            "fig3_reward_kl_frontier": (
                ("Gold (left) and proxy (right) reward" if meta.get("proxy", True) else "Gold reward")
                + " against KL to the reference policy"
                + (f", coloured by {hue}." if hue else "."),
                "Dots: final values of single runs; lines: IQM path over evaluations; a star marks a gold "
                "peak before the end, past which the proxy still rises while gold falls (over-optimisation)"
                + (
                    f"; X: the {meta['onsets']} runs' logged over-optimisation onsets (gold fell by more "
                    "than its standard errors allow while the proxy rose; 5% false alarms per run without a fall)."
                    if meta.get("onsets")
                    else "."
                ),
            ),
            "fig8_overoptimisation": (
                ("Reward vs sqrt(KL) per RM size" if meta.get("grouped") else "Reward vs sqrt(KL)")
                + ", Gao et al. 2022 fit: gold (a) and proxy (b) reward gain over the initial policy against d = √KL"
                + (", coloured by the proxy RM's training pairs." if meta.get("grouped") else "."),
                "Thin lines: single runs' evaluations; thick lines: least-squares fit of "
                "R(d) = d (α − β ln d) to the gold gain of all runs"
                + (" of an RM size" if meta.get("grouped") else "")
                + " (α, β in the legend, drawn only where the findings report the fit; "
                "peak at d* = exp(α/β − 1) when β > 0)"
                + (
                    f"; X: the {meta['onsets']} runs' logged over-optimisation onsets "
                    "(gain at the onset step)."
                    if meta.get("onsets")
                    else "."
                ),
            ),
            "fig4_gradient_variance": (
                "(a) Batch-gradient variance tr(Σ)/B against batch size B (log-log) per advantage estimator, "
                "with a 1/B reference line; (b) gradient noise scale B_simple per advantage estimator.",
                f"Each run's value is its mean over all probes. (a) points: geometric IQM over runs (the IQM of log values, exponentiated), error bars: {ci} on log values; "
                "legend: least-squares log-log slope of per-run values with its 95% t-interval (theory -1). "
                "(b) tick: mean tr(Σ) / mean |G|² over runs, bar: 95% Fieller interval; 'unresolved' where "
                "the t-interval of the mean signal includes 0 (no ratio is drawn).",
            ),
            "fig5_sensitivity": _sensitivity_caption(meta),
            "fig6_custom_vs_trl": (
                f"Custom PPO against {_impls_caption(meta)} ({meta.get('n_matched', 0)} runs): "
                "gold reward and KL against completions seen, and throughput.",
                f"Lines: IQM over runs; bands: {band}; bars: {ci}.",
            ),
            "fig7_training_health": (
                "Training health against completions seen: clip fraction, approximate KL, response length "
                "and entropy (rows), one column per swept factor.",
                f"Lines: IQM over the runs of a level; bands: {band}. {POOLED_BANDS} Rising clip fraction or "
                "approx. KL, or collapsing entropy or length, flag unstable settings.",
            ),
        }.get(fig.stem, (fig.title, f"{n} runs."))
    return out


POOLED_BANDS = ("A level's line and band pool all its runs, across the cells of the other factors: the band "
                "holds the spread between those cells as well as between seeds.")


def fig_number(stem: str) -> int:
    """A figure's one number: the N of its file ``figN_...`` (captions, headings and files agree; a figure
    not drawn leaves its number out rather than renumbering the rest)."""
    m = re.match(r"fig(\d+)_", stem)
    return int(m.group(1)) if m else 0


def _sensitivity_caption(meta: dict[str, Any]) -> tuple[str, str]:
    """Figure 5: what a panel and a square are, and what a square pools (with n)."""
    return (
        "Final gold reward over clip ε × KL coefficient β, one panel per "
        + " × ".join(meta.get("panels") or ["advantage estimator"]) + ".",
        "Square value: IQM over the runs of that square (n = "
        + (meta.get("n") or "?") + " runs per square; printed in a square where it differs)"
        + (f"; each square pools the levels of {', '.join(meta['pooled'])} (too many panels to split)"
           if meta.get("pooled") else "; a square is one cell, so it pools only seeds")
        + "; one colour scale shared by all panels.",
    )


# ---- the report page -----------------------------------------------------------------------------


@dataclass
class ReportContent:
    """Everything report.md and report.html show, already formatted."""

    name: str
    source: list[str]  # where the data came from, one line each
    findings: list[str]
    table: pd.DataFrame  # wide_table output
    poi: pd.DataFrame | None  # poi_display output
    figures: list[Any]  # plots.FigureResult
    captions: dict[str, tuple[str, str]]
    method: list[str] = field(default_factory=list)
    effects: pd.DataFrame | None = None  # effects_display output
    cells: pd.DataFrame | None = None  # diagnostics.cell_table output
    claims: pd.DataFrame | None = None  # reports.claims.table output (a claim's sweep)
    claim_figure: Path | None = None  # its PNG, when the claim has a figure


METHOD = [
    "Final value of a metric: its value at the last logged evaluation (MLflow's latest value by step).",
    "Aggregate over the runs of a level: interquartile mean (IQM, 25% trimmed mean) with "
    f"{stats.INTERVAL_DESCRIPTION}, chosen over the percentile bootstrap (measured 74% at n = 3, 89-90% "
    "at n = 5); the simulation is a unit test.",
    "Factorial effects: " + EFFECT_TABLE_NOTE,
    "Gradient noise: each run's mean over its probes; noise scale = mean tr(Σ) / mean |G|² (ratio of "
    "means, McCandlish et al. 2018) with Fieller's interval, unresolved when the mean signal's "
    "t-interval includes 0.",
    "Learning-curve bands are pointwise percentile bootstraps (coverage not measured).",
    "Probability of improvement P(X > Y) = U / (n m) from the Mann-Whitney U statistic, averaged over "
    "the sweep cells where both levels ran (rliable).",
    "Learning curves compare at equal samples: the x-axis is completions seen (episodes), not iterations.",
    "Over-optimisation (Gao et al. 2022): per evaluation d = √max(KL, 0) and the gold gain R over the run's "
    "step-0 evaluation; R(d) = d (α − β ln d) fitted by least squares on (d, −d ln d), no intercept, d > 0, "
    "once per seed on the runs of an RM size pooled over the other factors; α and β: means over seeds "
    "with Student's 95% t-interval; peak KL* = exp(2 (α/β − 1)) when β > 0 (else no peak within the fit), "
    "interval on ln KL* over seeds; R² from the fit pooled over seeds; the peak shift between the largest "
    "and smallest RM size is Welch's 95% t-interval of the difference in ln KL*, exponentiated, called "
    f"from {MIN_SEEDS} seeds per size.",
]


def _rel(path: Path, out_dir: Path) -> str:
    return Path(path).resolve().relative_to(out_dir).as_posix()


CLAIMS_NOTE = (
    "The claim's quantity is measured once per seed; estimate = the mean over seeds with Student's 95% "
    "t-interval. Verdict (the rule fixed before the runs): reproduced when the whole interval satisfies the "
    "rule, contradicted when none of it does, else unresolved, with the seeds at which an interval of the "
    "observed spread would end on one side. File: `tables/claims.{csv,md}`."
)


def claims_markdown(c: ReportContent, out_dir: Path) -> list[str]:
    if c.claims is None:
        return []
    lines = ["## Claims", "", CLAIMS_NOTE, "", markdown_table(c.claims)]
    if c.claim_figure is not None:
        lines += [f"![claim figure]({_rel(c.claim_figure, out_dir)})", ""]
    return lines


def claims_html(c: ReportContent, out_dir: Path) -> list[str]:
    if c.claims is None:
        return []
    e = html.escape
    parts = ["<h2>Claims</h2>", f'<p class="muted">{e(CLAIMS_NOTE)}</p>', _html_table(c.claims)]
    if c.claim_figure is not None:
        parts.append(f'<figure><img src="{e(_rel(c.claim_figure, out_dir))}" alt="claim figure"></figure>')
    return parts


def report_markdown(c: ReportContent, out_dir: Path) -> str:
    lines = [f"# PPO ablation report: {c.name}", ""]
    lines += [f"- {s}" for s in c.source] + ["", "## Findings", ""]
    lines += [f"- {s}" for s in c.findings] + [""]
    lines += claims_markdown(c, out_dir)
    lines += [
        "## Final metrics per factor level",
        "",
        f"{LEVEL_TABLE_NOTE}; n = runs with a final gold reward. "
        "Files: `tables/final_by_factor.{csv,md,tex}`.",
        "",
        markdown_table(c.table),
    ]
    if c.effects is not None:
        lines += [
            "## Factorial effects over matched cells",
            "",
            f"{EFFECT_TABLE_NOTE} Files: `tables/effects.{{csv,md,tex}}`.",
            "",
            markdown_table(c.effects),
        ]
    if c.cells is not None:
        lines += ["## Diagnostics per cell", "", f"{CELL_NOTE} File: `tables/cells.csv`.", "", markdown_table(c.cells)]
    if c.poi is not None:
        lines += [
            "## Probability of improvement between advantage levels",
            "",
            "P(row > column) on final gold reward, averaged over matched sweep cells. "
            "Files: `tables/poi_advantage.{csv,md,tex}`.",
            "",
            markdown_table(c.poi, index=True),
        ]
    lines += ["## Figures", ""]
    for fig in c.figures:
        if fig.skipped:
            continue
        k = fig_number(fig.stem)
        png = next(p for p in fig.files if p.suffix == ".png")
        pdf = next(p for p in fig.files if p.suffix == ".pdf")
        one, two = c.captions.get(fig.stem, (fig.title, ""))
        lines += [
            f"### Figure {k}. {fig.title}",
            "",
            f"![Figure {k}: {fig.title}]({_rel(png, out_dir)})",
            "",
            f"**Figure {k}.** {one}  ",
            f"{two} ([PDF]({_rel(pdf, out_dir)}))",
            "",
        ]
    skipped = [f for f in c.figures if f.skipped]
    if skipped:
        lines += ["### Figures not drawn", ""]
        lines += [f"- Figure {fig_number(f.stem)}, {f.title}: {f.skipped}." for f in skipped] + [""]
    lines += ["## Method", ""] + [f"- {s}" for s in c.method or METHOD] + [""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #e3e3e3; text-align: left; }
thead th { border-bottom: 2px solid #555; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.92rem; color: #333; } code { background: #f4f4f4; padding: 0 0.2rem; }
.muted { color: #666; font-size: 0.9rem; }
"""


def _html_table(df: pd.DataFrame, index: bool = False) -> str:
    frame = df.reset_index() if index else df
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for v in row:
            num = isinstance(v, int | float | np.number) or (isinstance(v, str) and v[:1].isdigit())
            cells.append(
                f'<td class="num">{html.escape(str(v))}</td>' if num else f"<td>{html.escape(str(v))}</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def report_html(c: ReportContent, out_dir: Path) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>PPO ablation report: {e(c.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>PPO ablation report: {e(c.name)}</h1>",
        '<ul class="muted">' + "".join(f"<li>{e(s)}</li>" for s in c.source) + "</ul>",
        "<h2>Findings</h2>",
        "<ul>" + "".join(f"<li>{e(s)}</li>" for s in c.findings) + "</ul>",
        *claims_html(c, out_dir),
        "<h2>Final metrics per factor level</h2>",
        f'<p class="muted">{e(LEVEL_TABLE_NOTE)}; n = runs with a final gold reward.</p>',
        _html_table(c.table),
    ]
    if c.effects is not None:
        parts += [
            "<h2>Factorial effects over matched cells</h2>",
            f'<p class="muted">{e(EFFECT_TABLE_NOTE)}</p>',
            _html_table(c.effects),
        ]
    if c.cells is not None:
        parts += ["<h2>Diagnostics per cell</h2>", f'<p class="muted">{e(CELL_NOTE)}</p>', _html_table(c.cells)]
    if c.poi is not None:
        parts += [
            "<h2>Probability of improvement between advantage levels</h2>",
            '<p class="muted">P(row &gt; column) on final gold reward, averaged over matched sweep cells.</p>',
            _html_table(c.poi, index=True),
        ]
    parts.append("<h2>Figures</h2>")
    for fig in c.figures:
        if fig.skipped:
            continue
        k = fig_number(fig.stem)
        png = next(p for p in fig.files if p.suffix == ".png")
        pdf = next(p for p in fig.files if p.suffix == ".pdf")
        one, two = c.captions.get(fig.stem, (fig.title, ""))
        parts.append(
            f'<figure id="{e(fig.stem)}"><h3>Figure {k}. {e(fig.title)}</h3>'
            f'<img src="{e(_rel(png, out_dir))}" alt="Figure {k}: {e(fig.title)}">'
            f"<figcaption><strong>Figure {k}.</strong> {e(one)}<br>{e(two)} "
            f'(<a href="{e(_rel(pdf, out_dir))}">PDF</a>)</figcaption></figure>'
        )
    skipped = [f for f in c.figures if f.skipped]
    if skipped:
        parts.append("<h3>Figures not drawn</h3><ul>")
        parts += [f"<li>Figure {fig_number(f.stem)}, {e(f.title)}: {e(f.skipped)}.</li>" for f in skipped]
        parts.append("</ul>")
    parts.append("<h2>Method</h2><ul>" + "".join(f"<li>{e(s)}</li>" for s in c.method or METHOD) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(c: ReportContent, out_dir: str | Path) -> tuple[Path, Path]:
    """report.md and report.html in ``out_dir`` (figure paths must lie under it); returns both paths."""
    out = Path(out_dir).resolve()
    md, page = out / "report.md", out / "report.html"
    md.write_text(report_markdown(c, out))
    page.write_text(report_html(c, out))
    return md, page


def _impls_caption(meta: dict) -> str:
    """"TRL's PPOTrainer on the settings both ran", or several implementations on the settings all ran."""
    others = [IMPLEMENTATIONS[i][1] for i in meta.get("impls", ["custom", "trl"])[1:] if i in IMPLEMENTATIONS]
    return f"{' and '.join(others)} on the settings {'both' if len(others) == 1 else 'all'} ran"
