"""Named options of the PPO core as registries: one function and one entry per value (veRL style).

A registry maps a config value (``ppo.loss_mode=cispo``) to the function that implements it and to
what a researcher needs to place it: the peers' names for it (veRL, TRL, OpenRLHF), the paper, and
which other axes it can combine with. ``harness/config.py`` reads its allowed values from here, so a
value is accepted exactly when it is registered (``tests/unit/ppo/test_registry.py`` checks both ways).

    @POLICY_LOSSES.register("cispo", verl="cispo", trl="cispo", paper="MiniMax 2025, arXiv 2506.13585")
    def cispo_loss(...): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from harness.registry import Registry as _Registry

__all__ = ["Entry", "Registry"]


@dataclass(frozen=True)
class Entry:
    """One registered value: its function and how the peers and the literature name it."""

    name: str
    fn: Callable
    paper: str
    verl: str | None = None  # veRL's name (policy_loss.loss_mode / adv_estimator), None = not in veRL
    trl: str | None = None  # TRL 1.12's name (GRPOConfig.loss_type ...), None = not in TRL
    openrlhf: str | None = None  # OpenRLHF 0.11's name, None = not in OpenRLHF
    props: dict = field(default_factory=dict)  # what the value combines with (read by the config's rules)

    def peers(self) -> str:
        """'veRL cispo, TRL cispo' (the names other tools give the value), or 'no peer name'."""
        names = [f"{tool} {n}" for tool, n in (("veRL", self.verl), ("TRL", self.trl), ("OpenRLHF", self.openrlhf)) if n]
        return ", ".join(names) or "no peer name"


class Registry(_Registry[Entry]):
    """The house registry (``harness.registry``) of one option's values, filled by the ``register``
    decorator at import time."""

    def register(self, name: str, *, paper: str, verl: str | None = None, trl: str | None = None,
                 openrlhf: str | None = None, **props) -> Callable[[Callable], Callable]:
        """Decorator: register ``fn`` under ``name``; a name registered twice is a bug (ValueError)."""

        def deco(fn: Callable) -> Callable:
            self.add(name, Entry(name, fn, paper, verl, trl, openrlhf, dict(props)))
            return fn

        return deco

    def doc(self, **shown: str) -> str:
        """'name (peer names; paper); ...' for every entry: the config's description of the key.

        ``shown`` maps a property to its label in the text: a true property gives the label, a false or
        None one nothing, any other value 'label value' ('name (veRL k3; unbiased; paper)')."""
        def props(e: Entry) -> str:
            words = [label if v is True else f"{label} {v}" for k, label in shown.items()
                     if (v := e.props.get(k)) not in (None, False)]
            return "".join(f"; {w}" for w in words)

        return "; ".join(f"{e.name} ({e.peers()}{props(e)}; {e.paper})" for e in self._entries.values())
