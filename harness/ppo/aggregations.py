"""Loss aggregations (``loss.agg``), one registered function each: a per-token loss matrix to one number.

Every aggregation is ``fn(loss_mat, mask, norm_length) -> 0-dim tensor`` with loss_mat, mask (B, T), B the rows
handed in (one optimiser minibatch in the update); the names are veRL's ``loss_agg_mode`` (``agg_loss``):
    token-mean               sum_{b,t} l*m / sum_{b,t} m            (every token weighs the same)
    seq-mean-token-mean      (1/B) sum_b [ sum_t l*m / sum_t m ]    (every sequence weighs the same)
    seq-mean-token-sum       (1/B) sum_b sum_t l*m                  (no length normalisation)
    token-sum                sum_{b,t} l*m                          (no normalisation at all)
    seq-mean-token-sum-norm  (1/(B L)) sum_{b,t} l*m,  L = norm_length (Dr. GRPO's fixed MAX_TOKENS), or
                             T = mask.shape[-1] when None (veRL's default)
The seq-mean modes divide by B, all rows; a row with an empty mask contributes 0. How the references split
these over micro-batches: ``harness.ppo.math.aggregate``.

What each aggregation is (``Entry.props``, read by ``harness.config`` and the TRL baselines):
denominator (what the token sum is divided by), length_biased (each completion's sum is divided by its OWN
length, so a short completion's tokens weigh more: the length bias Dr. GRPO, Liu et al. 2025, removes),
reads_norm_length (reads ``loss.norm_length``). ``Entry.trl`` is TRL GRPOConfig's ``loss_type`` that
computes it (None = none does).

Torch is imported inside the functions: ``harness.config`` reads this registry without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.ppo.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["AGGREGATIONS"]

AGGREGATIONS = Registry("loss aggregation")
_VERL = "veRL agg_loss (loss_agg_mode)"


@AGGREGATIONS.register("token-mean", paper=_VERL + "; DAPO's token-level loss, Yu et al. 2025", verl="token-mean",
                       trl="bnpo", denominator="the minibatch's token count", length_biased=False,
                       reads_norm_length=False)
def token_mean(loss_mat: Tensor, mask: Tensor, norm_length: int | None = None) -> Tensor:
    from harness.ppo.masked import masked_mean

    return masked_mean(loss_mat, mask)


@AGGREGATIONS.register("seq-mean-token-mean", paper=_VERL + "; GRPO, Shao et al. 2024", verl="seq-mean-token-mean",
                       trl="grpo", denominator="B x each completion's own length", length_biased=True,
                       reads_norm_length=False)
def seq_mean_token_mean(loss_mat: Tensor, mask: Tensor, norm_length: int | None = None) -> Tensor:
    from harness.ppo.masked import masked_mean

    return masked_mean(loss_mat, mask, dim=-1).mean()  # (B,) -> ()


@AGGREGATIONS.register("seq-mean-token-sum", paper=_VERL + "; RLOO, Ahmadian et al. 2024", verl="seq-mean-token-sum",
                       denominator="B", length_biased=False, reads_norm_length=False)
def seq_mean_token_sum(loss_mat: Tensor, mask: Tensor, norm_length: int | None = None) -> Tensor:
    from harness.ppo.masked import masked_terms

    lm, _ = masked_terms(loss_mat, mask)
    return lm.sum(dim=-1).mean()  # (B,) -> ()


@AGGREGATIONS.register("token-sum", paper=_VERL, verl="token-sum", denominator="1", length_biased=False,
                       reads_norm_length=False)
def token_sum(loss_mat: Tensor, mask: Tensor, norm_length: int | None = None) -> Tensor:
    from harness.ppo.masked import masked_terms

    lm, _ = masked_terms(loss_mat, mask)
    return lm.sum()


@AGGREGATIONS.register("seq-mean-token-sum-norm", paper=_VERL + "; Dr. GRPO, Liu et al. 2025",
                       verl="seq-mean-token-sum-norm", trl="dr_grpo", denominator="B x loss.norm_length",
                       length_biased=False, reads_norm_length=True)
def seq_mean_token_sum_norm(loss_mat: Tensor, mask: Tensor, norm_length: int | None = None) -> Tensor:
    from harness.ppo.masked import masked_terms

    lm, _ = masked_terms(loss_mat, mask)
    L = mask.shape[-1] if norm_length is None else norm_length
    if L < 1:
        raise ValueError(f"norm_length must be >= 1, got {L}")
    return lm.sum() / (lm.shape[0] * L)  # TRL dr_grpo: sum / (B * max_completion_length)
