"""TRL's own PPOTrainer (``trl.experimental.ppo``) on a RunConfig: same task, models, seed, metric names.

``check_expressible(cfg)`` refuses, before anything starts, every key TRL cannot express
(one-line ValueError naming it); ``trl_args(cfg, ...)`` maps every key it can; ``train`` (the
``impl=trl`` entry of ``harness.impls.IMPLEMENTATIONS``) runs TRL's unmodified training loop on the
run's models, evaluation and logging driven by the run's ``harness.recording.Recorder`` (both handed in
by ``harness.run``).

Key mapping (RunConfig -> PPOConfig / PPOTrainer argument):

    ppo.clip_eps -> cliprange            kl.coef -> kl_coef        kl.estimator k1|k3 -> kl_estimator
    ppo.epochs -> num_ppo_epochs         ppo.minibatches -> num_mini_batches
    rollout.batch_size -> per_device_train_batch_size (gradient_accumulation_steps=1) and
                          local_rollout_forward_batch_size (one rollout chunk, as the custom core)
    train.iterations -> total_episodes = iterations * batch_size
    ppo.lr -> learning_rate              ppo.vf_coef -> vf_coef
    ppo.value_clip -> cliprange_value (null -> inf: clamp is then the identity, the loss unclipped)
    advantage.gamma / advantage.lam -> gamma / lam        task.response_length -> response_length
    rollout.temperature -> temperature   stop token = EOS (stop_token="eos")
    rollout.group_size -> the collator keeps B/k prompts of each batch and repeats each k times
    seed -> seed (+ transformers.set_seed: TRL shuffles minibatches with numpy's global RNG)
    ppo.adam_eps / ppo.lr_decay / ppo.max_grad_norm -> the optimizer and scheduler handed to
        PPOTrainer(optimizers=...): Adam(eps), linear decay to 0 per iteration, and the policy's and
        value's gradient norms clipped apart inside step(); PPOTrainer.train() itself never clips.
    train.missing_eos_penalty -> applied by the reward model (baselines/trl_reward.py) with the
        custom core's REPLACE semantics; TRL's own missing_eos_penalty (which SUBTRACTS) stays unset.
    model.reward=gold -> the gold reward wrapped as a module TRL's get_reward accepts.
    train.dtype=bf16 -> PPOConfig(bf16=True): accelerate's bf16 autocast around TRL's forwards;
        fp16 -> fp16=True on a GPU (accelerate's autocast and GradScaler, which unscales before
        ClippedAdam clips); refused on the CPU (accelerate would run it in fp32).

Refused (TRL has no equivalent): advantage.level=sequence, advantage.whiten=false (TRL always
whitens advantages), kl.estimator=k2, kl.placement=loss, kl.target (adaptive KL), loss.agg other
than token-mean, ppo.entropy_coef > 0, ppo.target_kl, model.value_trunk=shared, ppo.ratio_level other
than token, ppo.clip_eps_high, ppo.dual_clip, train.truncated=mask (k1+ / k3+ and the new loss.agg modes
fall under kl.estimator and loss.agg), train.device=cuda:N with N > 0 or mps (accelerate places the
models; train.device=cuda / cuda:0 / auto -> use_cpu=False, the GPU CUDA_VISIBLE_DEVICES shows first).

Accepted with metrics absent (not faked): probe.every > 0 (the gradient-variance probe cannot run
inside TRL's loop: none of harness.schema.PROBE_KEYS is logged), and
val/explained_var, adv/mean, adv/std (TRL does not expose advantages or returns).

Known differences inside TRL's loop (documented, not patched; see tests/parity/test_trl_ppo_parity.py):
- the score goes on the token AFTER EOS (``actual_end = sequence_lengths + 1`` when it fits) and
  the value of that post-EOS state is bootstrapped and regressed; the custom core puts the score
  on EOS and treats the state after it as terminal. With gamma=1 the EOS-token advantage differs
  by (1 - lam) * (V_post_eos - score), 0 once the value head predicts the score there.
- policy/approxkl_avg averages over all T positions (padding contributes 0), not the masked mean.
- objective/entropy: TRL logs the summed sampled -logprob per sequence; it is divided here by the
  mean response length to give the per-token entropy estimate the schema means.
- generation stops at the pad token too (TRL truncates at the first pad); the custom core only at EOS.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable

import torch

from baselines.trl_menu import menu_refusals
from harness.config import RunConfig, response_length
from harness.devices import resolve as resolve_device
from harness.errors import InputError
from harness.fast.flat import clip_norm_
from harness.ppo.kl_estimators import KL_ESTIMATORS
from harness.ppo.schedules import lr_schedule, scheduler_kind
from harness.recording import Recorder
from harness.schema import PROBE_KEYS as VARIANCE_KEYS

__all__ = [
    "ABSENT", "FP16_WHY", "REFUSED", "ClippedAdam", "NotExpressible", "check_expressible", "fp16_on_cpu",
    "group_collator", "make_optimizer", "precision_args", "prompt_dataset", "train", "trl_args",
]

# accelerate on the CPU with mixed_precision=fp16 sets up neither autocast nor a GradScaler: the run would be fp32
FP16_WHY = "accelerate runs fp16 on the CPU with neither autocast nor loss scaling (it would train in fp32); use bf16 or a GPU"


def fp16_on_cpu(c: RunConfig) -> bool:
    return c.train.dtype == "fp16" and resolve_device(c.train.device).type == "cpu"


def precision_args(c: RunConfig) -> dict[str, bool]:
    """TrainingArguments' bf16 / fp16 of ``train.dtype`` (fp32: both off; TRL's configs default bf16 on)."""
    return {"bf16": c.train.dtype == "bf16", "fp16": c.train.dtype == "fp16"}


# key -> (is it refused?, why), checked in this order
REFUSED: dict[str, tuple[Callable[[RunConfig], bool], str]] = {
    "advantage.level": (lambda c: c.advantage.level != "token", "TRL's PPO is token level (GAE) only"),
    "advantage.whiten": (lambda c: not c.advantage.whiten, "TRL always whitens advantages"),
    "kl.estimator": (lambda c: KL_ESTIMATORS[c.kl.estimator].trl is None,
                     f"TRL offers {' and '.join(e.trl for e in KL_ESTIMATORS.values() if e.trl)} only"),
    "kl.placement": (lambda c: c.kl.placement != "reward", "TRL puts the KL penalty in the reward"),
    "kl.target": (lambda c: c.kl.target is not None, "TRL's kl_coef is fixed (no adaptive controller)"),
    "loss.agg": (lambda c: c.loss.agg != "token-mean", "TRL's losses are token means"),
    "ppo.entropy_coef": (lambda c: c.ppo.entropy_coef > 0, "TRL has no entropy bonus"),
    "ppo.target_kl": (lambda c: c.ppo.target_kl is not None, "TRL has no early stop on approx KL"),
    "model.value_trunk": (lambda c: c.model.value_trunk != "separate", "TRL's PPO takes a separate value model"),
    "train.device": (lambda c: c.train.device not in ("auto", "cpu", "cuda", "cuda:0"),
                     "accelerate places TRL's models on cpu or cuda:0; pin another GPU with CUDA_VISIBLE_DEVICES "
                     "or sweep --devices"),
    # the ratio, clip and aggregation keys (loss.norm_length needs loss.agg=seq-mean-token-sum-norm, refused above by loss.agg)
    "ppo.ratio_level": (lambda c: c.ppo.ratio_level != "token", "TRL's PPO ratio is token level only"),
    "ppo.clip_eps_high": (lambda c: c.ppo.clip_eps_high is not None, "TRL's PPO clip range is symmetric (cliprange)"),
    "ppo.dual_clip": (lambda c: c.ppo.dual_clip is not None, "TRL's PPO has no dual clip"),
    "train.truncated": (lambda c: c.train.truncated != "penalty", "TRL's PPO has no masking of truncated completions"),
    "train.dtype": (fp16_on_cpu, FP16_WHY),
    **menu_refusals("PPOTrainer"),
    "rollout.top_k": (lambda c: c.rollout.top_k > 0, "PPOTrainer samples the full distribution (top_k=0)"),
    "rollout.top_p": (lambda c: c.rollout.top_p < 1.0, "PPOTrainer samples the full distribution (top_p=1)"),
    "rollout.min_new_tokens": (lambda c: c.rollout.min_new_tokens > 0, "PPOTrainer has no minimum response length"),
    "rollout.stop": (lambda c: bool(c.rollout.stop), "PPOTrainer stops at EOS only (stop_token)"),
    "model.lora.r": (lambda c: c.model.lora.r > 0, "the harness does not hand TRL a peft_config (LoRA: impl=custom)"),
    "ppo.micro_batch_size": (lambda c: c.ppo.micro_batch_size is not None,
                             "PPOTrainer's gradient accumulation is not wired to this key"),
    "task.chat_template": (lambda c: c.task.chat_template, "PPOTrainer takes tokenized prompts as given"),
    "train.checkpoint_every": (lambda c: c.train.checkpoint_every > 0,
                               "TRL's PPOTrainer.train() cannot resume from a checkpoint (the custom core checkpoints)"),
}

# schema keys TRL's statistics map to (harness/schema.py): TRL key -> harness key
_TRL_KEYS = {
    "objective/scores": "objective/scores",
    "objective/kl": "objective/kl",
    "objective/rlhf_reward": "objective/rlhf_reward",
    "policy/approxkl_avg": "policy/approxkl_avg",
    "policy/clipfrac_avg": "policy/clipfrac_avg",
    "loss/policy_avg": "loss/policy_avg",
    "loss/value_avg": "loss/value_avg",
    "val/clipfrac_avg": "val/clipfrac_avg",
}
ABSENT = (*VARIANCE_KEYS, "val/explained_var", "adv/mean", "adv/std")


class NotExpressible(InputError):
    """A config value TRL's PPOTrainer cannot express; the message is one line naming the key."""

    def __init__(self, key: str, value, why: str):
        super().__init__(f"config key '{key}': {value!r} cannot be expressed by TRL's PPOTrainer ({why})")
        self.key = key


