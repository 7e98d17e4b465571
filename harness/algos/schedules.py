"""Learning-rate schedules, as the factor of ``ppo.lr`` the scheduler applies after ``i`` iterations.

Named as TRL / transformers' ``lr_scheduler_type`` and with their formulas (``get_scheduler``), the
unit being one PPO iteration (the scheduler steps once per iteration; ``ppo.warmup_iterations`` is
``warmup_steps``), n = ``train.iterations``, w = the warmup:

- ``constant``: 1 (no warmup);
- ``constant_with_warmup``: i / w during the warmup, then 1;
- ``linear``: i / w during the warmup, then (n - i) / (n - w), floored at 0 (w = 0: cleanRL's anneal_lr,
  ``ppo.lr_decay``);
- ``cosine``: i / w during the warmup, then 0.5 (1 + cos(pi p)), p = (i - w) / (n - w) (half a cosine to 0).

``ppo.lr_scheduler_type: null`` keeps the older key: ``ppo.lr_decay`` true = linear, false = constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["KINDS", "lr_factor", "lr_schedule", "scheduler_kind"]

KINDS = ("constant", "constant_with_warmup", "linear", "cosine")


def scheduler_kind(lr_scheduler_type: str | None, lr_decay: bool) -> str:
    """The schedule a config asks for: ``ppo.lr_scheduler_type``, else linear / constant by ``ppo.lr_decay``."""
    if lr_scheduler_type is not None:
        return lr_scheduler_type
    return "linear" if lr_decay else "constant"


def lr_factor(kind: str, iterations: int, warmup: int = 0) -> Callable[[int], float]:
    """The factor of the learning rate after ``i`` iterations (0-based: ``i = 0`` is the first iteration's)."""
    if kind not in KINDS:
        raise ValueError(f"unknown lr_scheduler_type {kind!r}; expected one of {', '.join(KINDS)}")
    n, w = iterations, warmup

    def factor(i: int) -> float:
        if kind == "constant":
            return 1.0
        if i < w:
            return i / max(1, w)
        if kind == "constant_with_warmup":
            return 1.0
        if kind == "linear":  # without warmup 1 - i / n, bit for bit the older ppo.lr_decay
            return max(0.0, 1.0 - i / n) if w == 0 else max(0.0, (n - i) / max(1, n - w))
        p = (i - w) / max(1, n - w)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * p)))

    return factor


def lr_schedule(cfg) -> Callable[[int], float]:
    """A run config's learning-rate factor after i iterations (``ppo.lr_scheduler_type``,
    ``ppo.warmup_iterations``, or ``ppo.lr_decay``): the custom core's and the TRL references' one schedule."""
    kind = scheduler_kind(cfg.ppo.lr_scheduler_type, cfg.ppo.lr_decay)
    return lr_factor(kind, cfg.train.iterations, cfg.ppo.warmup_iterations)
