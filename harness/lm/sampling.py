"""Text in, tokens out: prompt encoding, sampling with the KV cache, the response mask, decoding.

Layout: prompts are left-padded to P tokens, responses are right-padded to T tokens, so a full
sequence is ``(B, P + T)`` and the logits predicting response token t sit at position ``P - 1 + t``.
Sampling runs under ``torch.inference_mode``; whatever is differentiated is recomputed by
``harness.lm.forward``.
"""

from __future__ import annotations

from collections.abc import Sequence

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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample T tokens with the KV cache straight from the logits.

    Returns (response_ids, mask, has_eos, logprobs, entropy); logprobs and entropy
    are those of the distribution actually sampled from (logits / temperature).
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
        tok = torch.multinomial(p_all, 1, generator=generator).squeeze(1)  # (B,)
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


def decode(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor, eos_id: int) -> list[str]:
    """Completion texts without EOS and padding."""
    out = []
    for row, m in zip(response_ids.tolist(), mask.tolist(), strict=True):
        toks = [t for t, keep in zip(row, m, strict=True) if keep and t != eos_id]
        out.append(tokenizer.decode(toks, skip_special_tokens=True).strip())
    return out
