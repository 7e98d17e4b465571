"""The PPO loop, readable top to bottom. No MLflow, no CLI, no files.

``PPOState`` holds what persists across iterations; ``ppo_iteration`` runs steps 1-7
once and returns a flat metrics dict. Both advantage levels, all sequence baselines,
the three loss aggregations, KL in reward or in loss, fixed or adaptive KL, value
clipping, entropy bonus, gradient clipping, linear LR decay, minibatches x epochs,
early stop at target KL and the missing-EOS penalty live here.
"""

from __future__ import annotations

import contextlib
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from harness.config import RunConfig, response_length
from harness.fast.flat import FlatParams, clip_norm_
from harness.lm.forward import policy_forward, token_values
from harness.lm.rollout import ScoreFn, collect
from harness.models.types import Models, SharedTrunkValue
from harness.ppo import math as M
from harness.ppo.variance import probe_generator, probe_gradient_variance


class NonFiniteError(RuntimeError):
    """A loss or statistic became NaN or inf; the message names it and the iteration."""


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
    params: FlatParams  # policy + value parameters, stepped as flat buffers


def init_state(cfg: RunConfig, models: Models) -> PPOState:
    torch.manual_seed(cfg.seed)
    policy_params = [p for p in models.policy.parameters() if p.requires_grad]
    if isinstance(models.value, SharedTrunkValue):
        value_params = models.value.head_parameters()  # the trunk is the policy's, already in
    elif models.value is not None:
        value_params = [p for p in models.value.parameters() if p.requires_grad]
    else:
        value_params = []
    # one buffer: Adam and zeroing in one call each; policy and value laid out apart for their own clipping
    flat = FlatParams(policy_params + value_params, groups={"policy": policy_params, "value": value_params})
    # Adam eps 1e-5 (cleanRL; N implementation details: the eps matters for early approx-KL).
    # The fused kernel is the same update in one pass (4x faster on CPU than the per-tensor loop).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in flat.flat)
    opt = torch.optim.Adam(flat.flat, lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps, fused=fused or None)
    n = cfg.train.iterations
    # linear decay to 0 over the run (cleanRL anneal_lr): lr_i = lr * (1 - i / n)
    decay = (lambda i: max(0.0, 1.0 - i / n)) if cfg.ppo.lr_decay else (lambda i: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    return PPOState(
        iteration=0,
        kl_coef=cfg.kl.coef,
        episodes=0,
        rng=random.Random(cfg.seed),
        generator=torch.Generator().manual_seed(cfg.seed),
        probe_generator=probe_generator(cfg.seed),
        optimizer=opt,
        scheduler=sched,
        params=flat,
    )


_SIDE: ThreadPoolExecutor | None = None  # one per process, reused by every iteration


def _on_cpu(model: torch.nn.Module) -> bool:
    return next(model.parameters()).device.type == "cpu"


@contextlib.contextmanager
def _side_thread(enabled: bool):
    """A one-thread executor beside this thread for a second, independent model's work, or None.

    With n >= 2 intra-op threads this thread keeps n - n // 2 and the side thread gets n // 2:
    two streams of (mostly small) ops use the cores better than one stream split across both
    (+25% on the S bench's update; the rollout's three forwards gain nothing from it).
    None when disabled or with one thread: the caller then runs everything itself.
    """
    global _SIDE
    n = torch.get_num_threads()
    if not enabled or n < 2:
        yield None
        return
    if _SIDE is None:
        _SIDE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppo-side")
    _SIDE.submit(torch.set_num_threads, n // 2).result()  # that thread's own setting
    torch.set_num_threads(n - n // 2)
    try:
        yield _SIDE
    finally:
        torch.set_num_threads(n)


def _autocast(cfg: RunConfig, model: torch.nn.Module):
    """bf16 autocast on the model's device when ``train.autocast=bf16``; a no-op otherwise."""
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.train.autocast == "bf16")


def _check(name: str, value: torch.Tensor, it: int) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"{name} became {float(value)} at iteration {it}")


def ppo_iteration(
    cfg: RunConfig, models: Models, st: PPOState, score_fn: ScoreFn, timings: dict[str, float] | None = None
) -> dict[str, float]:
    """One PPO iteration: rollout, score, KL, advantages, update. Returns metrics.

    ``timings``, when given, receives the rollout's ``generate_s`` and ``score_s`` (the benchmark's split).
    """
    st.iteration += 1
    it = st.iteration
    B, k, temp = cfg.rollout.batch_size, cfg.rollout.group_size, cfg.rollout.temperature
    token_level = cfg.advantage.level == "token"
    use_value = models.value is not None
    t_start = time.perf_counter()

    # 1. rollout: B / k prompts, each sampled k times (contiguous groups)
    prompts = [st.rng.choice(models.task.train_prompts) for _ in range(B // k)]
    batch = [p for p in prompts for _ in range(k)]
    models.policy.eval()
    # 2. score (proxy RM or gold, missing-EOS penalty) and 3. ref logprobs + values
    with _autocast(cfg, models.policy):
        ro = collect(
            models.policy,
            models.ref,
            models.tokenizer,
            batch,
            max_new_tokens=response_length(cfg, models.task),
            temperature=temp,
            generator=st.generator,
            score_fn=score_fn,
            gold_fn=models.task.gold,
            value_model=models.value,
            missing_eos_penalty=cfg.train.missing_eos_penalty,
            timings=timings,
        )
    t_rollout = time.perf_counter() - t_start
    mask = ro.mask  # (B, T)
    n_tokens = mask.sum(1)  # (B,)
    last = n_tokens.long().clamp(min=1) - 1  # (B,) index of EOS / last real token
    rows = torch.arange(B)

    # 4. rewards + KL: per token (MDP) or one scalar per sequence (bandit)
    kl = M.kl_penalty(ro.logprobs, ro.ref_logprobs, cfg.kl.estimator) * mask  # (B, T)
    seq_kl = kl.sum(1)  # (B,)
    beta = st.kl_coef if cfg.kl.placement == "reward" else 0.0
    vmask = mask
    if token_level:
        # r_t = -beta * kl_t on every response token, + score on the last real one (TRL, N details)
        rewards = -beta * kl  # (B, T)
        rewards[rows, last] += ro.scores
        # 5. GAE(gamma, lambda); returns = advantages + values
        adv, returns = M.gae(rewards, ro.values, mask, cfg.advantage.gamma, cfg.advantage.lam)
        adv_raw = adv
        if cfg.advantage.whiten:
            adv = M.masked_whiten(adv, mask) * mask  # N details: whiten advantages over the batch
        seq_return = rewards.sum(1)
    else:
        # R = score - beta * sum_t kl_t, one action per completion (Ahmadian et al. 2024)
        seq_return = ro.scores - beta * seq_kl  # (B,)
        v0 = ro.values[:, 0] if cfg.advantage.baseline == "value" else None  # V(prompt)
        a_seq = M.sequence_advantages(seq_return, cfg.advantage.baseline, k, values=v0)  # (B,)
        adv_raw = a_seq[:, None] * mask
        if cfg.advantage.whiten:
            # scale only: centring here would turn baseline "none" into "batch_mean"
            a_seq = a_seq / (a_seq.std() + 1e-8)
        adv = a_seq[:, None] * mask  # broadcast to every token
        # the sequence value baseline regresses R from the prompt state only
        returns = seq_return[:, None] * mask
        vmask = torch.zeros_like(mask)
        vmask[:, 0] = 1.0
    _check("adv/mean", adv_raw.sum(), it)

    # 6. epochs x minibatches of the clipped surrogate (+ value loss, entropy, KL-in-loss)
    t_update = time.perf_counter()
    probe_stats = {}
    if cfg.probe.every and (it - 1) % cfg.probe.every == 0:
        models.policy.train()
        probe_stats = probe_gradient_variance(
            models.policy, ro, adv, cfg.ppo.clip_eps, cfg.loss.agg, temp, cfg.probe.microbatches, st.probe_generator
        )
    models.policy.train()
    mb = B // cfg.ppo.minibatches
    sums: dict[str, float] = {}
    count = 0
    stopped_early = 0.0

    shared = isinstance(models.value, SharedTrunkValue)

    def value_step(idx: torch.Tensor, backward: bool, v_new: torch.Tensor | None = None):
        """The value loss of one minibatch (and, on the worker thread, its backward)."""
        if v_new is None:
            with _autocast(cfg, models.value):  # autocast state is per thread
                v_new = token_values(models.value, ro.prompt_ids[idx], ro.prompt_mask[idx], ro.response_ids[idx], vmask[idx])
        v_loss, vst = M.value_loss(v_new, ro.values[idx], returns[idx], vmask[idx], cfg.ppo.value_clip, cfg.loss.agg)
        if backward:
            (cfg.ppo.vf_coef * v_loss).backward()
        return v_loss, vst

    with _side_thread(use_value and not shared and _on_cpu(models.policy)) as worker:
        for _epoch in range(cfg.ppo.epochs):
            perm = torch.randperm(B, generator=st.generator)
            epoch_kl, epoch_n = 0.0, 0
            for s in range(0, B, mb):
                idx = perm[s : s + mb]
                m_mask = mask[idx]
                st.params.zero_grad()
                # With >= 2 threads the value model's forward + backward run beside the policy's, on a
                # worker thread: disjoint parameters, so the gradients are exactly those of the summed loss.
                pending = worker.submit(value_step, idx, True) if worker is not None else None
                with _autocast(cfg, models.policy):
                    new_logp, entropy, v_shared = policy_forward(  # (b, T) each, 0 after EOS
                        models.policy, ro.prompt_ids[idx], ro.prompt_mask[idx], ro.response_ids[idx], m_mask, temp,
                        with_entropy=cfg.ppo.entropy_coef > 0, value_head=models.value.score if shared else None,
                    )
                pg_loss, pst = M.policy_loss(new_logp, ro.logprobs[idx], adv[idx], m_mask, cfg.ppo.clip_eps, cfg.loss.agg)
                loss = pg_loss
                if entropy is not None:
                    loss = loss - cfg.ppo.entropy_coef * M.aggregate(entropy, m_mask, cfg.loss.agg)
                if cfg.kl.placement == "loss" and st.kl_coef > 0:
                    # KL as a loss term (GRPO-style): beta * agg(kl(pi_theta, pi_ref))
                    kl_tok = M.kl_penalty(new_logp, ro.ref_logprobs[idx], cfg.kl.estimator)
                    loss = loss + st.kl_coef * M.aggregate(kl_tok, m_mask, cfg.loss.agg)
                v_loss = torch.zeros(())
                vst = {"clipfrac": torch.zeros(())}
                if pending is not None:
                    try:
                        _check("loss/policy", pg_loss.detach(), it)
                        loss.backward()
                    finally:
                        v_loss, vst = pending.result()
                    _check("loss/value", v_loss.detach(), it)
                else:
                    if use_value:  # one backward through both losses (shared trunk: one forward too)
                        v_loss, vst = value_step(idx, False, v_shared)
                        loss = loss + cfg.ppo.vf_coef * v_loss
                    _check("loss/policy", pg_loss.detach(), it)
                    _check("loss/value", v_loss.detach(), it)
                    loss.backward()
                # Policy and value gradients are clipped apart (same max norm): with one global norm the
                # value gradient would eat the policy's clipping budget, and the policy's step would
                # depend on whether a value model is present (token level) or not (sequence level).
                gnorm = clip_norm_(st.params.group_grads("policy"), cfg.ppo.max_grad_norm)
                _check("grad/norm", gnorm, it)
                if use_value:
                    vnorm = clip_norm_(st.params.group_grads("value"), cfg.ppo.max_grad_norm)
                    _check("grad/value_norm", vnorm, it)
                st.optimizer.step()
                logged = [
                    ("policy/approxkl_avg", pst["approxkl"]),
                    ("policy/clipfrac_avg", pst["clipfrac"]),
                    ("loss/policy_avg", pg_loss),
                    ("grad/norm", gnorm),
                ]
                if use_value:
                    logged += [("loss/value_avg", v_loss), ("val/clipfrac_avg", vst["clipfrac"]), ("grad/value_norm", vnorm)]
                for key, val in logged:
                    sums[key] = sums.get(key, 0.0) + float(val.detach())
                count += 1
                epoch_kl += float(pst["approxkl"])
                epoch_n += 1
            # early stop on the epoch's mean approx KL (cleanRL target_kl)
            if cfg.ppo.target_kl is not None and epoch_kl / epoch_n > cfg.ppo.target_kl:
                stopped_early = 1.0
                break
    st.scheduler.step()
    models.policy.eval()
    t_end = time.perf_counter()

    # adaptive KL controller (Ziegler et al. 2019): beta *= 1 + clip(KL/target - 1, ±0.2) * n / horizon
    mean_kl = float(seq_kl.mean())
    coef_used = st.kl_coef
    if cfg.kl.target is not None:
        err = min(max(mean_kl / cfg.kl.target - 1.0, -0.2), 0.2)
        st.kl_coef *= 1.0 + err * B / cfg.kl.horizon
    st.episodes += B

    # 7. metrics -> caller
    metrics = {key: val / count for key, val in sums.items()}
    gen_tokens = float(n_tokens.sum())
    metrics.update(
        {
            "objective/scores": float(ro.scores.mean()),
            "objective/gold": float(ro.gold.mean()),
            "objective/kl": mean_kl,
            "objective/rlhf_reward": float((ro.scores - coef_used * seq_kl).mean()),
            "objective/kl_coef": coef_used,
            "objective/entropy": float(M.masked_mean(ro.entropy, mask)),
            "adv/mean": float(M.masked_mean(adv_raw, mask)),
            "adv/std": float(M.masked_var(adv_raw, mask).sqrt()),
            "response/length": float(n_tokens.mean()),
            "response/eos_frac": float(ro.has_eos.float().mean()),
            "perf/rollout_s": t_rollout,
            "perf/update_s": t_end - t_update,
            "perf/tokens_per_s": gen_tokens / (t_end - t_start),
            "episodes": float(st.episodes),
        }
    )
    if cfg.ppo.target_kl is not None:
        metrics["policy/early_stop"] = stopped_early
    if use_value:
        metrics["val/explained_var"] = float(M.explained_variance(ro.values, returns, vmask))
    metrics.update(probe_stats)
    for key in ("loss/policy_avg", "objective/scores", "objective/kl"):
        _check(key, torch.tensor(metrics[key]), it)
    return metrics
