"""KL estimators (``kl.estimator``), one registered function each: per-token estimates of KL(pi || pi_ref).

Every estimator is ``fn(log_ratio) -> (B, T)`` with ``log_ratio = log pi - log pi_ref`` of the sampled tokens
(J. Schulman, "Approximating KL divergence", 2020; veRL ``kl_penalty`` with a "+" suffix for straight-through):
    k1  = log(pi/ref)
    k2  = 0.5 * log(pi/ref)^2
    k3  = ref/pi - 1 - log(ref/pi)
    kX+ = k2 - sg[k2] + sg[kX]        the value of kX exactly, the gradient of k2 (sg = stop-gradient)
No masking: the caller multiplies by the response mask. Unlike veRL, k3 is not clamped.

What each estimator is (``Entry.props``, read by ``harness.config`` and the TRL baselines):
unbiased (its VALUE is an unbiased estimate of KL(pi || ref) on samples of pi), non_negative (every per-token
value >= 0), straight_through (a "+" variant: only its gradient differs from ``value_of``, so it means
something only as a loss term), value_of (the estimator whose value it reports: itself, or k1 / k3 for the
"+" variants), loss_gradient (what its gradient follows as a loss term, prefixes held fixed, on on-policy
samples; None = zero in expectation, so it is refused at kl.placement=loss). ``Entry.trl`` is TRL PPOConfig's ``kl_estimator`` name, ``Entry.verl`` veRL's ``kl_loss_type``.

Torch is imported inside the functions: ``harness.config`` reads this registry without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.ppo.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["KL_ESTIMATORS"]

KL_ESTIMATORS = Registry("KL estimator")
_SCHULMAN = "Schulman 2020, Approximating KL divergence"


@KL_ESTIMATORS.register("k1", paper=_SCHULMAN, verl="k1 (kl)", trl="k1", openrlhf="k1",
                        unbiased=True, non_negative=False, straight_through=False, value_of="k1", loss_gradient=None)
def k1(log_ratio: Tensor) -> Tensor:
    """k1 = log(pi/ref): unbiased, but negative on some tokens."""
    return log_ratio


@KL_ESTIMATORS.register("k2", paper=_SCHULMAN, verl="k2 (mse)", openrlhf="k2",
                        unbiased=False, non_negative=True, straight_through=False, value_of="k2",
                        loss_gradient="per-token KL(pi || ref)")
def k2(log_ratio: Tensor) -> Tensor:
    """k2 = 0.5 * log(pi/ref)^2: >= 0, biased; as a loss term, the per-token KL(pi || ref) gradient."""
    return 0.5 * log_ratio**2


@KL_ESTIMATORS.register("k3", paper=_SCHULMAN, verl="k3 (low_var_kl)", trl="k3", openrlhf="k3",
                        unbiased=True, non_negative=True, straight_through=False, value_of="k3",
                        loss_gradient="per-token KL(ref || pi)")
def k3(log_ratio: Tensor) -> Tensor:
    """k3 = ref/pi - 1 - log(ref/pi) = expm1(d) - d with d = log(ref/pi): unbiased, >= 0, low variance
    (expm1 keeps precision when d ~ 0)."""
    import torch

    d = -log_ratio
    return torch.expm1(d) - d


def _straight_through(value: Tensor, log_ratio: Tensor) -> Tensor:
    """k2 - sg[k2] + sg[value]: the value given, the gradient of k2 (veRL: backward_score - sg[backward_score]
    + sg[forward_score], backward = k2)."""
    grad = k2(log_ratio)
    return grad - grad.detach() + value.detach()


@KL_ESTIMATORS.register("k1+", paper=_SCHULMAN + "; veRL straight-through kl_loss_type", verl="k1+",
                        unbiased=True, non_negative=False, straight_through=True, value_of="k1",
                        loss_gradient="per-token KL(pi || ref)")
def k1_plus(log_ratio: Tensor) -> Tensor:
    """The value of k1, the gradient of k2."""
    return _straight_through(k1(log_ratio), log_ratio)


@KL_ESTIMATORS.register("k3+", paper=_SCHULMAN + "; veRL straight-through kl_loss_type", verl="k3+",
                        unbiased=True, non_negative=True, straight_through=True, value_of="k3",
                        loss_gradient="per-token KL(pi || ref)")
def k3_plus(log_ratio: Tensor) -> Tensor:
    """The value of k3, the gradient of k2."""
    return _straight_through(k3(log_ratio), log_ratio)
