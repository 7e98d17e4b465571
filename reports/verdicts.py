"""A published claim's verdict: a quantity measured once per seed, its 95% interval, and a rule fixed in advance.

A ``Rule`` is the region where the claim holds: ``low <= Q <= high`` (either end may be infinite).
With the per-seed values of Q, the interval is Student's t-interval of their mean
(``reports.stats.mean_interval``, n - 1 df), and the verdict is

- **reproduced** when the whole interval lies inside the region;
- **contradicted** when the whole interval lies outside it (past one end);
- **unresolved** otherwise, with the number of seeds at which an interval of the observed spread
  would end on one side: the smallest n' with t_{n'-1} s / sqrt(n') below the distance from the
  estimate to the nearest end of the region (s the seeds' standard deviation), and the side the
  estimate itself is on. An estimate exactly
  on an end, or fewer than 2 finite values, has no such count.

Pure functions over numbers; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from reports.stats import CONFIDENCE, Interval, mean_interval

REPRODUCED, CONTRADICTED, UNRESOLVED = "reproduced", "contradicted", "unresolved"
MAX_SEEDS = 10_000  # past this many seeds a count is not worth quoting


def _g(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Rule:
    """The claim holds where ``low <= Q <= high``."""

    low: float = -math.inf
    high: float = math.inf

    def text(self, symbol: str = "Q") -> str:
        """'Q > 0', 'Q < 0.02', '-1 <= Q <= 1': what the estimate's whole interval must satisfy."""
        f = _g
        if math.isinf(self.low) and math.isinf(self.high):
            return f"any {symbol}"
        if math.isinf(self.low):
            return f"{symbol} < {f(self.high)}"
        if math.isinf(self.high):
            return f"{symbol} > {f(self.low)}"
        return f"{f(self.low)} <= {symbol} <= {f(self.high)}"

    def inside(self, x: float) -> bool:
        return self.low <= x <= self.high

    def distance(self, x: float) -> float:
        """Distance from ``x`` to the nearest finite end of the region (inside or outside it)."""
        ends = [e for e in (self.low, self.high) if math.isfinite(e)]
        return min(abs(x - e) for e in ends) if ends else math.inf


@dataclass(frozen=True)
class Verdict:
    word: str  # reproduced / contradicted / unresolved
    interval: Interval
    seeds_needed: int | None  # unresolved: the seeds an interval of this spread needs to end on one side
    note: str = ""
    leans: str = ""  # unresolved: the side the estimate itself is on (reproduced / contradicted)

    @property
    def more_seeds(self) -> int | None:
        return None if self.seeds_needed is None else max(self.seeds_needed - self.interval.n, 0)

    def text(self) -> str:
        """'reproduced', or 'unresolved at 3 seeds (about 9 would resolve it: 6 more)'."""
        if self.word != UNRESOLVED:
            return self.word
        n = self.interval.n
        if self.seeds_needed is None:
            return f"unresolved at {n} seed{'s' if n != 1 else ''} ({self.note})"
        lean = f"the estimate leans {self.leans}; " if self.leans else ""
        return (f"unresolved at {n} seed{'s' if n != 1 else ''} ({lean}about {self.seeds_needed} would resolve it: "
                f"{self.more_seeds} more)")


def seeds_to_resolve(sd: float, distance: float, n: int, confidence: float = CONFIDENCE) -> int | None:
    """Smallest n' > n with t_{n'-1} sd / sqrt(n') < distance; None when no count up to MAX_SEEDS does."""
    if not (np.isfinite(sd) and np.isfinite(distance)) or distance <= 0:
        return None
    if sd == 0:
        return max(n + 1, 2)
    q = 0.5 + confidence / 2
    # the normal quantile gives a lower bound on n'; walk up from there (t > z)
    start = max(n + 1, 2, int((st.norm.ppf(q) * sd / distance) ** 2))
    for m in range(start, MAX_SEEDS + 1):
        if st.t.ppf(q, m - 1) * sd / math.sqrt(m) < distance:
            return m
    return None


def verdict(values: Sequence[float], rule: Rule, confidence: float = CONFIDENCE) -> Verdict:
    """The verdict of a claim measured once per seed (``values``; NaN = a seed that measured nothing)."""
    iv = mean_interval(values, confidence)
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if iv.n < 2 or not np.isfinite(iv.low):
        return Verdict(UNRESOLVED, iv, None, f"{iv.n} seed{'s' if iv.n != 1 else ''} measured it; an interval "
                       "needs 2 or more")
    if rule.inside(iv.low) and rule.inside(iv.high):
        return Verdict(REPRODUCED, iv, None)
    if iv.high < rule.low or iv.low > rule.high:
        return Verdict(CONTRADICTED, iv, None)
    need = seeds_to_resolve(float(x.std(ddof=1)), rule.distance(iv.point), iv.n, confidence)
    note = "" if need is not None else (f"no count up to {MAX_SEEDS} seeds resolves it: the estimate is at or "
                                        "too near the rule's boundary")
    return Verdict(UNRESOLVED, iv, need, note, REPRODUCED if rule.inside(iv.point) else CONTRADICTED)


def combined(verdicts: Sequence[Verdict]) -> str:
    """A claim of several parts: contradicted if any part is, reproduced if all are, else unresolved."""
    words = [v.word for v in verdicts]
    if CONTRADICTED in words:
        return CONTRADICTED
    if words and all(w == REPRODUCED for w in words):
        return REPRODUCED
    return UNRESOLVED
