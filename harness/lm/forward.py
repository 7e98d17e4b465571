"""Differentiable forwards on sampled responses: logprobs, entropies, values and reward scores.

GPT-2 models run the packed forward (``harness.fast.gpt2``: only the tokens that are read);
any other causal LM runs its Hugging Face forward over the padded batch. Both give the same
values to float rounding (tests/unit/lm/test_forward.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from harness.algos import math as M
from harness.fast import gpt2
from harness.fast.gemm import linear
from harness.lm.sampling import sequence_inputs


def forward_logits(model, prompt_ids, prompt_mask, response_ids) -> torch.Tensor:
    """Logits predicting each response token, (B, T, V), over the padded batch. Differentiable; no cache.

    The last response token predicts nothing used here, so it is not fed: (B, P+T-1).
    The reference route (any causal LM); ``policy_forward`` is the one the loop uses.
    """
    P = prompt_ids.shape[1]
    input_ids, attn, pos = sequence_inputs(prompt_ids, prompt_mask, response_ids[:, :-1])
    if gpt2.supports(model):
        h = gpt2.hidden_states(model, input_ids, attn, pos)[:, P - 1 :]  # (B, T, H)
        return model.lm_head(h)  # (B, T, V): the head only where it is read
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
    return logits[:, P - 1 :, :]  # (B, T, V)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token) at the sampling temperature, (B, T) (or any leading shape)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return logp.gather(-1, tokens[..., None]).squeeze(-1)


def _pack_next_token(prompt_ids, prompt_mask, response_ids, mask, width: int) -> gpt2.Packed:
    """Feed the real prompt and response tokens up to l_b - 2; read positions P - 1 + t for mask[b, t]."""
    B, P = prompt_ids.shape
    m = mask.bool()
    fed = torch.zeros_like(m)
    fed[:, :-1] = m[:, 1:]  # response token t is fed when token t + 1 is read
    out = torch.zeros((B, P + m.shape[1]), dtype=torch.bool, device=m.device)
    out[:, P - 1 : -1] = m
    return gpt2.pack(torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask.bool(), fed], 1), out, width)


def _unpack(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N_out,) values at mask's 1s in row-major order -> (B, T), 0 elsewhere. Differentiable."""
    flat = mask.flatten().nonzero().squeeze(1)
    return values.new_zeros(mask.numel()).index_copy(0, flat, values).view(mask.shape)


def _read_hidden(model, prompt_ids, prompt_mask, response_ids, mask) -> tuple[torch.Tensor, int]:
    """Last hidden states at the positions predicting the response tokens where ``mask`` is 1:
    (rows, d) with the first n of them the real ones, row-major as mask's 1s; returns (rows, n).

    GPT-2 models run the packed forward (no padding, nothing after the last read token; rows
    past n are filler, kept so the head's product has a bounded set of shapes); other models
    their trunk over the padded batch.
    """
    if gpt2.supports(model):
        pk = _pack_next_token(prompt_ids, prompt_mask, response_ids, mask, model.config.n_embd)
        return gpt2.packed_hidden(model, pk), pk.n_out  # (N_out_pad, d)
    P = prompt_ids.shape[1]
    h = backbone_hidden(model, prompt_ids, prompt_mask, response_ids[:, :-1])[:, P - 1 :]  # (B, T, d)
    h = h[mask.bool()]  # (N_out, d)
    return h, h.shape[0]


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


def backbone_hidden(model, prompt_ids, prompt_mask, response_ids) -> torch.Tensor:
    """Last hidden states of a model's trunk over the padded batch, (B, P+T, H)."""
    input_ids, attn, pos = sequence_inputs(prompt_ids, prompt_mask, response_ids)
    if gpt2.supports(model):
        return gpt2.hidden_states(model, input_ids, attn, pos)
    trunk = _trunk(model)
    return trunk(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state


def _trunk(model):
    """A model's trunk; a peft (LoRA) model's is its base model's, the adapters injected in it."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, model.base_model_prefix)


def token_values(value_model, prompt_ids, prompt_mask, response_ids, mask) -> torch.Tensor:
    """V(s_t) for each response token t where ``mask`` (a prefix of each row) is 1: the score
    head on the state before it, (B, T), 0 elsewhere. Only the states read are computed."""
    h, n = _read_hidden(value_model, prompt_ids, prompt_mask, response_ids, mask)
    return _unpack(value_model.score(h[:n]).squeeze(-1).float(), mask)


def sequence_scores(reward_model, prompt_ids, prompt_mask, response_ids, mask) -> torch.Tensor:
    """Reward-model score at the last real response token (EOS when present), (B,)."""
    B, P = prompt_ids.shape
    n = mask.sum(1).long().clamp(min=1)  # (B,) response tokens read, EOS included
    if gpt2.supports(reward_model):
        T = response_ids.shape[1]
        fed = torch.arange(T, device=n.device)[None, :] < n[:, None]  # (B, T)
        out = torch.zeros((B, P + T), dtype=torch.bool, device=n.device)
        out[torch.arange(B), P + n - 1] = True
        pk = gpt2.pack(
            torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask.bool(), fed], 1), out, reward_model.config.n_embd
        )
        return reward_model.score(gpt2.packed_hidden(reward_model, pk)[: pk.n_out]).squeeze(-1).float()
    h = backbone_hidden(reward_model, prompt_ids, prompt_mask, response_ids)  # (B, P+T, H)
    h_last = h[torch.arange(B, device=h.device), P + n - 1]  # (B, H)
    return reward_model.score(h_last).squeeze(-1).float()
