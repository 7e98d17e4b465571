"""The live progress of a sweep: a ``Snapshot`` of the study's counts and the ``Display`` that shows it.

A rich Live panel on a terminal, one line per change otherwise (logs, CI). ``fmt_s`` is the
sweep's one way of writing a duration (ETA, wall time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.sweep.spec import AblationSpec


@dataclass
class Snapshot:
    total: int
    counts: dict[str, int]  # slot state (done, pruned, running, queued, failed, missing) -> slots
    best: tuple[float, str, int] | None  # cell mean, cell label, seeds done
    eta_s: float | None
    running: list[str] = field(default_factory=list)  # slot labels of the running trials

    @property
    def remaining(self) -> int:
        c = self.counts
        return max(0, self.total - c["done"] - c["pruned"] - c["running"] - c["failed"])


def fmt_s(s: float | None) -> str:
    """Seconds as ``42s``, ``3m07s`` or ``1h05m``; ``?`` when unknown."""
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


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
        best = (f"  best cell mean over seeds done {self.spec.objective.metric} {s.best[0]:.4g} "
                f"({s.best[1]}, {s.best[2]} seed(s))") if s.best else ""
        pruned = f"  pruned {c['pruned']}" if c["pruned"] else ""
        return (
            f"[{self.study_name}] done {c['done']}/{s.total}{pruned}  running {c['running']}  "
            f"failed {c['failed']}  remaining {s.remaining}{best}  ETA {fmt_s(s.eta_s)}"
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
            f"  remaining {s.remaining}  ETA {fmt_s(s.eta_s)}",
        )
        lines = [head]
        if s.best:
            lines.append(Text(f"best cell mean over the seeds done so far: {self.spec.objective.metric} "
                              f"{s.best[0]:.4g} ({s.best[2]} seed(s)): {s.best[1]}"))
        lines += [Text(f"  running  {r}", style="cyan") for r in s.running[:8]]
        return Group(*lines)
