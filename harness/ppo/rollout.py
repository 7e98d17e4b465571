"""Rollout: sample responses with the KV cache, mask after EOS, and score them.

Everything here runs under ``torch.inference_mode``; the update recomputes what
it differentiates. Layout: prompts are left-padded to P tokens, responses are
right-padded to T tokens, so a full sequence is ``(B, P + T)`` and the logits
predicting response token t sit at position ``P - 1 + t``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from harness.ppo import gpt2_fast
from harness.ppo import math as M
from harness.ppo.gemm import linear


@dataclass
class Rollout:
    prompts: list[str]
    completions: list[str]
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, T) pad after EOS
    mask: torch.Tensor  # (B, T) float, 1 on response tokens up to and including EOS
    has_eos: torch.Tensor  # (B,) bool
    logprobs: torch.Tensor  # (B, T) sampling logprobs at the temperature (the "old" policy)
    entropy: torch.Tensor  # (B, T) entropy of the sampling distribution
    ref_logprobs: torch.Tensor | None = None  # (B, T)
    values: torch.Tensor | None = None  # (B, T) V(s_t), state before response token t
    scores: torch.Tensor | None = None  # (B,) optimised reward (proxy or gold), EOS penalty applied
    gold: torch.Tensor | None = None  # (B,) task gold reward

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return sequence_inputs(self.prompt_ids, self.prompt_mask, self.response_ids)

    def select(self, idx: torch.Tensor) -> Rollout:
        """Rows ``idx`` of every tensor field (lists follow)."""
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor):
                out[k] = v[idx]
            elif isinstance(v, list):
                out[k] = [v[i] for i in idx.tolist()]
            else:
                out[k] = v
        return Rollout(**out)


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
    GPT-2 models decode through ``gpt2_fast.Decoder`` (a KV cache preallocated for
    P + T positions); other models through the HF forward with its cache.
    """
    B, P = prompt_ids.shape
    T = max_new_tokens
    position_ids = (prompt_mask.cumsum(1) - 1).clamp(min=0)  # (B, P) left padding shifts positions
    next_pos = position_ids[:, -1:] + 1  # (B, 1) position of response token 0
    if gpt2_fast.supports(policy):
        decoder = gpt2_fast.Decoder(policy, prompt_mask, P + T)
        logits = decoder.prefill(prompt_ids, position_ids)  # (B, V)
        step = decoder.step
    else:
        attn = torch.cat([prompt_mask, torch.ones((B, T), dtype=prompt_mask.dtype)], dim=1)  # (B, P+T)
        out = policy(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids, use_cache=True)
        cache = {"past": out.past_key_values, "len": P}
        logits = out.logits[:, -1, :]

        def step(tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            cache["len"] += 1
            o = policy(input_ids=tok, attention_mask=attn[:, : cache["len"]], position_ids=pos,
                       past_key_values=cache["past"], use_cache=True)
            cache["past"] = o.past_key_values
            return o.logits[:, -1, :]

    response_ids = torch.full((B, T), pad_id, dtype=torch.long)
    logprobs = torch.zeros((B, T))
    entropy = torch.zeros((B, T))
    done = torch.zeros(B, dtype=torch.bool)
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


def forward_logits(model, prompt_ids, prompt_mask, response_ids) -> torch.Tensor:
    """Logits predicting each response token, (B, T, V), over the padded batch. Differentiable; no cache.

    The last response token predicts nothing used here, so it is not fed: (B, P+T-1).
    The reference route (any causal LM); ``policy_forward`` is the one the loop uses.
    """
    P = prompt_ids.shape[1]
    input_ids, attn, pos = sequence_inputs(prompt_ids, prompt_mask, response_ids[:, :-1])
    if gpt2_fast.supports(model):
        h = gpt2_fast.hidden_states(model, input_ids, attn, pos)[:, P - 1 :]  # (B, T, H)
        return model.lm_head(h)  # (B, T, V): the head only where it is read
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
    return logits[:, P - 1 :, :]  # (B, T, V)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token) at the sampling temperature, (B, T) (or any leading shape)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return logp.gather(-1, tokens[..., None]).squeeze(-1)


# ---- packed forwards: only the tokens that are read (GPT-2 fast path) ------------------------------
#
# A response mask is a prefix of each row (response_mask): l_b = mask[b].sum() tokens, EOS included.
# The output predicting response token t sits at input position P - 1 + t, so reading l_b outputs
# feeds the prompt and response tokens 0 .. l_b - 2; tokens after them are never computed.


def _pack_next_token(prompt_ids, prompt_mask, response_ids, mask, width: int) -> gpt2_fast.Packed:
    """Feed the real prompt and response tokens up to l_b - 2; read positions P - 1 + t for mask[b, t]."""
    B, P = prompt_ids.shape
    m = mask.bool()
    fed = torch.zeros_like(m)
    fed[:, :-1] = m[:, 1:]  # response token t is fed when token t + 1 is read
    out = torch.zeros((B, P + m.shape[1]), dtype=torch.bool, device=m.device)
    out[:, P - 1 : -1] = m
    return gpt2_fast.pack(torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask.bool(), fed], 1), out, width)


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
    if gpt2_fast.supports(model):
        pk = _pack_next_token(prompt_ids, prompt_mask, response_ids, mask, model.config.n_embd)
        return gpt2_fast.packed_hidden(model, pk), pk.n_out  # (N_out_pad, d)
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
    if gpt2_fast.supports(model):
        return gpt2_fast.hidden_states(model, input_ids, attn, pos)
    trunk = getattr(model, model.base_model_prefix)
    return trunk(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state


def token_values(value_model, prompt_ids, prompt_mask, response_ids, mask) -> torch.Tensor:
    """V(s_t) for each response token t where ``mask`` (a prefix of each row) is 1: the score
    head on the state before it, (B, T), 0 elsewhere. Only the states read are computed."""
    h, n = _read_hidden(value_model, prompt_ids, prompt_mask, response_ids, mask)
    return _unpack(value_model.score(h[:n]).squeeze(-1).float(), mask)


def sequence_scores(reward_model, prompt_ids, prompt_mask, response_ids, mask) -> torch.Tensor:
    """Reward-model score at the last real response token (EOS when present), (B,)."""
    B, P = prompt_ids.shape
    n = mask.sum(1).long().clamp(min=1)  # (B,) response tokens read, EOS included
    if gpt2_fast.supports(reward_model):
        T = response_ids.shape[1]
        fed = torch.arange(T, device=n.device)[None, :] < n[:, None]  # (B, T)
        out = torch.zeros((B, P + T), dtype=torch.bool, device=n.device)
        out[torch.arange(B), P + n - 1] = True
        pk = gpt2_fast.pack(
            torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask.bool(), fed], 1), out, reward_model.config.n_embd
        )
        return reward_model.score(gpt2_fast.packed_hidden(reward_model, pk)[: pk.n_out]).squeeze(-1).float()
    h = backbone_hidden(reward_model, prompt_ids, prompt_mask, response_ids)  # (B, P+T, H)
    h_last = h[torch.arange(B), P + n - 1]  # (B, H)
    return reward_model.score(h_last).squeeze(-1).float()


