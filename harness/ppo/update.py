"""Step 6 of a PPO iteration: ``ppo.epochs`` x ``ppo.minibatches`` optimiser steps on one rollout.

Each step: the clipped surrogate of the policy (``math.policy_loss``), minus the entropy bonus,
plus the KL-to-reference term when ``kl.placement=loss``, plus ``vf_coef`` x the (clipped) value
loss (``math.value_loss``); policy and value gradients clipped apart; one Adam step. After each
epoch, early stop when its mean approx KL exceeds ``ppo.target_kl`` (cleanRL). The scheduler
steps once per iteration. ``update`` returns the means over the steps taken (``UpdateStats``).

With a separate value model on CPU and >= 2 intra-op threads, the value model's forward and
backward run on a side thread beside the policy's (``SideThread``, owned by the caller's state,
not by this module): disjoint parameters, so the gradients are exactly those of the summed loss.

Under ``train.dtype=fp16`` every backward (the step's, the side thread's, each micro-batch's) is of the
loss times the state's loss scale (``harness/algos/scaler.py``); the gradients are unscaled before the
clipping, and a step whose gradients overflowed is skipped (not a NonFiniteError: the scale backs off).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from harness import dist
from harness.algos import losses as L
from harness.algos import math as M
from harness.algos.scaler import LossScaler
from harness.config import RunConfig, response_length
from harness.fast.flat import FlatParams, clip_norm_
from harness.lm.forward import policy_forward, token_values
from harness.lm.rollout import Rollout
from harness.models.types import Models, SharedTrunkValue
from harness.ppo.accumulate import accumulate, combine, denominator
from harness.shard import ShardedParams

__all__ = [
    "Batch", "NonFiniteError", "SideThread", "UpdateState", "UpdateStats", "autocast", "check",
    "loss_mode_kwargs", "norm_length", "policy_loss_kwargs", "update",
]


class NonFiniteError(RuntimeError):
    """A loss or statistic became NaN or inf; the message names it and the iteration."""


def check(name: str, value: Tensor, it: int) -> None:
    """Raise NonFiniteError naming ``name`` and iteration ``it`` unless every element of ``value`` is finite."""
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"{name} became {float(value)} at iteration {it}")


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(cfg: RunConfig, model: torch.nn.Module):
    """Autocast of ``train.dtype`` (bf16, fp16) on the model's device; a no-op for fp32."""
    device = next(model.parameters()).device.type
    dtype = _AUTOCAST.get(cfg.train.dtype)
    return torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


class SideThread:
    """A one-thread executor beside the caller's thread for a second, independent model's work.

    Created on first use, reused by every iteration, shut down by ``close()`` (or when this object
    is garbage collected). With n >= 2 intra-op threads, ``split`` leaves the caller n - n // 2
    and gives the side thread n // 2: two streams of (mostly small) ops use the cores better than
    one stream split across both (+25% on the S bench's update).
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None

    @contextlib.contextmanager
    def split(self, enabled: bool) -> Iterator[ThreadPoolExecutor | None]:
        """The executor with the threads split, or None (disabled, or one thread: the caller does all)."""
        n = torch.get_num_threads()
        if not enabled or n < 2:
            yield None
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppo-side")
            self._finalizer = weakref.finalize(self, self._executor.shutdown, wait=False)
        self._executor.submit(torch.set_num_threads, n // 2).result()  # that thread's own setting
        torch.set_num_threads(n - n // 2)
        try:
            yield self._executor
        finally:
            torch.set_num_threads(n)

    def close(self) -> None:
        """Shut the executor down (idempotent); a later ``split`` starts a new one."""
        if self._finalizer is not None:
            self._finalizer()
        self._executor, self._finalizer = None, None


class UpdateState(Protocol):
    """What ``update`` reads and steps (``harness.ppo.loop.PPOState`` is one)."""

    iteration: int
    kl_coef: float
    generator: torch.Generator  # minibatch shuffles
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: FlatParams | ShardedParams
    side: SideThread
    scaler: LossScaler  # train.dtype=fp16's loss scale (disabled otherwise)
    world: dist.World  # the ranks this run's minibatches are spread over (one process: World())


class Batch(NamedTuple):
    """One rollout and the targets the update regresses, every tensor (B, T)."""

    ro: Rollout
    adv: Tensor  # advantages the policy loss sees (whitened if asked), 0 after EOS
    returns: Tensor  # value targets
    vmask: Tensor  # where the value loss looks (the response, or the prompt state only)
    # where the policy loss (and entropy / KL terms) look; None = ro.mask. train.truncated=mask: rows
    # without EOS are 0 here and in vmask
    loss_mask: Tensor | None = None
    # rollout.correction: per-token factors of the policy loss (harness/algos/offpolicy.py); None = 1
    weights: Tensor | None = None

    def policy_mask(self) -> Tensor:
        return self.ro.mask if self.loss_mask is None else self.loss_mask


def norm_length(cfg: RunConfig, task) -> int | None:
    """L of loss.agg=seq-mean-token-sum-norm: ``loss.norm_length``, else the run's response length; None otherwise."""
    if cfg.loss.agg != "seq-mean-token-sum-norm":
        return None
    return cfg.loss.norm_length or response_length(cfg, task)


