"""A live progress line for long work (rich), silent when disabled or not a terminal."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RunProgress:
    """Iteration bar with eval/gold, KL, tokens/s and ETA; ``status`` shows build steps."""

    def __init__(self, total: int, enabled: bool = True, title: str = "train"):
        self.enabled = enabled
        self.total = total
        self._last_status = 0.0
        self._fields = {"gold": "-", "kl": "-", "tps": "-"}
        if enabled:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("eval/gold {task.fields[gold]}  kl {task.fields[kl]}  {task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.task = self.progress.add_task(title, total=total, **self._fields)

    def __enter__(self) -> RunProgress:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()

    def status(self, text: str) -> None:
        """A build step (SFT, reward model): shown at most every 0.5 s."""
        if not self.enabled or time.monotonic() - self._last_status < 0.5:
            return
        self._last_status = time.monotonic()
        self.progress.update(self.task, description=text)

    def update(self, it: int, metrics: dict[str, float], seconds: float | None = None) -> None:
        if not self.enabled:
            return
        if "eval/gold" in metrics:
            self._fields["gold"] = f"{metrics['eval/gold']:+.3f}"
        kl = metrics.get("objective/kl", metrics.get("eval/kl"))
        if kl is not None:
            self._fields["kl"] = f"{kl:.3f}"
        if "perf/tokens_per_s" in metrics:
            self._fields["tps"] = f"{metrics['perf/tokens_per_s']:,.0f}"
        self.progress.update(self.task, completed=it, description="train", **self._fields)
