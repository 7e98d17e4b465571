"""Preference pairs: two SFT samples per prompt, labelled by the gold reward with label noise (Gao et al. 2022)."""

from __future__ import annotations

import random

import torch

from harness.lm.sampling import decode, encode_prompts, sample
from harness.models.types import ModelError
from harness.tasks import Task

MAX_BARREN_ROUNDS = 64  # rounds of 256 pairs without one untied pair: the gold reward cannot label preferences


def preference_pairs(policy, tokenizer, task: Task, n_pairs: int, response_length: int, noise: float, seed: int):
    """Two SFT samples per prompt, labelled by the gold reward; ties dropped, labels flipped w.p. noise."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    chosen, rejected = [], []
    rounds = 0  # rounds of 256 pairs so far; a gold reward that ties on all of many rounds cannot label any
    while len(chosen) < n_pairs:
        if rounds >= MAX_BARREN_ROUNDS and not chosen:
            raise ModelError(f"model.gold: the gold reward tied on every one of {256 * rounds} sampled pairs, so no "
                             "preference labels exist to train the proxy reward model (model.reward=learned)")
        rounds += 1
        prompts = [rng.choice(task.train_prompts) for _ in range(256)]
        batch = [p for p in prompts for _ in range(2)]
        pids, pmask = encode_prompts(tokenizer, batch)
        rids, mask, has_eos, _, _ = sample(
            policy, pids, pmask, response_length, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id, g
        )
        texts = decode(tokenizer, rids, mask, tokenizer.eos_token_id)
        gold = task.gold(batch, texts, has_eos.tolist())
        for i in range(0, len(batch), 2):
            # a response that never stops is worse than any that does (the harness penalises it too)
            ga = gold[i] if bool(has_eos[i]) else task.gold_range[0] - 1
            gb = gold[i + 1] if bool(has_eos[i + 1]) else task.gold_range[0] - 1
            if ga == gb:
                continue
            win, lose = (i, i + 1) if ga > gb else (i + 1, i)
            if rng.random() < noise:
                win, lose = lose, win
            chosen.append((batch[win], rids[win], mask[win]))
            rejected.append((batch[lose], rids[lose], mask[lose]))
    return chosen[:n_pairs], rejected[:n_pairs]