def policy_loss_kwargs(cfg: RunConfig, task) -> dict:
    """The keyword arguments of ``math.policy_loss`` a run's config asks for, past the tensors.

    The one place they are read from the config: the update and the gradient-noise probe both call it,
    so the probe measures the gradient of the loss the update steps on.
    """
    p = cfg.ppo
    return {"clip_eps": p.clip_eps, "agg": cfg.loss.agg, "ratio_level": p.ratio_level,
            "clip_eps_high": p.clip_eps_high, "dual_clip": p.dual_clip, "norm_length": norm_length(cfg, task)}


def loss_mode_kwargs(cfg: RunConfig) -> dict:
    """``losses.policy_loss``'s keywords past ``policy_loss_kwargs``: ppo.loss_mode and its options (null =
    the mode's default). The update and the probe both pass them."""
    p = cfg.ppo
    return {"mode": p.loss_mode, "sapo_tau_pos": p.sapo_tau_pos, "sapo_tau_neg": p.sapo_tau_neg,
            "cov_ratio": p.cov_ratio, "clip_cov_lb": p.clip_cov_lb, "clip_cov_ub": p.clip_cov_ub,
            "kl_cov_coef": p.kl_cov_coef}


class UpdateStats(NamedTuple):
    """Means over the optimiser steps taken; value entries None without a value model."""

    approxkl: float  # policy/approxkl_avg
    clipfrac: float  # policy/clipfrac_avg
    policy_loss: float  # loss/policy_avg
    grad_norm: float  # grad/norm, pre-clip
    value_loss: float | None  # loss/value_avg
    value_clipfrac: float | None  # val/clipfrac_avg
    value_grad_norm: float | None  # grad/value_norm, pre-clip
    early_stop: bool  # stopped at ppo.target_kl before the last epoch
    steps: int  # optimiser steps taken
    seconds: float  # wall time of the update
    clipfrac_low: float | None = None  # policy/clipfrac_low (always set by ``update``)
    clipfrac_high: float | None = None  # policy/clipfrac_high (always set by ``update``)
    dualclip_frac: float | None = None  # policy/dualclip_frac, only with ppo.dual_clip
    cov_frac: float | None = None  # policy/cov_frac, only with ppo.loss_mode=clip_cov / kl_cov
    loss_scale: float | None = None  # amp/loss_scale after the update, only with train.dtype=fp16
    skipped: int = 0  # amp/skipped_steps: optimiser steps skipped for overflow (fp16)

    def metrics(self) -> dict[str, float]:
        """The schema keys of these means (harness/schema.py)."""
        out = {"policy/approxkl_avg": self.approxkl, "policy/clipfrac_avg": self.clipfrac,
               "loss/policy_avg": self.policy_loss, "grad/norm": self.grad_norm}
        for key, v in (("policy/clipfrac_low", self.clipfrac_low), ("policy/clipfrac_high", self.clipfrac_high),
                       ("policy/dualclip_frac", self.dualclip_frac), ("policy/cov_frac", self.cov_frac)):
            if v is not None:
                out[key] = v
        if self.value_loss is not None:
            out.update({"loss/value_avg": self.value_loss, "val/clipfrac_avg": self.value_clipfrac,
                        "grad/value_norm": self.value_grad_norm})
        if self.loss_scale is not None:
            out.update({"amp/loss_scale": self.loss_scale, "amp/skipped_steps": float(self.skipped)})
        return out