def decode(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor, eos_id: int) -> list[str]:
    """Completion texts without EOS and padding."""
    out = []
    for row, m in zip(response_ids.tolist(), mask.tolist(), strict=True):
        toks = [t for t, keep in zip(row, m, strict=True) if keep and t != eos_id]
        out.append(tokenizer.decode(toks, skip_special_tokens=True).strip())
    return out


ScoreFn = Callable[[Rollout], torch.Tensor]


@torch.inference_mode()
def collect(
    policy,
    ref,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
    score_fn: ScoreFn,
    gold_fn: Callable[[list[str], list[str], list[bool]], list[float]],
    value_model=None,
    missing_eos_penalty: float | None = None,
    timings: dict[str, float] | None = None,
) -> Rollout:
    """Steps 1-3 of the loop: sample, score, ref logprobs, values.

    ``timings``, when given, receives ``generate_s`` (sampling) and ``score_s``
    (decode, ref / value / reward forwards, gold) in seconds.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    t0 = time.perf_counter()
    pids, pmask = encode_prompts(tokenizer, prompts)
    rids, mask, has_eos, logprobs, entropy = sample(policy, pids, pmask, max_new_tokens, temperature, eos, pad, generator)
    t1 = time.perf_counter()
    ro = Rollout(
        prompts=list(prompts),
        completions=decode(tokenizer, rids, mask, eos),
        prompt_ids=pids,
        prompt_mask=pmask,
        response_ids=rids,
        mask=mask,
        has_eos=has_eos,
        logprobs=logprobs,
        entropy=entropy,
    )
    ro.ref_logprobs = policy_forward(ref, pids, pmask, rids, mask, temperature).logprobs
    if value_model is not None:
        ro.values = token_values(value_model, pids, pmask, rids, mask)
    ro.gold = torch.tensor(gold_fn(ro.prompts, ro.completions, has_eos.tolist()), dtype=torch.float32)
    scores = score_fn(ro)
    if missing_eos_penalty is not None:
        # N implementation details #23 / TRL missing_eos_penalty: no EOS -> fixed low score
        scores = torch.where(has_eos, scores, torch.full_like(scores, missing_eos_penalty))
    ro.scores = scores
    if timings is not None:
        timings["generate_s"] = t1 - t0
        timings["score_s"] = time.perf_counter() - t1
    return ro


def make_score_fn(reward_model, task_gold: Callable[[list[str], list[str], list[bool]], list[float]]) -> ScoreFn:
    """The optimised reward: the proxy RM's score, or the gold reward when there is no RM."""
    if reward_model is None:
        def gold(ro: Rollout) -> torch.Tensor:
            if ro.gold is not None:
                return ro.gold.clone()
            return torch.tensor(task_gold(ro.prompts, ro.completions, ro.has_eos.tolist()), dtype=torch.float32)

        return gold

    def score(ro: Rollout) -> torch.Tensor:
        return sequence_scores(reward_model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.mask)

    return score
