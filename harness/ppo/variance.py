"""The policy-gradient variance probe (DESIGN.md section 4).

On the on-policy batch (ratio = 1, so the clipped surrogate's gradient is the
plain policy gradient ``-A grad log pi``), split the batch into K disjoint
microbatches, take each one's policy-loss gradient, and measure how much they
disagree. Cost: K extra forward/backward passes every ``probe.every`` iterations.
"""

from __future__ import annotations

import torch

from harness.ppo import math as M
from harness.ppo import rollout as R


def gradient_stats(grads: torch.Tensor) -> dict[str, float]:
    """Statistics of K gradient estimates, grads (K, D) (one flattened gradient per row).

    grad/variance      tr(Cov) = sum_d Var_k[g_kd] (unbiased over K): the variance of a
                       microbatch-sized estimator, summed over parameters
    grad/rel_variance  tr(Cov) / ||g_bar||^2: scale-free, comparable across reward scales
    grad/snr           ||g_bar||^2 / (tr(Cov) / K): signal over the variance of the mean
    grad/cosine        mean pairwise cosine similarity between the K estimates
    grad/mean_norm     ||g_bar||, the norm of the mean gradient
    """
    K = grads.shape[0]
    g = grads.double()
    mean = g.mean(0)  # (D,)
    trace = g.var(0, unbiased=True).sum()  # tr(Cov)
    norm2 = mean.pow(2).sum()
    unit = g / g.norm(dim=1, keepdim=True).clamp(min=1e-30)  # (K, D)
    cos = unit @ unit.T  # (K, K)
    off = cos[~torch.eye(K, dtype=torch.bool)]
    tiny = torch.finfo(torch.float64).tiny
    return {
        "grad/variance": float(trace),
        "grad/rel_variance": float(trace / norm2.clamp(min=tiny)),
        "grad/snr": float(norm2 / (trace / K).clamp(min=tiny)),
        "grad/cosine": float(off.mean()),
        "grad/mean_norm": float(norm2.sqrt()),
    }


def probe_gradient_variance(
    policy,
    ro: R.Rollout,
    advantages: torch.Tensor,
    clip_eps: float,
    agg: str,
    temperature: float,
    microbatches: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """Gradient statistics of the policy loss over ``microbatches`` disjoint parts of the batch."""
    params = [p for p in policy.parameters() if p.requires_grad]
    perm = torch.randperm(ro.size, generator=generator)
    grads = []
    for idx in torch.chunk(perm, microbatches):
        logp = R.policy_forward(policy, ro.prompt_ids[idx], ro.prompt_mask[idx], ro.response_ids[idx], ro.mask[idx], temperature).logprobs
        loss, _ = M.policy_loss(logp, ro.logprobs[idx], advantages[idx], ro.mask[idx], clip_eps, agg)
        g = torch.autograd.grad(loss, params, allow_unused=True)
        grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, params, strict=True)]))
    return gradient_stats(torch.stack(grads))
