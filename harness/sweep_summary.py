"""Sweep results for people: the per-cell summary tables (CSV, Markdown, text) and the live progress display."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from harness.sweep_spec import AblationSpec
from harness.sweep_study import _fmt_value, _label, sampled_cells, slots

# ---- progress: what the live display shows ----------------------------------------------------------


@dataclass
class Snapshot:
    total: int
    counts: dict[str, int]
    best: tuple[float, str, int] | None  # cell mean, cell label, seeds done
    eta_s: float | None
    running: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        c = self.counts
        return max(0, self.total - c["done"] - c["pruned"] - c["running"] - c["failed"])


# ---- summary -----------------------------------------------------------------------------------------


def best_cell(spec: AblationSpec, table, cells) -> tuple[float, str, int] | None:
    """(mean objective over done seeds, cell label, seeds done) of the best cell so far."""
    sign = 1 if spec.objective.direction == "maximize" else -1
    best = None
    for cid, values in cells.items():
        vals = [_value(table.get((cid, s), [])) for s in spec.seeds]
        vals = [v for v in vals if v is not None]
        if vals:
            m = statistics.fmean(vals)
            if best is None or sign * m > sign * best[0]:
                best = (m, _label(values), len(vals))
    return best


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
        w.writerow({k: _fmt_value(r.get(k)) if k in spec.axes else r.get(k) for k in cols})
    return buf.getvalue()


def summary_markdown(spec: AblationSpec, rows) -> str:
    metric = spec.objective.metric
    head = ["cell", *spec.axes, "seeds", f"{metric} mean", "std", "min", "max", "failed"]
    lines = [
        f"# {spec.name}: {spec.objective.direction} final {metric} over seeds {list(spec.seeds)}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [
            r["cell"],
            *(_fmt_value(r.get(a)) for a in spec.axes),
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
                   f"{_label(values)}")
    if len(rows) > limit:
        out.append(f"... {len(rows) - limit} more cells in summary.md")
    return "\n".join(out)


def _fmt_num(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


# ---- live display ------------------------------------------------------------------------------------


class Display:
    """Done / running / failed / remaining, best so far and ETA: rich Live on a terminal, lines otherwise."""

    def __init__(self, spec: AblationSpec, study_name: str):
        from rich.console import Console

        self.spec, self.study_name = spec, study_name
        self.console = Console()
        self.live = None
        self._last = ""
        self._snap: Snapshot | None = None

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def update(self, snap: Snapshot) -> None:
        self._snap = snap
        if self.live is not None:
            self.live.update(self._render())
            return
        line = self._line(snap)
        if line != self._last:
            self._last = line
            print(line, flush=True)

    def _line(self, s: Snapshot) -> str:
        c = s.counts
        best = f"  best {self.spec.objective.metric} {s.best[0]:.4g} ({s.best[1]})" if s.best else ""
        pruned = f"  pruned {c['pruned']}" if c["pruned"] else ""
        return (
            f"[{self.study_name}] done {c['done']}/{s.total}{pruned}  running {c['running']}  "
            f"failed {c['failed']}  remaining {s.remaining}{best}  ETA {_fmt_s(s.eta_s)}"
        )

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        s = self._snap
        if s is None:
            return Text(f"{self.study_name}: starting workers ...")
        c = s.counts
        head = Text.assemble(
            (self.study_name, "bold"),
            "  ",
            (f"done {c['done']}/{s.total}", "green"),
            f"  pruned {c['pruned']}" if c["pruned"] else "",
            "  ",
            (f"running {c['running']}", "cyan"),
            "  ",
            (f"failed {c['failed']}", "red" if c["failed"] else ""),
            f"  remaining {s.remaining}  ETA {_fmt_s(s.eta_s)}",
        )
        lines = [head]
        if s.best:
            lines.append(Text(f"best {self.spec.objective.metric} {s.best[0]:.4g} "
                              f"({s.best[2]} seed(s)): {s.best[1]}"))
        lines += [Text(f"  running  {r}", style="cyan") for r in s.running[:8]]
        return Group(*lines)
