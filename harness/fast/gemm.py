"""``linear``: ``F.linear`` whose fp32 CPU matmuls run on oneDNN's GEMM, with autograd.

Same math as ``F.linear`` (fp32 inputs, fp32 accumulation; results differ by float
rounding only), a different kernel. PyTorch's CPU ``addmm`` / ``mm`` call MKL's sgemm,
which on AMD processors runs its AVX2 code path; oneDNN (bundled with every PyTorch
CPU build, ``torch.ops.mkldnn._linear_pointwise``) JIT-compiles for the ISA it finds.
Measured here on 2 cores of an AVX-512 AMD EPYC, one thread, the update's shapes
((290 x 256) @ (256 x 768) and the two backward products): MKL 106-110 GFLOP/s,
oneDNN 208-242 GFLOP/s, forward and backward alike. ``ppo-harness bench`` measures
both kernels' peak in the same run.

oneDNN compiles a kernel per distinct shape (~0.6 ms and ~0.5 MB each, kept for the
process), so callers whose row count varies call by call (packed tokens) round it up
with ``padded_rows``: 4 sizes per octave, at most 1/4 (on average ~11%) extra rows,
and a bounded set of shapes over a run (about 120 for a bench run on M; 8 sizes per octave
ran no faster and kept twice as many).

Used for the transformer's projections (the bulk of the work); anything not fp32 on
the CPU, or a PyTorch build without oneDNN, goes through ``F.linear`` unchanged.
``PPO_HARNESS_GEMM=aten`` forces ``F.linear`` everywhere (a switch for comparisons).

Shapes: x (N, in), weight (out, in) in ``nn.Linear`` layout (pass ``w.t()`` for a
Conv1D weight (in, out)), bias (out,) or None; returns (N, out).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F


def _onednn_op():
    """The oneDNN linear op, if this build has one that works here (one tiny call decides)."""
    if os.environ.get("PPO_HARNESS_GEMM", "auto") == "aten" or not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise.default
        x, w = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])
        if float(op(x, w, None, "none", [], "")[0, 0]) != 11.0:
            return None
    except (AttributeError, RuntimeError):  # no such op, or it refuses this CPU (NotImplementedError is a RuntimeError)
        return None
    return op


_LINEAR = _onednn_op()


def _mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias on oneDNN; strided (transposed) views are taken as they are."""
    return _LINEAR(x, weight, bias, "none", [], "")


class _Linear(torch.autograd.Function):
    """y = x W^T + b;  dx = dy W;  dW = dy^T x;  db = sum_rows dy  (each product on oneDNN)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)  # (N, out)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _mm(dy, weight.t(), None)  # (N, out) @ (out, in) -> (N, in)
        if ctx.needs_input_grad[1]:
            # Produce dW in the parameter's own memory layout, or autograd copies it into place:
            # a Conv1D weight (in, out) arrives here as its transposed view (out, in).
            if weight.is_contiguous():
                dw = _mm(dy.t(), x.t(), None)  # (out, N) @ (N, in) -> (out, in)
            else:
                dw = _mm(x.t(), dy.t(), None).t()  # ((in, N) @ (N, out)).T -> (out, in), a view of (in, out)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0)  # (out,)
        return dx, dw, db


def available() -> bool:
    """Whether the oneDNN route exists in this PyTorch build (and is not switched off)."""
    return _LINEAR is not None


# Below this many FLOPs a call is dominated by fixed costs: oneDNN's (~13 us a call here, against
# MKL's ~4 us) and, with autograd, the Python-level Function (~20 us forward + backward). Without
# autograd oneDNN wins from ~4 MFLOP (1.2x at 4 MFLOP, 1.7x at 12 MFLOP, 2.2x from 30 MFLOP);
# with it, from ~16 MFLOP. A rule on the shape, not a timing, so that the same shapes always take
# the same kernel (determinism).
MIN_FLOPS = 16_000_000
MIN_FLOPS_NO_GRAD = 4_000_000


def _tracked(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether autograd records this call."""
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))


def uses_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether ``linear(x, weight, bias)`` runs on oneDNN: 2-D fp32 CPU operands, big enough to pay."""
    if _LINEAR is None or x.dim() != 2 or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return False
    if not x.dtype == weight.dtype == torch.float32:
        return False
    floor = MIN_FLOPS if _tracked(x, weight, bias) else MIN_FLOPS_NO_GRAD
    return 2 * x.shape[0] * weight.shape[0] * weight.shape[1] >= floor


def padded_rows(n: int, row_flops: int, device: torch.device | str = "cpu") -> int:
    """Rows to compute for ``n`` real ones whose largest product costs ``row_flops`` FLOPs a row:
    ``n`` rounded up to one of 4 sizes per octave (multiples of 8 below 64) when that product
    takes the oneDNN route on ``device``; ``n`` itself otherwise (other kernels take any shape)."""
    if _LINEAR is None or torch.device(device).type != "cpu" or n <= 0 or n * row_flops < MIN_FLOPS:
        return n
    if n <= 64:
        return (n + 7) // 8 * 8
    step = 1 << (n.bit_length() - 3)  # 2^(floor(log2 n) - 2): 4 steps per octave
    return (n + step - 1) // step * step


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on oneDNN when ``uses_onednn``. Differentiable."""
    if not uses_onednn(x, weight, bias):
        return F.linear(x, weight, bias)
    if _tracked(x, weight, bias):
        return _Linear.apply(x, weight, bias)
    return _mm(x, weight, bias)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    """``F.gelu(linear(x, weight, bias), approximate=approximate)``. Without autograd on the
    oneDNN route the GELU runs inside the GEMM (a post-op: one pass less over the (N, 4d)
    activations, ~25% off the call); the same function either way (to 5e-7)."""
    if uses_onednn(x, weight, bias) and not _tracked(x, weight, bias):
        return _LINEAR(x, weight, bias, "gelu", [], approximate)
    return F.gelu(linear(x, weight, bias), approximate=approximate)
