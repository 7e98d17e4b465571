"""Each implementation's default profile: what ``ppo-harness train --impl X`` runs with by default.

The harness's own defaults are the custom core's (token-level PPO with GAE, TRL PPOTrainer-like).
A reference trainer cannot express some of them (GRPO and RLOO are sequence level, RLOO on-policy), so
a user who picks one gets that trainer's own defaults for the keys below, each the value of TRL's
config class default (TRL 1.x). A key the user set (config file or ``--set``) is never replaced: when
the trainer cannot express it, the run is refused naming it. What stays the harness's: the learning
rate (TRL's 1e-6 / 3e-6 are for 1B models; the tiny presets need more), the batch size, the
iterations and the response length.
"""

from __future__ import annotations

from typing import Any

from harness.config import flat_items, parse_override

__all__ = ["PROFILES", "applied", "user_keys"]

PROFILES: dict[str, dict[str, Any]] = {
    "custom": {},
    # PPOConfig: num_mini_batches=1, missing_eos_penalty=None; its other defaults are the harness's already
    # (num_ppo_epochs 4, kl_coef 0.05, k1 in the reward, cliprange 0.2, vf_coef 0.1, cliprange_value 0.2, gamma 1, lam 0.95)
    "trl": {"ppo.minibatches": 1, "train.missing_eos_penalty": None},
    # GRPOConfig: num_generations=8, num_iterations=1, steps_per_generation=1 (one optimiser step per batch),
    # scale_rewards="group", beta=0.0 (its KL, when on, is k3 in the loss), loss_type="dapo" (token mean over
    # the generation batch: with one step per batch, loss.agg=token-mean), no whitening of the advantages
    "trl-grpo": {
        "advantage.level": "sequence", "advantage.baseline": "group_norm", "advantage.whiten": False,
        "rollout.group_size": 8, "ppo.epochs": 1, "ppo.minibatches": 1, "kl.coef": 0.0, "kl.placement": "loss",
        "kl.estimator": "k3", "loss.agg": "token-mean", "train.missing_eos_penalty": None,
    },
    # RLOOConfig: num_generations=2, num_iterations=1, steps_per_generation=1, beta=0.05 (k1 in the reward),
    # normalize_advantages=False, the per-completion sum of token losses averaged over completions
    "trl-rloo": {
        "advantage.level": "sequence", "advantage.baseline": "rloo", "advantage.whiten": False,
        "rollout.group_size": 2, "ppo.epochs": 1, "ppo.minibatches": 1, "kl.coef": 0.05,
        "loss.agg": "seq-mean-token-sum", "train.missing_eos_penalty": None,
    },
}


def user_keys(data: dict | None, overrides: list[str]) -> set[str]:
    """The dotted keys a user set: those of the config file's mapping ``data`` and of the ``--set`` overrides."""
    keys = {k for k, _ in flat_items(data or {})}
    return keys | {parse_override(o)[0] for o in overrides}


def applied(impl: str, user: set[str]) -> dict[str, Any]:
    """The profile keys of ``impl`` the user did not set: what the run takes from the profile."""
    return {k: v for k, v in PROFILES.get(impl, {}).items() if k not in user}


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``{key: value}`` as ``--set`` texts (null / true / false spelt as YAML)."""
    def text(v: Any) -> str:
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return [f"{k}={text(v)}" for k, v in values.items()]
