"""What TRL's group trainers (GRPOTrainer, RLOOTrainer; TRL 1.12) share as harness baselines.

``baselines/trl_grpo.py`` and ``baselines/trl_rloo.py`` each own their own refusals, their
config mapping and their metric mapping; this module owns the parts that are the same:

- ``TrainerNotExpressible``: the refusal (a ``baselines.trl_ppo.NotExpressible``, so the CLI's
  bad-input handling and ``harness.sweep.spec`` treat it alike), one line naming the key;
- the refusals both make (``group_refusals``: advantage.level other than sequence, kl.target,
  ppo.entropy_coef > 0, ppo.target_kl, train.device other than cpu / cuda:0; ``kl_refusals``: a KL
  at another placement or with another estimator than the trainer's) around each trainer's own
  rows, and ``expressibility_check``, the ``check_expressible`` raising for the first refused key;
- ``GROUP_ABSENT``: the schema keys neither trainer logs (probe, approx KL, value and advantage
  stats); ``TRL_KEYS`` and ``logged_means``: the TRL logs both map onto schema keys;
- ``HarnessReward``: the reward function TRL calls with ``(prompts, completions, completion_ids)``:
  the harness's optimised score of each completion (proxy RM on the same token ids, a text reward
  function, or gold), the missing-EOS penalty with the custom core's REPLACE semantics, and the
  batch statistics TRL does not log (gold reward, lengths, EOS fraction, timing);
- the batch geometry: one harness iteration = one TRL generation batch of rollout.batch_size
  completions (B/k prompts x k = num_generations), split into ppo.minibatches optimiser steps
  (per_device_train_batch_size = B / minibatches, steps_per_generation = minibatches,
  gradient_accumulation_steps = 1), reused for ppo.epochs passes (num_iterations);
  max_steps = train.iterations * epochs * minibatches;
- the optimiser: ``baselines.trl_ppo.ClippedAdam`` over the policy alone (Adam with ppo.adam_eps, the
  gradient norm clipped at ppo.max_grad_norm inside step(); TRL's own clipping is off) and the custom
  core's per-iteration linear decay, stepped once per optimiser step as a function of the iteration;
- ``group_callback``: TRL's per-step logs gathered into one harness iteration for ``Recorder``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from baselines.trl_menu import menu_refusals
from baselines.trl_ppo import FP16_WHY, ClippedAdam, NotExpressible, fp16_on_cpu, precision_args
from baselines.trl_reward import ScoredBatch
from harness.algos import math as M
from harness.algos.schedules import lr_schedule, scheduler_kind
from harness.config import RunConfig, response_length
from harness.schema import PROBE_KEYS as VARIANCE_KEYS

__all__ = [
    "GROUP_ABSENT", "TRL_KEYS", "HarnessReward", "Refusals", "TrainerNotExpressible", "check_table", "common_args",
    "expressibility_check", "geometry", "group_callback", "group_refusals", "kl_refusals", "logged_means",
    "DEVICE_WHY", "device_refused", "make_policy_optimizer", "value_of", "use_cpu", "prompt_dataset", "set_up", "train_group",
]

# key -> (is it refused?, why)
Refusals = dict[str, tuple[Callable[[RunConfig], bool], str]]


class TrainerNotExpressible(NotExpressible):
    """A config value one of TRL's trainers cannot express; the message is one line naming the key."""

    def __init__(self, key: str, value, why: str, trainer: str):
        ValueError.__init__(self, f"config key '{key}': {value!r} cannot be expressed by TRL's {trainer} ({why})")
        self.key = key


def value_of(cfg: RunConfig, key: str):
    """``cfg``'s value of a dotted key (a KeyError for a key RunConfig does not have: a typo is a bug)."""
    return cfg.flat()[key]


def check_table(cfg: RunConfig, refused: Refusals, trainer: str) -> None:
    """Raise TrainerNotExpressible for the first key of ``refused`` whose test says so."""
    for key, (is_refused, why) in refused.items():
        if is_refused(cfg):
            raise TrainerNotExpressible(key, value_of(cfg, key), why, trainer)


def expressibility_check(refused: Refusals, trainer: str) -> Callable[[RunConfig], None]:
    """A trainer module's ``check_expressible(cfg)``: ``check_table`` over its ``refused`` table."""

    def check_expressible(cfg: RunConfig) -> None:
        check_table(cfg, refused, trainer)

    check_expressible.__doc__ = f"Raise NotExpressible (a ValueError) for the first key {trainer} cannot express."
    return check_expressible


