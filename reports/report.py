"""Build one report: collect (MLflow) -> stats -> aggregate -> plots -> findings -> render, then log it
to the sweep.

``make_report`` is what ``ppo-harness report`` calls (keyword arguments; the report's path, or a
``ReportError`` for bad input); ``build_report`` is the same work for a caller holding a ``Store``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from harness.schema import GOLD_OPTIMISED
from harness.tracking import DEFAULT_RUNS_DIR, Store, UnsafeName, inside, safe_name
from reports import attrition, stats
from reports import effects as E
from reports.collect import ReportError, Sweep, collect, curves_frame
from reports.diagnostics import DIAGNOSTIC_KEYS, cell_table
from reports.findings import findings
from reports.labels import NO_GOLD, advantage_column, in_advantage, no_independent_gold
from reports.render import (
    TABLE_METRICS,
    ReportContent,
    captions,
    effects_display,
    markdown_table,
    poi_display,
    wide_table,
    write_report,
    write_tables,
)

ARTIFACT_DIR = "report"  # where the report lands among the parent run's artifacts

__all__ = ["ReportError", "Source", "build_report", "make_report"]


@dataclass(frozen=True)
class Source:
    """Which sweep to report on: exactly one of an ablation spec path, an experiment, a parent run."""

    spec: str | Path | None = None
    experiment: str | None = None
    parent_run: str | None = None

    @classmethod
    def parse(cls, source: Source | str | Path) -> Source:
        """A Source as is; a path that exists or ends in .yaml / .yml is a spec; any other text an experiment."""
        if isinstance(source, Source):
            return source
        text = str(source)
        if isinstance(source, Path) or text.endswith((".yaml", ".yml")) or Path(text).is_file():
            return cls(spec=source)
        return cls(experiment=text)


def build_report(
    source: Source | str | Path,
    out_dir: str | Path | None = None,
    style: str = "default",
    store: Store | None = None,
    log_to_mlflow: bool = True,
    claim: str | None = None,
) -> Path:
    """Write the report of one sweep and return the path of its report.md.

    Writes, under ``out_dir`` (default ``reports/out/<sweep name>``):
    ``report.md``, ``report.html``, ``figures/fig*.{pdf,png}`` (figures without data are skipped
    and listed in the report), ``tables/final_by_factor.{csv,md,tex}``,
    ``tables/effects.{csv,md,tex}`` (factorial effects over matched cells), ``tables/poi_advantage.{csv,md,tex}``
    (two or more advantage levels) and ``tables/runs.csv``.
    A claim's sweep (``claim``, else ``reports.claims.for_sweep``) adds ``tables/claims.{csv,md}`` and its figure.
    The same files are logged to the sweep's parent run under ``report/`` (not for plain runs
    without a parent). Raises ``ReportError`` (a ValueError, one line) when the sweep,
    experiment or run is missing or has no finished runs.
    """
    from reports.labels import STYLE_NAMES

    src = Source.parse(source)
    store = store or Store(DEFAULT_RUNS_DIR)
    if isinstance(style, str) and style not in STYLE_NAMES:
        raise ReportError(f"unknown style '{style}'; choose one of {', '.join(STYLE_NAMES)}")
    sweep = collect(store, spec=src.spec, experiment=src.experiment, parent_run=src.parent_run)
    # matplotlib / seaborn only now, the input accepted: their first import writes a font cache under $HOME
    from reports import plots

    style_obj = plots.get_style(style)
    out = Path(out_dir).resolve() if out_dir else _default_out(sweep.name)

    factors = sweep.factors
    table = E.level_table(sweep.runs, sweep.curves, factors, TABLE_METRICS)
    counts = {f: attrition.level_counts(sweep.runs, sweep.lost, f) for f in factors}
    effects = attrition.with_losses(E.effects_table(sweep.runs, sweep.curves, factors), sweep.runs, sweep.lost)
    adv = advantage_column(sweep.runs)
    # the advantage factor's parts are never a stratum of its own comparison
    strata = [a for a in factors if not in_advantage(a)]
    poi = stats.poi_table(sweep.runs, adv, "eval/gold", strata=strata) if adv else None
    proxy = no_gold(sweep.runs)
    with no_independent_gold(proxy):
        figures = plots.make_figures(sweep.runs, sweep.curves, factors, style_obj, out / "figures",
                                     skip=NO_GOLD_SKIPS if proxy else {})
        tables = write_tables(table, poi, sweep.runs, out / "tables", effects, counts,
                              attrition.cell_counts(sweep.runs, sweep.lost))
        cells = cell_table(sweep.runs, curves_frame(store, sweep.runs, sweep.axes, keys=DIAGNOSTIC_KEYS))
        if cells is not None:
            cells.to_csv(out / "tables" / "cells.csv", index=False)
            tables["cells.csv"] = out / "tables" / "cells.csv"
        said = findings(sweep.runs, sweep.curves, factors, table, poi, sweep.excluded, effects, sweep.lost)
        content = ReportContent(
            name=sweep.name,
            source=_source_lines(sweep, style_obj.name),
            findings=[NO_GOLD_FINDING, *(_gold_words(s) for s in said if not _overopt(s))] if proxy else said,
            table=wide_table(table, counts=counts),
            effects=effects_display(effects),
            cells=cells,
            poi=poi_display(poi) if poi is not None else None,
            figures=figures,
            captions=_captions(figures, sweep.runs, factors, proxy),
        )
    content.claims, content.claim_figure = claim_section(sweep, style_obj, out, tables, claim)
    md, page = write_report(content, out)
    if log_to_mlflow and sweep.parent_run_id:
        _log(
            store, sweep.parent_run_id, md, page, [p for f in figures for p in f.files], list(tables.values())
        )
    return md


def claim_section(sweep: Sweep, style, out: Path, tables: dict, name: str | None = None) -> tuple:
    """(claims table, figure PNG or None) of a claim's sweep, written under ``out``; (None, None) otherwise."""
    from reports import claims as C
    from reports.plots.claims import FIGURES
    from reports.plots.style import save_figure

    claim = C.CLAIMS[name] if name else C.for_sweep(sweep.name)
    if claim is None:
        return None, None
    results = C.evaluate(claim, sweep.runs, sweep.curves)
    shown = C.table(results)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    C.table(results, numbers=True).to_csv(out / "tables" / "claims.csv", index=False)
    (out / "tables" / "claims.md").write_text(markdown_table(shown))
    tables.update({"claims.csv": out / "tables" / "claims.csv", "claims.md": out / "tables" / "claims.md"})
    draw = FIGURES.get(claim.figure or "")
    fig = draw(sweep.runs, sweep.curves, style) if draw else None
    png = save_figure(fig, out / "figures", f"claim_{claim.name}", style)[1] if fig is not None else None
    return shown, png


