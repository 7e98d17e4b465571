"""Text in, tokens out: prompt encoding, sampling with the KV cache, the response mask, decoding.

Layout: prompts are left-padded to P tokens, responses are right-padded to T tokens, so a full
sequence is ``(B, P + T)`` and the logits predicting response token t sit at position ``P - 1 + t``.
Sampling runs under ``torch.inference_mode``; whatever is differentiated is recomputed by
``harness.lm.forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from harness.fast import gpt2


def encode_prompts(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask, (B, P)."""
    rows = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def sequence_inputs(prompt_ids, prompt_mask, response_ids):
    """(input_ids, attention_mask, position_ids) for the full (B, P + T) sequence.

    Response positions are all attended (tokens after EOS only see themselves
    causally and are masked out of every loss), which avoids fully-masked rows.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, P+T)
    attn = torch.cat([prompt_mask, torch.ones_like(response_ids)], dim=1)  # (B, P+T)
    position_ids = (attn.cumsum(1) - 1).clamp(min=0)  # left padding shifts positions
    return input_ids, attn, position_ids


def response_mask(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask 1 up to and including the first EOS, 0 after; and whether an EOS occurred. (B, T)."""
    is_eos = response_ids == eos_id  # (B, T)
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after).float(), is_eos.any(1)


class Truncation(NamedTuple):
    """What is sampled from, past the temperature (``rollout.top_k``, ``rollout.top_p``, ``rollout.min_new_tokens``).

    Tokens are drawn from the tempered distribution with EOS removed before ``min_new_tokens`` tokens, then
    cut to the ``top_k`` most likely (0 = all) and to the smallest set whose probability reaches ``top_p``
    (transformers' MinNewTokens, TopK and TopP processors, in that order). The log-probabilities returned (and
    every ratio, KL and entropy the loop computes) are those of the untruncated tempered distribution, as TRL's
    trainers compute them: the learner's pi is the model's own distribution, which the truncation only samples
    from (the samples come from a distribution with less support; the first epoch's ratio is still exactly 1).
    """

    top_k: int = 0
    top_p: float = 1.0
    min_new_tokens: int = 0

    @property
    def active(self) -> bool:
        return bool(self.top_k) or self.top_p < 1.0 or self.min_new_tokens > 0


def truncation(cfg) -> Truncation:
    """A run config's ``rollout.top_k``, ``rollout.top_p`` and ``rollout.min_new_tokens``."""
    r = cfg.rollout
    return Truncation(r.top_k, r.top_p, r.min_new_tokens)


def generation_options(cfg) -> dict:
    """``collect``'s keyword arguments for a run config's generation keys: the truncation, ``rollout.stop``
    and ``task.chat_template``."""
    return {"truncation": truncation(cfg), "stop": tuple(cfg.rollout.stop), "chat": cfg.task.chat_template}


def chat_prompts(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Each prompt as one user turn through the tokenizer's chat template, with the assistant's turn opened
    (``apply_chat_template(add_generation_prompt=True)``): the text the policy is given."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def cut_at_stop(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor, has_eos: torch.Tensor,
                stop: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended) with each response cut after the first token whose text completes one of the ``stop``
    strings (the stop string kept, as transformers' ``stop_strings`` keep it); such a response has ended."""
    mask, ended = mask.clone(), has_eos.clone()
    for i, row in enumerate(response_ids.tolist()):
        n = int(mask[i].sum())
        for t in range(n):
            text = tokenizer.decode(row[: t + 1], skip_special_tokens=True)
            if any(s in text for s in stop):
                if t + 1 < n or not bool(has_eos[i]):
                    mask[i, t + 1 :] = 0
                    ended[i] = True
                break
    return mask, ended


def truncate_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """``logits`` (B, V) with -inf outside the top ``top_k`` tokens (0 = none cut) and outside the nucleus: the
    smallest set of most likely tokens whose probability reaches ``top_p`` (at least one token kept)."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, idx = torch.sort(logits, dim=-1)  # ascending
        remove = ordered.softmax(-1).cumsum(-1) <= 1.0 - top_p
        remove[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(remove.scatter(1, idx, remove), float("-inf"))
    return logits


def cache_kwarg(model) -> str:
    """The forward's name for the KV cache: ``cache`` (transformers' Cache API, 5.x releases that deprecate
    ``past_key_values``), else ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    return out["cache"] if "cache" in out else out.past_key_values


