"""``length``: write exactly k words, then stop; gold rewards the right length.

Exercises EOS handling: a response without EOS scores 0 gold and gets the
missing-EOS penalty on the optimised reward. The SFT corpus lengths are only
loosely tied to k, and some overrun the generation budget.
"""

from __future__ import annotations

import random

from harness.tasks.base import Task, register

FILLER = ("la", "da", "na", "ba", "ta", "ka", "ma", "pa", "sa", "ra")
TOPICS = ("cats", "rain", "music", "trains", "bread", "stars", "rivers", "books", "snow", "tea",
          "clocks", "bees")
TARGETS = tuple(range(2, 13))
BUDGET = 14  # response_length: targets up to 12 words + EOS fit, noisy SFT lengths sometimes do not


def length_gold(prompt: str, completion: str, ended: bool = True) -> float:
    # 1 - |n - k| / k, floored at 0; k is the number in the prompt; no EOS -> 0 (it did not stop)
    if not ended:
        return 0.0
    k = int(prompt.split()[1])
    n = len(completion.split())
    return max(0.0, 1.0 - abs(n - k) / k)


@register("length", "write exactly k words then stop; gold = 1 - |n-k|/k (0..1); exercises EOS")
def make() -> Task:
    rng = random.Random(777)
    prompts = [f"write {k} words about {t} :" for k in TARGETS for t in TOPICS]
    eval_topics = set(TOPICS[:3])
    eval_prompts = [p for p in prompts if p.split()[-2] in eval_topics]
    train_prompts = [p for p in prompts if p.split()[-2] not in eval_topics]
    corpus = []
    for _ in range(4000):
        p = rng.choice(train_prompts)
        k = int(p.split()[1])
        n = max(1, min(BUDGET + 3, round(k + rng.gauss(0, 3.5))))
        corpus.append((p, " ".join(rng.choice(FILLER) for _ in range(n))))
    return Task(
        name="length",
        description="write exactly k words then stop; gold = 1 - |n-k|/k (0..1)",
        train_prompts=tuple(train_prompts),
        eval_prompts=tuple(eval_prompts),
        sft_corpus=tuple(corpus),
        gold_fn=length_gold,
        response_length=BUDGET,
        gold_range=(0.0, 1.0),
        vocabulary=("write", "words", "about", ":", *(str(k) for k in TARGETS), *FILLER, *TOPICS),
    )