def _value(cfg: RunConfig, key: str):
    return cfg.flat()[key]


def check_expressible(cfg: RunConfig) -> None:
    """Raise NotExpressible (a ValueError) for the first key TRL's PPOTrainer cannot express."""
    for key, (refused, why) in REFUSED.items():
        if refused(cfg):
            raise NotExpressible(key, _value(cfg, key), why)


def trl_args(cfg: RunConfig, response_length: int, output_dir: str):
    """The PPOConfig equivalent to ``cfg`` (after check_expressible). CPU, no hub, no reporting."""
    from trl.experimental.ppo import PPOConfig

    B = cfg.rollout.batch_size
    return PPOConfig(
        output_dir=output_dir,
        seed=cfg.seed,
        use_cpu=resolve_device(cfg.train.device).type == "cpu",  # else accelerate's GPU (CUDA_VISIBLE_DEVICES picks it)
        **precision_args(cfg),  # PPOConfig defaults to bf16 autocast; the harness to fp32
        activation_checkpointing=cfg.train.gradient_checkpointing,  # PPOConfig default True; the harness's False
        report_to=[],
        push_to_hub=False,
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        num_sample_generations=0,  # its debug generations would call the reward model off-loop
        dataloader_num_workers=0,
        # batch geometry: one rollout of B, split into ppo.minibatches optimizer steps per epoch
        per_device_train_batch_size=B,
        gradient_accumulation_steps=1,
        local_rollout_forward_batch_size=B,
        num_mini_batches=cfg.ppo.minibatches,
        num_ppo_epochs=cfg.ppo.epochs,
        total_episodes=cfg.train.iterations * B,
        # sampling
        response_length=response_length,
        temperature=cfg.rollout.temperature,
        stop_token="eos",
        missing_eos_penalty=None,  # applied by RewardAdapter with the custom core's semantics
        # PPO
        learning_rate=cfg.ppo.lr,
        adam_epsilon=cfg.ppo.adam_eps,
        weight_decay=0.0,
        max_grad_norm=cfg.ppo.max_grad_norm if cfg.ppo.max_grad_norm is not None else 0.0,
        lr_scheduler_type=scheduler_kind(cfg.ppo.lr_scheduler_type, cfg.ppo.lr_decay),  # the one handed in
        warmup_steps=0,
        cliprange=cfg.ppo.clip_eps,
        cliprange_value=cfg.ppo.value_clip if cfg.ppo.value_clip is not None else math.inf,
        vf_coef=cfg.ppo.vf_coef,
        kl_coef=cfg.kl.coef,
        kl_estimator=KL_ESTIMATORS[cfg.kl.estimator].trl,
        gamma=cfg.advantage.gamma,
        lam=cfg.advantage.lam,
        whiten_rewards=False,
    )


