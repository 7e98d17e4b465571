"""train.dtype: the loss scaler's arithmetic by hand, its wiring through every backward of the update
(ordinary, side thread, micro-batches, shared trunk), a planted overflow skipping exactly one step, fp16
gradients against fp32's, the renamed key, and the TRL references' mapping or refusal."""

from __future__ import annotations

import math

import pytest
import torch

from harness.algos.scaler import LossScaler
from harness.config import ConfigError, build_config
from harness.lm.rollout import make_score_fn
from harness.ppo.loop import init_state, ppo_iteration
from harness.ppo.update import NonFiniteError
from harness.warmstart.load import load_models
from tests.conftest import TINY


def test_loss_scaler_arithmetic_by_hand():
    s = LossScaler(True, init_scale=8.0, growth_interval=3)
    assert float(s.scale_loss(torch.tensor(0.25))) == 2.0
    g = [torch.tensor([8.0, -16.0]), torch.tensor([4.0])]
    assert s.unscale_(g) and g[0].tolist() == [1.0, -2.0] and g[1].tolist() == [0.5]
    s.update(True)
    s.update(True)
    assert (s.scale, s.good_steps, s.skipped) == (8.0, 2, 0)
    bad = [torch.tensor([1.0, math.inf]), torch.tensor([2.0])]
    assert not s.unscale_(bad)
    s.update(False)  # overflow: halve, restart the count, one skip
    assert (s.scale, s.good_steps, s.skipped) == (4.0, 0, 1)
    assert not s.unscale_([torch.tensor([math.nan])])
    s.update(False)
    assert (s.scale, s.skipped) == (2.0, 2)
    for _ in range(3):  # growth_interval good steps in a row: double
        s.update(True)
    assert (s.scale, s.good_steps) == (4.0, 0)
    restored = LossScaler(True)
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == {"scale": 4.0, "good_steps": 0, "skipped": 2}


def test_a_disabled_scaler_is_the_identity():
    s = LossScaler(False)
    loss = torch.tensor(0.3)
    assert s.scale_loss(loss) is loss
    g = [torch.tensor([math.inf])]
    assert s.unscale_(g) and math.isinf(float(g[0][0]))  # untouched: fp32's NonFiniteError still sees it
    s.update(False)
    assert s.state_dict() == {"scale": 2.0**16, "good_steps": 0, "skipped": 0}


def _first_step_grads(over: dict, scaler: LossScaler | None = None, threads: int | None = None):
    """One iteration; the flat gradients the first optimiser step stepped with (after unscaling and clipping)."""
    cfg = build_config(None, {**TINY, "ppo.max_grad_norm": None, "train.device": "cpu", **over})
    m = load_models(cfg)
    st = init_state(cfg, m)
    if scaler is not None:
        st.scaler = scaler
    seen: list[list[torch.Tensor]] = []
    st.optimizer.register_step_pre_hook(lambda opt, a, k: seen.append([b.grad.clone() for b in st.params.flat]))
    n = torch.get_num_threads()
    torch.set_num_threads(threads or n)
    try:
        metrics = ppo_iteration(cfg, m, st, make_score_fn(m.reward, m.task.gold))
    finally:
        torch.set_num_threads(n)
    return torch.cat([g.flatten() for g in seen[0]]), metrics, st


@pytest.mark.parametrize("over, threads", [
    ({}, 1),  # one backward through the policy and value losses
    ({}, 2),  # the value model's backward on the side thread
    ({"ppo.micro_batch_size": 2}, 1),  # one backward per micro-batch
    ({"model.value_trunk": "shared"}, 1),
], ids=["ordinary", "side-thread", "micro-batches", "shared-trunk"])
def test_every_backward_is_scaled_and_unscaled(over, threads):
    """A loss scale of 2^10 in fp32: a power of two commutes with every op of the backward, so the unscaled
    gradients equal the unscaled run's bit for bit; a backward left unscaled would come out 2^-10 too small."""
    plain, m_plain, _ = _first_step_grads(over, threads=threads)
    scaled, m_scaled, st = _first_step_grads(over, LossScaler(True, init_scale=2.0**10), threads=threads)
    assert float(plain.abs().max()) > 0
    assert torch.equal(plain, scaled)
    assert m_scaled["amp/loss_scale"] == 2.0**10 and m_scaled["amp/skipped_steps"] == 0.0
    assert "amp/loss_scale" not in m_plain  # fp32 logs no scaler keys
    assert st.scaler.good_steps == 2  # TINY: 1 epoch x 2 minibatches, both taken


def test_a_planted_overflow_skips_exactly_one_step_and_halves_the_scale():
    cfg = build_config(None, {**TINY, "train.dtype": "fp16", "train.device": "cpu"})
    m = load_models(cfg)
    st = init_state(cfg, m)
    assert st.scaler.enabled and st.scaler.scale == 2.0**16
    planted = []

    def overflow_once(g):
        if not planted:
            planted.append(1)
            return torch.full_like(g, math.inf)
        return g

    next(m.policy.parameters()).register_hook(overflow_once)
    taken = []
    st.optimizer.register_step_pre_hook(lambda opt, a, k: taken.append(1))
    metrics = ppo_iteration(cfg, m, st, make_score_fn(m.reward, m.task.gold))  # no NonFiniteError
    assert len(taken) == 1  # 2 minibatches, the first skipped
    assert metrics["amp/skipped_steps"] == 1.0 and metrics["amp/loss_scale"] == 2.0**15
    assert st.scaler.skipped == 1 and st.scaler.good_steps == 1
    assert all(math.isfinite(v) for v in metrics.values())  # grad/norm: the mean over the step taken
    assert int(st.optimizer.state[st.params.flat[0]]["step"]) == 1  # Adam counted the step taken only


