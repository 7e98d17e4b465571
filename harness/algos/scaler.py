"""Dynamic loss scaling for ``train.dtype=fp16``, with ``torch.amp.GradScaler``'s semantics.

fp16's range ends at 65504 and its smallest normal is 6e-5, so small gradients of the half-precision
activations underflow to 0 in the backward. Multiplying the loss by a scale S (2^16 to start) lifts
them into range; the parameters' gradients (fp32: the weights stay fp32 under autocast) are then
multiplied by 1 / S before anything reads them (clipping, Adam). A scale that is too large overflows:
some gradient is inf or NaN after the backward. That step is skipped (no optimiser step, the
gradients discarded) and S halves; after ``growth_interval`` steps in a row without overflow, S
doubles. Scales are powers of two, so scaling and unscaling are exact.

Disabled (fp32, bf16: bf16 has fp32's range) every method is the identity: the loss, the
gradients and the step are untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LossScaler"]


class LossScaler:
    """The loss scale S, the good steps since it last changed, and the steps skipped so far.

    Defaults are GradScaler's: S0 = 2^16, growth x2 after 2000 good steps, backoff x0.5.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.good_steps = 0  # consecutive steps without overflow since S last changed
        self.skipped = 0  # steps skipped for overflow, over the run

    def scale_loss(self, loss: Tensor) -> Tensor:
        """S x ``loss`` (the loss itself when disabled): what ``backward`` is called on."""
        return loss * self.scale if self.enabled else loss

    def unscale_(self, grads: list[Tensor]) -> bool:
        """Multiply ``grads`` by 1 / S in place; True when every element is finite (always True when disabled)."""
        if not self.enabled:
            return True
        inv = 1.0 / self.scale
        finite = True
        for g in grads:
            g.mul_(inv)
            finite = finite and bool(torch.isfinite(g).all())
        return finite

    def update(self, finite: bool) -> None:
        """After a step: back off and count a skip on overflow, else grow after ``growth_interval`` good steps."""
        if not self.enabled:
            return
        if not finite:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped += 1
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict[str, float | int]:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.scale, self.good_steps, self.skipped = float(state["scale"]), int(state["good_steps"]), int(state["skipped"])
