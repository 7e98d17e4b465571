"""Sweep results for people: the per-cell summary rows and their CSV, Markdown and text tables, and the best cell.

A row is one cell: its axis values, the seeds done and the final objective's mean / std / min / max
over them. The coordinator logs ``summary.csv`` and ``summary.md`` to the parent run and prints
``summary_text`` at the end.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from typing import Any

from harness.sweep.spec import AblationSpec, cell_label, fmt_value
from harness.sweep.study import sampled_cells, slots


def best_cell(spec: AblationSpec, table, cells) -> tuple[float, str, int] | None:
    """(mean objective over done seeds, cell label, seeds done) of the best cell so far.

    The objective is a final value: when the cells' sample budgets differ (``budget_note``) the
    label says so, since the best cell may only have trained longest.
    """
    sign = 1 if spec.objective.direction == "maximize" else -1
    best = None
    for cid, values in cells.items():
        vals = [_value(table.get((cid, s), [])) for s in spec.seeds]
        vals = [v for v in vals if v is not None]
        if vals:
            m = statistics.fmean(vals)
            if best is None or sign * m > sign * best[0]:
                best = (m, cell_label(values), len(vals))
    note = budget_note(spec, cells) if best else ""
    return (best[0], f"{best[1]} ({note})", best[2]) if best and note else best


def cell_episodes(spec: AblationSpec, values: dict) -> int | None:
    """Completions a run of this cell samples (rollout.batch_size x train.iterations); None if unknown."""
    from harness.config import build_config

    try:
        cfg = build_config(None, {**spec.base, **values})
    except Exception:  # a cell the config refuses has no budget to compare
        return None
    return int(cfg.rollout.batch_size) * int(cfg.train.iterations)


def budget_note(spec: AblationSpec, cells: dict) -> str:
    """'' when every cell samples the same number of completions, else a note saying the budgets differ."""
    eps = {e for values in cells.values() if (e := cell_episodes(spec, values)) is not None}
    if len(eps) < 2:
        return ""
    return f"final values; the cells' sample budgets differ, {min(eps)} to {max(eps)} episodes"


def _value(trials) -> float | None:
    from optuna.trial import TrialState

    for t in trials:
        if t.state == TrialState.COMPLETE and t.value is not None:
            return float(t.value)
    return None


def summary_rows(spec: AblationSpec, trials) -> list[dict[str, Any]]:
    """One row per cell: axis values, seeds done, objective mean / std / min / max, failed attempts."""
    from optuna.trial import TrialState

    table = slots(trials)
    rows = []
    for cid, values in sampled_cells(spec, trials).items():
        vals, failed, pruned = [], 0, 0
        for s in spec.seeds:
            ts = table.get((cid, s), [])
            v = _value(ts)
            if v is not None:
                vals.append(v)
            failed += sum(t.state == TrialState.FAIL for t in ts)
            pruned += sum(t.state == TrialState.PRUNED for t in ts)
        rows.append(
            {
                "cell": cid,
                **values,
                "seeds_done": len(vals),
                "seeds": len(spec.seeds),
                "mean": statistics.fmean(vals) if vals else math.nan,
                "std": statistics.stdev(vals) if len(vals) > 1 else math.nan,
                "min": min(vals) if vals else math.nan,
                "max": max(vals) if vals else math.nan,
                "failed_attempts": failed,
                "pruned": pruned,
            }
        )
    sign = -1 if spec.objective.direction == "maximize" else 1
    rows.sort(key=lambda r: (math.isnan(r["mean"]), sign * r["mean"] if not math.isnan(r["mean"]) else 0))
    return rows


def _columns(spec: AblationSpec) -> list[str]:
    return ["cell", *spec.axes, "seeds_done", "seeds", "mean", "std", "min", "max", "failed_attempts", "pruned"]


def summary_csv(spec: AblationSpec, rows) -> str:
    buf = io.StringIO()
    cols = _columns(spec)
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: fmt_value(r.get(k)) if k in spec.axes else r.get(k) for k in cols})
    return buf.getvalue()


def summary_markdown(spec: AblationSpec, rows) -> str:
    metric = spec.objective.metric
    head = ["cell", *spec.axes, "seeds", f"{metric} mean", "std", "min", "max", "failed"]
    note = budget_note(spec, {r["cell"]: {a: r.get(a) for a in spec.axes} for r in rows})
    lines = [
        f"# {spec.name}: {spec.objective.direction} final {metric} over seeds {list(spec.seeds)}",
        "",
        *([f"Note: {note}: a cell's final value also reflects how long it trained.", ""] if note else []),
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [
            r["cell"],
            *(fmt_value(r.get(a)) for a in spec.axes),
            f"{r['seeds_done']}/{r['seeds']}",
            *(_fmt_num(r[k]) for k in ("mean", "std", "min", "max")),
            str(r["failed_attempts"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_text(spec: AblationSpec, rows, limit: int = 10) -> str:
    metric = spec.objective.metric
    out = [f"{'seeds':>5}  {metric + ' mean':>14}  {'std':>8}  cell"]
    for r in rows[:limit]:
        values = {a: r.get(a) for a in spec.axes}
        out.append(f"{r['seeds_done']:>2}/{r['seeds']:<2}  {_fmt_num(r['mean']):>14}  {_fmt_num(r['std']):>8}  "
                   f"{cell_label(values)}")
    if len(rows) > limit:
        out.append(f"... {len(rows) - limit} more cells in summary.md")
    return "\n".join(out)


def _fmt_num(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"