class ClippedAdam(torch.optim.Adam):
    """torch Adam whose step() first clips each parameter group's gradient norm apart and records them.

    Handed to PPOTrainer(optimizers=...): its loop calls backward(); optimizer.step() with no
    clipping of its own. Same optimizer as the custom core's init_state (Adam, eps, no decay),
    and the same clipping rule: the policy's and the value model's gradients are clipped
    separately (group 0 = policy -> grad/norm, group 1 = value -> grad/value_norm), so the
    value gradient never eats the policy's clipping budget.
    """

    def __init__(self, groups: list[list[torch.nn.Parameter]], lr: float, eps: float, max_grad_norm: float | None):
        super().__init__([{"params": list(g)} for g in groups], lr=lr, eps=eps)
        self.max_grad_norm = max_grad_norm
        self.norms: list[float] = []  # the policy's, before clipping
        self.value_norms: list[float] = []

    def step(self, closure=None):
        norms = []
        for g in self.param_groups:
            grads = [p.grad for p in g["params"] if p.grad is not None]
            norms.append(float(clip_norm_(grads, self.max_grad_norm)) if grads else 0.0)
        self.norms.append(norms[0])
        if len(norms) > 1:
            self.value_norms.append(norms[1])
        return super().step(closure)


def make_optimizer(cfg: RunConfig, policy, value) -> tuple[ClippedAdam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam over policy + value parameters and the per-iteration LR schedule of the custom core."""
    groups = [[p for p in policy.parameters() if p.requires_grad], [p for p in value.parameters() if p.requires_grad]]
    opt = ClippedAdam(groups, lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps, max_grad_norm=cfg.ppo.max_grad_norm)
    # the custom core's per-iteration schedule (default lr_i = lr * (1 - i / n)); TRL steps it once per iteration
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg))


def prompt_dataset(tokenizer, prompts, min_rows: int):
    """A datasets.Dataset of tokenized prompts, repeated until it holds a full batch (drop_last)."""
    from datasets import Dataset

    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    reps = max(1, math.ceil(min_rows / len(ids)))
    return Dataset.from_dict({"input_ids": ids * reps})


def group_collator(tokenizer, prompt_width: int, group_size: int):
    """Left-pad every batch to ``prompt_width``; with group_size k keep B/k prompts, each k times.

    The custom core samples B/k prompts and k completions of each (contiguous); token-level PPO
    does not use the groups, but the batch's prompt mix is the same this way.
    """
    from transformers import DataCollatorWithPadding

    pad = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=prompt_width)

    def collate(features):
        if group_size > 1:
            features = [f for f in features[: len(features) // group_size] for _ in range(group_size)]
        return pad(features)

    return collate


def _iteration_metrics(cfg: RunConfig, logs: dict, rec, opt: ClippedAdam, episode: int,
                       t_start: float, t_end: float) -> dict[str, float]:
    """One TRL iteration's statistics under the schema's keys (harness/schema.py).

    logs: TRL's logged statistics; rec: what the reward model saw (``ScoredBatch``); opt: the
    optimizer's recorded pre-clip gradient norms (cleared here); t_start / t_end: the iteration.
    """
    m = {ours: float(logs[theirs]) for theirs, ours in _TRL_KEYS.items() if theirs in logs}
    m["objective/kl_coef"] = float(cfg.kl.coef)
    m["episodes"] = float(episode)
    if opt.norms:
        m["grad/norm"] = sum(opt.norms) / len(opt.norms)
        opt.norms.clear()
    if opt.value_norms:
        m["grad/value_norm"] = sum(opt.value_norms) / len(opt.value_norms)
        opt.value_norms.clear()
    if not rec.empty:
        tokens = sum(rec.lengths)
        mean_len = tokens / len(rec.lengths)
        m["objective/gold"] = sum(rec.gold) / len(rec.gold)
        m["response/length"] = mean_len
        m["response/eos_frac"] = sum(rec.has_eos) / len(rec.has_eos)
        if "objective/entropy" in logs and mean_len > 0:
            # TRL: mean over sequences of sum_t -logp_t; per token: divide by the mean length
            m["objective/entropy"] = float(logs["objective/entropy"]) / mean_len
        m["perf/tokens_per_s"] = tokens / (t_end - t_start)
        if rec.scored_at is not None:
            m["perf/rollout_s"] = rec.scored_at - t_start
            m["perf/update_s"] = t_end - rec.scored_at
    return m


def _trl_callback(**kw):
    """The harness TrainerCallback (a factory so transformers is imported lazily)."""
    from transformers import TrainerCallback

    class HarnessCallback(TrainerCallback):
        """TRL's iterations into the harness Recorder: TRL stats -> schema keys, perf timing, evaluation
        at 0 / every eval.every / the last, logging, progress, on_eval."""

        def __init__(self, cfg: RunConfig, reward, optimizer: ClippedAdam, recorder: Recorder):
            self.cfg, self.reward, self.opt, self.rec = cfg, reward, optimizer, recorder
            self.trl_logs: dict[str, float] = {}
            self.t_start = time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.rec.begin()
            self.reward.drain()  # iteration 1 starts with an empty record
            self.opt.norms.clear()
            self.opt.value_norms.clear()
            self.t_start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.trl_logs = dict(logs or {})

        def on_step_end(self, args, state, control, **kwargs):
            t_end = time.perf_counter()
            logs, self.trl_logs = self.trl_logs, {}
            m = _iteration_metrics(self.cfg, logs, self.reward.drain(), self.opt, state.episode, self.t_start, t_end)
            self.rec.step(state.global_step, m, seconds=t_end - self.t_start)
            self.t_start = time.perf_counter()  # evaluation and logging stay out of the next timing

    return HarnessCallback(**kw)


def set_up(cfg: RunConfig, logger) -> None:
    """Before the models load: refuse what TRL cannot express, quiet the hub, tag what this run cannot log."""
    check_expressible(cfg)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we pin the TRL release that ships it
    tags = {"trl.absent_metrics": ",".join(ABSENT)}
    if cfg.probe.every:
        tags["trl.probe"] = "probe.every is set but the gradient-variance probe cannot run inside TRL: not logged"
    logger.set_tags(tags)


def _run_trainer(cfg: RunConfig, models, reward, optimizers, callback, T: int, P: int) -> None:
    """TRL's PPOTrainer on the harness models, run to the end with its own loop (its printing muted)."""
    from transformers import PrinterCallback, ProgressCallback
    from trl.experimental.ppo import PPOTrainer

    tok, task = models.tokenizer, models.task
    with tempfile.TemporaryDirectory(prefix="ppo-harness-trl-") as out_dir, warnings.catch_warnings():
        # PolicyAndValueWrapper reads the deprecated is_gradient_checkpointing (transformers 5)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        trainer = PPOTrainer(
            args=trl_args(cfg, T, out_dir),
            processing_class=tok,
            model=models.policy,
            ref_model=models.ref,
            reward_model=reward,
            train_dataset=prompt_dataset(tok, task.train_prompts, cfg.rollout.batch_size),
            value_model=models.value,
            data_collator=group_collator(tok, P, cfg.rollout.group_size),
            optimizers=optimizers,
            callbacks=[callback],
        )
        for cb in (ProgressCallback, PrinterCallback):  # the harness has its own progress display
            trainer.remove_callback(cb)
        with contextlib.redirect_stdout(io.StringIO()):  # TRL prints "===training policy==="
            trainer.train()


def train(cfg: RunConfig, models, rec: Recorder) -> None:
    """``impl=trl``: train ``cfg`` with TRL's PPOTrainer on the run's ``models``, recorded by ``rec``."""
    from transformers import set_seed

    from baselines.trl_reward import RewardAdapter

    tok, task = models.tokenizer, models.task
    if tok.pad_token_id == tok.eos_token_id:
        raise NotExpressible("model.policy", cfg.model.policy, "its tokenizer pads with EOS; TRL would drop EOS "
                             "from the response mask")
    T = response_length(cfg, models.task)
    P = max(len(tok.encode(p, add_special_tokens=False)) for p in task.train_prompts)
    set_seed(cfg.seed)  # python, numpy (TRL's minibatch permutations) and torch
    reward = RewardAdapter(models.reward, tok, task.gold, P, cfg.train.missing_eos_penalty, task.train_prompts,
                           reward_fn=models.reward_fn)
    models.policy.generation_config.pad_token_id = tok.pad_token_id
    optimizer, scheduler = make_optimizer(cfg, models.policy, models.value)
    callback = _trl_callback(cfg=cfg, reward=reward, optimizer=optimizer, recorder=rec)
    _run_trainer(cfg, models, reward, (optimizer, scheduler), callback, T, P)