NO_GOLD_FINDING = (
    "No independent gold: these runs read prompts from data without model.gold, so eval/gold is the "
    "optimised reward itself on held-out prompts (without the missing-EOS penalty), not a separate measure. "
    f"It is called '{NO_GOLD}' here; no over-optimisation (gold against proxy) is drawn or stated from it. "
    "Set model.gold to a reward the policy does not optimise to measure over-optimisation."
)
NO_GOLD_SKIPS = {"fig8_overoptimisation": "no independent gold (eval/gold is the optimised reward): "
                 "over-optimisation cannot be read from it"}


def no_gold(runs) -> bool:
    """Every run's eval/gold is its optimised reward (``Tag.GOLD_SOURCE`` = ``GOLD_OPTIMISED``)."""
    return "gold_source" in runs and len(runs) > 0 and bool((runs["gold_source"] == GOLD_OPTIMISED).all())


def _overopt(sentence: str) -> bool:
    """A finding about over-optimisation (gold against proxy): not made without an independent gold."""
    return sentence.startswith(("Gao et al.", "Peak shift")) or "over-optimis" in sentence


def _gold_words(text: str) -> str:
    return text.replace("held-out gold reward", NO_GOLD).replace("gold reward", "optimised reward")


def _captions(figures, runs, factors, proxy: bool) -> dict[str, tuple[str, str]]:
    out = captions([f for f in figures if not f.skipped], runs, factors)
    return {k: (_gold_words(a), _gold_words(b)) for k, (a, b) in out.items()} if proxy else out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _default_out(name: str) -> Path:
    """``reports/out/<name>``; an experiment name (MLflow allows any) must make one folder inside it."""
    try:
        return inside(Path("reports") / "out", safe_name(_safe(name), "experiment"))
    except UnsafeName as e:
        raise ReportError(f"{e}; pass --out DIR") from None


