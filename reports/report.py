"""Build one report: collect (MLflow) -> stats -> aggregate -> plots -> findings -> render, then log it
to the sweep.

``make_report`` is what ``ppo-harness report`` calls (keyword arguments, an exit code, one line on
stderr for an error); ``build_report`` is the same work for a caller holding a ``Store``.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from harness.tracking import DEFAULT_RUNS_DIR, Store
from reports import effects as E
from reports import stats
from reports.collect import ReportError, Sweep, collect
from reports.findings import findings
from reports.labels import advantage_column, in_advantage
from reports.render import (
    TABLE_METRICS,
    ReportContent,
    captions,
    effects_display,
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
) -> Path:
    """Write the report of one sweep and return the path of its report.md.

    Writes, under ``out_dir`` (default ``reports/out/<sweep name>``):
    ``report.md``, ``report.html``, ``figures/fig*.{pdf,png}`` (figures without data are skipped
    and listed in the report), ``tables/final_by_factor.{csv,md,tex}``,
    ``tables/effects.{csv,md,tex}`` (factorial effects over matched cells), ``tables/poi_advantage.{csv,md,tex}``
    (two or more advantage levels) and ``tables/runs.csv``.
    The same files are logged to the sweep's parent run under ``report/`` (not for plain runs
    without a parent). Raises ``ReportError`` (a ValueError, one line) when the sweep,
    experiment or run is missing or has no finished runs.
    """
    from reports import plots  # matplotlib / seaborn are imported only when drawing

    src = Source.parse(source)
    store = store or Store(DEFAULT_RUNS_DIR)
    try:
        style_obj = plots.get_style(style)
    except ValueError as e:
        raise ReportError(str(e)) from None
    sweep = collect(store, spec=src.spec, experiment=src.experiment, parent_run=src.parent_run)
    out = Path(out_dir) if out_dir else Path("reports") / "out" / _safe(sweep.name)
    out = out.resolve()

    factors = sweep.factors
    table = stats.summarise_factors(sweep.runs, factors, TABLE_METRICS)
    effects = E.effects_table(sweep.runs, sweep.curves, factors)
    adv = advantage_column(sweep.runs)
    # the advantage factor's parts are never a stratum of its own comparison
    strata = [a for a in factors if not in_advantage(a)]
    poi = stats.poi_table(sweep.runs, adv, "eval/gold", strata=strata) if adv else None
    figures = plots.make_figures(sweep.runs, sweep.curves, factors, style_obj, out / "figures")
    tables = write_tables(table, poi, sweep.runs, out / "tables", effects)
    content = ReportContent(
        name=sweep.name,
        source=_source_lines(sweep, style_obj.name),
        findings=findings(sweep.runs, sweep.curves, factors, table, poi, sweep.excluded, effects),
        table=wide_table(table),
        effects=effects_display(effects),
        poi=poi_display(poi) if poi is not None else None,
        figures=figures,
        captions=captions([f for f in figures if not f.skipped], sweep.runs, factors),
    )
    md, page = write_report(content, out)
    if log_to_mlflow and sweep.parent_run_id:
        _log(
            store, sweep.parent_run_id, md, page, [p for f in figures for p in f.files], list(tables.values())
        )
    return md


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


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
) -> int:
    """Write the report of one sweep (``build_report``) and say where it is; returns the exit code.

    Exactly one of ``spec`` (an ablation spec: its ``name`` is the MLflow experiment),
    ``experiment`` or ``parent_run`` names the sweep. The store is ``tracking_uri`` when given, else
    the local store under ``runs_dir``. Prints the paths of report.md and report.html and returns 0;
    a ``ReportError`` is one line on stderr and 1; no or several sources, one line on stderr and 2.
    """
    given = [x for x in (spec, experiment, parent_run) if x]
    if len(given) != 1:
        print("error: give exactly one of: SPEC, --experiment NAME, --parent-run ID", file=sys.stderr)
        return 2
    source = Source(spec=spec or None, experiment=experiment or None, parent_run=parent_run or None)
    try:
        if not tracking_uri and not (Path(runs_dir) / "mlflow.db").exists():
            raise ReportError(f"no MLflow store at {Path(runs_dir) / 'mlflow.db'}; run a sweep first")
        store = Store(runs_dir, tracking_uri=tracking_uri or None)
        md = build_report(source, out, style, store, log_to_mlflow=log_to_mlflow)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"report: {md}")
    print(f"html:   {md.with_suffix('.html')}")
    return 0
