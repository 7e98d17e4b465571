"""Steps 1-3 of an iteration, shared by the custom loop, evaluation and the baselines:
sample, score (proxy RM or gold, missing-EOS penalty), reference logprobs and values.

Everything here runs under ``torch.inference_mode`` (``torch.no_grad`` for sharded models); the update recomputes what it differentiates.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.algos import math as M
from harness.lm.forward import policy_forward, sequence_scores, token_values
from harness.lm.sampling import (
    Truncation,
    chat_prompts,
    cut_at_stop,
    decode,
    encode_prompts,
    sample,
    sequence_inputs,
)
from harness.shard import gathered, is_sharded


@dataclass
class Rollout:
    prompts: list[str]
    completions: list[str]
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, T) pad after EOS
    mask: torch.Tensor  # (B, T) float, 1 on response tokens up to and including EOS
    has_eos: torch.Tensor  # (B,) bool
    logprobs: torch.Tensor  # (B, T) sampling logprobs at the temperature (the "old" policy)
    entropy: torch.Tensor  # (B, T) entropy of the sampling distribution
    ref_logprobs: torch.Tensor | None = None  # (B, T)
    values: torch.Tensor | None = None  # (B, T) V(s_t), state before response token t
    scores: torch.Tensor | None = None  # (B,) optimised reward (proxy or gold), EOS penalty applied
    gold: torch.Tensor | None = None  # (B,) task gold reward

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return sequence_inputs(self.prompt_ids, self.prompt_mask, self.response_ids)

    def select(self, idx: torch.Tensor) -> Rollout:
        """Rows ``idx`` of every tensor field (lists follow)."""
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor):
                out[k] = v[idx]
            elif isinstance(v, list):
                out[k] = [v[i] for i in idx.tolist()]
            else:
                out[k] = v
        return Rollout(**out)


ScoreFn = Callable[[Rollout], torch.Tensor]


def _without_grad(fn):
    """``fn`` under torch.inference_mode, or torch.no_grad when the policy is sharded (train.parallel=fsdp):
    FSDP2 gathers weights into tensors that must keep their version counters, which inference mode drops."""

    @functools.wraps(fn)
    def run(policy, *args, **kwargs):
        with torch.no_grad() if is_sharded(policy) else torch.inference_mode():
            return fn(policy, *args, **kwargs)

    return run


@_without_grad
def collect(
    policy,
    ref,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
    score_fn: ScoreFn,
    gold_fn: Callable[[list[str], list[str], list[bool]], list[float]],
    value_model=None,
    missing_eos_penalty: float | None = None,
    timings: dict[str, float] | None = None,
    truncation: Truncation | None = None,
    stop: tuple[str, ...] = (),
    chat: bool = False,
) -> Rollout:
    """Steps 1-3 of the loop: sample, score, ref logprobs, values.

    ``timings``, when given, receives ``generate_s`` (sampling) and ``score_s``
    (decode, ref / value / reward forwards, gold) in seconds.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    t0 = time.perf_counter()
    dev = next(policy.parameters()).device  # train.device: every tensor of the rollout lives there
    # task.chat_template: the policy sees each prompt as a chat turn (ro.prompts keep the plain text)
    pids, pmask = (t.to(dev) for t in encode_prompts(tokenizer, chat_prompts(tokenizer, prompts) if chat else prompts))
    with gathered(policy):  # train.parallel=fsdp: the whole weights once; ranks stop at their own lengths
        rids, mask, has_eos, logprobs, entropy = sample(policy, pids, pmask, max_new_tokens, temperature, eos, pad,
                                                      generator, truncation)
    if stop:  # rollout.stop: cut after a stop string; the tokens past it leave every loss
        mask, has_eos = cut_at_stop(tokenizer, rids, mask, has_eos, stop)
        logprobs, entropy = logprobs * mask, entropy * mask
    t1 = time.perf_counter()
    ro = Rollout(
        prompts=list(prompts),
        completions=decode(tokenizer, rids, mask, eos),
        prompt_ids=pids,
        prompt_mask=pmask,
        response_ids=rids,
        mask=mask,
        has_eos=has_eos,
        logprobs=logprobs,
        entropy=entropy,
    )
    ro.ref_logprobs = policy_forward(ref, pids, pmask, rids, mask, temperature).logprobs
    if value_model is not None:
        ro.values = token_values(value_model, pids, pmask, rids, mask)
    ro.gold = torch.tensor(gold_fn(ro.prompts, ro.completions, has_eos.tolist()), dtype=torch.float32, device=dev)
    # no EOS -> the fixed penalty score (N implementation details #23)
    ro.scores = M.missing_eos_score(score_fn(ro), has_eos, missing_eos_penalty)
    if timings is not None:
        timings["generate_s"] = t1 - t0
        timings["score_s"] = time.perf_counter() - t1
    return ro


def make_score_fn(reward_model, task_gold: Callable[[list[str], list[str], list[bool]], list[float]],
                  reward_fn: Callable[[list[str], list[str], list[bool]], list[float]] | None = None) -> ScoreFn:
    """The optimised reward: a function of the text (``reward_fn``, model.reward=package.module:function),
    the proxy RM's score, or the gold reward when there is neither."""
    if reward_fn is not None:
        def by_function(ro: Rollout) -> torch.Tensor:
            return torch.tensor(reward_fn(ro.prompts, ro.completions, ro.has_eos.tolist()), dtype=torch.float32,
                                device=ro.mask.device)

        return by_function
    if reward_model is None:
        def gold(ro: Rollout) -> torch.Tensor:
            if ro.gold is not None:
                return ro.gold.clone()
            return torch.tensor(task_gold(ro.prompts, ro.completions, ro.has_eos.tolist()), dtype=torch.float32,
                                device=ro.mask.device)

        return gold

    def score(ro: Rollout) -> torch.Tensor:
        return sequence_scores(reward_model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.mask)

    return score
