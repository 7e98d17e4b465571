"""Unit tests for harness/algos/estimators.py's per-completion baselines: hand-computed tensors, each through
``sequence_advantages`` (the registry's function by name)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from harness.algos.estimators import BASELINES, sequence_advantages


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# --------------------------------------------------------------------------- sequence baselines

R6 = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0]  # two prompts x three completions


def test_sequence_advantages_by_hand():
    r = t(R6)
    assert_close(sequence_advantages(r, "none"), r)
    assert_close(sequence_advantages(r, "batch_mean", 3), t([-3.0, -2.0, -1.0, 0.0, 1.0, 5.0]))  # mean 4
    # rloo, k=3: group [1,2,3] (sum 6): 1-5/2, 2-4/2, 3-3/2; group [4,5,9] (sum 18): 4-14/2, 5-13/2, 9-9/2
    assert_close(sequence_advantages(r, "rloo", 3), t([-1.5, 0.0, 1.5, -3.0, -1.5, 4.5]))
    # group_mean (Dr. GRPO): means 2 and 6
    assert_close(sequence_advantages(r, "group_mean", 3), t([-1.0, 0.0, 1.0, -2.0, -1.0, 3.0]))
    # group_norm: unbiased stds sqrt((1+0+1)/2) = 1 and sqrt((4+1+9)/2) = sqrt(7)
    # (the biased std would be sqrt(14/3) for group 2 and fail this check)
    s1, s2 = 1.0 + 1e-8, math.sqrt(7.0) + 1e-8
    assert_close(sequence_advantages(r, "group_norm", 3), t([-1 / s1, 0.0, 1 / s1, -2 / s2, -1 / s2, 3 / s2]))
    v = t([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    assert_close(sequence_advantages(r, "value", 3, values=v), t([0.0, 1.0, 2.0, 2.0, 3.0, 7.0]))


def test_rloo_group_of_two_and_scaled_identity():
    # k=2: each completion's baseline is the other one
    assert_close(sequence_advantages(t([1.0, 4.0, -2.0, 2.0]), "rloo", 2), t([-3.0, 3.0, -4.0, 4.0]))
    # RLOO = k/(k-1) * (R - group mean)   (Ahmadian et al. 2024)
    g = torch.Generator().manual_seed(5)
    r = torch.randn(20, generator=g, dtype=torch.float64)
    k = 4
    grouped = r.view(-1, k)
    expected = (k / (k - 1)) * (grouped - grouped.mean(1, keepdim=True))
    assert_close(sequence_advantages(r, "rloo", k), expected.reshape(-1))


def test_group_norm_constant_group_is_zero_not_nan():
    adv = sequence_advantages(t([2.0, 2.0, 2.0, 1.0, 3.0, 5.0]), "group_norm", 3)
    assert torch.isfinite(adv).all()
    assert_close(adv[:3], t([0.0, 0.0, 0.0]))


def test_sequence_advantages_errors():
    r = t(R6)
    with pytest.raises(ValueError, match="group_size >= 2"):
        sequence_advantages(r, "rloo", 1)
    with pytest.raises(ValueError, match="group_size >= 2"):
        sequence_advantages(r, "group_norm", 1)
    with pytest.raises(ValueError, match="multiple of group_size 4"):
        sequence_advantages(r, "rloo", 4)
    with pytest.raises(ValueError, match="multiple"):
        sequence_advantages(r, "none", 4)
    with pytest.raises(ValueError, match="values"):
        sequence_advantages(r, "value", 3)
    with pytest.raises(ValueError, match="values"):
        sequence_advantages(r, "value", 3, values=torch.zeros(5))
    with pytest.raises(ValueError, match="'median'"):
        sequence_advantages(r, "median", 3)
    with pytest.raises(ValueError, match="1-D"):
        sequence_advantages(r.view(2, 3), "none")


def test_each_per_completion_baseline_is_its_registered_function():
    """``sequence_advantages`` is the registry's function by name; a per-token estimator is refused there."""
    r = t(R6)
    for name, e in BASELINES.items():
        if e.props["per_token"]:
            with pytest.raises(ValueError, match="per token"):
                sequence_advantages(r, name, 3)
            continue
        values = t([1.0, 1.0, 1.0, 2.0, 2.0, 2.0]) if e.props["value"] else None
        assert torch.equal(sequence_advantages(r, name, 3, values=values), e.fn(r, 3, values=values)), name
