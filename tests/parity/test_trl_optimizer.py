"""The TRL baseline's optimiser clips the policy's and the value's gradients apart, as the custom core."""

import torch

from baselines.trl_ppo import ClippedAdam
from harness.fast.flat import FlatParams, clip_norm_


def _params(policy_grad: list[float], value_grad: list[float]):
    p = torch.nn.Parameter(torch.zeros(len(policy_grad)))
    v = torch.nn.Parameter(torch.zeros(len(value_grad)))
    p.grad, v.grad = torch.tensor(policy_grad), torch.tensor(value_grad)
    return p, v


def test_the_value_gradient_does_not_shrink_the_policy_step():
    # policy gradient (3, 4): norm 5 -> clipped to norm 1: (0.6, 0.8). A huge value gradient
    # (norm 500) must not change that (a global norm would scale the policy's by ~1/500).
    p, v = _params([3.0, 4.0], [300.0, 400.0])
    opt = ClippedAdam([[p], [v]], lr=0.1, eps=1e-8, max_grad_norm=1.0)
    opt.step()
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8]), atol=1e-6, rtol=0)
    torch.testing.assert_close(v.grad, torch.tensor([0.6, 0.8]), atol=1e-6, rtol=0)
    assert opt.norms == [5.0] and opt.value_norms == [500.0]


def test_no_clipping_leaves_the_gradients_and_records_the_norms():
    p, v = _params([3.0, 4.0], [0.0, 2.0])
    opt = ClippedAdam([[p], [v]], lr=0.1, eps=1e-8, max_grad_norm=None)
    opt.step()
    assert p.grad.tolist() == [3.0, 4.0] and v.grad.tolist() == [0.0, 2.0]
    assert opt.norms == [5.0] and opt.value_norms == [2.0]


def test_flat_groups_are_the_custom_core_s_clipping_units():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    c = torch.nn.Parameter(torch.zeros(1))
    flat = FlatParams([a, b, c], groups={"policy": [a, c], "value": [b]})
    a.grad.copy_(torch.tensor([3.0, 0.0]))
    c.grad.copy_(torch.tensor([4.0]))
    b.grad.copy_(torch.tensor([0.0, 0.0, 10.0]))
    assert float(clip_norm_(flat.group_grads("policy"), 1.0)) == 5.0
    assert float(clip_norm_(flat.group_grads("value"), 1.0)) == 10.0
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(c.grad, torch.tensor([0.8]))
    torch.testing.assert_close(b.grad, torch.tensor([0.0, 0.0, 1.0]))
