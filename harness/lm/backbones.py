"""The trunk a model's forwards run through, chosen once per model: GPT-2's packed forward or Hugging Face's.

A ``Backbone`` gives a causal LM's (or a sequence classifier's) last hidden states over a padded batch
(``input_ids, attn, pos``: ``sampling.sequence_inputs``'s left-padded prompt + right-padded response):
- ``hidden``: at every position, (B, L, H);
- ``logits``: the LM head's, from position ``start`` on, (B, L - start, V);
- ``read``: at the positions ``out`` marks, having fed the tokens ``keep`` marks (``out`` a subset of
  ``keep``, a row's kept tokens a prefix of its real ones), (rows, H) with the first n rows the real
  ones, row-major as ``out``'s 1s; returns (rows, n).

``HF_TRUNK`` runs any model's own forward over the whole padded batch (its trunk under
``base_model_prefix``; a peft model's through its base model, the adapters injected in it) and reads
the positions after. ``PACKED_GPT2`` runs ``harness.fast.gpt2``: only the tokens that matter, no
padding, the last block at the read positions only (rows past n are filler, kept so the head's product
has a bounded set of shapes). Both give the same values to float rounding (tests/unit/lm/test_forward.py).

``SHARDED`` runs a model sharded by FSDP2 (``harness.shard``, ``train.parallel=fsdp``) through its root
forward, whose hooks gather and free the weights and reduce the gradients; the trunk's last hidden states
are read off that forward (a hook on the trunk), the LM head's logits computed at the last position only.

``backbone(model)`` picks by what the model is (``gpt2.packable``; cached per model object, since a
model never changes type: a LoRA policy, its reference and a shared-trunk value head are objects of
their own) and, on each call, takes ``HF_TRUNK`` where the packed forward cannot run now (parameters
off the CPU after a ``.to(device)``, or dropout active in training mode).
"""

from __future__ import annotations

import weakref
from typing import Protocol

import torch
from torch import nn

from harness.fast import gpt2

__all__ = ["HF_TRUNK", "PACKED_GPT2", "SHARDED", "Backbone", "backbone"]


class Backbone(Protocol):
    def runs(self, model: nn.Module) -> bool: ...

    def hidden(self, model: nn.Module, input_ids, attn, pos) -> torch.Tensor: ...

    def logits(self, model: nn.Module, input_ids, attn, pos, start: int) -> torch.Tensor: ...

    def read(self, model: nn.Module, input_ids, attn, pos, keep, out) -> tuple[torch.Tensor, int]: ...


class HFTrunk:
    """Any model's Hugging Face forward over the padded batch."""

    def runs(self, model: nn.Module) -> bool:
        return True

    def hidden(self, model: nn.Module, input_ids, attn, pos) -> torch.Tensor:
        trunk = _trunk(model)
        return trunk(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state

    def logits(self, model: nn.Module, input_ids, attn, pos, start: int) -> torch.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
        return logits[:, start:, :]  # (B, L - start, V)

    def read(self, model: nn.Module, input_ids, attn, pos, keep, out) -> tuple[torch.Tensor, int]:
        h = self.hidden(model, input_ids, attn, pos)[out]  # (N_out, H): every position computed, then read
        return h, h.shape[0]


class PackedGPT2:
    """A GPT-2's packed forwards (``harness.fast.gpt2``): the CPU fast path."""

    def runs(self, model: nn.Module) -> bool:
        return gpt2.supports(model)

    def hidden(self, model: nn.Module, input_ids, attn, pos) -> torch.Tensor:
        return gpt2.hidden_states(model, input_ids, attn, pos)

    def logits(self, model: nn.Module, input_ids, attn, pos, start: int) -> torch.Tensor:
        return model.lm_head(self.hidden(model, input_ids, attn, pos)[:, start:])  # the head only where it is read

    def read(self, model: nn.Module, input_ids, attn, pos, keep, out) -> tuple[torch.Tensor, int]:
        pk = gpt2.pack(input_ids, keep, out, model.config.n_embd)
        return gpt2.packed_hidden(model, pk), pk.n_out  # (N_out_pad, d)


class Sharded:
    """An FSDP2-sharded model: every forward through its root module (``harness.shard``)."""

    def runs(self, model: nn.Module) -> bool:
        return True

    def hidden(self, model: nn.Module, input_ids, attn, pos) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hook = _trunk(model).register_forward_hook(lambda mod, args, out: seen.append(out[0]))
        try:
            model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False, **_few_logits(model))
        finally:
            hook.remove()
        return seen[-1]  # (B, L, H): the trunk's output, its final norm applied

    def logits(self, model: nn.Module, input_ids, attn, pos, start: int) -> torch.Tensor:
        return HF_TRUNK.logits(model, input_ids, attn, pos, start)

    def read(self, model: nn.Module, input_ids, attn, pos, keep, out) -> tuple[torch.Tensor, int]:
        h = self.hidden(model, input_ids, attn, pos)[out]
        return h, h.shape[0]


def _few_logits(model: nn.Module) -> dict:
    """A causal LM's forward asked for the last position's logits only (the hidden states are what is read)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


HF_TRUNK = HFTrunk()
SHARDED = Sharded()
PACKED_GPT2 = PackedGPT2()
_CHOSEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its Backbone


def backbone(model: nn.Module) -> Backbone:
    """The model's backbone: chosen once by its type; ``HF_TRUNK`` whenever the chosen one cannot run now."""
    if _sharded(model):  # checked on each call: sharding changes the model object in place
        return SHARDED
    chosen = _CHOSEN.get(model)
    if chosen is None:
        chosen = _CHOSEN[model] = PACKED_GPT2 if gpt2.packable(model) else HF_TRUNK
    return chosen if chosen.runs(model) else HF_TRUNK


def _sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _trunk(model: nn.Module) -> nn.Module:
    """A model's trunk; a peft (LoRA) model's is its base model's, the adapters injected in it."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, model.base_model_prefix)
