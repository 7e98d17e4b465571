"""The proxy reward model: Bradley-Terry on preference pairs, then normalised on SFT samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.lm.forward import sequence_scores
from harness.lm.sampling import encode_prompts

RM_RECIPE = dict(epochs=3, batch=64, lr=1e-3)


def _stack(tokenizer, items):
    prompts = [p for p, _, _ in items]
    pids, pmask = encode_prompts(tokenizer, prompts)
    rids = torch.stack([r for _, r, _ in items])
    mask = torch.stack([m for _, _, m in items])
    return pids, pmask, rids, mask


def train_reward_model(rm: nn.Module, tokenizer, chosen, rejected, seed: int, progress=None) -> dict:
    """Bradley-Terry: -log sigmoid(r(chosen) - r(rejected)); then normalise scores on SFT samples."""
    g = torch.Generator().manual_seed(seed)
    n = len(chosen)
    n_val = max(16, n // 10)
    perm = torch.randperm(n, generator=g).tolist()
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    opt = torch.optim.AdamW(rm.parameters(), lr=RM_RECIPE["lr"], weight_decay=0.01)
    bs = RM_RECIPE["batch"]
    rm.train()
    for epoch in range(RM_RECIPE["epochs"]):
        order = [tr_idx[i] for i in torch.randperm(len(tr_idx), generator=g).tolist()]
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            rc = sequence_scores(rm, *_stack(tokenizer, [chosen[i] for i in idx]))
            rr = sequence_scores(rm, *_stack(tokenizer, [rejected[i] for i in idx]))
            loss = -F.logsigmoid(rc - rr).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
            opt.step()
            if progress:
                progress(f"reward model epoch {epoch + 1}/{RM_RECIPE['epochs']} loss {loss.item():.3f}")
    rm.eval()
    with torch.no_grad():
        rc = sequence_scores(rm, *_stack(tokenizer, [chosen[i] for i in val_idx]))
        rr = sequence_scores(rm, *_stack(tokenizer, [rejected[i] for i in val_idx]))
        acc = (rc > rr).float().mean().item()
        # N implementation details: normalise the RM so SFT samples score mean 0, std 1
        both = torch.cat([rc, rr])
        mean, std = both.mean(), both.std().clamp(min=1e-6)
        head = nn.Linear(rm.score.in_features, 1, bias=True)
        head.weight.copy_(rm.score.weight / std)
        head.bias.fill_(float(-mean / std))
        rm.score = head
    return {"rm_val_accuracy": acc, "rm_raw_mean": float(mean), "rm_raw_std": float(std)}
