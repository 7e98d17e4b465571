"""Held-out evaluation shared by every implementation (custom core and TRL baseline).

Fixed prompts (the task's eval split) and a fixed sampling seed, so two
evaluations differ only by the policy. ``eval/kl`` is the summed k1 estimate of
KL(pi || ref) over sampled responses: an unbiased estimate of the sequence KL.
"""

from __future__ import annotations

import itertools

import torch

from harness.lm.rollout import ScoreFn, collect

EVAL_SEED = 20240607  # the same sampling noise at every evaluation of every run


def overopt_onset(gold: list[float], proxy: list[float]) -> int | None:
    """Index of the first evaluation at which gold has fallen for two consecutive evaluations while
    the proxy rose over both, i.e. the first k >= 2 with gold[k-2] > gold[k-1] > gold[k] and
    proxy[k-2] < proxy[k-1] < proxy[k]; None when that never happens.

    The over-optimisation onset of Gao et al. 2022's picture: optimising the proxy past the point
    where it stops tracking the gold reward.
    """
    for k in range(2, min(len(gold), len(proxy))):
        if gold[k - 2] > gold[k - 1] > gold[k] and proxy[k - 2] < proxy[k - 1] < proxy[k]:
            return k
    return None


def eval_prompts(task, n: int) -> list[str]:
    """The first n held-out prompts, cycling when the split is smaller."""
    return list(itertools.islice(itertools.cycle(task.eval_prompts), n))


@torch.inference_mode()
def evaluate(
    policy,
    ref,
    tokenizer,
    task,
    score_fn: ScoreFn,
    *,
    n_prompts: int,
    response_length: int,
    temperature: float,
    missing_eos_penalty: float | None,
    batch_size: int = 128,
    options: dict | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Returns (metrics, samples): eval/gold, eval/proxy, eval/kl, eval/length (held-out mean tokens).

    ``options``: ``collect``'s generation keywords (``sampling.generation_options``): the policy as it samples."""
    was_training = policy.training
    policy.eval()
    g = torch.Generator(device=next(policy.parameters()).device).manual_seed(EVAL_SEED)
    prompts = eval_prompts(task, n_prompts)
    gold, proxy, kl, length, samples = [], [], [], [], []
    for s in range(0, len(prompts), batch_size):
        ro = collect(
            policy, ref, tokenizer, prompts[s : s + batch_size],
            max_new_tokens=response_length, temperature=temperature, generator=g,
            score_fn=score_fn, gold_fn=task.gold, missing_eos_penalty=missing_eos_penalty, **(options or {}),
        )
        gold.append(ro.gold)
        proxy.append(ro.scores)
        kl.append(((ro.logprobs - ro.ref_logprobs) * ro.mask).sum(1))
        length.append(ro.mask.sum(1))
        for p, c, sc, gd in zip(ro.prompts, ro.completions, ro.scores.tolist(), ro.gold.tolist(), strict=True):
            samples.append({"prompt": p, "completion": c, "proxy": sc, "gold": gd})
    if was_training:
        policy.train()
    metrics = {
        "eval/gold": float(torch.cat(gold).mean()),
        "eval/proxy": float(torch.cat(proxy).mean()),
        "eval/kl": float(torch.cat(kl).mean()),
        "eval/length": float(torch.cat(length).mean()),
    }
    return metrics, samples
