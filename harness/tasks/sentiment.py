"""``sentiment``: review-style prompts, gold = VADER compound score of the completion.

A response without EOS scores -1, the worst gold (an unfinished review; the proxy RM's
labels and the missing-EOS penalty treat it the same way).

The SFT corpus mixes positive, negative and neutral clauses evenly, so the SFT
policy starts near a neutral mean and optimisation has headroom both ways.
"""

from __future__ import annotations

import random

from harness.tasks.base import Task, register

POSITIVE = ("good", "great", "excellent", "wonderful", "amazing", "lovely", "fun", "beautiful",
            "perfect", "nice", "brilliant", "enjoyable")
NEGATIVE = ("bad", "terrible", "awful", "boring", "dull", "poor", "horrible", "ugly",
            "disappointing", "weak", "annoying", "sad")
NEUTRAL = ("long", "short", "new", "old", "simple", "quiet", "slow", "loud", "different",
           "typical", "small", "large")
VERBS = {"pos": ("loved", "enjoyed", "liked", "adored"), "neg": ("hated", "disliked", "regret"),
         "neu": ("watched", "saw", "ordered", "visited", "remember")}
ADJ = {"pos": POSITIVE, "neg": NEGATIVE, "neu": NEUTRAL}
NOUNS = ("plot", "acting", "food", "service", "music", "story", "ending", "staff", "room", "cast",
         "script", "price", "view", "sound", "menu")
PLACES = ("movie", "restaurant", "hotel", "album", "game", "book", "show", "cafe", "concert", "museum")
OPENINGS = ("my {p} review : the {n}", "{p} review : the {n}", "thoughts on the {p} : the {n}",
            "a review of the {p} : the {n}")
INTENSIFIERS = ("very", "really", "quite", "so")

_vader = None


def vader_compound(text: str) -> float:
    global _vader
    if _vader is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _vader = SentimentIntensityAnalyzer()
    return float(_vader.polarity_scores(text)["compound"]) if text.strip() else 0.0


def sentiment_gold(prompt: str, completion: str, ended: bool = True) -> float:
    # VADER compound of the completion; no EOS -> -1, the worst
    return vader_compound(completion) if ended else -1.0


def _adj_phrase(rng: random.Random, mood: str) -> str:
    if mood != "neu" and rng.random() < 0.15:  # "not good" reads as negative to VADER: keeps it honest
        flip = "neg" if mood == "pos" else "pos"
        return f"not {rng.choice(ADJ[flip])}"
    adj = rng.choice(ADJ[mood])
    return f"{rng.choice(INTENSIFIERS)} {adj}" if rng.random() < 0.3 else adj


def _clause(rng: random.Random, mood: str) -> str:
    kind = rng.random()
    if kind < 0.45:
        return f"the {rng.choice(NOUNS)} was {_adj_phrase(rng, mood)} ."
    if kind < 0.7:
        return f"i {rng.choice(VERBS[mood])} the {rng.choice(NOUNS)} ."
    if kind < 0.85:
        return f"and it was {_adj_phrase(rng, mood)} ."
    return f"but the {rng.choice(NOUNS)} was {_adj_phrase(rng, mood)} ."


def _completion(rng: random.Random) -> str:
    moods = [rng.choice(("pos", "neg", "neu")) for _ in range(rng.randint(2, 3))]
    first = f"was {_adj_phrase(rng, moods[0])} ."
    return " ".join([first] + [_clause(rng, m) for m in moods[1:]])


@register("sentiment", "review prompts; gold = VADER compound of the completion (-1..1); SFT starts near neutral")
def make() -> Task:
    rng = random.Random(1234)
    prompts = [o.format(p=p, n=n) for o in OPENINGS for p in PLACES for n in NOUNS]
    rng.shuffle(prompts)
    n_eval = len(prompts) // 5
    eval_prompts, train_prompts = prompts[:n_eval], prompts[n_eval:]
    corpus = tuple((rng.choice(train_prompts), _completion(rng)) for _ in range(6000))
    vocab = ("was", "the", "i", "and", "it", "but", "not", ".", *INTENSIFIERS, *POSITIVE, *NEGATIVE,
             *NEUTRAL, *NOUNS, *(v for vs in VERBS.values() for v in vs))
    return Task(
        name="sentiment",
        description="review prompts; gold = VADER compound of the completion (-1..1)",
        train_prompts=tuple(train_prompts),
        eval_prompts=tuple(eval_prompts),
        sft_corpus=corpus,
        gold_fn=sentiment_gold,
        response_length=20,
        gold_range=(-1.0, 1.0),
        vocabulary=vocab,
    )