def test_in_fp32_the_same_overflow_is_a_nonfinite_error():
    cfg = build_config(None, {**TINY, "train.device": "cpu"})
    m = load_models(cfg)
    st = init_state(cfg, m)
    next(m.policy.parameters()).register_hook(lambda g: torch.full_like(g, math.inf))
    with pytest.raises(NonFiniteError, match="grad/norm became"):
        ppo_iteration(cfg, m, st, make_score_fn(m.reward, m.task.gold))


def test_fp16_gradients_after_unscaling_match_fp32():
    """The tiny policy's gradient of a token-mean log-likelihood, under fp16 autocast with the loss scaled by
    2^16 and unscaled, against fp32: equal within fp16's rounding (relative error of the whole gradient)."""
    from harness.lm import forward, rollout

    cfg = build_config(None, {**TINY, "train.device": "cpu"})
    m = load_models(cfg)
    ro = rollout.collect(m.policy, m.ref, m.tokenizer, list(m.task.train_prompts[:8]), max_new_tokens=6,
                         temperature=1.0, generator=torch.Generator().manual_seed(0),
                         score_fn=lambda r: torch.zeros(r.size), gold_fn=m.task.gold)
    params = [p for p in m.policy.parameters() if p.requires_grad]
    grads = {}
    for dtype in ("fp32", "fp16"):
        for p in params:
            p.grad = None
        scaler = LossScaler(dtype == "fp16")
        with torch.autocast("cpu", dtype=torch.float16, enabled=dtype == "fp16"):
            lp = forward.policy_forward(m.policy, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.mask, 1.0).logprobs
        mask = ro.mask.clone()  # the rollout's tensors are inference tensors
        loss = -(lp * mask).sum() / mask.sum()
        scaler.scale_loss(loss).backward()
        g = [p.grad for p in params]
        assert scaler.unscale_(g)
        grads[dtype] = torch.cat([x.flatten() for x in g])
    g32, g16 = grads["fp32"], grads["fp16"]
    rel = float((g16 - g32).norm() / g32.norm())
    assert 0 < rel < 1e-2, rel  # fp16 rounding, not equality (autocast ran) and not another gradient


def test_train_autocast_is_refused_with_the_key_to_write():
    for source in ({"train.autocast": "bf16"}, None):
        with pytest.raises(ConfigError) as e:
            if source:
                build_config(None, source)
            else:
                build_config({"train": {"autocast": "none"}})
        assert str(e.value).startswith("config key 'train.autocast': renamed: write train.dtype")
    with pytest.raises(ConfigError, match="'train.dtype': input should be 'fp32', 'bf16' or 'fp16'"):
        build_config(None, {"train.dtype": "fp8"})
    assert build_config().train.dtype == "fp32"


def test_a_sweep_axis_on_train_autocast_is_refused_by_name():
    from harness.sweep.spec import SpecError, _check_key

    with pytest.raises(SpecError, match="renamed: write train.dtype"):
        _check_key("train.autocast", "axes[0]")


@pytest.mark.parametrize("impl", ["trl", "trl-grpo", "trl-rloo"])
def test_trl_references_map_bf16_and_refuse_fp16_on_the_cpu(impl, tmp_path):
    import importlib

    from harness.impls import get
    from harness.profiles import PROFILES

    mod = importlib.import_module(get(impl).check.partition(":")[0])
    base = dict(PROFILES.get(impl, {}))  # the implementation's faithful defaults: expressible
    mod.check_expressible(build_config(None, {**base, "impl": impl, "train.device": "cpu"}))
    with pytest.raises(ValueError) as e:
        mod.check_expressible(build_config(None, {**base, "impl": impl, "train.device": "cpu", "train.dtype": "fp16"}))
    assert str(e.value).startswith("config key 'train.dtype': 'fp16' cannot be expressed")
    assert "\n" not in str(e.value)
    from baselines.trl_ppo import precision_args

    for dtype, want in (("fp32", (False, False)), ("bf16", (True, False)), ("fp16", (False, True))):
        args = precision_args(build_config(None, {"train.dtype": dtype}))
        assert (args["bf16"], args["fp16"]) == want
    if impl == "trl":  # the PPOConfig itself carries the mapping
        cfg = build_config(None, {**base, "impl": impl, "train.device": "cpu", "train.dtype": "bf16"})
        mod.check_expressible(cfg)
        ppo_cfg = mod.trl_args(cfg, 6, str(tmp_path))
        assert ppo_cfg.bf16 and not ppo_cfg.fp16


def test_the_loss_scale_is_part_of_a_checkpoint(tmp_path):
    """An fp16 run resumes with its scale, good-step count and skips (else its steps after a resume would
    differ from the uninterrupted run's)."""
    from harness import checkpoint

    cfg = build_config(None, {**TINY, "train.dtype": "fp16", "train.device": "cpu"})
    m = load_models(cfg)
    st = init_state(cfg, m)
    st.iteration = 3
    st.scaler.load_state_dict({"scale": 2.0**13, "good_steps": 7, "skipped": 3})
    path = checkpoint.save(tmp_path, m, st, {}, cfg.to_yaml(), keep=1)
    fresh = init_state(cfg, m)
    assert fresh.scaler.state_dict() == {"scale": 2.0**16, "good_steps": 0, "skipped": 0}
    checkpoint.restore(path, m, fresh)
    assert fresh.scaler.state_dict() == {"scale": 2.0**13, "good_steps": 7, "skipped": 3}