def _source_lines(sweep: Sweep, style: str) -> list[str]:
    lines = [f"Experiment: {sweep.name} (store: {sweep.where})"]
    lines.append(
        f"Parent run: {sweep.parent_run_id}" if sweep.parent_run_id else "Parent run: none (plain runs)"
    )
    lines.append(
        f"Swept axes: {', '.join(sweep.axes) or 'none'}; factors with two or more levels: "
        f"{', '.join(sweep.factors) or 'none'}"
    )
    for follower, leader in sweep.moves_with.items():
        lines.append(f"{follower} moves with {leader} (one zip group): reported as the one factor {leader}")
    lines.append(f"Finished runs: {len(sweep.runs)}; figure style: {style}")
    return lines


def _log(store: Store, run_id: str, md: Path, page: Path, figures: list[Path], tables: list[Path]) -> None:
    """Attach the report to the parent run; a failure to log never loses the files on disk."""
    try:
        logger = store.run_logger(run_id)
        logger.log_file(md, ARTIFACT_DIR)
        logger.log_file(page, ARTIFACT_DIR)
        for p in figures:
            logger.log_file(p, f"{ARTIFACT_DIR}/figures")
        for p in tables:
            logger.log_file(p, f"{ARTIFACT_DIR}/tables")
    except Exception as e:  # a read-only or unreachable store: keep the local report
        warnings.warn(f"report written but not logged to run {run_id}: {e}", stacklevel=2)


def make_report(
    spec: str | Path | None = None,
    *,
    experiment: str | None = None,
    parent_run: str | None = None,
    out: str | Path | None = None,
    style: str = "default",
    runs_dir: str | Path = DEFAULT_RUNS_DIR,
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
) -> Path:
    """Write the report of one sweep (``build_report``); the path of its report.md (report.html beside it).

    Exactly one of ``spec`` (an ablation spec: its ``name`` is the MLflow experiment),
    ``experiment`` or ``parent_run`` names the sweep. The store is ``tracking_uri`` when given, else
    the local store under ``runs_dir``. Bad input (no or several sources, an unknown style, an unusable
    spec, out or tracking URI, no store, an unknown experiment or run, a sweep with nothing to report)
    raises ``ReportError`` (an ``InputError``) before anything is written; a failure to write the report
    (a full disk, a folder that vanished) raises its ``OSError``.
    """
    source = _check_arguments(spec, experiment, parent_run, out, style, runs_dir, tracking_uri)
    store = Store(runs_dir, tracking_uri=tracking_uri or None)
    return build_report(source, out, style, store, log_to_mlflow=log_to_mlflow)


def _check_arguments(spec, experiment, parent_run, out, style, runs_dir, tracking_uri) -> Source:
    """The source, after every argument is checked (ReportError, one line naming it); nothing is created."""
    from reports.labels import STYLE_NAMES  # not reports.plots: importing matplotlib writes under $HOME

    given = [x for x in (spec, experiment, parent_run) if x]
    if len(given) != 1:
        raise ReportError("give exactly one of: SPEC, --experiment NAME, --parent-run ID")
    if style not in STYLE_NAMES:
        raise ReportError(f"--style: unknown style '{style}'; choose one of {', '.join(STYLE_NAMES)}")
    if spec:
        p = Path(spec)
        if not p.is_file():
            raise ReportError(f"ablation spec {_shown(spec)} not found" + (" (a folder)" if p.is_dir() else ""))
        try:
            p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ReportError(f"ablation spec {_shown(spec)}: not UTF-8 text (byte {e.start})") from None
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ReportError(f"--out {_shown(out)}: is a file, expected a folder")
    if tracking_uri:
        from harness.tracking import check_tracking_uri, redact

        try:
            check_tracking_uri(tracking_uri)
        except ValueError as e:
            raise ReportError(f"--tracking-uri '{redact(tracking_uri)}': {e}") from None
    elif Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise ReportError(f"--runs-dir {_shown(runs_dir)}: is a file, expected the folder of an MLflow store")
    elif not (Path(runs_dir) / "mlflow.db").is_file():
        db = Path(runs_dir) / "mlflow.db"
        raise ReportError(f"no MLflow store at {db if str(db).isprintable() else repr(str(db))} (--runs-dir); "
                          "run a sweep first")
    return Source(spec=spec or None, experiment=experiment or None, parent_run=parent_run or None)


def _shown(path) -> str:
    """A path in a message: quoted, or its repr() when it holds a newline or another invisible character."""
    text = str(path)
    return f"'{text}'" if text.isprintable() else repr(text)