@torch.inference_mode()
def sample(
    policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    truncation: Truncation | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample T tokens with the KV cache straight from the logits.

    Returns (response_ids, mask, has_eos, logprobs, entropy); logprobs and entropy
    are those of the tempered distribution (logits / temperature), which tokens are
    drawn from unless ``truncation`` cuts it (see ``Truncation``).
    GPT-2 models decode through ``gpt2.Decoder`` (a KV cache preallocated for
    P + T positions); other models through the HF forward with its cache.
    """
    B, P = prompt_ids.shape
    T = max_new_tokens
    dev = prompt_ids.device
    position_ids = (prompt_mask.cumsum(1) - 1).clamp(min=0)  # (B, P) left padding shifts positions
    next_pos = position_ids[:, -1:] + 1  # (B, 1) position of response token 0
    if gpt2.supports(policy):
        decoder = gpt2.Decoder(policy, prompt_mask, P + T)
        logits = decoder.prefill(prompt_ids, position_ids)  # (B, V)
        step = decoder.step
    else:
        attn = torch.cat([prompt_mask, torch.ones((B, T), dtype=prompt_mask.dtype, device=dev)], dim=1)  # (B, P+T)
        out = policy(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids, use_cache=True)
        key = cache_kwarg(policy)
        cache = {"past": _cache_of(out), "len": P}
        logits = out.logits[:, -1, :]

        def step(tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            cache["len"] += 1
            o = policy(input_ids=tok, attention_mask=attn[:, : cache["len"]], position_ids=pos,
                       use_cache=True, **{key: cache["past"]})
            cache["past"] = _cache_of(o)
            return o.logits[:, -1, :]

    response_ids = torch.full((B, T), pad_id, dtype=torch.long, device=dev)
    logprobs = torch.zeros((B, T), device=dev)
    entropy = torch.zeros((B, T), device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    for t in range(T):
        logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        logp_all = F.log_softmax(logits, dim=-1)  # (B, V)
        p_all = logp_all.exp()
        p_draw = p_all if truncation is None or not truncation.active else _truncated(logits, truncation, t, eos_id)
        tok = torch.multinomial(p_draw, 1, generator=generator).squeeze(1)  # (B,)
        tok.masked_fill_(done, pad_id)
        response_ids[:, t] = tok
        logprobs[:, t] = logp_all.gather(1, tok[:, None]).squeeze(1)
        entropy[:, t] = -(p_all * logp_all).sum(-1)
        done |= tok == eos_id
        if t == T - 1 or bool(done.all()):
            break
        logits = step(tok[:, None], next_pos + t)
    mask, has_eos = response_mask(response_ids, eos_id)
    return response_ids, mask, has_eos, logprobs * mask, entropy * mask


def _truncated(logits: torch.Tensor, tr: Truncation, t: int, eos_id: int) -> torch.Tensor:
    """The probabilities tokens are drawn from at response step ``t`` under ``tr`` (B, V)."""
    if t < tr.min_new_tokens:
        logits = logits.clone()
        logits[:, eos_id] = float("-inf")
    return torch.softmax(truncate_logits(logits, tr.top_k, tr.top_p), dim=-1)


def decode(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor, eos_id: int) -> list[str]:
    """Completion texts without EOS and padding."""
    out = []
    for row, m in zip(response_ids.tolist(), mask.tolist(), strict=True):
        toks = [t for t, keep in zip(row, m, strict=True) if keep and t != eos_id]
        out.append(tokenizer.decode(toks, skip_special_tokens=True).strip())
    return out
