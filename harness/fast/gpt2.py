"""A lean GPT-2 forward and a preallocated-KV-cache decoder over Hugging Face GPT-2 weights.

The same math as ``transformers``' ``GPT2Model`` (pre-LN blocks, Conv1D = ``x @ W + b``,
scaled dot-product attention, tanh GELU for ``gelu_new``), read straight from the
module's parameters, so gradients flow to them as usual; the projections go through
``gemm.linear`` (oneDNN's fp32 GEMM on the CPU). What it leaves out is
overhead that dominates at toy scale on CPU: a 4-D mask built per call (none at all
when nothing is padded), cache objects, output dataclasses, HF's ``gelu_new`` as five
separate elementwise passes (``F.gelu(approximate="tanh")`` is the same function in
one pass). Differences to the HF forward are float rounding (~1e-6 on logits).

``packable(model)`` says whether a model is one these forwards read (GPT-2 architecture, a
known activation, no adapters), ``supports(model)`` whether they apply now (also: CPU tensors,
no active dropout); ``harness.lm.backbones`` and ``harness.lm.sampling`` take the Hugging
Face forward otherwise.

``pack`` + ``packed_hidden`` is the training and scoring forward: only the tokens that
matter are computed (no prompt padding, nothing after the last response token read), on
a left-aligned grid for attention, and the last block only at the positions read.

Shapes: B batch, L sequence, d = n_embd, H heads, hd = d / H, V vocabulary.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.fast.gemm import linear, linear_gelu, padded_rows

# activation_function -> F.gelu approximate mode (the same function, one fused kernel)
_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


def _trunk_of(model: nn.Module) -> nn.Module:
    return getattr(model, model.base_model_prefix, model)


_INFO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (architecture ok, active dropout)


def _info(model: nn.Module) -> tuple[bool, bool]:
    """(architecture ok, active dropout), read once per model (dropout probabilities are set at load time,
    ``models.no_dropout``)."""
    info = _INFO.get(model)
    if info is None:
        cfg = getattr(model, "config", None)
        arch = (
            cfg is not None
            and getattr(cfg, "model_type", None) == "gpt2"
            and not getattr(cfg, "add_cross_attention", False)
            and getattr(cfg, "activation_function", None) in _GELU
            and getattr(model, "peft_config", None) is None  # LoRA adapters: the generic forward applies them
            and not _checkpointing(model)  # train.gradient_checkpointing: the generic forward recomputes
        )
        dropout = any(m.p > 0 for m in model.modules() if isinstance(m, nn.Dropout))
        info = _INFO[model] = (arch, dropout)
    return info


def packable(model: nn.Module) -> bool:
    """GPT-2 weights, no cross-attention, a GELU we know, no LoRA adapters, no gradient checkpointing:
    what the model is, read once per model."""
    return _info(model)[0] and not _fsdp(model)  # sharded weights (train.parallel=fsdp): the root's hooks gather them


def supports(model: nn.Module) -> bool:
    """``packable`` and, now, no active dropout in training mode and the parameters on the CPU."""
    arch, dropout = _info(model)
    # the packed forwards are the CPU fast path; on other devices the generic Hugging Face path runs
    return (arch and not (model.training and dropout) and next(model.parameters()).device.type == "cpu"
            and not _fsdp(model))


def _fsdp(model: nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP2 (``harness.shard``)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _checkpointing(model: nn.Module) -> bool:
    """Whether transformers' gradient (activation) checkpointing is on for ``model``."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


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


