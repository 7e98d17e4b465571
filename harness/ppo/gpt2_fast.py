"""A lean GPT-2 forward and a preallocated-KV-cache decoder over Hugging Face GPT-2 weights.

The same math as ``transformers``' ``GPT2Model`` (pre-LN blocks, Conv1D = ``x @ W + b``,
scaled dot-product attention, tanh GELU for ``gelu_new``), read straight from the
module's parameters, so gradients flow to them as usual. What it leaves out is
overhead that dominates at toy scale on CPU: a 4-D mask built per call (none at all
when nothing is padded), cache objects, output dataclasses, HF's ``gelu_new`` as five
separate elementwise passes (``F.gelu(approximate="tanh")`` is the same function in
one pass). Differences to the HF forward are float rounding (~1e-6 on logits).

``supports(model)`` says when this path applies (GPT-2 architecture, no active
dropout, a known activation); ``rollout.py`` falls back to the HF forward otherwise.

Shapes: B batch, L sequence, d = n_embd, H heads, hd = d / H, V vocabulary.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

# activation_function -> F.gelu approximate mode (the same function, one fused kernel)
_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


def _trunk_of(model: nn.Module) -> nn.Module:
    return getattr(model, model.base_model_prefix, model)


_INFO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (architecture ok, active dropout)


def supports(model: nn.Module) -> bool:
    """GPT-2 weights, no cross-attention, a GELU we know, and no active dropout in training mode.

    Read once per model (dropout probabilities are set at load time, ``models.no_dropout``).
    """
    info = _INFO.get(model)
    if info is None:
        cfg = getattr(model, "config", None)
        arch = (
            cfg is not None
            and getattr(cfg, "model_type", None) == "gpt2"
            and not getattr(cfg, "add_cross_attention", False)
            and getattr(cfg, "activation_function", None) in _GELU
        )
        dropout = any(m.p > 0 for m in model.modules() if isinstance(m, nn.Dropout))
        info = _INFO[model] = (arch, dropout)
    return info[0] and not (model.training and info[1])


_CAUSAL: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}  # read-only, reused


def _attention_bias(attn: torch.Tensor | None, q_len: int, k_len: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive attention bias (0 or -inf) for queries at the last ``q_len`` of ``k_len`` positions.

    (q, k) when nothing is padded (causal only; None for a single query), else (B, 1, q, k)
    with the key padding too. Each query always sees itself, so a padded query row is never
    fully masked (its output is never read: padded positions are keys of no real query).
    """
    padded = attn is not None and not bool(attn.all())
    if not padded and q_len == 1:
        return None
    device = attn.device if attn is not None else torch.device("cpu")
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril_(k_len - q_len)  # (q, k) causal
    if not padded:
        key = (q_len, k_len, dtype, device)
        if key not in _CAUSAL:
            _CAUSAL[key] = torch.zeros((q_len, k_len), dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
        return _CAUSAL[key]
    allowed = allowed & attn.bool()[:, None, None, :]  # (B, 1, q, k)
    allowed[..., torch.arange(q_len), torch.arange(k_len - q_len, k_len)] = True
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return bias.masked_fill_(~allowed, float("-inf"))


def _attend(q, k, v, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v as batched matmuls; q (B, H, Lq, hd), k / v (B, H, Lk, hd).

    Explicit bmm + softmax beats the fused CPU kernel at these sizes (head_dim 32-64,
    L < 100): ~30% less time forward and backward.
    """
    B, H, Lq, hd = q.shape
    Lk = k.shape[2]
    q3, k3, v3 = q.reshape(B * H, Lq, hd), k.reshape(B * H, Lk, hd), v.reshape(B * H, Lk, hd)
    if bias is None:
        s = torch.bmm(q3, k3.transpose(1, 2)) * scale  # (B*H, Lq, Lk)
    else:
        if bias.dim() == 4:  # (B, 1, Lq, Lk) -> (B*H, Lq, Lk)
            bias = bias.expand(B, H, Lq, Lk).reshape(B * H, Lq, Lk)
        s = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)
    return torch.bmm(torch.softmax(s, dim=-1), v3).view(B, H, Lq, hd)


def _block(blk: nn.Module, h: torch.Tensor, B: int, L: int, bias, cache=None, start: int = 0, gelu: str = "tanh"):
    """One pre-LN block on h (B*L, d). With ``cache`` (2, B, H, Lmax, hd) the block writes its
    keys / values at positions [start, start + L) and attends over [0, start + L)."""
    at, mlp = blk.attn, blk.mlp
    d = h.shape[-1]
    H = at.num_heads
    hd = d // H
    x = F.layer_norm(h, (d,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
    qkv = torch.addmm(at.c_attn.bias, x, at.c_attn.weight).view(B, L, 3, H, hd)
    if cache is None:
        q, k, v = qkv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)  # (B, H, L, hd) each, one copy
    else:
        cache[:, :, :, start : start + L] = qkv[:, :, 1:].permute(2, 0, 3, 1, 4)
        q = qkv[:, :, 0].transpose(1, 2)
        k, v = cache[0, :, :, : start + L], cache[1, :, :, : start + L]
    a = _attend(q, k, v, bias, at.scaling).transpose(1, 2).reshape(B * L, d)  # (B*L, d)
    h = h + torch.addmm(at.c_proj.bias, a, at.c_proj.weight)
    x = F.layer_norm(h, (d,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps)
    x = F.gelu(torch.addmm(mlp.c_fc.bias, x, mlp.c_fc.weight), approximate=gelu)  # (B*L, 4d)
    return h + torch.addmm(mlp.c_proj.bias, x, mlp.c_proj.weight)


def hidden_states(model: nn.Module, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """Last hidden states (after ln_f) of a GPT-2 model or its trunk, (B, L, d). Differentiable."""
    tr = _trunk_of(model)
    B, L = input_ids.shape
    gelu = _GELU[tr.config.activation_function]
    h = (tr.wte(input_ids) + tr.wpe(position_ids)).view(B * L, -1)  # (B*L, d)
    bias = _attention_bias(attention_mask, L, L, h.dtype)
    for blk in tr.h:
        h = _block(blk, h, B, L, bias, gelu=gelu)
    h = F.layer_norm(h, (h.shape[-1],), tr.ln_f.weight, tr.ln_f.bias, tr.ln_f.eps)
    return h.view(B, L, -1)


class Decoder:
    """Prefill a (left-padded) prompt, then feed one token per step, with a KV cache
    preallocated for ``max_len`` positions. Inference only; logits are (B, V)."""

    def __init__(self, model: nn.Module, prompt_mask: torch.Tensor, max_len: int):
        self.model, self.tr = model, _trunk_of(model)
        cfg = self.tr.config
        self.gelu = _GELU[cfg.activation_function]
        B, P = prompt_mask.shape
        H = cfg.n_head
        hd = cfg.n_embd // H
        w = self.tr.wte.weight
        self.caches = [torch.empty((2, B, H, max_len, hd), dtype=w.dtype, device=w.device) for _ in self.tr.h]
        self.padded = not bool(prompt_mask.all())
        # additive key bias over every cache position: the prompt's padding, then 0 (B, 1, 1, max_len)
        keys = torch.zeros((B, max_len), dtype=w.dtype, device=w.device)
        keys[:, :P].masked_fill_(~prompt_mask.bool(), float("-inf"))
        self.keys = keys[:, None, None, :]
        self.prompt_mask = prompt_mask
        self.length = 0

    def _run(self, ids: torch.Tensor, pos: torch.Tensor, bias) -> torch.Tensor:
        B, L = ids.shape
        h = (self.tr.wte(ids) + self.tr.wpe(pos)).view(B * L, -1)
        for blk, cache in zip(self.tr.h, self.caches, strict=True):
            h = _block(blk, h, B, L, bias, cache=cache, start=self.length, gelu=self.gelu)
        self.length += L
        h = h.view(B, L, -1)[:, -1]  # (B, d) the last position only
        h = F.layer_norm(h, (h.shape[-1],), self.tr.ln_f.weight, self.tr.ln_f.bias, self.tr.ln_f.eps)
        return F.linear(h, self.model.lm_head.weight)  # (B, V)

    def prefill(self, prompt_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        P = prompt_ids.shape[1]
        return self._run(prompt_ids, position_ids, _attention_bias(self.prompt_mask, P, P, self.keys.dtype))

    def step(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """tokens, position_ids: (B, 1) -> next-token logits (B, V)."""
        bias = self.keys[..., : self.length + 1] if self.padded else None
        return self._run(tokens, position_ids, bias)
