"""Supervised warm start on the task's (prompt, completion) corpus; loss on completion tokens only."""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

SFT_RECIPE = dict(steps=600, batch=64, lr=3e-3, warmup=30)  # the presets' (tiny: ~20 s on 2 cores)
SFT_EPOCHS = 3  # a model of one's own: this many passes over its SFT pairs ...
SFT_MIN_STEPS = 50  # ... at least this many steps, at most the presets' 600


def sft_recipe(n_pairs: int | None) -> dict:
    """The warm start's recipe: the presets' fixed one (``n_pairs`` None), or for a model of one's own one
    sized to its data: ``SFT_EPOCHS`` passes over the pairs in batches of 64, within [50, 600] steps, warm-up
    a twentieth of them (600 steps of a 100M-parameter model took over an hour on 2 loaded cores)."""
    if n_pairs is None:
        return dict(SFT_RECIPE)
    steps = min(SFT_RECIPE["steps"], max(SFT_MIN_STEPS, math.ceil(SFT_EPOCHS * n_pairs / SFT_RECIPE["batch"])))
    return {**SFT_RECIPE, "steps": steps, "warmup": max(1, steps // 20)}


def _encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention, loss_mask) right-padded; the loss covers completion + EOS."""
    rows, masks = [], []
    for p, c in pairs:
        pi = tokenizer.encode(p, add_special_tokens=False)
        ci = tokenizer.encode(c, add_special_tokens=False) + [tokenizer.eos_token_id]
        rows.append(pi + ci)
        masks.append([0] * len(pi) + [1] * len(ci))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    lm = torch.zeros_like(ids)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        lm[i, : len(m)] = torch.tensor(m)
    return ids, attn, lm


def sft(model: nn.Module, tokenizer, corpus: tuple[tuple[str, str], ...], seed: int, progress=None,
        recipe: dict | None = None, say: bool = False) -> dict:
    """Supervised warm start on (prompt, completion) pairs; loss on completion tokens only. ``say``: one line
    on stderr at the start and every tenth of the steps (a slow build shows its progress even under -q)."""
    g = torch.Generator().manual_seed(seed)
    ids, attn, lm = _encode_pairs(tokenizer, list(corpus))
    recipe = recipe or SFT_RECIPE
    steps, bs, lr, warm = recipe["steps"], recipe["batch"], recipe["lr"], recipe["warmup"]
    t0, every = time.monotonic(), max(1, steps // 10)
    if say:
        print(f"SFT warm start: {steps} steps of {bs} on {len(corpus)} pairs (built once, then cached)",
              file=sys.stderr, flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / steps))
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, ids.shape[0], (bs,), generator=g)
        x, a, m = ids[idx], attn[idx], lm[idx]
        logits = model(input_ids=x, attention_mask=a, use_cache=False).logits[:, :-1]  # (b, L-1, V)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        mm = m[:, 1:].reshape(-1).float()
        loss = (nll * mm).sum() / mm.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            progress(f"SFT step {step + 1}/{steps} loss {loss.item():.3f}")
        if say and ((step + 1) % every == 0 or step + 1 == steps):
            print(f"SFT step {step + 1}/{steps}  loss {loss.item():.3f}  {time.monotonic() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    model.eval()
    tail = losses[-50:]
    return {"sft_loss": sum(tail) / len(tail)}
