"""The implementations ``cfg.impl`` names, as lazy ``"module:function"`` targets (a string is not an
import, so nothing here depends on the loops or on TRL; the lm-evaluation-harness registry idiom).

Each implementation owns only its training loop: ``train(cfg, models, recorder)``, handed the loaded
models and the run's ``Recorder`` by the run's one owner (``harness.run``), which loads, scores,
evaluates, logs and finishes the run around it. ``set_up(cfg, logger)`` (optional) runs before the
models load: a reference trainer's refusals, its environment and its tags. ``check``:
``check_expressible(cfg)``, refusing, before any run, what a reference trainer cannot express (one
line naming the key); the custom core expresses every valid config. ``train``, ``compare`` and the
sweep's spec check all go through ``check_expressible``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.registry import Registry, load
from harness.schema import IMPLEMENTATIONS as NAMES

__all__ = ["IMPLEMENTATIONS", "Implementation", "check_expressible", "get", "load", "resolve"]


@dataclass(frozen=True)
class Implementation:
    """One ``cfg.impl`` value (named, with its label, in ``harness.schema.IMPLEMENTATIONS``): its lazy targets."""

    name: str
    train: str  # "module:function": train(cfg, models, recorder) -> None
    set_up: str | None = None  # "module:function": set_up(cfg, logger), before the models load
    check: str | None = None  # "module:function": check_expressible(cfg), before any run


IMPLEMENTATIONS: Registry[Implementation] = Registry("impl")
for _impl in (
    Implementation("custom", "harness.ppo.loop:train"),
    Implementation("trl", "baselines.trl_ppo:train", "baselines.trl_ppo:set_up", "baselines.trl_ppo:check_expressible"),
    Implementation("trl-grpo", "baselines.trl_grpo:train", "baselines.trl_grpo:set_up",
                   "baselines.trl_grpo:check_expressible"),
    Implementation("trl-rloo", "baselines.trl_rloo:train", "baselines.trl_rloo:set_up",
                   "baselines.trl_rloo:check_expressible"),
):
    IMPLEMENTATIONS.add(_impl.name, _impl)
if IMPLEMENTATIONS.names() != tuple(NAMES):  # a name in one and not the other: refused at import
    raise ValueError(f"harness.impls registers {IMPLEMENTATIONS.names()}, harness.schema names {tuple(NAMES)}")


def get(impl: str) -> Implementation:
    """The registered implementation ``impl`` (``UnknownName``, with the closest name, when none)."""
    return IMPLEMENTATIONS[impl]


def resolve(impl: str) -> Any:
    """The training function registered for ``impl`` (its module imported now)."""
    return load(get(impl).train)


def check_expressible(cfg: Any) -> None:
    """Refuse what ``cfg.impl`` cannot express: a ValueError naming the key (``NotExpressible``); an
    ImportError when the trainer's package (TRL) is not installed. No-op for the custom core."""
    if (check := get(cfg.impl).check) is not None:
        load(check)(cfg)
