"""The implementations ``cfg.impl`` names, as lazy ``"module:function"`` / module targets (a string is
not an import, so nothing here depends on the loops or on TRL; the lm-evaluation-harness registry idiom).

``IMPLEMENTATIONS``: each one's ``train(cfg, logger, on_eval, progress) -> RunResult`` (``harness.run``
resolves and calls it). ``CHECKS``: the module whose ``check_expressible(cfg)`` refuses, before any run,
what a reference trainer cannot express (one line naming the key); the custom core expresses every
valid config. ``train``, ``compare`` and the sweep's spec check all go through ``check_expressible``.
"""

from __future__ import annotations

import importlib
from typing import Any

# cfg.impl -> "module:function" of its training loop
IMPLEMENTATIONS: dict[str, str] = {
    "custom": "harness.ppo.loop:train",
    "trl": "baselines.trl_ppo:train",
    "trl-grpo": "baselines.trl_grpo:train",
    "trl-rloo": "baselines.trl_rloo:train",
}

# cfg.impl -> the module holding that trainer's refusals (check_expressible), imported only when asked
CHECKS: dict[str, str] = {
    "trl": "baselines.trl_ppo",
    "trl-grpo": "baselines.trl_grpo",
    "trl-rloo": "baselines.trl_rloo",
}


def resolve(impl: str) -> Any:
    """The training function registered for ``impl`` (its module imported now)."""
    try:
        target = IMPLEMENTATIONS[impl]
    except KeyError:
        raise ValueError(f"unknown impl {impl!r}; expected one of {sorted(IMPLEMENTATIONS)}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def check_expressible(cfg: Any) -> None:
    """Refuse what ``cfg.impl`` cannot express: a ValueError naming the key (``NotExpressible``); an
    ImportError when the trainer's package (TRL) is not installed. No-op for the custom core."""
    if cfg.impl in CHECKS:
        importlib.import_module(CHECKS[cfg.impl]).check_expressible(cfg)