def _block(blk: nn.Module, h: torch.Tensor, attend, gelu: str, rows: torch.Tensor | None = None) -> torch.Tensor:
    """One pre-LN block on h (N, d), N token rows in any layout.

    ``attend(qkv (N, 3d))`` returns the attention output (N, d) in h's row order (or, with
    ``rows``, only those rows). ``rows`` keeps just those rows from the attention on: the
    last block of a forward whose other outputs are never read (their keys and values still
    take part in the attention).
    """
    at, mlp = blk.attn, blk.mlp
    d = h.shape[-1]
    x = F.layer_norm(h, (d,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
    a = attend(linear(x, at.c_attn.weight.t(), at.c_attn.bias))  # (N | rows, d)
    if rows is not None:
        h = h.index_select(0, rows)
    h = h + linear(a, at.c_proj.weight.t(), at.c_proj.bias)
    x = F.layer_norm(h, (d,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps)
    x = linear_gelu(x, mlp.c_fc.weight.t(), mlp.c_fc.bias, gelu)  # (N, 4d)
    return h + linear(x, mlp.c_proj.weight.t(), mlp.c_proj.bias)


def _grid_attend(at: nn.Module, B: int, L: int, bias, rows: torch.Tensor | None = None):
    """Attention over a dense (B, L) grid of rows: qkv (B*L, 3d) -> (B*L, d), or ``rows`` of it."""

    def attend(qkv: torch.Tensor) -> torch.Tensor:
        H = at.num_heads
        d = qkv.shape[-1] // 3
        q, k, v = qkv.view(B, L, 3, H, d // H).permute(2, 0, 3, 1, 4).contiguous().unbind(0)  # (B, H, L, hd)
        a = _attend(q, k, v, bias, at.scaling).transpose(1, 2).reshape(B * L, d)  # (B*L, d)
        return a if rows is None else a.index_select(0, rows)

    return attend


def hidden_states(model: nn.Module, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """Last hidden states (after ln_f) of a GPT-2 model or its trunk, (B, L, d). Differentiable."""
    tr = _trunk_of(model)
    B, L = input_ids.shape
    gelu = _GELU[tr.config.activation_function]
    h = (tr.wte(input_ids) + tr.wpe(position_ids)).view(B * L, -1)  # (B*L, d)
    bias = _attention_bias(attention_mask, L, L, h.dtype)
    for blk in tr.h:
        h = _block(blk, h, _grid_attend(blk.attn, B, L, bias), gelu)
    h = F.layer_norm(h, (h.shape[-1],), tr.ln_f.weight, tr.ln_f.bias, tr.ln_f.eps)
    return h.view(B, L, -1)


@dataclass(frozen=True)
class Packed:
    """The kept tokens of B rows, without padding, and where the outputs that are read sit.

    Row b's kept tokens are laid left-aligned on a (B, W) grid (W the longest row), so that
    causal attention on the grid needs no padding mask: a real token sees only real tokens
    before it. Linear layers, norms and the MLP run on the kept tokens alone: N of them, plus
    filler rows up to ``gemm.padded_rows(N)`` (token 0 at position 0, each parked in a spare
    grid slot that no attention reads, so they never reach a real output and get exactly zero
    gradient). ``out`` is padded the same way; the first ``n_out`` outputs are the real ones.
    """

    ids: torch.Tensor  # (N_pad,) token ids, row-major, then filler
    pos: torch.Tensor  # (N_pad,) position ids: 0, 1, ... within each row
    scatter: torch.Tensor  # (N_pad,) slot on the flat (B * W + fillers) grid; b * W + column for real tokens
    gather: torch.Tensor  # (N_pad,) slot read back after attention (0 for fillers: any real slot)
    out: torch.Tensor  # (N_out_pad,) indices into the N_pad rows whose outputs are read, row-major
    n: int  # real tokens: ids[:n]
    n_out: int  # real outputs: out[:n_out]
    B: int
    W: int


def pack(input_ids: torch.Tensor, keep: torch.Tensor, out: torch.Tensor, width: int) -> Packed:
    """input_ids, keep, out: (B, L); keep marks the tokens fed, out (a subset of keep) the
    positions whose hidden states are read; width: the model's n_embd (to size the filler).
    Positions follow the kept tokens (a left-padded prompt starts at 0), as
    ``rollout.sequence_inputs`` numbers them."""
    keep = keep.bool()
    B, L = input_ids.shape
    dev = input_ids.device
    col = keep.long().cumsum(1) - 1  # (B, L) column of each kept token
    W = int(col[:, -1].max()) + 1
    rank = keep.flatten().long().cumsum(0) - 1  # (B*L,) index of each kept token among the N
    n = int(rank[-1]) + 1
    out_idx = rank[(out.bool() & keep).flatten()]  # (N_out,)
    row_flops = 2 * width * 4 * width  # the MLP's d -> 4d product, the block's largest
    fill = padded_rows(n, row_flops, dev) - n
    zeros = torch.zeros(fill, dtype=torch.long, device=dev)
    grid = (torch.arange(B, device=dev)[:, None] * W + col)[keep]  # (N,)
    return Packed(
        ids=torch.cat([input_ids[keep], zeros]),
        pos=torch.cat([col[keep], zeros]),
        scatter=torch.cat([grid, B * W + torch.arange(fill, device=dev)]),
        gather=torch.cat([grid, zeros]),
        out=torch.cat([out_idx, zeros.new_zeros(padded_rows(len(out_idx), row_flops, dev) - len(out_idx))]),
        n=n,
        n_out=len(out_idx),
        B=B,
        W=W,
    )


def _packed_attend(at: nn.Module, pk: Packed, bias, rows: torch.Tensor | None):
    """Attention of packed rows: qkv (N_pad, 3d) scattered onto the (B, W) grid, attended causally,
    gathered back to (N_pad, d), or to ``rows`` (indices into the N_pad) only."""
    BW = pk.B * pk.W
    dense = _grid_attend(at, pk.B, pk.W, bias, pk.gather if rows is None else pk.gather[rows])

    def attend(qkv: torch.Tensor) -> torch.Tensor:
        grid = qkv.new_zeros((BW + len(pk.ids) - pk.n, qkv.shape[-1])).index_copy(0, pk.scatter, qkv)  # (B*W + fill, 3d)
        return dense(grid[:BW])

    return attend


def packed_hidden(model: nn.Module, pk: Packed) -> torch.Tensor:
    """Last hidden states (after ln_f) at the ``pk.out`` tokens, (N_out_pad, d); rows past
    ``pk.n_out`` are filler. Differentiable.

    The same values as ``hidden_states`` at those positions (float rounding aside); padding is
    never computed, and the last block runs its projection and MLP on the read rows only.
    """
    tr = _trunk_of(model)
    gelu = _GELU[tr.config.activation_function]
    h = tr.wte(pk.ids) + tr.wpe(pk.pos)  # (N_pad, d)
    bias = _attention_bias(None, pk.W, pk.W, h.dtype)  # (W, W) causal
    n = len(tr.h)
    for i, blk in enumerate(tr.h):
        rows = pk.out if i == n - 1 else None
        h = _block(blk, h, _packed_attend(blk.attn, pk, bias, rows), gelu, rows)
    return F.layer_norm(h, (h.shape[-1],), tr.ln_f.weight, tr.ln_f.bias, tr.ln_f.eps)  # (N_out_pad, d)


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

    def _attend(self, at: nn.Module, cache: torch.Tensor, B: int, L: int, bias, rows: torch.Tensor | None):
        """Write this step's keys / values at [length, length + L) of ``cache`` (2, B, H, Lmax, hd)
        and attend over [0, length + L); (B*L, d), or ``rows`` of it."""
        start = self.length

        def attend(qkv: torch.Tensor) -> torch.Tensor:
            H = at.num_heads
            d = qkv.shape[-1] // 3
            qkv = qkv.view(B, L, 3, H, d // H)
            cache[:, :, :, start : start + L] = qkv[:, :, 1:].permute(2, 0, 3, 1, 4)
            q = qkv[:, :, 0].transpose(1, 2)  # (B, H, L, hd)
            k, v = cache[0, :, :, : start + L], cache[1, :, :, : start + L]
            a = _attend(q, k, v, bias, at.scaling).transpose(1, 2).reshape(B * L, d)
            return a if rows is None else a.index_select(0, rows)

        return attend

    def _run(self, ids: torch.Tensor, pos: torch.Tensor, bias) -> torch.Tensor:
        B, L = ids.shape
        h = (self.tr.wte(ids) + self.tr.wpe(pos)).view(B * L, -1)
        last = torch.arange(B, device=ids.device) * L + (L - 1)  # (B,) only the last position is read
        n = len(self.tr.h)
        for i, (blk, cache) in enumerate(zip(self.tr.h, self.caches, strict=True)):
            rows = last if i == n - 1 and L > 1 else None
            h = _block(blk, h, self._attend(blk.attn, cache, B, L, bias, rows), self.gelu, rows)
        self.length += L  # h: (B, d), the last position of each row
        h = F.layer_norm(h, (h.shape[-1],), self.tr.ln_f.weight, self.tr.ln_f.bias, self.tr.ln_f.eps)
        return linear(h, self.model.lm_head.weight)  # (B, V)

    def prefill(self, prompt_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        P = prompt_ids.shape[1]
        return self._run(prompt_ids, position_ids, _attention_bias(self.prompt_mask, P, P, self.keys.dtype))

    def step(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """tokens, position_ids: (B, 1) -> next-token logits (B, V)."""
        bias = self.keys[..., : self.length + 1] if self.padded else None
        return self._run(tokens, position_ids, bias)
