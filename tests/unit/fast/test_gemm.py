"""gemm.linear (oneDNN's fp32 GEMM with autograd) against a float64 reference, and the row padding."""

import pytest
import torch

from harness.fast import gemm

needs_onednn = pytest.mark.skipif(not gemm.available(), reason="this PyTorch build has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("transposed_weight", [False, True])
def test_linear_matches_float64_forward_and_backward(transposed_weight):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 256, generator=g, requires_grad=True)
    if transposed_weight:  # a Conv1D weight (in, out) passed as the view w.t(), as harness.fast.gpt2 does
        w_param = (0.05 * torch.randn(256, 384, generator=g)).requires_grad_()
        w = w_param.t()
    else:
        w_param = w = (0.05 * torch.randn(384, 256, generator=g)).requires_grad_()
    b = torch.randn(384, generator=g, requires_grad=True)
    assert gemm.uses_onednn(x, w)
    dy = torch.randn(300, 384, generator=g)

    y = gemm.linear(x, w, b)
    gx, gw, gb = torch.autograd.grad(y, (x, w_param, b), dy)

    x64, w64, b64 = x.detach().double().requires_grad_(), w_param.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    y64 = x64 @ (w64.t() if not transposed_weight else w64) + b64
    rx, rw, rb = torch.autograd.grad(y64, (x64, w64, b64), dy.double())
    # fp32 accumulation over 256 (forward, dx) or 300 (dW) terms
    torch.testing.assert_close(y.double(), y64, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gx.double(), rx, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gw.double(), rw, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(gb.double(), rb, atol=1e-4, rtol=1e-5)
    assert gw.shape == w_param.shape


@needs_onednn
def test_small_or_non_fp32_products_take_f_linear():
    small = torch.randn(8, 16), torch.randn(16, 16)
    assert not gemm.uses_onednn(*small)  # 4 kFLOP: the fixed cost would dominate
    assert not gemm.uses_onednn(torch.randn(300, 256, dtype=torch.float64), torch.randn(256, 256, dtype=torch.float64))
    x, w = torch.randn(300, 256), torch.randn(256, 256)
    assert gemm.uses_onednn(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not gemm.uses_onednn(x, w)  # autocast decides the kernel there
    torch.testing.assert_close(gemm.linear(*small), torch.nn.functional.linear(*small), atol=0, rtol=0)
    mid = torch.randn(32, 256), torch.randn(768, 256)  # 12.6 MFLOP: a decoding step's qkv
    assert gemm.MIN_FLOPS_NO_GRAD <= 2 * 32 * 256 * 768 < gemm.MIN_FLOPS
    assert gemm.uses_onednn(*mid)  # no autograd: only oneDNN's fixed cost to pay
    assert not gemm.uses_onednn(mid[0], mid[1].requires_grad_())  # autograd's Python Function too


@needs_onednn
def test_padded_rows_bounds_waste_and_shapes():
    big = gemm.MIN_FLOPS  # one row is already worth padding
    sizes = [gemm.padded_rows(n, big) for n in range(1, 4097)]
    for n, m in enumerate(sizes, start=1):
        assert n <= m <= max(n + 7, int(n * 1.25)), (n, m)
    assert sizes == sorted(sizes)  # monotone
    assert len(set(sizes)) <= 8 + 6 * 4 + 1  # 8 sizes up to 64, then 4 per octave
    assert gemm.padded_rows(100, 1) == 100  # too small a product for oneDNN: no filler
    assert gemm.padded_rows(300, big, "meta") == 300  # not the CPU: no filler


@needs_onednn
def test_linear_gelu_fuses_only_without_autograd():
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(300, 256, generator=g), 0.05 * torch.randn(1024, 256, generator=g), torch.randn(1024, generator=g)
    expected = torch.nn.functional.gelu(x.double() @ w.double().t() + b.double(), approximate="tanh")
    with torch.no_grad():
        fused = gemm.linear_gelu(x, w, b, "tanh")
    torch.testing.assert_close(fused.double(), expected, atol=1e-4, rtol=1e-5)
    xg = x.clone().requires_grad_()
    out = gemm.linear_gelu(xg, w, b, "tanh")
    assert out.grad_fn is not None  # the differentiable route
    torch.testing.assert_close(out.detach().double(), expected, atol=1e-4, rtol=1e-5)


def test_the_aten_switch_turns_onednn_off():
    import os
    import subprocess
    import sys

    code = "from harness.fast import gemm; import torch; x = torch.randn(300, 256); w = torch.randn(256, 256); " \
           "print(gemm.available(), gemm.uses_onednn(x, w), gemm.padded_rows(300, gemm.MIN_FLOPS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PPO_HARNESS_GEMM": "aten"}, check=True).stdout.split()
    assert out == ["False", "False", "300"]
