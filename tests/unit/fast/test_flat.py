"""FlatParams: parameters and gradients as views of flat buffers give the same training step."""

import copy

import pytest
import torch
from torch import nn

from harness.fast.flat import FlatParams, clip_norm_


def _pair():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    b = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    return a, b


def _loss(a, b, x):
    return (a(x) ** 2).mean() + b(a(x)).abs().sum()


def test_flat_step_equals_the_per_tensor_step():
    a, b = _pair()
    a_ref, b_ref = copy.deepcopy(a), copy.deepcopy(b)
    x = torch.randn(6, 5)

    params = [*a.parameters(), *b.parameters(), *a.parameters()]  # duplicates are taken once
    flat = FlatParams(params)
    assert len(flat.params) == 8 and len(flat.flat) == 1
    assert flat.flat[0].numel() == sum(p.numel() for p in [*a.parameters(), *b.parameters()])
    for p, q in zip([*a.parameters(), *b.parameters()], [*a_ref.parameters(), *b_ref.parameters()], strict=True):
        assert torch.equal(p, q)  # re-homed, unchanged

    opt = torch.optim.Adam(flat.flat, lr=1e-2, eps=1e-5)
    ref_params = [*a_ref.parameters(), *b_ref.parameters()]
    opt_ref = torch.optim.Adam(ref_params, lr=1e-2, eps=1e-5)
    for _ in range(3):
        flat.zero_grad()
        _loss(a, b, x).backward()  # accumulates into the flat gradient, in place
        assert flat.intact()
        norm = torch.nn.utils.clip_grad_norm_(flat.flat, 0.5)
        opt.step()

        opt_ref.zero_grad(set_to_none=True)
        _loss(a_ref, b_ref, x).backward()
        norm_ref = torch.nn.utils.clip_grad_norm_(ref_params, 0.5)
        opt_ref.step()
        torch.testing.assert_close(norm, norm_ref)
    for p, q in zip([*a.parameters(), *b.parameters()], ref_params, strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert not torch.equal(a[0].weight, _pair()[0][0].weight)  # and they moved


def test_grad_views_see_the_flat_gradient():
    a, _ = _pair()
    flat = FlatParams(list(a.parameters()))
    flat.flat[0].grad.fill_(2.0)
    assert all(torch.all(p.grad == 2.0) for p in a.parameters())
    flat.zero_grad()
    assert all(torch.all(p.grad == 0) for p in a.parameters())
    a[0].weight.grad = None  # what set_to_none would do: the parameter leaves the flat buffer
    assert not flat.intact()


def test_the_norm_of_a_large_flat_buffer_is_the_float64_one():
    """One flat buffer of 422k fp32 gradients (the tiny task's policy): the norm that is logged and clips is the
    one summed in float64, where an fp32 reduction is off in the 4th digit."""
    g = torch.randn(422_272, generator=torch.Generator().manual_seed(0)) * 2e-3
    g[::7] *= 40  # a spread of magnitudes, as a real gradient has
    exact = float(g.double().norm())
    assert float(clip_norm_([g.clone()], None)) == pytest.approx(exact, rel=1e-7)
    parts = list(g.clone().split([100_000, 22_272, 300_000]))
    assert float(clip_norm_(parts, None)) == pytest.approx(exact, rel=1e-7)
    clipped = clip_norm_(parts, 1.0)
    assert float(clipped) == pytest.approx(exact, rel=1e-7)
    assert float(torch.cat(parts).double().norm()) == pytest.approx(1.0 / (1 + 1e-6 / exact), rel=1e-6)
