"""Parity: on identical tensors the custom core's loss math equals TRL 1.12's GRPO / RLOO loss code.

TRL's own ``GRPOTrainer._compute_loss`` and ``RLOOTrainer._compute_loss`` run unmodified on a bare
trainer object (``object.__new__``, only the attributes those methods read set by hand); the one
model call in them, ``_get_per_token_logps_and_entropies``, is replaced on the instance by a stub
returning hand-made log-probs (a leaf tensor), so the loss and its gradient w.r.t. the log-probs
are TRL's computation on exactly the tensors ``harness.algos.math`` receives.

The advantages are TRL's too: ``GRPOTrainer._generate_and_score_completions`` /
``RLOOTrainer._generate_and_score_completions`` run on the tiny cached models, and the advantages
they return are compared with ``harness.algos.math.sequence_advantages`` on the rewards they saw.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

from trl import GRPOTrainer, RLOOTrainer  # noqa: E402

from baselines import trl_grpo, trl_rloo  # noqa: E402
from harness.algos import estimators as E  # noqa: E402
from harness.algos import math as M  # noqa: E402
from harness.config import build_config  # noqa: E402

B, T = 6, 7
EPS, EPS_HIGH = 0.2, 0.28


class _Accel:
    """What _compute_loss asks of accelerate on one CPU process."""

    num_processes = 1

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def tensors(seed: int = 0):
    """(logprobs leaf (B, T), old (B, T), ref (B, T), advantages (B,), ragged mask (B, T))."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g) * 3 - 0.1
    logprobs = (old + 0.6 * torch.randn(B, T, generator=g)).requires_grad_(True)
    ref = old + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    lengths = torch.tensor([7, 1, 4, 6, 3, 7])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    return logprobs, old, ref, adv, mask


def grpo_instance(logprobs, *, loss_type, level, eps_high, delta, beta, max_len=T, spg=1):
    tr = object.__new__(GRPOTrainer)
    tr.__dict__.update(
        loss_type=loss_type, importance_sampling_level=level, epsilon_low=EPS, epsilon_high=eps_high, beta=beta,
        args=SimpleNamespace(delta=delta, use_bias_correction_kl=False, steps_per_generation=spg),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        vllm_importance_sampling_correction=False, aux_loss_enabled=False, _entropy_bonus_enabled=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=max_len,
        accelerator=_Accel(), _metrics={"train": __import__("collections").defaultdict(list)},
    )
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (logprobs, torch.zeros_like(logprobs), None)
    return tr


def grpo_loss(logprobs, old, ref, adv, mask, num_items=None, **kw):
    tr = grpo_instance(logprobs, **kw)
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(mask.sum() if num_items is None else num_items)),
    }
    return tr._compute_loss(None, inputs), tr._metrics["train"]


def harness_loss(logprobs, old, ref, adv, mask, *, agg, level, eps_high, delta, beta, norm_length=None):
    m = mask.float()
    loss, stats = M.policy_loss(logprobs, old, adv[:, None], m, EPS, agg, ratio_level=level, clip_eps_high=eps_high,
                                dual_clip=delta, norm_length=norm_length)
    if beta:
        loss = loss + beta * M.aggregate(M.kl_penalty(logprobs, ref, "k3"), m, agg, norm_length)
    return loss, stats


def value_and_grad(fn, logprobs):
    loss = fn()
    (grad,) = torch.autograd.grad(loss, logprobs)
    return loss.detach(), grad


CASES = [  # (TRL loss_type, harness loss.agg)
    ("grpo", "seq-mean-token-mean"),
    ("bnpo", "token-mean"),
    ("dr_grpo", "seq-mean-token-sum-norm"),
]


