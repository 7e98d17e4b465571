"""``train.parallel=fsdp``: a model's weights sharded over the ranks with PyTorch's FSDP2 (``fully_shard``).

Each transformer block (the classes a Hugging Face model names in ``_no_split_modules``: ``GPT2Block``,
``LlamaDecoderLayer``, ...) is one FSDP unit, the rest of the model (embeddings, final norm, heads) the
root unit. A rank then holds 1/N of every parameter, of its gradient and of its Adam moments; a forward
all-gathers one block at a time and frees it after (``reshard_after_forward``), a backward reduce-scatters
each block's gradient. The root keeps its weights gathered from its forward to its backward, so a head
applied to the hidden states outside the forward (``lm.forward.policy_forward``'s LM head, the value
model's ``score``) reads whole weights and its gradient reaches the root's reduce-scatter.

The reduction is a sum (gradient divide factor 1): each rank differentiates its share of the global loss
(``harness.dist``), so the summed gradient is the one-process gradient, as in the replicated mode.

Collectives pair up across ranks in call order, so every rank must run the same forwards. The loop's
training forwards are the same on every rank (same minibatch and micro-batch counts); sampling and
evaluation are not (a rank stops when its own completions end, and shares of the evaluation prompts may
differ by one). ``gathered`` therefore gathers a model's whole weights once for such a stretch: its
forwards then need no collective, and the ranks may do different numbers of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["ShardedParams", "fsdp_units", "gathered", "is_sharded", "shard"]


def is_sharded(model: nn.Module | None) -> bool:
    """Whether ``model`` is the root of an FSDP2 sharding (``shard``)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The FSDP units of ``model``: its blocks in module order, the root last."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule) and m is not model]
    return units + ([model] if isinstance(model, FSDPModule) else [])


def shard(model: nn.Module, param_dtype: torch.dtype | None = None) -> nn.Module:
    """``model`` sharded in place over the default process group: each block (``_no_split_modules``) one unit,
    the root one unit that stays gathered from forward to backward; gradients summed over the ranks.
    ``param_dtype`` (bf16 under ``train.dtype=bf16``): FSDP2's mixed precision, the gathered weights cast to it
    for compute, the gradients reduced in fp32 and the sharded weights and Adam state kept in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    names = set(getattr(model, "_no_split_modules", None) or ())
    for m in list(model.modules()):
        if m is not model and type(m).__name__ in names:
            fully_shard(m, mp_policy=mp)
    fully_shard(model, mp_policy=mp, reshard_after_forward=False)
    for unit in fsdp_units(model):
        unit.set_gradient_divide_factor(1.0)  # a sum: each rank's loss is its share of the global one
        unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-scaled sum
    return model


_GATHERED: set[int] = set()  # ids of the models inside a ``gathered`` block now


@contextlib.contextmanager
def gathered(*models: nn.Module | None) -> Iterator[None]:
    """Each sharded model of ``models`` with its whole weights on every rank for the block (no collective in
    its forwards, so ranks may run different numbers of them); sharded again after. Others, and models already
    gathered by an enclosing block, are left alone."""
    mine = [m for m in models if is_sharded(m) and id(m) not in _GATHERED]
    units = [u for m in mine for u in fsdp_units(m)]
    roots = {id(m) for m in mine}
    _GATHERED.update(roots)
    for u in units:
        if id(u) not in roots:
            u.set_reshard_after_forward(False, recurse=False)
    try:
        for u in units:
            u.unshard()
        yield
    finally:
        _GATHERED.difference_update(roots)
        for u in units:
            u.reshard()
            if id(u) not in roots:
                u.set_reshard_after_forward(True, recurse=False)


class ShardedParams:
    """The trainable parameters of sharded models by group (``policy``, ``value``): what the optimiser steps,
    with ``harness.fast.flat.FlatParams``'s interface. Gradients are FSDP's (sharded ``DTensor``s, already
    summed over the ranks by the backward's reduce-scatter)."""

    def __init__(self, groups: dict[str, list[nn.Parameter]]):
        self._groups = groups
        self.params = [p for members in groups.values() for p in members]
        self.flat = self.params  # what the optimiser steps

    def group_grads(self, name: str) -> list[torch.Tensor]:
        return [p.grad for p in self._groups[name] if p.grad is not None]

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
