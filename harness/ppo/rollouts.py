"""The custom core's variants of steps 1-3: a stale behaviour policy, the rollout correction's weights,
DAPO's dynamic sampling and overlong punishment. ``harness.ppo.loop`` calls these around ``lm.rollout.collect``.

- ``Behaviour``: keeps the policy's weights of the last ``rollout.staleness`` iterations and samples with
  the oldest (iteration i - k; the first k iterations use the initial policy) through a copy of the policy.
- ``correct_rollout``: the training forward of the current policy on the sampled batch (always: the
  sampling-vs-training mismatch is logged also at staleness 0), the importance ratio pi_old / pi_rollout,
  the correction's weights and mask, the offpolicy/* metrics. When the run is off-policy (staleness > 0
  or a correction) the rollout's logprobs and entropies become the training forward's: pi_old of the
  ratio, the KL to the reference and objective/entropy are then the current policy's.
- ``fill_groups``: draw groups until rollout.batch_size / k informative groups are in hand (bounded rounds).
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable
from typing import NamedTuple

import torch

from harness.algos import dapo
from harness.algos import offpolicy as O
from harness.config import RunConfig, response_length
from harness.lm.forward import policy_forward
from harness.lm.rollout import Rollout

__all__ = ["Behaviour", "Correction", "concat", "correct_rollout", "fill_groups", "off_policy", "overlong"]


def off_policy(cfg: RunConfig) -> bool:
    """Whether pi_old is recomputed (staleness > 0 or a correction): else the sampling logprobs serve as pi_old."""
    return cfg.rollout.staleness > 0 or cfg.rollout.correction != "none"


class Behaviour:
    """The policy that samples iteration i: the training policy itself (staleness 0) or a copy holding its
    weights of iteration max(1, i - k)."""

    def __init__(self, staleness: int) -> None:
        self.k = staleness
        self._weights: collections.deque = collections.deque(maxlen=staleness + 1)
        self._copy: torch.nn.Module | None = None

    def sampler(self, policy: torch.nn.Module) -> torch.nn.Module:
        """Call once per iteration, before sampling: records the current weights, returns the sampler."""
        if self.k == 0:
            return policy
        self._weights.append({n: t.detach().clone() for n, t in policy.state_dict().items()})
        if self._copy is None:
            self._copy = copy.deepcopy(policy).requires_grad_(False)
            for p in self._copy.parameters():
                p.grad = None
        self._copy.load_state_dict(self._weights[0])
        return self._copy.eval()


class Correction(NamedTuple):
    weights: torch.Tensor | None  # (B, T) the policy loss's factors; None = no correction
    keep: torch.Tensor | None  # (B, T) float, 0 on tokens the correction took out of the loss; None = all stay
    metrics: dict[str, float]


@torch.no_grad()
def correct_rollout(cfg: RunConfig, policy: torch.nn.Module, ro: Rollout, autocast) -> Correction:
    """The training forward on ``ro``, the offpolicy/* metrics, and (off-policy runs) ``ro``'s logprobs and
    entropy replaced by it; the correction's weights and mask (see the module docstring)."""
    r = cfg.rollout
    policy.eval()
    with autocast:
        out = policy_forward(policy, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.mask, r.temperature,
                             with_entropy=off_policy(cfg))
    behaviour = ro.logprobs
    rho = O.importance_ratio(out.logprobs, behaviour, ro.mask, r.correction_level)
    w, keep = O.correct(r.correction, rho, r.is_threshold_low, r.is_threshold)
    metrics = O.mismatch_metrics(out.logprobs, behaviour, ro.mask, rho, w, keep, r.correction)
    if not off_policy(cfg):
        return Correction(None, None, metrics)
    ro.logprobs, ro.entropy = out.logprobs, out.entropy
    if r.correction == "none":
        return Correction(None, None, metrics)
    return Correction(w * ro.mask, keep.to(ro.mask.dtype), metrics)


def overlong(cfg: RunConfig, task, ro: Rollout) -> Rollout:
    """train.overlong_buffer: DAPO's soft overlong punishment added to ``ro.scores`` (``dapo.overlong_penalty``)."""
    t = cfg.train
    if t.overlong_buffer is None:
        return ro
    L = response_length(cfg, task)
    ro.scores = ro.scores + dapo.overlong_penalty(ro.mask.sum(1), L, min(t.overlong_buffer, L), t.overlong_penalty)
    return ro


def concat(parts: list[Rollout], pad_id: int) -> Rollout:
    """Rollouts stacked row-wise; prompts left-padded to the widest (``pad_id``, mask 0)."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.prompt_ids.shape[1] for p in parts)
    out = {}
    for name, v in parts[0].__dict__.items():
        vals = [getattr(p, name) for p in parts]
        if isinstance(v, list):
            out[name] = [x for xs in vals for x in xs]
        elif v is None:
            out[name] = None
        elif name in ("prompt_ids", "prompt_mask"):
            fill = pad_id if name == "prompt_ids" else 0
            out[name] = torch.cat([torch.nn.functional.pad(x, (width - x.shape[1], 0), value=fill) for x in vals])
        else:
            out[name] = torch.cat(vals)
    return Rollout(**out)


def fill_groups(draw: Callable[[int], Rollout], groups: int, k: int, rounds: int, pad_id: int
                ) -> tuple[Rollout, dict[str, float]]:
    """DAPO dynamic sampling (veRL algorithm.filter_groups): draw ``groups`` prompt groups of ``k``; keep those
    whose scores vary (``dapo.informative_groups``); draw as many more groups as are missing, at most
    ``rounds`` times; a batch still short is topped up with the first dropped groups (the batch size stays
    fixed). Returns (the batch, metrics): rollout/filtered_frac = dropped / drawn groups over every round,
    rollout/extra_gen_frac = extra completions generated / batch size."""
    kept: list[Rollout] = []
    dropped: list[Rollout] = []
    drawn, need = 0, groups
    for _round in range(rounds + 1):
        ro = draw(need)
        drawn += need
        ok = dapo.informative_groups(ro.scores, k)
        rows = ok.repeat_interleave(k)
        if ok.any():
            kept.append(ro.select(torch.nonzero(rows).squeeze(1)))
        if (~ok).any():
            dropped.append(ro.select(torch.nonzero(~rows).squeeze(1)))
        need -= int(ok.sum())
        if need == 0:
            break
    n_dropped = sum(d.size for d in dropped) // k
    if need > 0:  # still short after the rounds: top up with dropped groups
        pool = concat(dropped, pad_id)
        kept.append(pool.select(torch.arange(need * k, device=pool.mask.device)))
    metrics = {"rollout/filtered_frac": n_dropped / drawn, "rollout/extra_gen_frac": (drawn - groups) / groups}
    return concat(kept, pad_id), metrics
