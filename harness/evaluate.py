"""Held-out evaluation shared by every implementation (custom core and TRL baseline).

Fixed prompts (the task's eval split) and a fixed sampling seed, so two
evaluations differ only by the policy. ``eval/gold_se`` is eval/gold's standard error over the
prompts (the noise the over-optimisation onset test, ``harness.onset``, allows for). ``eval/kl`` is the summed k1 estimate of
KL(pi || ref) over sampled responses: an unbiased estimate of the sequence KL.
"""

from __future__ import annotations

import itertools

import torch

from harness import dist
from harness.lm.rollout import ScoreFn, collect
from harness.onset import onset_index

EVAL_SEED = 20240607  # the same sampling noise at every evaluation of every run


def overopt_onset(gold: list[float], se: list[float], proxy: list[float], n_total: int | None = None,
                  prompts: int | None = None) -> int | None:
    """Index of the first evaluation at which the gold reward has fallen by more than the evaluation
    noise allows while the proxy rose (``harness.onset.onset_index``: a segment scan with a run-wide
    false-alarm rate of ``harness.onset.ALPHA`` on any gold curve without a fall); None when it never
    happens. ``se``: each evaluation's ``eval/gold_se``; ``n_total``: the evaluations the run makes.

    The over-optimisation onset of Gao et al. 2022's picture: optimising the proxy past the point
    where it stops tracking the gold reward.
    """
    return onset_index(gold, se, proxy, n_total=n_total, prompts=prompts)


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
    world: dist.World | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Returns (metrics, samples): eval/gold, eval/gold_se, eval/proxy, eval/kl, eval/length (held-out mean tokens).

    eval/gold_se is the standard error of eval/gold from the per-prompt gold scores (sd / sqrt(n),
    NaN for one prompt): the evaluation noise the over-optimisation onset test reads.
    ``options``: ``collect``'s generation keywords (``sampling.generation_options``): the policy as it samples.
    Over N ranks (``world``) each rank samples a contiguous share of the prompts (rank r with seed EVAL_SEED + r)
    and every rank returns the metrics and samples of all of them, in prompt order."""
    w = world or dist.World()
    was_training = policy.training
    policy.eval()
    g = torch.Generator(device=next(policy.parameters()).device).manual_seed(EVAL_SEED + w.rank)
    prompts = eval_prompts(task, n_prompts)
    prompts = prompts[len(prompts) * w.rank // w.size : len(prompts) * (w.rank + 1) // w.size]
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
    if w.parallel:  # every rank's rows, in rank (= prompt) order
        parts = dist.gather_objects([torch.cat(x).cpu() if x else torch.zeros(0) for x in (gold, proxy, kl, length)]
                                    + [samples], w)
        gold, proxy, kl, length = ([p[i] for p in parts] for i in range(4))
        samples = [row for p in parts for row in p[4]]
    gold_all = torch.cat(gold).double()
    n = gold_all.numel()
    metrics = {
        "eval/gold": float(gold_all.mean()),
        "eval/gold_se": float(gold_all.std(unbiased=True) / n**0.5) if n > 1 else float("nan"),
        "eval/proxy": float(torch.cat(proxy).mean()),
        "eval/kl": float(torch.cat(kl).mean()),
        "eval/length": float(torch.cat(length).mean()),
    }
    return metrics, samples
