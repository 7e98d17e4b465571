"""The KL coefficient beta between iterations: fixed, or adaptive (Ziegler et al. 2019).

Pure functions of floats (no tensors, no config objects). The loop keeps beta in
``PPOState.kl_coef`` and, after each iteration's update, replaces it with ``next_coef``.

Adaptive controller (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences", section 2.2; TRL's ``AdaptiveKLController``):

    e       = clip(KL / target - 1, -0.2, +0.2)     proportional error, clipped
    beta'   = beta * (1 + e * n / horizon)

KL is the batch mean of sum_t kl_t (nats per completion) measured with the beta being updated,
n the number of completions in the batch, horizon the number of completions over which the
controller closes the gap (kl.horizon). KL above target raises beta, below lowers it; at
most by a factor 1 +- 0.2 n / horizon per iteration.
"""

from __future__ import annotations

__all__ = ["ERROR_CLIP", "adaptive", "fixed", "next_coef"]

ERROR_CLIP = 0.2  # |e| <= 0.2 (Ziegler et al. 2019)


def fixed(beta: float) -> float:
    """The fixed controller: beta' = beta."""
    return beta


def adaptive(beta: float, kl: float, target: float, n: int, horizon: float) -> float:
    """beta * (1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon).

    beta: the coefficient used this iteration; kl: the batch mean of sum_t kl_t (nats);
    target: kl.target (> 0); n: completions in the batch; horizon: kl.horizon (completions).
    """
    err = min(max(kl / target - 1.0, -ERROR_CLIP), ERROR_CLIP)
    return beta * (1.0 + err * n / horizon)


def next_coef(beta: float, kl: float, target: float | None, n: int, horizon: float) -> float:
    """The coefficient of the next iteration: ``fixed`` when target is None, else ``adaptive``."""
    if target is None:
        return fixed(beta)
    return adaptive(beta, kl, target, n, horizon)
