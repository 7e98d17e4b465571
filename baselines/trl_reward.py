"""The reward model TRL's PPOTrainer calls: proxy RM or gold, with the harness's EOS semantics.

TRL scores with ``trl.experimental.utils.get_reward(model, query_responses, pad, P)``:

    trunk = getattr(model, model.base_model_prefix)
    h = trunk(input_ids=..., attention_mask=..., position_ids=..., output_hidden_states=True, ...)
    logits = model.score(h.hidden_states[-1])            # (B, P+T, 1)
    score = logits[b, last real token of b]              # EOS when present

so any module with a ``base_model_prefix`` trunk and a ``score`` head is a reward model.
``RewardAdapter`` is one: its trunk records what TRL scored (the prompt + truncated
response ids and their attention mask); its head returns, for every row, the score the
custom core would give that completion:

- ``model.reward=learned`` (or a path): the proxy RM's own trunk and head, unchanged;
- ``model.reward=gold``: the task's gold reward of the decoded completion, broadcast
  over positions (so TRL's "last real token" pick returns it);
- ``model.reward=package.module:function``: that function of the decoded text, broadcast the same way;
- ``train.missing_eos_penalty=c``: rows with no EOS get the score ``c`` (REPLACED:
  ``harness.algos.math.missing_eos_score``, as in ``harness.lm.rollout.collect``). TRL's own
  ``missing_eos_penalty=p`` would instead give ``score - p``; no ``p`` makes that equal to a
  replacement for every score, so the baseline leaves TRL's option unset and applies the
  custom semantics here.

As a side effect each call records batch statistics TRL does not log (gold reward,
response length, EOS fraction, the time the rollout finished) for the harness callback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn

from harness.algos import math as M
from harness.lm.sampling import decode, response_mask


@dataclass
class ScoredBatch:
    """What one reward call saw; drained by the harness callback once per iteration."""

    gold: list[float] = field(default_factory=list)
    lengths: list[float] = field(default_factory=list)  # response tokens up to and including EOS
    has_eos: list[bool] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)  # (prompt, completion)
    scored_at: float | None = None  # perf_counter() when the last reward call returned

    @property
    def empty(self) -> bool:
        return not self.lengths


class _Trunk(nn.Module):
    """The reward model's transformer (or nothing, for gold); remembers its inputs."""

    def __init__(self, trunk: nn.Module | None, seen: dict):
        super().__init__()
        self.inner = trunk
        self._seen = seen  # shared with the head: a plain dict, not a submodule

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
        self._seen["input_ids"], self._seen["attention_mask"] = input_ids, attention_mask
        if self.inner is None:  # gold: the head needs no features
            return SimpleNamespace(hidden_states=(torch.zeros((*input_ids.shape, 1)),))
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


class _Head(nn.Module):
    """(B, L, H) hidden states -> (B, L, 1) scores: proxy head or gold, EOS penalty applied."""

    def __init__(self, adapter: RewardAdapter, head: nn.Module | None):
        super().__init__()
        self.inner = head
        self._adapter = [adapter]  # a list hides the parent from nn.Module registration (no cycle)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        a = self._adapter[0]
        ids, attn = a.seen["input_ids"], a.seen["attention_mask"]
        prompts, completions, mask, has_eos = a.decode(ids, attn)
        gold = torch.tensor(a.gold_fn(prompts, completions, has_eos.tolist()), dtype=torch.float32)  # (B,)
        if self.inner is None:  # a function of the text: the user's (model.reward=module:function) or gold
            by_text = gold if a.reward_fn is None else torch.tensor(
                a.reward_fn(prompts, completions, has_eos.tolist()), dtype=torch.float32)
            scores = by_text[:, None, None].expand(ids.shape[0], ids.shape[1], 1).clone()  # (B, L, 1)
        else:
            scores = self.inner(hidden).float()  # (B, L, 1), TRL picks the last real token
        # the custom core's semantics: no EOS -> the score IS the penalty (not score - penalty)
        scores = M.missing_eos_score(scores, has_eos[:, None, None], a.missing_eos_penalty)
        rec = a.record
        rec.gold += gold.tolist()
        rec.lengths += mask.sum(1).tolist()
        rec.has_eos += has_eos.tolist()
        rec.samples += list(zip(prompts, completions, strict=True))
        rec.scored_at = time.perf_counter()
        return scores


class RewardAdapter(nn.Module):
    """A reward model for TRL's ``get_reward``: proxy RM or gold reward, custom EOS semantics.

    reward_model: a sequence classifier with ``base_model_prefix`` and ``score`` (the harness
      proxy RM), or None for the task's gold reward.
    prompt_width: P, the (fixed) width every prompt batch is left-padded to; the response is
      ``input_ids[:, P:]``.
    prompts: the training prompts, to map token ids back to the exact strings the gold
      reward was defined on (decode() is only a fallback).
    """

    base_model_prefix = "trunk"

    def __init__(self, reward_model: nn.Module | None, tokenizer, gold_fn, prompt_width: int,
                 missing_eos_penalty: float | None, prompts: list[str] | tuple[str, ...] = (), reward_fn=None):
        super().__init__()
        self.seen: dict = {}
        trunk = getattr(reward_model, reward_model.base_model_prefix) if reward_model is not None else None
        self.trunk = _Trunk(trunk, self.seen)
        self.score = _Head(self, reward_model.score if reward_model is not None else None)
        self.tokenizer, self.gold_fn, self.P = tokenizer, gold_fn, prompt_width
        self.reward_fn = reward_fn  # model.reward=package.module:function (then reward_model is None)
        self.missing_eos_penalty = missing_eos_penalty
        self.eos_id = tokenizer.eos_token_id
        self._prompt_of = {tuple(tokenizer.encode(p, add_special_tokens=False)): p for p in prompts}
        self.record = ScoredBatch()

    def drain(self) -> ScoredBatch:
        """The statistics recorded since the last drain (one PPO iteration's rollout)."""
        rec, self.record = self.record, ScoredBatch()
        return rec

    def decode(self, ids: torch.Tensor, attn: torch.Tensor):
        """(prompts, completions, response mask (B, T), has_eos (B,)) of a TRL query-response batch."""
        P = self.P
        resp, resp_attn = ids[:, P:], attn[:, P:].bool()  # TRL pads after the first EOS
        is_eos = (resp == self.eos_id) & resp_attn
        mask, _ = response_mask(torch.where(resp_attn, resp, torch.full_like(resp, -1)), self.eos_id)
        mask = mask * resp_attn.float()  # up to and including EOS, like rollout.response_mask
        has_eos = is_eos.any(1)
        prompts = []
        for row, m in zip(ids[:, :P].tolist(), attn[:, :P].tolist(), strict=True):
            key = tuple(t for t, keep in zip(row, m, strict=True) if keep)
            prompts.append(self._prompt_of.get(key) or self.tokenizer.decode(list(key), skip_special_tokens=True))
        completions = decode(self.tokenizer, resp, mask, self.eos_id)
        return prompts, completions, mask, has_eos