def geometry(cfg: RunConfig) -> dict[str, int]:
    """The batch geometry keys shared by GRPOConfig and RLOOConfig (see the module docstring)."""
    B, mb = cfg.rollout.batch_size, cfg.ppo.minibatches
    return {
        "per_device_train_batch_size": B // mb,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": mb,
        "num_iterations": cfg.ppo.epochs,
        "num_generations": cfg.rollout.group_size,
        "max_steps": cfg.train.iterations * cfg.ppo.epochs * mb,
    }


def common_args(cfg: RunConfig, response_length: int, output_dir: str) -> dict:
    """GRPOConfig / RLOOConfig keyword arguments both trainers read the same way (CPU, no hub)."""
    return {
        "output_dir": output_dir,
        "seed": cfg.seed,
        "use_cpu": use_cpu(cfg),
        **precision_args(cfg),
        "activation_checkpointing": cfg.train.gradient_checkpointing,  # named as transformers 5 wants
        "report_to": [],
        "push_to_hub": False,
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "logging_steps": 1,
        "dataloader_num_workers": 0,
        **geometry(cfg),
        "max_completion_length": response_length,
        "temperature": cfg.rollout.temperature,
        "top_p": cfg.rollout.top_p,  # TRL's logprobs are those of the untruncated distribution, as the harness's
        "top_k": cfg.rollout.top_k,
        "learning_rate": cfg.ppo.lr,
        "adam_epsilon": cfg.ppo.adam_eps,
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,  # ClippedAdam clips (harness rule); Trainer's own clipping off
        "lr_scheduler_type": scheduler_kind(cfg.ppo.lr_scheduler_type, cfg.ppo.lr_decay),  # the one handed in
        "warmup_steps": 0,
        "beta": cfg.kl.coef,
        "epsilon": cfg.ppo.clip_eps,
        "epsilon_high": cfg.ppo.clip_eps_high,
        "mask_truncated_completions": cfg.train.truncated == "mask",
        "log_completions": False,
        "disable_dropout": True,
    }


def use_cpu(cfg: RunConfig) -> bool:
    """TRL's models on the CPU unless train.device resolves to a GPU (accelerate's; CUDA_VISIBLE_DEVICES
    picks it), as baselines/trl_ppo.py places them."""
    device = cfg.train.device
    if device == "cpu":
        return True
    from harness.devices import resolve

    return resolve(device).type == "cpu"


def device_refused(c: RunConfig) -> bool:
    """accelerate places TRL's models on cpu or cuda:0 only (baselines/trl_ppo.py's rule)."""
    return c.train.device not in ("auto", "cpu", "cuda", "cuda:0")


DEVICE_WHY = "accelerate places TRL's models on cpu or cuda:0; pin another GPU with CUDA_VISIBLE_DEVICES or sweep --devices"


def kl_on(c: RunConfig) -> bool:
    return c.kl.coef > 0


def kl_refusals(placement: tuple[str, str], estimator: tuple[str, str]) -> Refusals:
    """The KL rows: with kl.coef > 0, kl.placement / kl.estimator other than the trainer's (value, why)."""
    (where, where_why), (est, est_why) = placement, estimator
    return {
        "kl.placement": (lambda c: kl_on(c) and c.kl.placement != where, where_why),
        "kl.estimator": (lambda c: kl_on(c) and c.kl.estimator != est, est_why),
    }


# Trainer.train(resume_from_checkpoint) restores weights, optimiser and RNGs but not the harness's recorder
# (metric history, evaluations) nor its reward adapter: a resumed run would not repeat the uninterrupted one
CHECKPOINT_WHY = ("a resumed TRL Trainer restores its weights and optimiser, not the harness's recorder and reward "
                  "state, so its metrics would not equal an uninterrupted run's (the custom core checkpoints)")


