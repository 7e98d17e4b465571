"""The refusals every TRL baseline shares for the custom core's loss modes, off-policy rollouts and DAPO shaping.

``baselines/trl_ppo.py`` and ``baselines/trl_common.group_refusals`` add these rows to their tables:
TRL 1.12's trainers sample with the policy they train (no staleness to set), correct only vLLM's
sampling mismatch (``vllm_importance_sampling_*``, which needs vLLM), and have no dynamic sampling or
overlong buffer. GRPOTrainer has ``loss_type`` cispo and sapo, but with its own clip and aggregation
(cispo clips r at epsilon_high itself and sums tokens over the generation batch): they are not the
losses ``ppo.loss_mode`` names, so they are refused rather than approximated.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.config import RunConfig

__all__ = ["menu_refusals"]


def menu_refusals(trainer: str) -> dict[str, tuple[Callable[[RunConfig], bool], str]]:
    """key -> (is it refused?, why) for ``trainer`` ("PPOTrainer", "GRPOTrainer", "RLOOTrainer")."""
    return {
        "ppo.loss_mode": (lambda c: c.ppo.loss_mode != "vanilla",
                          f"{trainer} has only its own clipped surrogate; the other policy losses run with impl=custom"),
        "rollout.staleness": (lambda c: c.rollout.staleness > 0, f"{trainer} samples with the policy it trains"),
        "rollout.correction": (lambda c: c.rollout.correction != "none",
                               f"{trainer} corrects only vLLM's sampling (vllm_importance_sampling_*), not used here"),
        "rollout.filter_groups": (lambda c: c.rollout.filter_groups, f"{trainer} has no dynamic sampling"),
        "train.overlong_buffer": (lambda c: c.train.overlong_buffer is not None,
                                  f"{trainer} has no overlong punishment"),
    }