class _Step(NamedTuple):
    """One optimiser step's statistics, 0-dim tensors (value entries None without a value model)."""

    approxkl: Tensor
    clipfrac: Tensor
    policy_loss: Tensor
    grad_norm: Tensor | None  # None: the step was skipped (fp16 overflow)
    value_loss: Tensor | None
    value_clipfrac: Tensor | None
    value_grad_norm: Tensor | None
    clipfrac_low: Tensor
    clipfrac_high: Tensor
    dualclip_frac: Tensor | None
    cov_frac: Tensor | None


def update(cfg: RunConfig, models: Models, st: UpdateState, batch: Batch) -> UpdateStats:
    """``ppo.epochs`` passes over ``batch``, each a fresh permutation (``st.generator``) cut into
    ``ppo.minibatches`` minibatches of B / minibatches rows; early stop after an epoch whose mean
    approx KL exceeds ``ppo.target_kl``; then one scheduler step. The policy is left in eval mode."""
    t0 = time.perf_counter()
    B = batch.ro.size
    mb = B // cfg.ppo.minibatches
    # a side thread for a separate value model on the CPU; not when sharded: collectives pair up in call order
    side = models.value is not None and not isinstance(models.value, SharedTrunkValue) and not _sharded(st)
    steps: list[_Step] = []
    stopped = False
    models.policy.train()
    with st.side.split(side and next(models.policy.parameters()).device.type == "cpu") as worker:
        for _epoch in range(cfg.ppo.epochs):
            perm = torch.randperm(B, generator=st.generator, device=st.generator.device)
            epoch_kl, epoch_n = 0.0, 0
            for s in range(0, B, mb):
                steps.append(_step(cfg, models, st, batch, perm[s : s + mb], worker))
                epoch_kl += float(steps[-1].approxkl)
                epoch_n += 1
            # early stop on the epoch's mean approx KL (cleanRL target_kl)
            if cfg.ppo.target_kl is not None and epoch_kl / epoch_n > cfg.ppo.target_kl:
                stopped = True
                break
    st.scheduler.step()
    models.policy.eval()
    means = {f: _mean([getattr(s, f) for s in steps]) for f in _Step._fields if f not in _NORMS}
    # gradient norms: means over the steps taken (fp16 skips overflowed ones); NaN when none was taken
    taken = [s for s in steps if s.grad_norm is not None]
    nan = float("nan")
    means["grad_norm"] = _mean([s.grad_norm for s in taken]) if taken else nan
    means["value_grad_norm"] = _mean([s.value_grad_norm for s in taken]) if taken else (
        nan if models.value is not None else None)
    skipped = len(steps) - len(taken)
    scale = st.scaler.scale if st.scaler.enabled else None
    return UpdateStats(**means, early_stop=stopped, steps=len(steps), seconds=time.perf_counter() - t0,
                       loss_scale=scale, skipped=skipped)


_NORMS = ("grad_norm", "value_grad_norm")


def _mean(values: list[Tensor | None]) -> float | None:
    """The mean of per-step values, summed left to right in float (None for an absent statistic)."""
    if values[0] is None:
        return None
    total = 0.0
    for v in values:
        total += float(v.detach())
    return total / len(values)


def _step(cfg: RunConfig, models: Models, st: UpdateState, b: Batch, idx: Tensor, worker) -> _Step:
    """One optimiser step on rows ``idx``: forward, loss, backward, gradients summed over the ranks, clipped
    (policy and value apart), Adam; the step's statistics, reduced over the ranks."""
    it, use_value = st.iteration, models.value is not None
    share = _shares(cfg, b, idx, st.world)  # this rank's shares of the minibatch (1.0 each for one process)
    st.params.zero_grad()
    if cfg.ppo.micro_batch_size and cfg.ppo.micro_batch_size < len(idx):  # gradient accumulation
        out = accumulate(cfg, models, st.kl_coef, b, idx, _policy_objective, _value_loss, check, it,
                         st.scaler.scale_loss, rank=(share.policy, share.value))
    else:
        out = _losses_and_backward(cfg, models, st, b, idx, worker, share)
    out = _reduced(st.world, share, *out)
    if st.world.parallel and not _sharded(st):  # FSDP's backward reduce-scatters the sharded gradients itself
        for grad in st.params.grads():  # DDP's reduction, one bucket: the gradient of the global loss
            dist.sum_(grad, st.world)
    return _clip_and_step(cfg, st, it, use_value, *out)


