"""What one run's models are: the ``Models`` bundle, where its policy starts, the shared-trunk value head, the
error type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from harness.errors import InputError
from harness.tasks import Task


class ModelError(InputError):
    """A model that cannot be built or loaded; one line naming the key or path."""


@dataclass
class Models:
    task: Task
    tokenizer: Any
    policy: nn.Module  # trainable, initialised from SFT
    ref: nn.Module  # frozen SFT copy
    reward: nn.Module | None  # frozen proxy reward model (None when optimising gold)
    value: nn.Module | None  # trainable value model (sequence classifier, per-token head use)
    source: str  # where the weights came from (cache dir or HF name)
    provenance: dict[str, str] | None = None  # MLflow tags: shipped or local build, version, checksums
    # model.reward=package.module:function: the optimised reward, (prompts, completions, ended) -> scores
    reward_fn: Callable[..., list[float]] | None = None
    device: Any = "cpu"  # the torch.device every model of the run sits on (train.device)


@dataclass(frozen=True)
class PolicyStart:
    """Where a run's policy and its tokenizer load from: an SFT build (``sft_dir``), or the model as given."""

    policy: str | Path
    tokenizer: str | Path
    sft_dir: Path | None = None

    @classmethod
    def of_sft(cls, sft_dir: Path) -> PolicyStart:
        return cls(sft_dir / "policy", sft_dir / "tokenizer", sft_dir)


class SharedTrunkValue(nn.Module):
    """V(s) as a scalar head on the policy's own trunk (``model.value_trunk=shared``).

    Looks like a sequence-classification model to the rollout (``config``, the trunk under
    ``base_model_prefix``, ``score``), so values are read the same way; the PPO update reads
    them off the policy's forward instead (``rollout.policy_forward(value_head=...)``).
    ``head_parameters`` are its own; the trunk's belong to the policy.
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.config = policy.config
        self.base_model_prefix = policy.base_model_prefix
        setattr(self, policy.base_model_prefix, getattr(policy, policy.base_model_prefix))
        self.score = nn.Linear(policy.config.hidden_size, 1, bias=False)
        nn.init.zeros_(self.score.weight)  # V = 0 at the start: no signal from an untrained head

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.score.parameters())
