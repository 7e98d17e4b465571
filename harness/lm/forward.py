"""Differentiable forwards on sampled responses: logprobs, entropies, values and reward scores.

Each function says what is read (which positions, which tokens are fed) and hands the batch to the
model's backbone (``harness.lm.backbones``: GPT-2's packed forward, only the tokens that are read, or
any causal LM's Hugging Face forward over the padded batch), chosen once per model. Both give the
same values to float rounding (tests/unit/lm/test_forward.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from harness.algos import math as M
from harness.fast.gemm import linear
from harness.lm.backbones import backbone
from harness.lm.sampling import sequence_inputs


def forward_logits(model, prompt_ids, prompt_mask, response_ids) -> torch.Tensor:
    """Logits predicting each response token, (B, T, V), over the padded batch. Differentiable; no cache.

    The last response token predicts nothing used here, so it is not fed: (B, P+T-1).
    The reference route (any causal LM); ``policy_forward`` is the one the loop uses.
    """
    P = prompt_ids.shape[1]
    input_ids, attn, pos = sequence_inputs(prompt_ids, prompt_mask, response_ids[:, :-1])
    return backbone(model).logits(model, input_ids, attn, pos, P - 1)  # (B, T, V)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token) at the sampling temperature, (B, T) (or any leading shape)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return logp.gather(-1, tokens[..., None]).squeeze(-1)


def next_token_reads(prompt_ids, prompt_mask, response_ids, mask):
    """What predicting the response tokens where ``mask`` is 1 reads: (input_ids, attn, pos, keep, out), each
    (B, P+T-1), the last response token not fed. ``keep``: the real prompt tokens and response token t when
    token t + 1 is read; ``out``: positions P - 1 + t for mask[b, t]."""
    P = prompt_ids.shape[1]
    m = mask.bool()
    input_ids, attn, pos = sequence_inputs(prompt_ids, prompt_mask, response_ids[:, :-1])
    keep = torch.cat([prompt_mask.bool(), m[:, 1:]], 1)  # response token t is fed when token t + 1 is read
    out = torch.zeros_like(keep)
    out[:, P - 1 :] = m
    return input_ids, attn, pos, keep, out


def _unpack(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N_out,) values at mask's 1s in row-major order -> (B, T), 0 elsewhere. Differentiable."""
    flat = mask.flatten().nonzero().squeeze(1)
    return values.new_zeros(mask.numel()).index_copy(0, flat, values).view(mask.shape)


def _read_hidden(model, prompt_ids, prompt_mask, response_ids, mask) -> tuple[torch.Tensor, int]:
    """Last hidden states at the positions predicting the response tokens where ``mask`` is 1:
    (rows, d) with the first n of them the real ones, row-major as mask's 1s; returns (rows, n)."""
    return backbone(model).read(model, *next_token_reads(prompt_ids, prompt_mask, response_ids, mask))


class PolicyOut(NamedTuple):
    logprobs: torch.Tensor  # (B, T) log pi(a_t | s_t) at the temperature, 0 where mask is 0
    entropy: torch.Tensor | None  # (B, T) entropy of pi(. | s_t) at the temperature, or None
    values: torch.Tensor | None  # (B, T) a value head on the same hidden states, or None


def policy_forward(
    model, prompt_ids, prompt_mask, response_ids, mask, temperature: float,
    with_entropy: bool = False, value_head: torch.nn.Module | None = None,
) -> PolicyOut:
    """The policy on the sampled responses, read where ``mask`` (a prefix of each row) is 1.
    Differentiable; no cache. ``value_head`` (model.value_trunk=shared) reads V(s_t) off the
    same forward. The same values as ``forward_logits``, to float rounding."""
    h, n = _read_hidden(model, prompt_ids, prompt_mask, response_ids, mask)
    head = model.get_output_embeddings()
    logits = linear(h, head.weight, head.bias)[:n].float() / temperature  # (N_out, V)
    tokens = response_ids[mask.bool()]  # (N_out,) row-major, as the hidden rows
    logp = F.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    ent = _unpack(M.entropy_from_logits(logits), mask) if with_entropy else None
    values = _unpack(value_head(h[:n]).squeeze(-1).float(), mask) if value_head is not None else None
    return PolicyOut(_unpack(logp, mask), ent, values)


def token_values(value_model, prompt_ids, prompt_mask, response_ids, mask) -> torch.Tensor:
    """V(s_t) for each response token t where ``mask`` (a prefix of each row) is 1: the score
    head on the state before it, (B, T), 0 elsewhere. Only the states read are computed."""
    h, n = _read_hidden(value_model, prompt_ids, prompt_mask, response_ids, mask)
    return _unpack(value_model.score(h[:n]).squeeze(-1).float(), mask)


def sequence_scores(reward_model, prompt_ids, prompt_mask, response_ids, mask) -> torch.Tensor:
    """Reward-model score at the last real response token (EOS when present), (B,)."""
    B, P = prompt_ids.shape
    T = response_ids.shape[1]
    n = mask.sum(1).long().clamp(min=1)  # (B,) response tokens read, EOS included
    input_ids, attn, pos = sequence_inputs(prompt_ids, prompt_mask, response_ids)  # (B, P+T)
    fed = torch.arange(T, device=n.device)[None, :] < n[:, None]  # (B, T): the response up to the last read token
    out = torch.zeros((B, P + T), dtype=torch.bool, device=n.device)
    out[torch.arange(B, device=n.device), P + n - 1] = True
    keep = torch.cat([prompt_mask.bool(), fed], 1)
    h, rows = backbone(reward_model).read(reward_model, input_ids, attn, pos, keep, out)  # (B + filler, H)
    return reward_model.score(h[:rows]).squeeze(-1).float()