def group_refusals(name: str, own: Refusals, *, entropy_why: str, early_stop_by: str) -> Refusals:
    """A group trainer's REFUSED table, checked in this order: the sequence-level advantage, the trainer's
    ``own`` rows, then the fixed beta, the entropy bonus (``entropy_why``), the approx-KL early stop and the
    device. ``name`` ("GRPO", "RLOO") and ``early_stop_by`` (who has no early stop) fill the messages."""
    return {
        "advantage.level": (lambda c: c.advantage.level != "sequence", f"{name}'s advantages are sequence level"),
        **own,
        "kl.target": (lambda c: c.kl.target is not None, f"{name}'s beta is fixed (no adaptive controller)"),
        "ppo.entropy_coef": (lambda c: c.ppo.entropy_coef > 0, entropy_why),
        "ppo.target_kl": (lambda c: c.ppo.target_kl is not None, f"{early_stop_by} has no early stop on approx KL"),
        "train.device": (device_refused, DEVICE_WHY),
        "train.dtype": (fp16_on_cpu, FP16_WHY),
        **menu_refusals(f"{name}Trainer"),
        "train.checkpoint_every": (lambda c: c.train.checkpoint_every > 0, CHECKPOINT_WHY),
        "rollout.min_new_tokens": (lambda c: c.rollout.min_new_tokens > 0,
                                   f"{name}'s generation config has no minimum length here"),
        "rollout.stop": (lambda c: bool(c.rollout.stop), f"{name}'s generation here has no stop strings"),
        "model.lora.r": (lambda c: c.model.lora.r > 0, "the harness does not hand TRL a peft_config (LoRA: impl=custom)"),
        "ppo.micro_batch_size": (lambda c: c.ppo.micro_batch_size is not None,
                                 "its gradient accumulation averages micro-batches (not wired to this key)"),
        "task.chat_template": (lambda c: c.task.chat_template,
                               "the harness hands TRL plain-text prompts (its conversational format is not wired)"),
    }


# what neither trainer logs (accepted, not faked)
GROUP_ABSENT = (*VARIANCE_KEYS, "policy/approxkl_avg", "policy/dualclip_frac", "loss/value_avg", "val/clipfrac_avg",
                "val/explained_var", "adv/mean", "adv/std", "grad/value_norm")


