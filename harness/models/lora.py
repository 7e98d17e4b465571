"""LoRA policies (``model.lora.*``, peft): adapters trained on a frozen base; the reference is the same
model with its adapters disabled, so the weights are in memory once (TRL's PPO / GRPO with a peft_config).

A LoRA policy takes the generic Hugging Face forward, not the CPU GPT-2 fast path (``harness.fast.gpt2``
reads the base weights directly and would miss the adapters: ``supports`` says no for a peft model).
"""

from __future__ import annotations

import importlib.util

from torch import nn

from harness.errors import first_line
from harness.models.types import ModelError

__all__ = ["AdapterDisabled", "check_peft", "with_lora"]


def check_peft() -> None:
    """ModelError naming model.lora.r when peft is not installed."""
    if importlib.util.find_spec("peft") is None:
        raise ModelError("model.lora.r: LoRA needs peft (pip install 'ppo-harness[lora]')")


class AdapterDisabled(nn.Module):
    """The reference of a LoRA policy: every forward runs the policy with its adapters disabled.

    The policy is held, not registered as a submodule: ``eval()``, ``train()`` and ``requires_grad_()`` on
    the reference leave the policy's mode and its trainable adapters alone. ``parameters()`` are the
    policy's (the device is read from them)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        object.__setattr__(self, "_policy", policy)
        self.config = policy.config
        self.peft_config = policy.peft_config  # marks it a peft model for the fast path's check

    base_model_prefix = "trunk"  # harness.lm.forward reads the trunk through it

    @property
    def trunk(self) -> _AdaptersOff:
        base = self._policy.get_base_model()
        return _AdaptersOff(self._policy, getattr(base, base.base_model_prefix))

    def get_output_embeddings(self) -> nn.Module:
        return self._policy.get_base_model().get_output_embeddings()

    def parameters(self, recurse: bool = True):
        return self._policy.parameters(recurse)

    def forward(self, *args, **kwargs):
        with self._policy.disable_adapter():
            return self._policy(*args, **kwargs)

    def train(self, mode: bool = True) -> AdapterDisabled:
        return self

    def requires_grad_(self, requires_grad: bool = True) -> AdapterDisabled:
        return self


class _AdaptersOff:
    """A trunk called with the peft model's adapters disabled."""

    def __init__(self, peft_model: nn.Module, trunk: nn.Module):
        self.peft_model, self.trunk = peft_model, trunk

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.trunk(*args, **kwargs)


def with_lora(policy: nn.Module, lora) -> tuple[nn.Module, nn.Module]:
    """(the policy with LoRA adapters of ``lora`` (model.lora), its reference): only the adapters train."""
    check_peft()
    from peft import LoraConfig, get_peft_model

    targets = list(lora.target_modules) if lora.target_modules else None
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        task_type="CAUSAL_LM", bias="none")
    try:
        peft_policy = get_peft_model(policy, config)
    except ValueError as e:  # target modules not found, or no default for the architecture
        raise ModelError(f"model.lora.target_modules: {first_line(e)}") from None
    return peft_policy, AdapterDisabled(peft_policy)