@pytest.mark.parametrize("loss_type, agg", CASES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("eps_high, delta", [(EPS, None), (EPS_HIGH, None), (EPS, 1.5), (EPS_HIGH, 1.5)])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_and_gradient_equal_the_harness(loss_type, agg, level, eps_high, delta, beta):
    lp, old, ref, adv, mask = tensors()
    max_len = T + 3  # dr_grpo's divisor is max_completion_length, not the batch's width
    kw = dict(level=level, eps_high=eps_high, delta=delta, beta=beta)
    trl_v, trl_g = value_and_grad(lambda: grpo_loss(lp, old, ref, adv, mask, loss_type=loss_type, max_len=max_len,
                                                    **kw)[0], lp)
    ours_v, ours_g = value_and_grad(lambda: harness_loss(lp, old, ref, adv, mask, agg=agg, norm_length=max_len,
                                                         **kw)[0], lp)
    assert torch.allclose(trl_v, ours_v, atol=1e-6, rtol=0), (trl_v, ours_v)
    assert torch.allclose(trl_g, ours_g, atol=1e-6, rtol=0), (trl_g - ours_g).abs().max()
    assert trl_g.abs().sum() > 0


def test_the_cases_clip_and_dual_clip_something():
    """The tensors above exercise both clip bounds and the dual-clip bound (else parity is vacuous)."""
    lp, old, _, adv, mask = tensors()
    _, stats = M.policy_loss(lp, old, adv[:, None], mask.float(), EPS, "token-mean", clip_eps_high=EPS_HIGH,
                             dual_clip=1.5)
    assert stats["clipfrac_low"] > 0 and stats["clipfrac_high"] > 0 and stats["dualclip_frac"] > 0


@pytest.mark.parametrize("eps_high", [EPS, EPS_HIGH])
def test_grpo_token_level_clip_fractions_equal(eps_high):
    lp, old, ref, adv, mask = tensors(1)
    _, logged = grpo_loss(lp, old, ref, adv, mask, loss_type="bnpo", level="token", eps_high=eps_high, delta=None,
                          beta=0.0)
    _, stats = harness_loss(lp, old, ref, adv, mask, agg="token-mean", level="token", eps_high=eps_high, delta=None,
                            beta=0.0)
    for theirs, ours in (("low_mean", "clipfrac_low"), ("high_mean", "clipfrac_high"), ("region_mean", "clipfrac")):
        assert abs(logged[f"clip_ratio/{theirs}"][0] - float(stats[ours])) < 1e-6


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_dapo_is_a_token_mean_only_with_one_minibatch(level):
    """dapo divides by the GENERATION batch's tokens / steps_per_generation: with one minibatch that is
    the harness's token-mean; with more, a token sum over a constant (not the minibatch's own count)."""
    lp, old, ref, adv, mask = tensors(2)
    kw = dict(level=level, eps_high=EPS_HIGH, delta=None, beta=0.0)
    one = grpo_loss(lp, old, ref, adv, mask, loss_type="dapo", **kw)[0]
    ours = harness_loss(lp, old, ref, adv, mask, agg="token-mean", **kw)[0]
    assert torch.allclose(one, ours, atol=1e-6, rtol=0)
    n_total = 3 * int(mask.sum())  # a generation batch of 2 minibatches holding 3x these tokens
    two = grpo_loss(lp, old, ref, adv, mask, loss_type="dapo", num_items=n_total, spg=2, **kw)[0]
    token_sum = harness_loss(lp, old, ref, adv, mask, agg="token-sum", **kw)[0]
    assert torch.allclose(two, token_sum * 2 / n_total, atol=1e-6, rtol=0)
    assert not torch.allclose(two, ours, atol=1e-3)


# ---- RLOO ----------------------------------------------------------------------------------------


def rloo_loss(logprobs, old_logps, adv, mask):
    tr = object.__new__(RLOOTrainer)
    tr.__dict__.update(epsilon_low=EPS, epsilon_high=EPS_HIGH, aux_loss_enabled=False, accelerator=_Accel(),
                       model=SimpleNamespace(training=True),
                       _metrics={"train": __import__("collections").defaultdict(list)})
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (logprobs, torch.zeros_like(logprobs), None)
    inputs = {"prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
              "old_logps": old_logps}
    return tr._compute_loss(None, inputs)


def test_rloo_on_policy_gradient_equals_token_ratio_seq_mean_token_sum():
    """On-policy (old = current, r = 1): RLOO's gradient = the harness's token-level surrogate with
    seq-mean-token-sum (what trl-rloo requires); the loss VALUES differ (-mean A vs -mean A |y|)."""
    lp, _, _, adv, mask = tensors(3)
    old_logps = (lp.detach() * mask).sum(1)
    trl_v, trl_g = value_and_grad(lambda: rloo_loss(lp, old_logps, adv, mask), lp)
    ours_v, ours_g = value_and_grad(lambda: M.policy_loss(lp, lp.detach(), adv[:, None], mask.float(), EPS,
                                                          "seq-mean-token-sum", clip_eps_high=EPS_HIGH)[0], lp)
    assert torch.allclose(trl_g, ours_g, atol=1e-6, rtol=0)
    assert torch.allclose(trl_v, -adv.mean(), atol=1e-6)
    assert torch.allclose(ours_v, -(adv * mask.sum(1)).mean(), atol=1e-6)


def test_rloo_off_policy_clips_the_sequence_likelihood_ratio():
    """Off-policy RLOO clips exp(sum_t log r_t): no harness ratio level matches (hence trl-rloo refuses
    ppo.epochs / ppo.minibatches > 1)."""
    lp, old, _, adv, mask = tensors(4)
    trl_g = value_and_grad(lambda: rloo_loss(lp, (old * mask).sum(1), adv, mask), lp)[1]
    for level in ("token", "sequence"):
        ours_g = value_and_grad(lambda level=level: M.policy_loss(lp, old, adv[:, None], mask.float(), EPS, "seq-mean-token-sum",
                                                      clip_eps_high=EPS_HIGH, ratio_level=level)[0], lp)[1]
        assert not torch.allclose(trl_g, ours_g, atol=1e-3)


# ---- the mapping -----------------------------------------------------------------------------------

GRPO_OK = {"advantage.level": "sequence", "advantage.baseline": "group_norm", "advantage.whiten": False,
           "kl.placement": "loss", "kl.estimator": "k3"}


@pytest.mark.parametrize("agg, loss_type", [(a, t) for t, a in CASES])
def test_trl_args_pick_the_loss_type_of_the_aggregation(tmp_path, agg, loss_type):
    cfg = build_config(overrides={**GRPO_OK, "loss.agg": agg, "ppo.clip_eps_high": 0.28, "ppo.dual_clip": 3.0,
                                  "train.truncated": "mask", "rollout.batch_size": 8, "rollout.group_size": 2,
                                  "ppo.minibatches": 2, "ppo.epochs": 3, "train.iterations": 5})
    trl_grpo.check_expressible(cfg)
    a = trl_grpo.trl_args(cfg, 6, str(tmp_path))
    assert (a.loss_type, a.epsilon, a.epsilon_high, a.delta, a.scale_rewards) == (loss_type, 0.2, 0.28, 3.0, "group")
    assert a.mask_truncated_completions and a.beta == cfg.kl.coef and a.max_completion_length == 6
    # one harness iteration = one generation batch of B, ppo.minibatches steps, ppo.epochs passes
    assert (a.generation_batch_size, a.per_device_train_batch_size, a.steps_per_generation) == (8, 4, 2)
    assert (a.num_iterations, a.num_generations, a.max_steps, a.gradient_accumulation_steps) == (3, 2, 30, 1)


def test_rloo_args():
    cfg = build_config(overrides={"advantage.level": "sequence", "advantage.baseline": "rloo",
                                  "loss.agg": "seq-mean-token-sum", "ppo.epochs": 1, "ppo.minibatches": 1})
    trl_rloo.check_expressible(cfg)
    a = trl_rloo.trl_args(cfg, 6, "/tmp/unused-trl-rloo")
    assert a.normalize_advantages and a.beta == cfg.kl.coef and a.steps_per_generation == 1 and a.num_iterations == 1


# ---- the advantages: TRL's own _generate_and_score_completions on the tiny models ------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """impl -> (the rewards TRL's trainer saw (B,), the advantages it returned (B,), cfg) for one batch."""
    from baselines.trl_common import HarnessReward, make_policy_optimizer, prompt_dataset
    from harness.config import response_length
    from harness.warmstart.load import load_models
    from tests.conftest import TINY

    out = {}
    for impl, cls, module, extra in (("trl-grpo", GRPOTrainer, trl_grpo, GRPO_OK), ("trl-rloo", RLOOTrainer, trl_rloo, {
            "advantage.level": "sequence", "advantage.baseline": "rloo", "loss.agg": "seq-mean-token-sum",
            "ppo.epochs": 1, "ppo.minibatches": 1})):
        cfg = build_config(overrides={**TINY, **extra, "train.missing_eos_penalty": None, "rollout.group_size": 4})
        module.check_expressible(cfg)
        models = load_models(cfg)
        if impl == "trl-rloo":  # move the policy off the reference TRL loads from its folder: a non-zero KL
            torch.manual_seed(1)
            with torch.no_grad():
                for p in models.policy.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        T_ = response_length(cfg, models.task)
        reward = HarnessReward(models, T_, None)
        trainer = cls(model=models.policy, reward_funcs=[reward], args=module.trl_args(cfg, T_, str(tmp_path_factory.mktemp(impl))),
                      train_dataset=prompt_dataset(models.task.train_prompts, 2), processing_class=models.tokenizer,
                      optimizers=make_policy_optimizer(cfg, models.policy))
        k = cfg.rollout.group_size
        batch = [{"prompt": p} for p in models.task.train_prompts[: cfg.rollout.batch_size // k] for _ in range(k)]
        torch.manual_seed(0)
        got = trainer._generate_and_score_completions(batch)
        out[impl] = (torch.tensor(reward.drain().scored), got, cfg, trainer)
        if impl == "trl-grpo":  # TRL built its reference from the policy's folder: the harness's reference
            theirs, ours = trainer.ref_model.state_dict(), models.ref.state_dict()
            assert theirs.keys() == ours.keys() and all(torch.equal(theirs[n], ours[n]) for n in ours)
    return out


def test_grpo_group_norm_advantages_are_the_harness_s_up_to_the_epsilon(generated):
    """TRL: (R - mean_g) / (std_g + 1e-4), std_g UNBIASED (nanstd applies Bessel's correction), as the
    harness's group_norm; the harness adds 1e-8, not 1e-4 (a relative difference ~1e-4 / std_g)."""
    scores, got, cfg, _ = generated["trl-grpo"]
    k = cfg.rollout.group_size
    g = scores.view(-1, k)
    assert (g.std(1) > 0).all()  # distinct scores in each group, or the comparison is vacuous
    trl_formula = ((g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=True, keepdim=True) + 1e-4)).reshape(-1)
    assert torch.allclose(got["advantages"], trl_formula, atol=1e-6, rtol=0)
    ours = E.sequence_advantages(scores, "group_norm", k)
    assert torch.allclose(got["advantages"], ours, rtol=2e-4 / float(g.std(1).min()), atol=0)
    assert not torch.equal(got["advantages"], ours)


def test_rloo_advantages_equal_the_harness_rloo_whitened(generated):
    """TRL: R = score - beta sum_t (old - ref) (k1 of the sampling policy, in the reward), the leave-one-out
    baseline, then (A - mean) / (std + 1e-4); RLOO advantages have mean 0 in every group, so this is
    the harness's rloo + scale_whiten up to the epsilon (1e-4 vs 1e-8)."""
    scores, got, cfg, trainer = generated["trl-rloo"]
    k = cfg.rollout.group_size
    mask = got["completion_mask"].float()
    ids = torch.cat([got["prompt_ids"], got["completion_ids"]], 1)
    attn = torch.cat([got["prompt_mask"], got["completion_mask"]], 1)
    with torch.no_grad():  # TRL's own logprob code on its own reference model
        ref, _, _ = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, attn, mask.shape[1])
    kl_sum = got["old_logps"] - (ref * mask).sum(1)  # sum_t k1 of the sampling policy
    assert kl_sum.abs().max() > 1e-3  # the policy was moved off the reference
    R = scores - cfg.kl.coef * kl_sum
    A = E.sequence_advantages(R, "rloo", k)
    assert abs(float(A.mean())) < 1e-6
    assert torch.allclose(got["advantages"], A / (A.std() + 1e-4), atol=1e-6, rtol=0)
    assert torch.allclose(got["advantages"], M.scale_whiten(A), rtol=1e-3, atol=0)
