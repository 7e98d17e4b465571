"""DAPO's batch shaping (Yu et al. 2025, arXiv 2503.14476): the soft overlong punishment and which prompt
groups dynamic sampling keeps. Pure functions of tensors (torch only).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["informative_groups", "overlong_penalty"]


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, penalty: float) -> Tensor:
    """The soft overlong punishment added to each completion's score (DAPO eq. 13; veRL overlong_buffer_cfg).

    lengths: (B,) response tokens (EOS included); max_length: L_max; buffer: L_cache; penalty: the factor.
        0                                              L <= L_max - L_cache
        -penalty * (L - (L_max - L_cache)) / L_cache   L_max - L_cache < L <= L_max
    (L > L_max cannot happen here: sampling stops at L_max.) Returns (B,) floats, <= 0.
    """
    if not 1 <= buffer <= max_length:
        raise ValueError(f"overlong buffer must be in [1, {max_length}], got {buffer}")
    start = max_length - buffer
    over = (lengths.to(torch.float32) - start).clamp(min=0.0, max=float(buffer))
    return -penalty * over / buffer


def informative_groups(scores: Tensor, group_size: int) -> Tensor:
    """(G,) bool: True for the groups of ``group_size`` contiguous completions whose scores are not all equal
    (DAPO dynamic sampling keeps these: a group with zero score variance has zero advantage under every group
    baseline, so it adds no gradient but still dilutes the batch)."""
    g = scores.view(-1, group_size)
    return (g.max(dim=1).values - g.min(dim=1).values) > 0