def _sharded(st: UpdateState) -> bool:
    """train.parallel=fsdp: the parameters are FSDP's shards (``harness.shard``)."""
    return isinstance(st.params, ShardedParams)


class _Shares(NamedTuple):
    """This rank's part of a minibatch: of the policy and value losses' denominators (``loss.agg``) and of
    the token means (the step's statistics)."""

    policy: float
    value: float
    policy_tokens: float
    value_tokens: float


def _shares(cfg: RunConfig, b: Batch, idx: Tensor, w: dist.World) -> _Shares:
    if not w.parallel:
        return _Shares(1.0, 1.0, 1.0, 1.0)
    pmask, vmask = b.policy_mask()[idx], b.vmask[idx]
    counts = [denominator(cfg.loss.agg, pmask), denominator(cfg.loss.agg, vmask)]
    own = dist.shares([float(pmask.sum()), float(vmask.sum())] + [c for c in counts if c is not None], w)
    if counts[0] is None:  # token-sum: the global loss is the sum of the ranks' sums
        return _Shares(1.0, 1.0, own[0], own[1])
    return _Shares(own[2], own[3], own[0], own[1])


def _losses_and_backward(cfg: RunConfig, models: Models, st: UpdateState, b: Batch, idx: Tensor, worker,
                         share: _Shares) -> tuple[Tensor, dict, Tensor, dict]:
    """Forward, loss and backward of rows ``idx`` in one piece: (policy loss, its stats, value loss, its stats).
    The value model's forward and backward run beside the policy's when there is a side thread."""
    it, use_value = st.iteration, models.value is not None
    pending = None
    if worker is not None:
        pending = worker.submit(_value_loss, cfg, models, b, idx, st.scaler, None, share.value)
    loss, pg_loss, pst, v_shared = _policy_objective(cfg, models, st.kl_coef, b, idx)
    v_loss, vst = torch.zeros(()), {"clipfrac": torch.zeros(())}
    if pending is not None:
        try:
            check("loss/policy", pg_loss.detach(), it)
            st.scaler.scale_loss(combine(cfg, loss, None, share.policy)).backward()
        finally:
            v_loss, vst = pending.result()
        check("loss/value", v_loss.detach(), it)
        return pg_loss, pst, v_loss, vst
    if use_value:  # one backward through both losses (shared trunk: one forward too)
        v_loss, vst = _value_loss(cfg, models, b, idx, None, v_shared)
    check("loss/policy", pg_loss.detach(), it)
    check("loss/value", v_loss.detach(), it)
    total = combine(cfg, loss, v_loss if use_value else None, share.policy, share.value)
    st.scaler.scale_loss(total).backward()
    return pg_loss, pst, v_loss, vst


def _reduced(w: dist.World, share: _Shares, pg_loss, pst, v_loss, vst):
    """The step's losses and statistics over every rank: each rank's weighted by its share (losses by the
    aggregation's denominator, statistics, token means, by tokens), summed; then the gradients summed."""
    if not w.parallel:
        return pg_loss, pst, v_loss, vst
    p_keys = [k for k, v in pst.items() if v is not None]
    v_keys = [k for k, v in (vst or {}).items() if v is not None]
    parts = [share.policy * pg_loss.detach().double().cpu()]
    parts += [share.policy_tokens * pst[k].detach().double().cpu() for k in p_keys]
    if v_loss is not None:
        parts += [share.value * v_loss.detach().double().cpu()]
        parts += [share.value_tokens * vst[k].detach().double().cpu() for k in v_keys]
    flat = dist.sum_(torch.stack(parts), w)
    pg_loss, pst = flat[0].float(), {**pst, **{k: flat[1 + i].float() for i, k in enumerate(p_keys)}}
    if v_loss is not None:
        at = 1 + len(p_keys)
        v_loss, vst = flat[at].float(), {**vst, **{k: flat[at + 1 + i].float() for i, k in enumerate(v_keys)}}
    return pg_loss, pst, v_loss, vst


