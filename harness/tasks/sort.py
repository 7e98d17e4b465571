"""``sort``: sort a list of digits; gold = fraction of positions right.

Partial credit per position makes token-level credit assignment matter; a response
without EOS scores 0. The SFT
corpus is deliberately noisy (positions corrupted at random), so the warm start
is partly right and PPO has room to improve.
"""

from __future__ import annotations

import random

from harness.tasks.base import Task, register

DIGITS = tuple(str(d) for d in range(10))
CORRUPT = 0.5  # per-position corruption of the SFT targets


def sort_gold(prompt: str, completion: str, ended: bool = True) -> float:
    # fraction of positions equal to the sorted list; extra or missing tokens count as wrong;
    # an answer that never stops (no EOS) scores 0: it is not an answer
    if not ended:
        return 0.0
    digits = prompt.split(":", 1)[1].replace("=", " ").split()
    target = sorted(digits)
    got = completion.split()
    right = sum(a == b for a, b in zip(target, got, strict=False))
    return right / max(len(target), len(got), 1)


def _prompt(rng: random.Random) -> str:
    xs = [rng.choice(DIGITS) for _ in range(rng.randint(6, 8))]
    return "sort : " + " ".join(xs) + " ="


def _noisy_answer(rng: random.Random, prompt: str) -> str:
    target = sorted(prompt.split(":", 1)[1].replace("=", " ").split())
    return " ".join(rng.choice(DIGITS) if rng.random() < CORRUPT else t for t in target)


@register("sort", "sort 6-8 digits; gold = fraction of positions right (0..1); token-level credit matters")
def make() -> Task:
    rng = random.Random(4321)
    prompts = list(dict.fromkeys(_prompt(rng) for _ in range(4000)))
    rng.shuffle(prompts)
    eval_prompts, train_prompts = prompts[:300], prompts[300:]
    corpus = tuple((p, _noisy_answer(rng, p)) for p in train_prompts for _ in range(2))
    return Task(
        name="sort",
        description="sort 6-8 digits; gold = fraction of positions right (0..1)",
        train_prompts=tuple(train_prompts),
        eval_prompts=tuple(eval_prompts),
        sft_corpus=corpus,
        gold_fn=sort_gold,
        response_length=10,
        gold_range=(0.0, 1.0),
        vocabulary=("sort", ":", "=", *DIGITS),
    )
