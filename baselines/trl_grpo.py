"""TRL 1.12's own GRPOTrainer (``trl.GRPOTrainer``, unmodified) on a RunConfig: ``impl=trl-grpo``.

Same task, models (the SFT policy; TRL loads its frozen reference from the policy's own folder,
the weights the harness's reference copies; the harness's reward through ``HarnessReward``),
prompts, seed and metric schema as ``impl=custom``. ``check_expressible(cfg)`` refuses, before
anything starts, every key GRPOTrainer cannot express (one line naming it); ``trl_args`` maps the
rest; ``train`` runs TRL's training loop, ``harness.recording.Recorder`` evaluating and logging.

Key mapping (RunConfig -> GRPOConfig; geometry and optimiser in ``baselines/trl_common.py``):

    advantage.baseline group_norm -> scale_rewards="group"   (R - mean_g) / (std_g + 1e-4)
                       group_mean -> scale_rewards="none"    R - mean_g   (Dr. GRPO)
    ppo.clip_eps -> epsilon             ppo.clip_eps_high -> epsilon_high (null = epsilon)
    ppo.dual_clip -> delta (TRL clamps the unclipped ratio at delta: for A < 0 the loss is
        -A min(max(r, clip(r)), delta) = the dual clip; for A >= 0 a no-op since delta > 1 + eps_high)
    ppo.ratio_level token | sequence -> importance_sampling_level (sequence = GSPO's geometric mean)
    loss.agg seq-mean-token-mean -> loss_type="grpo", token-mean -> "bnpo" (the minibatch's token
        mean), seq-mean-token-sum-norm -> "dr_grpo" (sum / (b * max_completion_length))
    kl.coef -> beta: beta * k3(pi, ref) per token inside the loss, aggregated with the loss_type
        (= kl.placement=loss, kl.estimator=k3)
    train.truncated mask -> mask_truncated_completions=True (no missing-EOS penalty then);
        penalty -> train.missing_eos_penalty replaces the score (HarnessReward, custom semantics)
    rollout.batch_size, rollout.group_size, ppo.epochs, ppo.minibatches, train.iterations ->
        generation batch = B completions of B/k prompts x num_generations=k, steps_per_generation =
        minibatches, per_device_train_batch_size = B / minibatches, num_iterations = epochs,
        max_steps = iterations x epochs x minibatches: one harness iteration = one generation batch
    task.response_length -> max_completion_length   rollout.temperature -> temperature (top_p 1, top_k 0)
    ppo.lr / adam_eps / lr_decay / max_grad_norm -> the optimizer handed in (trl_common)
    seed -> seed   train.dtype=bf16 -> bf16=True; fp16 -> fp16=True on a GPU, refused on the CPU
    model.reward learned | gold | package.module:function -> the reward function HarnessReward

Refused (GRPOTrainer has no equivalent): see REFUSED, its own rows here and the ones RLOO shares
(``trl_common.group_refusals`` / ``kl_refusals``) around them (advantage.level=token, baselines other
than group_norm / group_mean, advantage.whiten=true (TRL does not rescale group advantages;
scale_rewards="batch" divides by the std of R, not of the advantages),
ratio_level=sequence-token, loss.agg token-sum / seq-mean-token-sum, loss.norm_length other than
the response length, a KL that is not k3 in the loss, kl.target, ppo.entropy_coef > 0 (TRL's
bonus is a token mean whatever the loss_type), ppo.target_kl, a dual clip <= 1 + eps_high).
rollout.group_size < 2 never reaches it: the config refuses group baselines with k < 2.
The value-function keys (ppo.vf_coef, ppo.value_clip, model.value_*, advantage.gamma / lam) have no
effect at sequence level with these baselines, in the custom core as here.

Accepted with metrics absent (not faked): ABSENT (probe, approx KL, value and advantage stats).

Known differences (documented, not patched; see tests/parity/test_trl_grpo_parity.py):
- group_norm: TRL divides by std_g + 1e-4 (unbiased std), the custom core by std_g + 1e-8.
- the generation batch is shuffled once and split into the same minibatches for every epoch.
- objective/kl: TRL's per-token k3 at the learner's current logprobs, averaged over the first
  epoch's steps, times the mean response length (the custom core: sum_t kl_t at sampling time).
- objective/entropy: TRL's per-token entropy of the learner's logits over the first epoch.
- loss/policy_avg: TRL's training loss, which includes the beta * k3 term.
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
    mean_of,
    train_group,
)
from baselines.trl_ppo import NotExpressible
from harness.config import RunConfig
from harness.ppo.aggregations import AGGREGATIONS
from harness.ppo.ratio_levels import RATIO_LEVELS

__all__ = ["ABSENT", "LOSS_TYPES", "REFUSED", "NotExpressible", "check_expressible", "train", "trl_args"]

TRAINER = "GRPOTrainer"
LOSS_TYPES = {name: e.trl for name, e in AGGREGATIONS.items() if e.trl}  # loss.agg -> TRL loss_type
SCALE_REWARDS = {"group_norm": "group", "group_mean": "none"}


def _dual_clip_too_low(c: RunConfig) -> bool:
    dual = c.ppo.dual_clip
    high = c.ppo.clip_eps_high or c.ppo.clip_eps
    return dual is not None and dual <= 1.0 + high


# GRPO's own rows; group_refusals adds advantage.level, kl.target, ppo.entropy_coef, ppo.target_kl, train.device
REFUSED: Refusals = group_refusals("GRPO", {
    "advantage.baseline": (lambda c: c.advantage.baseline not in SCALE_REWARDS,
                           "GRPO's baseline is the group mean, with (group_norm) or without (group_mean) the std"),
    "advantage.whiten": (lambda c: c.advantage.whiten, "TRL does not rescale the group advantages by their batch std"),
    "ppo.ratio_level": (lambda c: RATIO_LEVELS[c.ppo.ratio_level].trl is None, "importance_sampling_level is "
                        + " or ".join(e.trl for e in RATIO_LEVELS.values() if e.trl)),
    "ppo.dual_clip": (_dual_clip_too_low, "TRL's delta is the dual clip only above 1 + epsilon_high"),
    "loss.agg": (lambda c: c.loss.agg not in LOSS_TYPES,
                 "loss_type " + " / ".join(f"{t} = {n}" for n, t in LOSS_TYPES.items())),
    "loss.norm_length": (lambda c: c.loss.norm_length not in (None, c.task.response_length),
                         "dr_grpo divides by max_completion_length, the response length"),
    **kl_refusals(placement=("loss", "GRPO's KL (beta) is a term of the loss"),
                  estimator=("k3", "GRPO's KL in the loss is k3")),
}, entropy_why="TRL's entropy bonus is a token mean whatever loss_type", early_stop_by="TRL")

ABSENT = GROUP_ABSENT
check_expressible = expressibility_check(REFUSED, TRAINER)


def trl_args(cfg: RunConfig, response_length: int, output_dir: str):
    """The GRPOConfig equivalent to ``cfg`` (after check_expressible)."""
    from trl import GRPOConfig

    return GRPOConfig(
        **common_args(cfg, response_length, output_dir),
        loss_type=LOSS_TYPES[cfg.loss.agg],
        importance_sampling_level=RATIO_LEVELS[cfg.ppo.ratio_level].trl,
        delta=cfg.ppo.dual_clip,
        scale_rewards=SCALE_REWARDS[cfg.advantage.baseline],
        multi_objective_aggregation="sum_then_normalize",
        top_entropy_quantile=1.0,
        entropy_coef=0.0,
        shuffle_dataset=True,
    )


def iteration_metrics(cfg: RunConfig, logs: list[dict], batch: dict[str, float]) -> dict[str, float]:
    """One iteration's GRPO logs (one per optimiser step) under the schema's keys; entropy and KL over the
    first epoch's steps (every completion once)."""
    first = logs[: cfg.ppo.minibatches]
    m = logged_means(logs, batch, TRL_KEYS, kl_logs=first)
    if (ent := mean_of(first, "entropy")) is not None:
        m["objective/entropy"] = ent
    return m


def set_up(cfg: RunConfig, logger) -> None:
    """Before the models load: this trainer's refusals, its environment, the tags of what it cannot log."""
    trl_common.set_up(cfg, logger, check_expressible, ABSENT, TRAINER)


def train(cfg: RunConfig, models, rec) -> None:
    """``impl=trl-grpo``: train ``cfg`` with TRL's GRPOTrainer on the run's ``models``, recorded by ``rec``."""
    train_group(cfg, models, rec, name="trl-grpo", trainer=TRAINER, make_args=trl_args, metrics=iteration_metrics)