def make_policy_optimizer(cfg: RunConfig, policy) -> tuple[ClippedAdam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam over the policy, gradient clipped in step(), LR decayed per harness iteration.

    The Trainer steps the scheduler once per optimiser step; step s belongs to iteration
    s // (epochs * minibatches), so the factor is the custom core's ``lr_schedule`` of it."""
    groups = [[p for p in policy.parameters() if p.requires_grad]]
    opt_ = ClippedAdam(groups, lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps, max_grad_norm=cfg.ppo.max_grad_norm)
    per_it = cfg.ppo.epochs * cfg.ppo.minibatches
    decay = lr_schedule(cfg)
    return opt_, torch.optim.lr_scheduler.LambdaLR(opt_, lambda s: decay(s // per_it))


def prompt_dataset(prompts, min_prompts: int):
    """A datasets.Dataset with a ``prompt`` column (plain strings), repeated to hold ``min_prompts``."""
    from datasets import Dataset

    reps = max(1, math.ceil(min_prompts / len(prompts)))
    return Dataset.from_dict({"prompt": list(prompts) * reps})


@dataclass
class GroupBatch(ScoredBatch):
    """ScoredBatch plus the optimised scores TRL received (TRL logs only their mean per step)."""

    scored: list[float] = field(default_factory=list)


class HarnessReward:
    """TRL's reward function: the harness's optimised score of each completion, recorded.

    models: harness.warmstart.load.Models (tokenizer, task, reward, reward_fn). T: the response
    length. penalty: train.missing_eos_penalty, or None when it must not be applied
    (train.truncated=mask: TRL masks those completions instead, their scores unchanged).
    """

    __name__ = "harness"  # TRL names reward functions by __name__ (rewards/harness/mean)

    def __init__(self, models, T: int, penalty: float | None):
        self.models, self.T, self.penalty = models, T, penalty
        self.tok = models.tokenizer
        self.record = GroupBatch()

    def drain(self) -> GroupBatch:
        rec, self.record = self.record, GroupBatch()
        return rec

    def tensors(self, prompts: list[str], completion_ids: list[list[int]]):
        """(prompt_ids (B, P) left-padded, prompt_mask, response ids (B, T), mask (B, T), has_eos (B,))."""
        pad, eos = self.tok.pad_token_id, self.tok.eos_token_id
        p_ids = [self.tok.encode(p, add_special_tokens=False) for p in prompts]
        P = max(len(p) for p in p_ids)
        prompt = torch.tensor([[pad] * (P - len(p)) + p for p in p_ids])
        prompt_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in p_ids])
        c_ids = [list(c)[: self.T] for c in completion_ids]  # TRL cut them after the first EOS
        resp = torch.tensor([c + [pad] * (self.T - len(c)) for c in c_ids]).reshape(len(c_ids), self.T)
        mask = torch.tensor([[1.0] * len(c) + [0.0] * (self.T - len(c)) for c in c_ids]).reshape(len(c_ids), self.T)
        has_eos = torch.tensor([bool(c) and c[-1] == eos for c in c_ids])
        return prompt, prompt_mask, resp, mask, has_eos

    @torch.no_grad()
    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        from harness.lm.forward import sequence_scores
        from harness.lm.sampling import decode

        m = self.models
        prompt, prompt_mask, resp, mask, has_eos = self.tensors(list(prompts), completion_ids)
        texts = decode(self.tok, resp, mask, self.tok.eos_token_id)
        gold = torch.tensor(m.task.gold(list(prompts), texts, has_eos.tolist()), dtype=torch.float32)
        if m.reward_fn is not None:
            scores = torch.tensor(m.reward_fn(list(prompts), texts, has_eos.tolist()), dtype=torch.float32)
        elif m.reward is not None:
            scores = sequence_scores(m.reward, prompt, prompt_mask, resp, mask)
        else:
            scores = gold.clone()
        scores = M.missing_eos_score(scores, has_eos, self.penalty)  # REPLACED, as the custom core
        rec = self.record
        rec.gold += gold.tolist()
        rec.lengths += mask.sum(1).tolist()
        rec.has_eos += has_eos.tolist()
        rec.samples += list(zip(prompts, texts, strict=True))
        rec.scored += scores.tolist()
        rec.scored_at = time.perf_counter()
        return scores.tolist()


def batch_metrics(rec, t_start: float, t_end: float) -> dict[str, float]:
    """What the reward function saw in one iteration, under the schema's keys."""
    if rec.empty:
        return {}
    tokens = sum(rec.lengths)
    m = {
        "objective/scores": sum(rec.scored) / len(rec.scored),
        "objective/gold": sum(rec.gold) / len(rec.gold),
        "response/length": tokens / len(rec.lengths),
        "response/eos_frac": sum(rec.has_eos) / len(rec.has_eos),
        "perf/tokens_per_s": tokens / (t_end - t_start),
    }
    if rec.scored_at is not None:
        m["perf/rollout_s"] = rec.scored_at - t_start
        m["perf/update_s"] = t_end - rec.scored_at
    return m


def mean_of(logs: list[dict], key: str) -> float | None:
    vals = [float(d[key]) for d in logs if d.get(key) is not None and not math.isnan(float(d[key]))]
    return sum(vals) / len(vals) if vals else None


# TRL's logged keys both trainers log -> schema keys, the mean over the iteration's optimiser steps
TRL_KEYS = {
    "loss": "loss/policy_avg",
    "clip_ratio/region_mean": "policy/clipfrac_avg",
    "clip_ratio/low_mean": "policy/clipfrac_low",
    "clip_ratio/high_mean": "policy/clipfrac_high",
}


def logged_means(logs: list[dict], batch: dict[str, float], keys: dict[str, str],
                 kl_logs: list[dict] | None = None) -> dict[str, float]:
    """``keys`` (TRL's logged key -> schema key) averaged over ``logs``, schema keys only; and objective/kl:
    TRL's per-token ``kl`` averaged over ``kl_logs`` (default ``logs``) times the batch's mean response
    length (per token -> per completion)."""
    from harness.schema import METRICS

    m = {ours: v for theirs, ours in keys.items() if ours in METRICS and (v := mean_of(logs, theirs)) is not None}
    if (kl := mean_of(logs if kl_logs is None else kl_logs, "kl")) is not None and "response/length" in batch:
        m["objective/kl"] = kl * batch["response/length"]
    return m


def group_callback(cfg: RunConfig, reward: HarnessReward, optimizer: ClippedAdam, recorder,
                   metrics: Callable[[list[dict], dict[str, float]], dict[str, float]]):
    """The harness TrainerCallback: every epochs x minibatches optimiser steps (one generation batch)
    make one harness iteration; ``metrics(logs, batch)`` maps that iteration's TRL logs (one dict per
    optimiser step, in order) and the reward function's batch metrics to schema keys."""
    from transformers import TrainerCallback

    per_it = cfg.ppo.epochs * cfg.ppo.minibatches

    class HarnessCallback(TrainerCallback):
        def __init__(self):
            self.logs: list[dict] = []
            self.t_start = time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            recorder.begin()
            reward.drain()
            optimizer.norms.clear()
            self.t_start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "train_runtime" in logs:  # the Trainer's closing summary
                return
            self.logs.append(dict(logs))
            if state.global_step % per_it:
                return
            t_end = time.perf_counter()
            it = state.global_step // per_it
            batch = batch_metrics(reward.drain(), self.t_start, t_end)
            m = {**batch, **metrics(self.logs, batch)}
            m["objective/kl_coef"] = float(cfg.kl.coef)
            m["episodes"] = float(it * cfg.rollout.batch_size)
            if optimizer.norms:
                m["grad/norm"] = sum(optimizer.norms) / len(optimizer.norms)
                optimizer.norms.clear()
            if "objective/kl" in m and "objective/scores" in m:
                m["objective/rlhf_reward"] = m["objective/scores"] - cfg.kl.coef * m["objective/kl"]
            self.logs = []
            recorder.step(it, m, seconds=t_end - self.t_start)
            self.t_start = time.perf_counter()  # evaluation and logging stay out of the next timing

    return HarnessCallback()


def set_up(cfg: RunConfig, logger, check, absent, trainer: str) -> None:
    """Before the models load: refuse what TRL cannot express, quiet the hub and TRL, tag what this run
    cannot log."""
    check(cfg)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    logging.getLogger("trl").setLevel(logging.ERROR)
    tags = {"trl.absent_metrics": ",".join(absent)}
    if cfg.probe.every:
        tags["trl.probe"] = f"probe.every is set but the gradient-variance probe cannot run inside {trainer}: not logged"
    logger.set_tags(tags)


def run_trainer(trainer_cls, args, models, reward, optimizers, callback) -> None:
    """A TRL group trainer on the harness models, run to the end with its own loop (its printing muted)."""
    task = models.task
    k = args.num_generations
    with warnings.catch_warnings():
        # transformers 5 reads its own deprecated is_gradient_checkpointing inside Trainer
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        _train(trainer_cls, args, models, reward, optimizers, callback, task, k)


def _train(trainer_cls, args, models, reward, optimizers, callback, task, k: int) -> None:
    from transformers import PrinterCallback, ProgressCallback

    trainer = trainer_cls(
        model=models.policy,
        reward_funcs=[reward],
        args=args,
        train_dataset=prompt_dataset(task.train_prompts, args.generation_batch_size // k),
        processing_class=models.tokenizer,
        callbacks=[callback],
        optimizers=optimizers,
    )
    for cb in (ProgressCallback, PrinterCallback):  # the harness has its own progress display
        trainer.remove_callback(cb)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()


def train_group(cfg: RunConfig, models, rec, *, name: str, trainer: str, make_args, metrics) -> None:
    """``impl=trl-grpo`` / ``trl-rloo``: TRL's ``trainer`` on the run's ``models``, recorded by ``rec``."""
    from transformers import set_seed

    tok, task = models.tokenizer, models.task
    if tok.pad_token_id == tok.eos_token_id:
        raise TrainerNotExpressible("model.policy", cfg.model.policy, "its tokenizer pads with EOS", trainer)
    T = response_length(cfg, task)
    set_seed(cfg.seed)
    masked = cfg.train.truncated == "mask"
    reward = HarnessReward(models, T, None if masked else cfg.train.missing_eos_penalty)
    models.policy.generation_config.pad_token_id = tok.pad_token_id
    models.policy.generation_config.eos_token_id = tok.eos_token_id
    optimizer, scheduler = make_policy_optimizer(cfg, models.policy)
    callback = group_callback(cfg, reward, optimizer, rec, lambda logs, batch: metrics(cfg, logs, batch))
    trainer_cls = getattr(importlib.import_module("trl"), trainer)
    with tempfile.TemporaryDirectory(prefix=f"ppo-harness-{name}-") as out_dir:
        run_trainer(trainer_cls, make_args(cfg, T, out_dir), models, reward, (optimizer, scheduler), callback)
