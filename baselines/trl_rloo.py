"""TRL 1.12's own RLOOTrainer (``trl.RLOOTrainer``, unmodified) on a RunConfig: ``impl=trl-rloo``.

Same task, models, prompts, seed and metric schema as ``impl=custom``; everything but the
trainer-specific mapping is ``baselines/trl_common.py`` (geometry, optimiser, reward function,
callback, the refusals and absent metrics both trainers share), as for ``baselines/trl_grpo.py``.

What RLOOTrainer computes (rloo_trainer.py):
- R_i = score_i - beta * sum_t (old_logp_it - ref_logp_it): the k1 KL of the sampling policy,
  summed per completion, IN THE REWARD (= kl.placement=reward, kl.estimator=k1, sequence level);
- A_i = R_i - (sum_group R - R_i) / (k - 1) (the leave-one-out baseline = advantage.baseline=rloo);
  normalize_advantages: (A - mean_batch A) / (std_batch A + 1e-4), unbiased std. RLOO advantages
  sum to 0 in every group, so the centring is a no-op and this is the custom core's
  advantage.whiten (A / (std + 1e-8)) but for the epsilon;
- the loss: r_i = exp(sum_t (logp_it - old_logp_it)), the WHOLE-SEQUENCE likelihood ratio,
  clipped once per completion, -min(r_i A_i, clip(r_i) A_i) averaged over completions.

No harness ratio level is that product of the token ratios (``sequence`` is GSPO's geometric
mean). On-policy, r = 1 and the clip is inactive, and the gradient is -(1/B) sum_i A_i sum_t
grad logp_it, exactly the custom core's token-level surrogate with loss.agg=seq-mean-token-sum.
So trl-rloo requires one optimiser step per batch (ppo.epochs = ppo.minibatches = 1), token-level
ratios and seq-mean-token-sum; off-policy steps would clip a different ratio, and are refused.
(The loss VALUE differs: -mean A versus -mean_i A_i |y_i|; the parity test compares gradients.)

Key mapping (RunConfig -> RLOOConfig): advantage.whiten -> normalize_advantages; kl.coef -> beta;
ppo.clip_eps / clip_eps_high -> epsilon / epsilon_high (inactive on-policy); train.truncated=mask ->
mask_truncated_completions; the rest as trl_grpo / trl_common.

Known differences: normalize_advantages divides by std + 1e-4 (the custom core std + 1e-8); with
train.truncated=mask TRL sums the KL over the masked rows (0 for a truncated completion).
"""

from __future__ import annotations

from baselines import trl_common
from baselines.trl_common import (
    GROUP_ABSENT,
    TRL_KEYS,
    Refusals,
    common_args,
    expressibility_check,
    group_refusals,
    kl_refusals,
    logged_means,
    train_group,
)
from baselines.trl_ppo import NotExpressible
from harness.config import RunConfig

__all__ = ["ABSENT", "REFUSED", "NotExpressible", "check_expressible", "train", "trl_args"]

TRAINER = "RLOOTrainer"
_ON_POLICY = "RLOO clips the whole-sequence ratio exp(sum_t log r_t), which no ppo.ratio_level is; on-policy "
_ON_POLICY += "(one optimiser step per batch) the updates are equal"

# RLOO's own rows; group_refusals adds advantage.level, kl.target, ppo.entropy_coef, ppo.target_kl, train.device
REFUSED: Refusals = group_refusals("RLOO", {
    "advantage.baseline": (lambda c: c.advantage.baseline != "rloo", "RLOO's baseline is the leave-one-out mean"),
    "ppo.epochs": (lambda c: c.ppo.epochs != 1, _ON_POLICY),
    "ppo.minibatches": (lambda c: c.ppo.minibatches != 1, _ON_POLICY),
    "ppo.ratio_level": (lambda c: c.ppo.ratio_level != "token", _ON_POLICY),
    "ppo.dual_clip": (lambda c: c.ppo.dual_clip is not None, "RLOOTrainer has no dual clip"),
    "loss.agg": (lambda c: c.loss.agg != "seq-mean-token-sum",
                 "RLOO's gradient is the per-completion sum of token gradients, averaged over completions"),
    **kl_refusals(placement=("reward", "RLOO puts the KL in the reward"),
                  estimator=("k1", "RLOO's KL is k1 (log pi_old - log ref)")),
}, entropy_why="RLOOTrainer has no entropy bonus", early_stop_by=TRAINER)

_TRL_KEYS = {**TRL_KEYS, "entropy": "objective/entropy"}
ABSENT = GROUP_ABSENT
check_expressible = expressibility_check(REFUSED, TRAINER)


def trl_args(cfg: RunConfig, response_length: int, output_dir: str):
    """The RLOOConfig equivalent to ``cfg`` (after check_expressible)."""
    from trl import RLOOConfig

    return RLOOConfig(
        **common_args(cfg, response_length, output_dir),
        normalize_advantages=cfg.advantage.whiten,
        reward_clip_range=None,
        shuffle_dataset=True,
    )


def iteration_metrics(cfg: RunConfig, logs: list[dict], batch: dict[str, float]) -> dict[str, float]:
    """One iteration's RLOO logs under the schema's keys. TRL's kl: the per-token k1 of the sampling
    policy over the batch's tokens; times the mean length it is the schema's mean sum_t kl_t."""
    return logged_means(logs, batch, _TRL_KEYS)


def set_up(cfg: RunConfig, logger) -> None:
    """Before the models load: this trainer's refusals, its environment, the tags of what it cannot log."""
    trl_common.set_up(cfg, logger, check_expressible, ABSENT, TRAINER)


def train(cfg: RunConfig, models, rec) -> None:
    """``impl=trl-rloo``: train ``cfg`` with TRL's RLOOTrainer on the run's ``models``, recorded by ``rec``."""
    train_group(cfg, models, rec, name="trl-rloo", trainer=TRAINER, make_args=trl_args, metrics=iteration_metrics)
