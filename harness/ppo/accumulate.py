"""Gradient accumulation: one optimiser minibatch's gradient from micro-batches of ``ppo.micro_batch_size`` rows.

Each micro-batch's loss is weighted by its share of the minibatch's aggregation denominator, so the summed
gradient is that of the whole minibatch's loss (float rounding aside), whatever ``loss.agg``
(``math.aggregate``): token-mean divides by the minibatch's tokens (weight = the micro-batch's share of the
masked tokens), the seq-mean modes by its rows (weight = rows / minibatch rows), token-sum by nothing
(weight 1). The policy terms (surrogate, entropy, KL in the loss) weigh by the policy mask, the value loss
by the value mask. The step's statistics (approx KL, clip fractions: token means) weigh by token shares. Unlike
veRL's 1 / n_micro, the update is then independent of the micro-batch size: memory, not the math, sets it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["accumulate", "combine", "denominator", "micro_weights"]


def denominator(agg: str, mask: Tensor) -> float | None:
    """What ``loss.agg`` divides rows ``mask`` (b, T) by, up to a constant: their masked tokens (token-mean), their
    rows (the seq-mean modes); None for token-sum, which divides by nothing (every part weighs 1)."""
    if agg == "token-sum":
        return None
    if agg == "token-mean":
        return float(mask.sum())
    return float(mask.shape[0])


def micro_weights(agg: str, mask: Tensor, chunks: list[Tensor]) -> list[float]:
    """The weight of each micro-batch (rows ``chunks`` of ``mask``, (B, T)) in its minibatch's aggregated loss."""
    counts = [denominator(agg, mask[c]) for c in chunks]
    if counts[0] is None:
        return [1.0] * len(chunks)
    total = sum(counts)
    return [n / total if total else 0.0 for n in counts]


def combine(cfg, loss: Tensor | None, v_loss: Tensor | None, w_p: float = 1.0, w_v: float = 1.0) -> Tensor:
    """The loss a backward differentiates: ``w_p`` x the policy objective + ``ppo.vf_coef`` x ``w_v`` x the value
    loss (either may be None: the side thread's backward is of the value term alone). The one place ``vf_coef``
    is applied; ``w_p`` / ``w_v`` are a part's share of the aggregation's denominator (micro-batch, rank)."""
    total = None
    if loss is not None:
        total = loss * w_p if w_p else loss * 0.0
    if v_loss is not None:
        value = cfg.ppo.vf_coef * w_v * v_loss
        total = value if total is None else total + value
    return total


def accumulate(cfg, models, kl_coef: float, b, idx: Tensor, policy_objective: Callable, value_loss: Callable,
               check: Callable, it: int, scale_loss: Callable[[Tensor], Tensor] = lambda loss: loss,
               rank: tuple[float, float] = (1.0, 1.0)) -> tuple[Tensor, dict, Tensor | None, dict | None]:
    """Forward and backward of minibatch rows ``idx`` in micro-batches; the gradients accumulate in the
    parameters' ``.grad`` (each micro-batch's backward is of ``scale_loss`` of its loss: fp16's loss scale; its
    weights times ``rank``, this rank's policy and value shares of the minibatch). Returns (policy loss, its
    stats, value loss or None, its stats or None), each this rank's minibatch's (weighted sums of the
    micro-batches')."""
    chunks = list(idx.split(cfg.ppo.micro_batch_size))
    use_value = models.value is not None
    wp = micro_weights(cfg.loss.agg, b.policy_mask(), chunks)
    wv = micro_weights(cfg.loss.agg, b.vmask, chunks) if use_value else [0.0] * len(chunks)
    backward_p, backward_v = [w * rank[0] for w in wp], [w * rank[1] for w in wv]
    # the statistics (approx KL, clip fractions) are token means whatever loss.agg: weighted by token shares
    sp = micro_weights("token-mean", b.policy_mask(), chunks)
    sv = micro_weights("token-mean", b.vmask, chunks) if use_value else [0.0] * len(chunks)
    pg_total, v_total = torch.zeros(()), torch.zeros(()) if use_value else None
    pst_total: dict = {}
    vst_total: dict | None = {} if use_value else None
    for c, w_p, w_v, s_p, s_v, g_p, g_v in zip(chunks, wp, wv, sp, sv, backward_p, backward_v, strict=True):
        loss, pg_loss, pst, v_shared = policy_objective(cfg, models, kl_coef, b, c)
        v_loss = None
        check("loss/policy", pg_loss.detach(), it)
        pg_total = pg_total + w_p * pg_loss.detach().cpu()
        _add(pst_total, pst, s_p)
        if use_value:
            v_loss, vst = value_loss(cfg, models, b, c, None, v_shared)
            check("loss/value", v_loss.detach(), it)
            v_total = v_total + w_v * v_loss.detach().cpu()
            _add(vst_total, vst, s_v)
        scale_loss(combine(cfg, loss, v_loss, g_p, g_v)).backward()
    return pg_total, pst_total, v_total, vst_total


def _add(acc: dict, stats: dict, w: float) -> None:
    for k, v in stats.items():
        if v is not None:
            acc[k] = acc.get(k, 0.0) + w * v.detach().cpu()