def _clip_and_step(cfg: RunConfig, st: UpdateState, it: int, use_value: bool, pg_loss, pst, v_loss, vst) -> _Step:
    """Unscale (fp16), clip the accumulated gradients (policy and value apart), one Adam step; the step's
    statistics. An fp16 step whose gradients overflowed is skipped: no clipping, no Adam step, norms None."""
    gnorm = vnorm = None
    finite = st.scaler.unscale_(st.params.grads())  # True without fp16
    if finite:
        gnorm, vnorm = _clip(cfg, st, it, use_value)
        st.optimizer.step()
    st.scaler.update(finite)
    clip = (pst["clipfrac_low"], pst["clipfrac_high"], pst.get("dualclip_frac"), pst.get("cov_frac"))
    if not use_value:
        return _Step(pst["approxkl"], pst["clipfrac"], pg_loss, gnorm, None, None, None, *clip)
    return _Step(pst["approxkl"], pst["clipfrac"], pg_loss, gnorm, v_loss, vst["clipfrac"], vnorm, *clip)


def _clip(cfg: RunConfig, st: UpdateState, it: int, use_value: bool) -> tuple[Tensor, Tensor | None]:
    """Clip the policy's and the value's gradients apart; their norms before clipping."""
    # Policy and value gradients are clipped apart (same max norm): with one global norm the value
    # gradient would eat the policy's clipping budget, and the policy's step would depend on
    # whether a value model is present (token level) or not (sequence level).
    gnorm = clip_norm_(st.params.group_grads("policy"), cfg.ppo.max_grad_norm)
    check("grad/norm", gnorm, it)
    vnorm = None
    if use_value:
        vnorm = clip_norm_(st.params.group_grads("value"), cfg.ppo.max_grad_norm)
        check("grad/value_norm", vnorm, it)
    return gnorm, vnorm


def _policy_objective(cfg: RunConfig, models: Models, kl_coef: float, b: Batch, idx: Tensor):
    """(loss, policy loss, its stats, shared-trunk values or None) of rows ``idx``:
    L = L_clip - entropy_coef * agg(H) [+ beta * agg(kl(pi, pi_ref)) when kl.placement=loss], every term
    over ``b.policy_mask()`` (rows without EOS left out under train.truncated=mask)."""
    ro, agg = b.ro, cfg.loss.agg
    kw = policy_loss_kwargs(cfg, models.task)
    m_mask, loss_mask = ro.mask[idx], b.policy_mask()[idx]
    shared = isinstance(models.value, SharedTrunkValue)
    with autocast(cfg, models.policy):
        new_logp, entropy, v_shared = policy_forward(  # (b, T) each, 0 after EOS
            models.policy, ro.prompt_ids[idx], ro.prompt_mask[idx], ro.response_ids[idx], m_mask,
            cfg.rollout.temperature, with_entropy=cfg.ppo.entropy_coef > 0,
            value_head=models.value.score if shared else None,
        )
    weights = None if b.weights is None else b.weights[idx]
    pg_loss, pst = L.policy_loss(new_logp, ro.logprobs[idx], b.adv[idx], loss_mask, **kw, **loss_mode_kwargs(cfg),
                                 weights=weights)
    loss = pg_loss
    if entropy is not None:
        loss = loss - cfg.ppo.entropy_coef * M.aggregate(entropy, loss_mask, agg, kw["norm_length"])
    if cfg.kl.placement == "loss" and kl_coef > 0:
        # KL as a loss term (GRPO-style): beta * agg(kl(pi_theta, pi_ref)); k1+ / k3+: the gradient of k2
        kl_tok = M.kl_penalty(new_logp, ro.ref_logprobs[idx], cfg.kl.estimator)
        loss = loss + kl_coef * M.aggregate(kl_tok, loss_mask, agg, kw["norm_length"])
    return loss, pg_loss, pst, v_shared


def _value_loss(cfg: RunConfig, models: Models, b: Batch, idx: Tensor, backward: LossScaler | None,
                v_new: Tensor | None = None, share: float = 1.0):
    """The value loss of rows ``idx`` (and, on the side thread, its backward: of its term of the total loss,
    ``share`` x vf_coef x the loss, scaled by ``backward``): (loss, stats)."""
    ro, vmask = b.ro, b.vmask[idx]
    if v_new is None:
        with autocast(cfg, models.value):  # autocast state is per thread
            v_new = token_values(models.value, ro.prompt_ids[idx], ro.prompt_mask[idx], ro.response_ids[idx], vmask)
    v_loss, vst = M.value_loss(v_new, ro.values[idx], b.returns[idx], vmask, cfg.ppo.value_clip, cfg.loss.agg,
                               norm_length(cfg, models.task))
    if backward is not None:
        backward.scale_loss(combine(cfg, None, v_loss, w_v=share)).backward()
    return v_loss, vst
