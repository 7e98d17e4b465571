"""The PPO loop, readable top to bottom. No MLflow calls, no CLI, no files of its own.

``PPOState`` holds what persists across iterations; ``ppo_iteration`` runs the seven steps of
README.md once and returns a flat metrics dict; ``train`` is ``impl=custom``: state, then
``train.iterations`` iterations on the run's models, recorded by its ``Recorder`` (``harness.run``
loads the models and owns the run around it).

Where each piece lives: the math (rewards, returns, GAE, baselines, losses) in
``harness.algos.math``, the KL coefficient's controller in ``harness.algos.kl_control``, the epochs x
minibatches update in ``harness.ppo.update``, the gradient-noise probe in ``harness.ppo.variance``,
sampling and scoring (steps 1-3) in ``harness.lm.rollout``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from harness import dist
from harness.algos import kl_control
from harness.algos import math as M
from harness.algos.estimators import BASELINES
from harness.algos.scaler import LossScaler
from harness.algos.schedules import lr_schedule
from harness.checkpoint import Checkpoints
from harness.config import RunConfig, response_length
from harness.fast.flat import FlatParams
from harness.lm.rollout import Rollout, ScoreFn, collect
from harness.lm.sampling import generation_options
from harness.models.types import Models, SharedTrunkValue
from harness.ppo import rollouts as R
from harness.ppo.update import (
    Batch,
    NonFiniteError,
    SideThread,
    UpdateStats,
    autocast,
    check,
    loss_mode_kwargs,
    policy_loss_kwargs,
    update,
)
from harness.ppo.variance import probe_generator, probe_gradient_variance
from harness.recording import Recorder
from harness.shard import ShardedParams, shard

__all__ = ["NonFiniteError", "PPOState", "init_state", "learn", "ppo_iteration", "train"]


@dataclass
class PPOState:
    iteration: int
    kl_coef: float
    episodes: int
    rng: random.Random  # prompt sampling
    generator: torch.Generator  # token sampling and minibatch shuffles
    probe_generator: torch.Generator  # the noise probe's splits only: the probe never moves training
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: FlatParams | ShardedParams  # policy + value parameters: flat buffers, or FSDP's shards
    side: SideThread = field(default_factory=SideThread)  # the value model's thread in the update
    scaler: LossScaler = field(default_factory=lambda: LossScaler(enabled=False))  # train.dtype=fp16's loss scale
    behaviour: R.Behaviour | None = None  # the sampler of rollout.staleness > 0 (created on first use)
    world: dist.World = field(default_factory=dist.World)  # the ranks of the run (harness/dist.py)

    def close(self) -> None:
        """Release what the state holds beyond tensors (the update's side thread)."""
        self.side.close()


def init_state(cfg: RunConfig, models: Models, world: dist.World | None = None) -> PPOState:
    """The state of iteration 0. Over N ranks (``world``): every rank starts from rank 0's weights, and
    samples from generators of its own seed (``dist.rank_seed``: the run's seed on rank 0)."""
    w = world or dist.World()
    torch.manual_seed(cfg.seed)
    params = _sharded_params(cfg, models, w) if cfg.train.parallel == "fsdp" else _flat_params(models, w)
    # Adam eps 1e-5 (cleanRL; N implementation details: the eps matters for early approx-KL).
    # The fused kernel is the same update in one pass (4x faster on CPU than the per-tensor loop).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params.flat)
    opt = torch.optim.Adam(params.flat, lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps, fused=fused or None)
    # default: linear decay to 0 over the run (cleanRL anneal_lr): lr_i = lr * (1 - i / n)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg))  # ppo.lr_scheduler_type, or ppo.lr_decay
    seed = dist.rank_seed(cfg.seed, w.rank)
    return PPOState(
        iteration=0,
        kl_coef=cfg.kl.coef,
        episodes=0,
        rng=random.Random(seed),
        generator=torch.Generator(device=models.device).manual_seed(seed),  # sampling happens on the device
        probe_generator=probe_generator(cfg.seed),
        optimizer=opt,
        scheduler=sched,
        params=params,
        scaler=LossScaler(enabled=cfg.train.dtype == "fp16"),
        world=w,
    )


def _trainable(models: Models) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(the policy's trainable parameters, the value model's or the shared-trunk head's)."""
    policy = [p for p in models.policy.parameters() if p.requires_grad]
    if isinstance(models.value, SharedTrunkValue):
        return policy, models.value.head_parameters()  # the trunk is the policy's, already in
    if models.value is not None:
        return policy, [p for p in models.value.parameters() if p.requires_grad]
    return policy, []


def _flat_params(models: Models, w: dist.World) -> FlatParams:
    """train.parallel=ddp (and one process): the trainable weights in one flat buffer (Adam and zeroing in one
    call each; policy and value laid out apart for their own clipping); over N ranks, rank 0's weights."""
    policy, value = _trainable(models)
    flat = FlatParams(policy + value, groups={"policy": policy, "value": value})
    if w.parallel:  # replicas start equal (DDP's broadcast at construction)
        with torch.no_grad():
            for buf in flat.flat:
                torch.distributed.broadcast(buf.data, src=0)
    return flat


def _sharded_params(cfg: RunConfig, models: Models, w: dist.World) -> ShardedParams:
    """train.parallel=fsdp: every model of the run sharded over the ranks (``harness.shard``), the trainable ones
    from rank 0's weights; their sharded parameters by group."""
    if w.parallel:
        with torch.no_grad():
            for m in (models.policy, models.value):
                for t in [] if m is None else m.state_dict().values():
                    torch.distributed.broadcast(t, src=0)
    dtype = torch.bfloat16 if cfg.train.dtype == "bf16" else None  # FSDP2's mixed precision: fp32 shards
    for m in (models.policy, models.value, models.ref, models.reward):
        if m is not None:
            shard(m, param_dtype=dtype)
    policy, value = _trainable(models)
    return ShardedParams({"policy": policy, "value": value})


def ppo_iteration(
    cfg: RunConfig, models: Models, st: PPOState, score_fn: ScoreFn, timings: dict[str, float] | None = None
) -> dict[str, float]:
    """One PPO iteration, the seven steps of README.md. Returns the iteration's metrics (schema keys).

    ``timings``, when given, receives the rollout's ``generate_s`` and ``score_s`` (the benchmark's split).
    """
    st.iteration += 1
    t_start = time.perf_counter()
    # 1. sample B / k prompts, k completions each (contiguous groups), with the KV cache; mask after EOS
    # 2. score them (proxy RM or gold; no EOS -> train.missing_eos_penalty unless train.truncated=mask)
    # 3. old and reference logprobs at the sampling temperature; values
    ro, sampled = _rollout(cfg, models, st, score_fn, timings)
    return learn(cfg, models, st, ro, sampled, t_start)


def learn(cfg: RunConfig, models: Models, st: PPOState, ro: Rollout, sampled: dict[str, float] | None = None,
          t_start: float | None = None) -> dict[str, float]:
    """Steps 4-7 of the iteration on this rank's rollout ``ro`` (its rollout/* metrics ``sampled``, the
    iteration's start ``t_start``): the rollout correction, rewards, advantages, the update, the metrics."""
    t_start = time.perf_counter() if t_start is None else t_start
    # the training forward: pi_old of off-policy runs, the rollout correction, the sampling-vs-training mismatch
    corr = R.correct_rollout(cfg, models.policy, ro, autocast(cfg, models.policy))
    t_rollout = time.perf_counter() - t_start

    # 4.-5. on the whole batch: over N ranks every rank sees every rank's rows (``_whole``), so the batch's
    # statistics (whitening, batch baselines, the KL controller's KL, the logged means) are the global ones
    whole = _whole(ro, st.world)
    kl, batch, adv_raw = _advantages(cfg, whole, st.kl_coef)
    batch = _mask_truncated(cfg, batch)
    check("adv/mean", adv_raw.sum(), st.iteration)
    local = _own_rows(batch, ro, st.world)
    if corr.weights is not None:  # rollout.correction: the loss's factors; masked tokens leave the policy loss
        local = local._replace(weights=corr.weights, loss_mask=local.policy_mask() * corr.keep)

    # 6. the noise probe when due, then ppo.epochs x ppo.minibatches of the clipped surrogate
    t_update = time.perf_counter()
    probe = _probe(cfg, models, st, local)
    t_probe = time.perf_counter() - t_update  # measurement, not training: left out of the timings
    stats = update(cfg, models, st, local)
    t_end = time.perf_counter()
    # the next iteration's beta: fixed, or the adaptive controller on this batch's KL
    coef_used = st.kl_coef
    st.kl_coef = kl_control.next_coef(coef_used, float(kl.sum(1).mean()), cfg.kl.target, whole.size, cfg.kl.horizon)
    st.episodes += whole.size

    # 7. metrics (the keys of harness/schema.py) -> the caller, which logs them and evaluates
    perf = {"perf/rollout_s": t_rollout, "perf/update_s": t_end - t_update - t_probe,
            "perf/tokens_per_s": float(whole.mask.sum()) / (t_end - t_start - t_probe)}
    # rollout/* (means over each rank's equal share of groups), offpolicy/* (token means, maxima): over the ranks
    means = {**_over_ranks(sampled or {}, 1.0, st.world), **_over_ranks(corr.metrics, float(ro.mask.sum()), st.world)}
    metrics = _metrics(cfg, models, st, whole, kl, coef_used, batch, adv_raw, stats, perf, {**probe, **means})
    for key in ("loss/policy_avg", "objective/scores", "objective/kl"):
        check(key, torch.tensor(metrics[key]), st.iteration)
    return metrics


# the rollout's fields steps 4, 5 and 7 read: gathered from every rank when the run spans several
_WHOLE = ("response_ids", "mask", "has_eos", "logprobs", "entropy", "ref_logprobs", "values", "scores", "gold")


def _whole(ro: Rollout, w: dist.World) -> Rollout:
    """The whole batch of the iteration: ``ro`` itself for one process; over N ranks, every rank's rows in rank
    order (each rank's (B_r, T_r) right-padded to the widest T, mask 0 there), prompts and texts left out."""
    if not w.parallel:
        return ro
    fields = dist.gather_rows({k: getattr(ro, k) for k in _WHOLE}, w)
    return Rollout(prompts=[], completions=[], prompt_ids=ro.prompt_ids[:0], prompt_mask=ro.prompt_mask[:0],
                   **fields)


def _own_rows(batch: Batch, ro: Rollout, w: dist.World) -> Batch:
    """The update's batch of this rank: its own rows of the whole batch's targets and masks, on its own
    rollout (a one-process run: ``batch`` itself)."""
    if not w.parallel:
        return batch
    offset = sum(dist.gather_objects(ro.size, w)[: w.rank])
    rows, width = slice(offset, offset + ro.size), ro.mask.shape[1]
    mine = [None if t is None else t[rows, :width] for t in (batch.adv, batch.returns, batch.vmask, batch.loss_mask)]
    return Batch(ro, *mine)


def _over_ranks(metrics: dict[str, float], weight: float, w: dist.World) -> dict[str, float]:
    """Each rank's means (weighing ``weight``: its tokens, or 1 for equal shares) as the means over every rank;
    ``*_max`` keys the maximum over the ranks. ``metrics`` itself for one process."""
    if not w.parallel or not metrics:
        return metrics
    parts = dist.gather_objects((weight, metrics), w)
    total = sum(p[0] for p in parts)
    out = {}
    for k in metrics:
        if k.endswith("_max"):
            out[k] = max(p[1][k] for p in parts)
        else:
            out[k] = sum(p[0] * p[1][k] for p in parts) / total if total else 0.0
    return out


def _advantages(cfg: RunConfig, ro: Rollout, kl_coef: float) -> tuple[torch.Tensor, Batch, torch.Tensor]:
    """Steps 4 and 5 on the whole batch: (per-token KL, the update's targets, advantages before whitening).

    4. rewards: -beta * kl_t per token + score on the last real token, or R = score - beta * sum_t kl_t;
    5. advantages: GAE(gamma, lambda) or a sequence baseline (broadcast to the tokens); value targets."""
    kl = M.kl_penalty(ro.logprobs, ro.ref_logprobs, cfg.kl.estimator) * ro.mask  # (B, T)
    beta = kl_coef if cfg.kl.placement == "reward" else 0.0  # kl.placement=loss: the update adds it
    if cfg.advantage.level == "token":
        batch, adv_raw = _token_advantages(cfg, ro, M.token_rewards(kl, ro.scores, ro.mask, beta))
    else:
        batch, adv_raw = _sequence_advantages(cfg, ro, M.sequence_return(ro.scores, kl, beta), kl, beta)
    return kl, batch, adv_raw


def _rollout(cfg: RunConfig, models: Models, st: PPOState, score_fn: ScoreFn, timings) -> tuple[Rollout, dict]:
    """Steps 1-3: B / k prompts (B / (k N) on each of N ranks) from ``st.rng``, each sampled k times (by the policy of rollout.staleness
    iterations ago), scored (+ train.overlong_buffer), with ref logprobs and values; rollout.filter_groups:
    DAPO's dynamic sampling. Returns (the rollout, its rollout/* metrics)."""
    k = cfg.rollout.group_size
    if st.behaviour is None:
        st.behaviour = R.Behaviour(cfg.rollout.staleness)
    sampler = st.behaviour.sampler(models.policy)

    def draw(groups: int) -> Rollout:
        return R.overlong(cfg, models.task, _collect(cfg, models, st, score_fn, timings, sampler, groups))

    groups = cfg.rollout.batch_size // k // st.world.size  # over N ranks, each samples B / N (whole groups)
    if not cfg.rollout.filter_groups:
        return draw(groups), {}
    return R.fill_groups(draw, groups, k, cfg.rollout.filter_rounds, models.tokenizer.pad_token_id)


def _collect(cfg: RunConfig, models: Models, st: PPOState, score_fn: ScoreFn, timings, sampler, groups: int) -> Rollout:
    """``groups`` prompts from ``st.rng``, each sampled k times by ``sampler``: ``lm.rollout.collect``."""
    k = cfg.rollout.group_size
    prompts = [st.rng.choice(models.task.train_prompts) for _ in range(groups)]
    models.policy.eval()
    with autocast(cfg, models.policy):
        return collect(
            sampler,
            models.ref,
            models.tokenizer,
            [p for p in prompts for _ in range(k)],
            max_new_tokens=response_length(cfg, models.task),
            temperature=cfg.rollout.temperature,
            generator=st.generator,
            score_fn=score_fn,
            gold_fn=models.task.gold,
            value_model=models.value,
            # train.truncated=mask: the real scores (rows without EOS leave the loss instead)
            missing_eos_penalty=cfg.train.missing_eos_penalty if cfg.train.truncated == "penalty" else None,
            timings=timings,
            **generation_options(cfg),  # rollout.top_k / top_p / min_new_tokens / stop, task.chat_template
        )


def _token_advantages(cfg: RunConfig, ro: Rollout, rewards: torch.Tensor) -> tuple[Batch, torch.Tensor]:
    """(the update's batch, advantages before whitening): GAE over (B, T) rewards, whitened over the
    batch's response tokens when ``advantage.whiten`` (N implementation details), 0 after EOS."""
    adv, returns = M.gae(rewards, ro.values, ro.mask, cfg.advantage.gamma, cfg.advantage.lam)
    whitened = M.masked_whiten(adv, ro.mask) * ro.mask if cfg.advantage.whiten else adv
    return Batch(ro, whitened, returns, ro.mask), adv


def _sequence_advantages(cfg: RunConfig, ro: Rollout, seq_return: torch.Tensor, kl: torch.Tensor,
                         beta: float) -> tuple[Batch, torch.Tensor]:
    """(the update's batch, advantages before whitening): one baseline-subtracted scalar per completion
    (B,), scaled (not centred) when ``advantage.whiten``, broadcast to its response tokens; or, for the
    per-token estimators (REINFORCE++ as published, ``harness.algos.estimators``), their (B, T) advantages."""
    entry = BASELINES[cfg.advantage.baseline]  # the baseline's function and properties (harness.algos.estimators)
    if entry.props["per_token"]:
        adv = entry.fn(ro.scores, kl, ro.mask, beta, cfg.rollout.group_size, cfg.advantage.gamma)
        returns, vmask = M.sequence_value_targets(seq_return, ro.mask)
        return Batch(ro, adv, returns, vmask), adv
    v0 = ro.values[:, 0] if entry.props["value"] else None  # V(prompt)
    # REINFORCE++ normalises over the batch's response tokens: each completion weighs its token count
    a_seq = entry.fn(seq_return, cfg.rollout.group_size, values=v0, weights=ro.mask.sum(1))
    adv_raw = a_seq[:, None] * ro.mask
    if cfg.advantage.whiten and not entry.props["normalised"]:  # those are normalised already
        a_seq = M.scale_whiten(a_seq)
    returns, vmask = M.sequence_value_targets(seq_return, ro.mask)
    return Batch(ro, a_seq[:, None] * ro.mask, returns, vmask), adv_raw


def _mask_truncated(cfg: RunConfig, batch: Batch) -> Batch:
    """train.truncated=mask: rows without EOS get 0 in the policy-loss and value-loss masks (TRL
    mask_truncated_completions); their advantages, returns and scores stay as computed. Else ``batch``."""
    if cfg.train.truncated != "mask":
        return batch
    keep = batch.ro.has_eos[:, None].to(batch.ro.mask.dtype)  # (B, 1)
    return batch._replace(loss_mask=batch.ro.mask * keep, vmask=batch.vmask * keep)


def _probe(cfg: RunConfig, models: Models, st: PPOState, batch: Batch, split: torch.Tensor | None = None
           ) -> dict[str, float]:
    """The gradient-noise probe's metrics on iterations 1, 1 + every, ... (``probe.every``); {} otherwise.
    It differentiates the update's policy loss: the same options (``policy_loss_kwargs``) and mask.
    ``split``: the parts' rows (``probe_gradient_variance``) instead of a random split."""
    if not cfg.probe.every or (st.iteration - 1) % cfg.probe.every:
        return {}
    models.policy.train()
    kw = {**policy_loss_kwargs(cfg, models.task), **loss_mode_kwargs(cfg), "weights": batch.weights}
    clip_eps, agg = kw.pop("clip_eps"), kw.pop("agg")
    w = st.world  # over N ranks: each rank's K / N parts of its own rows, the K gradients gathered
    gather = (lambda g: dist.gather_equal(g, w)) if w.parallel else None
    return probe_gradient_variance(models.policy, batch.ro, batch.adv, clip_eps, agg, cfg.rollout.temperature,
                                   cfg.probe.microbatches // w.size, st.probe_generator, mask=batch.loss_mask,
                                   gather=gather, split=split, **kw)


def _metrics(cfg: RunConfig, models: Models, st: PPOState, ro: Rollout, kl: torch.Tensor, coef_used: float,
             batch: Batch, adv_raw: torch.Tensor, stats: UpdateStats, perf: dict[str, float],
             probe: dict[str, float]) -> dict[str, float]:
    """The iteration's metrics: the update's means, then the batch's objective/*, adv/*, response/*,
    the timings, episodes, early stop, explained variance and the probe's grad/* (when they apply)."""
    seq_kl, mask = kl.sum(1), ro.mask  # (B,), (B, T)
    metrics = {
        **stats.metrics(),
        "objective/scores": float(ro.scores.mean()),
        "objective/gold": float(ro.gold.mean()),
        "objective/kl": float(seq_kl.mean()),
        "objective/rlhf_reward": float((ro.scores - coef_used * seq_kl).mean()),
        "objective/kl_coef": coef_used,
        "objective/entropy": float(M.masked_mean(ro.entropy, mask)),
        "adv/mean": float(M.masked_mean(adv_raw, mask)),
        "adv/std": float(M.masked_var(adv_raw, mask).sqrt()),
        "response/length": float(mask.sum(1).mean()),
        "response/eos_frac": float(ro.has_eos.float().mean()),
        **perf,
        "episodes": float(st.episodes),
    }
    low = M.low_reward_length(mask.sum(1), ro.gold)
    if low == low:  # NaN (every gold equal) is left out, never logged
        metrics["response/length_low"] = low
    if cfg.ppo.target_kl is not None:
        metrics["policy/early_stop"] = float(stats.early_stop)
    if models.value is not None:
        metrics["val/explained_var"] = float(M.explained_variance(ro.values, batch.returns, batch.vmask))
    return {**metrics, **probe}


def train(cfg: RunConfig, models: Models, rec: Recorder) -> None:
    """``impl=custom``: evaluate at 0, then ``train.iterations`` PPO iterations on ``models``, each recorded
    into ``rec`` (evaluated every ``eval.every`` and at the last); checkpoints every ``train.checkpoint_every``."""
    st = init_state(cfg, models, dist.world())
    ckpt = Checkpoints(cfg, rec.logger)  # train.checkpoint_every; a resumed run continues after its newest
    try:
        start = ckpt.resume(models, st, rec)
        if start == 0:
            rec.begin()
        for it in range(start + 1, cfg.train.iterations + 1):
            t0 = time.perf_counter()
            metrics = ppo_iteration(cfg, models, st, rec.score_fn)
            rec.step(it, metrics, seconds=time.perf_counter() - t0)
            ckpt.after(it, models, st, rec)
    finally:
        st.close()
