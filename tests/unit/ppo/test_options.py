"""Every config option of the PPO loop, observed through the REAL ``ppo_iteration``.

Each test runs one (or a few) real iterations of ``harness.ppo.loop.ppo_iteration`` on the
tiny cached models and checks what an option must do against a hand computation: the
rewards matrix handed to GAE, the advantages that reach ``policy_loss``, the gradients and
learning rates the optimiser steps with, the controller's coefficient, the policy's entropy
or KL after a step. The functions the loop calls through module attributes
(``harness.algos.math.*``, called as ``M.fn`` by ``harness.ppo.loop`` and ``harness.ppo.update``;
``collect`` and ``probe_gradient_variance``, globals of ``harness.ppo.loop``) are wrapped by spies
that record their arguments and call the original: the loop is the real one, only observed.

Every test's docstring says which wrong wiring makes it fail. A "discriminating" assertion
next to a hand computation checks that the option's value actually changes the expected
number at these tensors (otherwise the test could not fail).

Keys covered here: seed, rollout.batch_size / group_size / temperature, task.response_length,
ppo.clip_eps / epochs / minibatches / lr / lr_decay / adam_eps / max_grad_norm / vf_coef /
value_clip / entropy_coef / target_kl, kl.coef / estimator / placement / target / horizon,
advantage.level / baseline / gamma / lam / whiten, loss.agg, train.missing_eos_penalty /
iterations, probe.every / microbatches.

Skipped, covered elsewhere or pure plumbing: eval.* (evaluate.py and the smoke tests),
task.name (tests/unit/test_tasks.py), model.* (model building and caching, models.py;
model.value_trunk=shared in test_loop.py), train.dtype (test_loop.py's bf16 test, test_precision.py),
train.threads (run.py sets torch's thread count; no effect on the math), impl (run.py's
registry; the TRL baseline has its own tests).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
from types import SimpleNamespace

import pytest
import torch

import harness.algos.math as M
import harness.ppo.loop as TR
from harness.algos.estimators import BASELINES
from harness.config import build_config
from harness.lm import forward, rollout, sampling
from harness.lm.rollout import make_score_fn
from harness.ppo.loop import init_state, ppo_iteration
from harness.warmstart.load import load_models
from tests.conftest import TINY

# With seed 0 and 12 response tokens the tiny SFT policy ends some rows early (EOS at 9, 11) and runs
# others to the end without EOS: the tests that need both kinds of row assert it.
MIXED_LEN = 12
PERTURB = 0.03  # noise on the policy's weights: KL(pi || ref) ~ 0.1 nats per completion


# ---- harness: config, models, spies ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine the tiny models run ~15x faster than with two
    (the trainer then steps the value model on this thread; the vf_coef test also runs two threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(over: dict | None = None):
    return build_config(None, {**TINY, **(over or {})})


def _models(cfg, perturb: float = 0.0):
    """The cached tiny models for ``cfg``; the policy (not the ref) moved by seeded noise when asked.

    Loaded with TINY's model keys and response length, so no test builds a new reward model.
    """
    load_cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"response_length": TINY["task.response_length"]})})
    m = load_models(load_cfg)
    if perturb:
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for p in m.policy.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=g))
    return m


def _detach(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, tuple):
        return tuple(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


class Tape:
    """Spies on what ``ppo_iteration`` calls; each call recorded as {arg name: value, "out": result}."""

    def __init__(self, monkeypatch):
        self.mp = monkeypatch
        self.calls: dict[str, list[dict]] = {}
        self.steps: list[dict] = []

    def spy(self, module, name: str) -> list[dict]:
        orig = getattr(module, name)
        sig = inspect.signature(orig)
        calls = self.calls.setdefault(name, [])

        def wrapper(*a, **kw):
            out = orig(*a, **kw)
            bound = sig.bind(*a, **kw)
            bound.apply_defaults()
            rec = {k: v if k in ("policy", "ref", "value_model", "score_fn", "gold_fn", "generator", "tokenizer")
                   else _detach(v) for k, v in bound.arguments.items()}
            rec["out"] = out if name == "collect" else _detach(out)
            calls.append(rec)
            return out

        self.mp.setattr(module, name, wrapper)
        return calls

    def spy_baseline(self, name: str) -> list[dict]:
        """The loop calls ``BASELINES[name].fn``: that entry's function spied on, recorded under "baseline"."""
        entry = BASELINES[name]
        holder = SimpleNamespace(baseline=entry.fn)
        calls = self.spy(holder, "baseline")
        self.mp.setitem(BASELINES._entries, name, dataclasses.replace(entry, fn=holder.baseline))
        return calls

    def watch_optimizer(self, st, grads: bool = False) -> None:
        """Record, at every optimiser step, the lr and the policy / value gradient norms it steps with."""

        def norm(gs):
            return float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in gs]))) if gs else 0.0

        def pre(opt, args, kwargs):
            rec = {"lr": opt.param_groups[0]["lr"], "policy_norm": norm(st.params.group_grads("policy")),
                   "value_norm": norm(st.params.group_grads("value"))}
            if grads:
                rec["grads"] = [b.grad.detach().clone() for b in st.params.flat]
                rec["params"] = [b.detach().clone() for b in st.params.flat]
            self.steps.append(rec)

        st.optimizer.register_step_pre_hook(pre)

    @property
    def ro(self) -> rollout.Rollout:
        return self.calls["collect"][-1]["out"]


def _run(monkeypatch, over: dict | None = None, *, perturb: float = 0.0, score_fn=None, iterations: int = 1,
         spy: tuple[str, ...] = ("collect", "gae", "policy_loss", "value_loss", "baseline"),
         grads: bool = False):
    """``iterations`` real iterations; returns (cfg, models, state, metrics per iteration, tape)."""
    cfg = _cfg(over)
    m = _models(cfg, perturb)
    st = init_state(cfg, m)
    tape = Tape(monkeypatch)
    for name in spy:
        if name == "baseline":
            tape.spy_baseline(cfg.advantage.baseline)
        else:
            tape.spy(TR if name == "collect" else M, name)
    tape.watch_optimizer(st, grads=grads)
    score = score_fn or make_score_fn(m.reward, m.task.gold)
    hist = [ppo_iteration(cfg, m, st, score) for _ in range(iterations)]
    return cfg, m, st, hist, tape


def _const(value: float):
    return lambda ro: torch.full((ro.size,), value)


def _by_length(ro: rollout.Rollout) -> torch.Tensor:
    """A score that is a known function of the response: 0.5 per token, minus 3."""
    return 0.5 * ro.mask.sum(1) - 3.0


def _assert_rows_reach_the_loss(calls: list[dict], ro: rollout.Rollout, expected: torch.Tensor, field="advantages",
                                atol=1e-5):
    """The rows handed to ``policy_loss`` over ``calls`` are exactly the rows of ``expected``, each once.

    Minibatches are shuffled: a row is identified by its old logprobs (``ro.logprobs[idx]``).
    """
    B = ro.size
    used: set[int] = set()
    for c in calls:
        for r in range(c["old_logprobs"].shape[0]):
            cands = [j for j in range(B) if j not in used and torch.equal(ro.logprobs[j], c["old_logprobs"][r])]
            assert cands, "a minibatch row is no row of the rollout"
            ok = [j for j in cands if torch.allclose(c[field][r].double(), expected[j].double(), atol=atol, rtol=1e-4)]
            assert ok, f"{field} of rollout row {cands[0]}: got {c[field][r].tolist()}, expected {expected[cands[0]].tolist()}"
            used.add(ok[0])
    assert len(used) == B


def _kl_by_hand(lp: torch.Tensor, ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """Schulman's estimators of KL(pi || ref) per sampled token, from the formulas in config.py."""
    log_ratio = lp.double() - ref.double()
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return torch.exp(-log_ratio) - 1 + log_ratio  # k3 = ref/pi - 1 - log(ref/pi)


def _gae_by_hand(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V = 0 after the last token."""
    r, v = rewards.double(), values.double()
    B, T = r.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        n = int(mask[i].sum())
        for t in range(n):
            for step in range(n - t):
                u = t + step
                v_next = v[i, u + 1] if u + 1 < n else 0.0
                adv[i, t] += (gamma * lam) ** step * (r[i, u] + gamma * v_next - v[i, u])
    return adv, (adv + v) * mask.double()


def _whiten_by_hand(adv, mask):
    sel = adv[mask.bool()]
    return (adv - sel.mean()) / torch.sqrt(sel.var(unbiased=True) + 1e-8) * mask.double()


def _lengths(ro):
    return ro.mask.sum(1).long()


def _exact_kl_and_entropy(policy, ref, ro, temperature):
    """Masked means over the rollout's states of KL(pi || ref) (summed over the vocabulary) and H(pi)."""
    with torch.no_grad():
        lp = torch.log_softmax(forward.forward_logits(policy, ro.prompt_ids, ro.prompt_mask, ro.response_ids).float()
                               / temperature, -1)
        lq = torch.log_softmax(forward.forward_logits(ref, ro.prompt_ids, ro.prompt_mask, ro.response_ids).float()
                               / temperature, -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        ent = -(lp.exp() * lp).sum(-1)
    return float(M.masked_mean(kl, ro.mask)), float(M.masked_mean(ent, ro.mask))


# ---- seed, rollout.batch_size, rollout.group_size, task.response_length -------------------------------


@pytest.mark.parametrize("seed, B, k", [(0, 8, 2), (5, 8, 4), (3, 6, 3), (1, 8, 1)])
def test_seed_batch_and_groups_draw_the_prompts_and_tokens_by_hand(monkeypatch, seed, B, k):
    """B / k prompts from random.Random(seed), each repeated k times contiguously, and the tokens the
    sampler draws from a generator seeded with ``seed``. Fails if the seed does not reach the prompt
    rng or the token generator, if B or k is ignored, or if groups are interleaved instead of contiguous."""
    over = {"seed": seed, "rollout.batch_size": B, "rollout.group_size": k, "task.response_length": 5}
    cfg, m, st, hist, tape = _run(monkeypatch, over, spy=("collect",))
    rng = random.Random(seed)
    prompts = [rng.choice(m.task.train_prompts) for _ in range(B // k)]
    ro = tape.ro
    assert ro.prompts == [p for p in prompts for _ in range(k)]
    assert ro.response_ids.shape == (B, 5) and hist[0]["episodes"] == B and st.episodes == B
    tok = m.tokenizer
    pids, pmask = sampling.encode_prompts(tok, ro.prompts)
    rids, *_ = sampling.sample(m.ref, pids, pmask, 5, 1.0, tok.eos_token_id, tok.pad_token_id,
                        torch.Generator().manual_seed(seed))  # ref == the policy the loop sampled from
    assert torch.equal(rids, ro.response_ids)


# ---- rollout.temperature -------------------------------------------------------------------------------


def test_temperature_reaches_the_sampler_the_ref_and_the_update(monkeypatch):
    """At temperature 0.5 the rollout's logprobs, ref logprobs and entropy are those of logits / 0.5, and
    the update's first forward (same weights) reproduces the old logprobs (ratio 1). Fails if any of
    the three forwards uses another temperature (the discriminating check shows 1.0 is far off)."""
    temp = 0.5
    cfg, m, st, hist, tape = _run(monkeypatch, {"rollout.temperature": temp, "task.response_length": MIXED_LEN})
    ro = tape.ro
    logits = forward.forward_logits(m.ref, ro.prompt_ids, ro.prompt_mask, ro.response_ids).detach()  # ref == old policy
    at_t = forward.logprobs_from_logits(logits, ro.response_ids, temp) * ro.mask
    at_1 = forward.logprobs_from_logits(logits, ro.response_ids, 1.0) * ro.mask
    assert (at_t - at_1).abs().max() > 0.1  # discriminating
    torch.testing.assert_close(ro.logprobs, at_t, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ro.ref_logprobs, at_t, atol=1e-4, rtol=1e-4)
    first = tape.calls["policy_loss"][0]
    torch.testing.assert_close(first["logprobs"], first["old_logprobs"], atol=1e-4, rtol=1e-4)
    lp = torch.log_softmax(logits.float() / temp, -1)
    entropy = float(M.masked_mean(-(lp.exp() * lp).sum(-1), ro.mask))
    assert hist[0]["objective/entropy"] == pytest.approx(entropy, rel=1e-4)


# ---- kl.coef, kl.estimator, kl.placement, train.missing_eos_penalty: the rewards matrix -----------------


@pytest.mark.parametrize("estimator, coef", [("k1", 0.1), ("k2", 0.5), ("k3", 0.2)])
def test_rewards_matrix_has_minus_beta_kl_and_the_score_on_the_last_real_token(monkeypatch, estimator, coef):
    """The rewards given to GAE: -coef * k(logp, ref_logp) on every response token, 0 after EOS, plus the
    score on the LAST real token (index n_tokens - 1: EOS when there is one, T - 1 otherwise).
    Fails if the score lands on the first token (or one past EOS), if the estimator or the coefficient
    is not the configured one, or if the KL is not masked after EOS."""
    over = {"kl.coef": coef, "kl.estimator": estimator, "task.response_length": MIXED_LEN,
            "train.missing_eos_penalty": None}
    cfg, m, st, hist, tape = _run(monkeypatch, over, perturb=PERTURB, score_fn=_by_length)
    ro = tape.ro
    n = _lengths(ro)
    assert ro.has_eos.any() and (~ro.has_eos).any() and (n < MIXED_LEN).any()  # both kinds of row
    kl = _kl_by_hand(ro.logprobs, ro.ref_logprobs, estimator) * ro.mask
    assert kl.abs().sum() > 0.1  # the KL part is not ~0
    expected = -coef * kl
    scores = 0.5 * n.double() - 3.0
    for i in range(ro.size):
        expected[i, n[i] - 1] += scores[i]
    (call,) = tape.calls["gae"]
    torch.testing.assert_close(call["rewards"].double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ro.scores.double(), scores)
    assert hist[0]["objective/kl"] == pytest.approx(float(kl.sum(1).mean()), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("penalty", [-1.0, -4.5, None])
def test_missing_eos_penalty_replaces_the_score_of_rows_without_eos(monkeypatch, penalty):
    """Rows with no EOS score ``penalty`` (the rest keep the score function's value); None keeps every
    score. Checked on the rewards matrix given to GAE (kl.coef=0: only scores there) and objective/scores.
    Fails if the penalty is ignored, added instead of replacing, or applied to rows that stopped."""
    over = {"kl.coef": 0.0, "task.response_length": MIXED_LEN, "train.missing_eos_penalty": penalty}
    cfg, m, st, hist, tape = _run(monkeypatch, over, score_fn=lambda ro: torch.arange(ro.size) + 10.0)
    ro = tape.ro
    assert ro.has_eos.any() and (~ro.has_eos).any()
    scores = [float(10 + i) if (penalty is None or ro.has_eos[i]) else penalty for i in range(ro.size)]
    rewards = tape.calls["gae"][0]["rewards"]
    n = _lengths(ro)
    for i in range(ro.size):
        assert float(rewards[i, n[i] - 1]) == pytest.approx(scores[i])
        assert float(rewards[i].abs().sum()) == pytest.approx(abs(scores[i]))
    assert hist[0]["objective/scores"] == pytest.approx(sum(scores) / len(scores))


@pytest.mark.parametrize("placement, estimator", [("reward", "k2"), ("loss", "k2"), ("loss", "k3")])
def test_sequence_return_has_the_kl_only_when_placed_in_the_reward(monkeypatch, placement, estimator):
    """Sequence level: R = score - coef * sum_t kl_t with placement=reward, R = score with placement=loss
    (the KL then enters the loss instead). Fails if the placement is ignored either way."""
    over = {"advantage.level": "sequence", "advantage.baseline": "none", "kl.coef": 0.3, "kl.estimator": estimator,
            "kl.placement": placement, "task.response_length": MIXED_LEN, "train.missing_eos_penalty": None}
    cfg, m, st, hist, tape = _run(monkeypatch, over, perturb=PERTURB, score_fn=_by_length)
    ro = tape.ro
    seq_kl = (_kl_by_hand(ro.logprobs, ro.ref_logprobs, estimator) * ro.mask).sum(1)
    assert seq_kl.abs().max() > 0.01
    expected = ro.scores.double() - (0.3 * seq_kl if placement == "reward" else 0.0)
    (call,) = tape.calls["baseline"]
    torch.testing.assert_close(call["returns"].double(), expected, atol=1e-5, rtol=1e-5)
    assert not tape.calls["gae"]  # sequence level: no GAE


def test_token_rewards_have_no_kl_when_it_is_placed_in_the_loss(monkeypatch):
    """Token level with placement=loss: the rewards matrix holds only the score (on the last token).
    Fails if the KL is both in the reward and in the loss."""
    over = {"kl.coef": 0.3, "kl.estimator": "k2", "kl.placement": "loss", "task.response_length": MIXED_LEN,
            "train.missing_eos_penalty": None}
    cfg, m, st, hist, tape = _run(monkeypatch, over, perturb=PERTURB, score_fn=_by_length)
    ro = tape.ro
    expected = torch.zeros_like(ro.mask, dtype=torch.float64)
    n = _lengths(ro)
    expected[torch.arange(ro.size), n - 1] = 0.5 * n.double() - 3.0
    torch.testing.assert_close(tape.calls["gae"][0]["rewards"].double(), expected)


# ---- kl.placement=loss: the term moves the policy toward the reference ---------------------------------

# Sequence level, RLOO, a constant score and no KL in the reward: every advantage is exactly 0, so the
# policy-gradient term has zero gradient and only the extra loss term moves the policy.
ZERO_ADV = {"advantage.level": "sequence", "advantage.baseline": "rloo", "train.missing_eos_penalty": None,
            "task.response_length": MIXED_LEN, "ppo.max_grad_norm": None}


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_kl_in_the_loss_pulls_a_perturbed_policy_back_toward_the_reference(monkeypatch, estimator):
    """From a perturbed policy, a few steps with only the KL loss term lower the exact KL(pi || ref) on the
    batch's states; with coef 0 the policy does not move at all, and the policy's gradient norm is
    linear in the coefficient. Fails if the term is multiplied by 0, has its sign flipped, or does not
    use kl.coef."""
    # small steps: the first-order effect (with adam_eps 1e-8 too; at lr 1e-3 sign-like steps overshoot)
    base = {**ZERO_ADV, "kl.placement": "loss", "kl.estimator": estimator, "ppo.lr": 1e-4, "ppo.epochs": 2}
    kls, norms = {}, {}
    for coef in (0.0, 1.0, 2.0):
        with monkeypatch.context() as mp:
            cfg, m, st, hist, tape = _run(mp, {**base, "kl.coef": coef}, perturb=PERTURB, score_fn=_const(0.5))
            assert all(float(c["advantages"].abs().max()) == 0.0 for c in tape.calls["policy_loss"])
            before, _ = _exact_kl_and_entropy(_models(cfg, PERTURB).policy, m.ref, tape.ro, 1.0)
            kls[coef], _ = _exact_kl_and_entropy(m.policy, m.ref, tape.ro, 1.0)
            norms[coef] = tape.steps[0]["policy_norm"]
    assert before > 0.01
    assert kls[0.0] == pytest.approx(before, rel=1e-5) and norms[0.0] == 0.0
    assert kls[1.0] < 0.8 * before, (before, kls)
    assert norms[2.0] == pytest.approx(2 * norms[1.0], rel=1e-4) and norms[1.0] > 0


# ---- ppo.entropy_coef ------------------------------------------------------------------------------------


def test_entropy_bonus_raises_the_policys_entropy(monkeypatch):
    """With zero advantages (see ZERO_ADV) only the entropy bonus moves the policy: its entropy on the
    batch's states must rise; with entropy_coef 0 nothing moves; the gradient is linear in the coef.
    Fails if the bonus has its sign flipped (entropy falls), is dropped, or ignores entropy_coef."""
    base = {**ZERO_ADV, "kl.coef": 0.0, "ppo.lr": 3e-4, "ppo.epochs": 2}
    ents, norms = {}, {}
    for coef in (0.0, 0.5, 1.0):
        with monkeypatch.context() as mp:
            cfg, m, st, hist, tape = _run(mp, {**base, "ppo.entropy_coef": coef}, score_fn=_const(0.5))
            _, before = _exact_kl_and_entropy(m.ref, m.ref, tape.ro, 1.0)  # ref == the initial policy
            _, ents[coef] = _exact_kl_and_entropy(m.policy, m.ref, tape.ro, 1.0)
            norms[coef] = tape.steps[0]["policy_norm"]
    assert ents[0.0] == pytest.approx(before, rel=1e-5) and norms[0.0] == 0.0
    assert ents[1.0] > before + 0.03, (before, ents)
    assert norms[1.0] == pytest.approx(2 * norms[0.5], rel=1e-4) and norms[0.5] > 0


# ---- kl.target, kl.horizon: the adaptive controller ------------------------------------------------------


@pytest.mark.parametrize("horizon", [16, 80])
@pytest.mark.parametrize("ratio", [1e-3, 1 / 1.1, 1.05, 1e3])
def test_adaptive_controller_update_by_hand_in_both_directions(monkeypatch, horizon, ratio):
    """beta_1 = beta_0 * (1 + clip(KL / target - 1, -0.2, 0.2) * B / horizon) with KL the batch mean of
    sum_t k1: raised when KL > target (clipped at +0.2 for ratio 1e-3), lowered when KL < target, and
    the next iteration's rewards use beta_1 (objective/kl_coef). ratio = target / KL. Fails if the
    controller cannot raise (or lower) beta, ignores the horizon or the clip, or is not applied."""
    over = {"kl.coef": 0.1, "task.response_length": MIXED_LEN}
    with monkeypatch.context() as mp:  # the batch KL at this seed (the controller off)
        *_, tape = _run(mp, over, perturb=PERTURB, spy=("collect",))
        ro = tape.ro
        kl = float((_kl_by_hand(ro.logprobs, ro.ref_logprobs, "k1") * ro.mask).sum(1).mean())
    assert kl > 0.02
    target = kl * ratio
    cfg, m, st, hist, tape = _run(monkeypatch, {**over, "kl.target": target, "kl.horizon": horizon},
                                  perturb=PERTURB, iterations=2, spy=("collect",))
    assert hist[0]["objective/kl"] == pytest.approx(kl, rel=1e-6)
    err = min(max(kl / target - 1.0, -0.2), 0.2)
    beta1 = 0.1 * (1 + err * 8 / horizon)
    assert (beta1 > 0.1) == (ratio < 1)
    assert hist[0]["objective/kl_coef"] == 0.1
    assert hist[1]["objective/kl_coef"] == pytest.approx(beta1, rel=1e-6)
    ro2 = tape.ro
    kl2 = float((_kl_by_hand(ro2.logprobs, ro2.ref_logprobs, "k1") * ro2.mask).sum(1).mean())
    err2 = min(max(kl2 / target - 1.0, -0.2), 0.2)
    assert st.kl_coef == pytest.approx(beta1 * (1 + err2 * 8 / horizon), rel=1e-6)


def test_the_kl_loss_term_uses_the_controllers_current_coefficient(monkeypatch):
    """placement=loss with the controller on: iteration 2's KL term is weighted by the updated beta. With
    zero advantages (ZERO_ADV) the first policy gradient of iteration 2 is beta x grad(KL term): 1.2 x
    that of a fixed-beta run (KL >> target: err = +0.2, B / horizon = 1), whose iteration 1 is identical.
    Fails if the loss reads kl.coef instead of the controlled coefficient."""
    base = {**ZERO_ADV, "kl.placement": "loss", "kl.estimator": "k2", "kl.coef": 0.5, "ppo.lr": 1e-4}
    norms = {}
    for target in (None, 1e-6):
        with monkeypatch.context() as mp:
            cfg, m, st, hist, tape = _run(mp, {**base, "kl.target": target, "kl.horizon": 8}, perturb=PERTURB,
                                          score_fn=_const(0.5), iterations=2, spy=())
            norms[target] = [s["policy_norm"] for s in tape.steps]
    mb = TINY["ppo.minibatches"]
    assert norms[1e-6][:mb] == norms[None][:mb]  # iteration 1: the same beta, the same steps
    assert norms[1e-6][mb] == pytest.approx(1.2 * norms[None][mb], rel=1e-4) and norms[None][mb] > 0


# ---- advantage.level, advantage.baseline, advantage.whiten: what reaches the loss -------------------------


def _baseline_by_hand(R_: torch.Tensor, baseline: str, k: int, v0: torch.Tensor | None) -> torch.Tensor:
    B = R_.shape[0]
    out = torch.zeros(B, dtype=torch.float64)
    for i in range(B):
        g = range(i // k * k, i // k * k + k)
        others = [float(R_[j]) for j in g if j != i]
        grp = [float(R_[j]) for j in g]
        mean_g = sum(grp) / k
        if baseline == "none":
            out[i] = R_[i]
        elif baseline == "batch_mean":
            out[i] = R_[i] - R_.mean()
        elif baseline == "rloo":
            out[i] = R_[i] - sum(others) / (k - 1)
        elif baseline == "group_mean":
            out[i] = R_[i] - mean_g
        elif baseline == "group_norm":
            std_g = math.sqrt(sum((x - mean_g) ** 2 for x in grp) / (k - 1))
            out[i] = (R_[i] - mean_g) / (std_g + 1e-8)
        else:  # value
            out[i] = R_[i] - v0[i]
    return out


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("baseline", ["none", "batch_mean", "rloo", "group_norm", "group_mean", "value"])
def test_sequence_advantages_that_reach_the_loss_by_hand(monkeypatch, baseline, whiten):
    """advantage.level=sequence: A_i = baseline(R)_i with R = score - coef * sum_t k1 over contiguous groups
    of k = 4, divided by its std when whitened (scale only), broadcast to the response tokens: exactly
    the ``advantages`` every minibatch hands to policy_loss. The "value" baseline subtracts V(prompt) and
    the value loss regresses R at the prompt state only. Fails if a baseline, the group size, the
    whitening or the broadcast is wired wrong (the same numbers for two baselines are checked apart)."""
    over = {"advantage.level": "sequence", "advantage.baseline": baseline, "advantage.whiten": whiten,
            "rollout.group_size": 4, "kl.coef": 0.2, "task.response_length": MIXED_LEN,
            "train.missing_eos_penalty": None, "ppo.epochs": 2}
    cfg, m, st, hist, tape = _run(monkeypatch, over, perturb=PERTURB, score_fn=_by_length)
    ro = tape.ro
    R_ = ro.scores.double() - 0.2 * (_kl_by_hand(ro.logprobs, ro.ref_logprobs, "k1") * ro.mask).sum(1)
    v0 = ro.values[:, 0].double() if baseline == "value" else None
    a = _baseline_by_hand(R_, baseline, 4, v0)
    if baseline != "none":  # discriminating: the baseline changes the numbers
        assert (a - R_).abs().max() > 1e-3
    if whiten:
        a = a / (a.std() + 1e-8)
    expected = a[:, None] * ro.mask.double()
    calls = tape.calls["policy_loss"]
    assert len(calls) == 2 * cfg.ppo.minibatches
    _assert_rows_reach_the_loss(calls[: cfg.ppo.minibatches], ro, expected)
    _assert_rows_reach_the_loss(calls[cfg.ppo.minibatches :], ro, expected)
    raw = _baseline_by_hand(R_, baseline, 4, v0)[:, None] * ro.mask.double()
    assert hist[0]["adv/mean"] == pytest.approx(float(M.masked_mean(raw, ro.mask)), abs=1e-5)
    if baseline == "value":
        for c in tape.calls["value_loss"]:
            assert torch.equal(c["mask"][:, 0], torch.ones(c["mask"].shape[0])) and c["mask"][:, 1:].sum() == 0
        returns = torch.cat([c["returns"][:, 0] for c in tape.calls["value_loss"][: cfg.ppo.minibatches]])
        assert sorted(returns.tolist()) == pytest.approx(sorted(R_.tolist()), abs=1e-5)
    else:
        assert m.value is None and not tape.calls["value_loss"]


@pytest.mark.parametrize("gamma, lam, whiten", [(1.0, 0.95, True), (0.9, 0.5, False), (0.7, 1.0, True), (1.0, 0.0, False)])
def test_token_gae_advantages_that_reach_the_loss_by_hand(monkeypatch, gamma, lam, whiten):
    """advantage.level=token: GAE(gamma, lam) over the rewards matrix and the rollout's values, with
    V = 0 after the last real token, then (if whiten) whitened over the batch's response tokens and
    zeroed after EOS: the ``advantages`` handed to policy_loss. GAE's returns (A + V) are checked too.
    Fails if gamma or lam is swapped / ignored, the whitening is skipped or forced, or the values are
    not the rollout's."""
    over = {"advantage.gamma": gamma, "advantage.lam": lam, "advantage.whiten": whiten, "kl.coef": 0.1,
            "task.response_length": MIXED_LEN}
    cfg, m, st, hist, tape = _run(monkeypatch, over, perturb=PERTURB)
    ro = tape.ro
    assert (_lengths(ro) < MIXED_LEN).any()
    (g,) = tape.calls["gae"]
    assert torch.equal(g["values"], ro.values)
    adv, returns = _gae_by_hand(g["rewards"], ro.values, ro.mask, gamma, lam)
    alt, _ = _gae_by_hand(g["rewards"], ro.values, ro.mask, 0.8 if gamma == 1 else 1.0, 0.3 if lam != 0.3 else 0.6)
    assert (alt - adv).abs().max() > 1e-3  # discriminating
    torch.testing.assert_close(g["out"][0].double(), adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g["out"][1].double(), returns, atol=1e-5, rtol=1e-5)
    expected = _whiten_by_hand(adv, ro.mask) if whiten else adv
    _assert_rows_reach_the_loss(tape.calls["policy_loss"], ro, expected)
    for c in tape.calls["value_loss"]:  # the value targets are GAE's returns on the same rows
        j = [next(i for i in range(ro.size) if torch.equal(ro.values[i], ov)) for ov in c["old_values"]]
        torch.testing.assert_close(c["returns"].double(), returns[j], atol=1e-5, rtol=1e-5)
    assert hist[0]["adv/mean"] == pytest.approx(float(M.masked_mean(adv, ro.mask)), abs=1e-5)


# ---- loss.agg ----------------------------------------------------------------------------------------------


def _agg_by_hand(x: torch.Tensor, mask: torch.Tensor, agg: str) -> float:
    x, mask = x.double() * mask, mask.double()
    if agg == "token-mean":
        return float(x.sum() / mask.sum())
    per_row = x.sum(1) / mask.sum(1) if agg == "seq-mean-token-mean" else x.sum(1)
    return float(per_row.mean())


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_loss_aggregation_of_the_logged_policy_and_value_losses(monkeypatch, agg):
    """One minibatch, one epoch, ratio 1: loss/policy_avg = agg(-A) and loss/value_avg = 0.5 agg((V - R)^2)
    over the batch's response tokens, by hand for each mode (mixed lengths make the three differ);
    every aggregation in the update (policy, value, entropy, KL-in-loss) gets loss.agg. Fails if the
    mode is not passed to any of them."""
    over = {"loss.agg": agg, "ppo.minibatches": 1, "advantage.whiten": False, "kl.coef": 0.1, "kl.estimator": "k2",
            "kl.placement": "loss", "ppo.entropy_coef": 0.01, "task.response_length": MIXED_LEN}
    cfg, m, st, hist, tape = _run(monkeypatch, over, perturb=PERTURB,
                                  spy=("collect", "gae", "policy_loss", "aggregate"))
    ro = tape.ro
    (pl,) = tape.calls["policy_loss"]
    values = {a: _agg_by_hand(-pl["advantages"], pl["mask"], a) for a in ("token-mean", "seq-mean-token-mean",
                                                                          "seq-mean-token-sum")}
    assert min(abs(x - y) for x in values.values() for y in values.values() if x is not y) > 1e-3
    assert hist[0]["loss/policy_avg"] == pytest.approx(values[agg], abs=1e-4)
    returns = tape.calls["gae"][0]["out"][1]
    v_loss = 0.5 * _agg_by_hand((ro.values - returns) ** 2, ro.mask, agg)
    assert hist[0]["loss/value_avg"] == pytest.approx(v_loss, rel=1e-4, abs=1e-5)
    modes = [c["agg"] for c in tape.calls["aggregate"]]
    assert len(modes) == 4 and set(modes) == {agg}  # policy, entropy, KL, value


# ---- ppo.clip_eps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.02, 0.5])
def test_clip_eps_sets_the_clipped_fraction_and_the_surrogate(monkeypatch, eps):
    """After a few large steps the ratios spread; per minibatch, clipfrac = mean over tokens of
    [-A clip(r, 1-eps, 1+eps) > -A r] and the loss = mean max(-A r, -A clip(r)), by hand with the
    configured eps; the logged policy/clipfrac_avg and loss/policy_avg are their means. Fails if the
    loss does not use ppo.clip_eps (the discriminating check: eps=0.2 would give other numbers)."""
    over = {"ppo.clip_eps": eps, "ppo.epochs": 3, "ppo.lr": 3e-3, "task.response_length": MIXED_LEN}
    cfg, m, st, hist, tape = _run(monkeypatch, over, perturb=PERTURB)

    def by_hand(e):
        fracs, losses = [], []
        for c in tape.calls["policy_loss"]:
            r = torch.exp((c["logprobs"] - c["old_logprobs"]).double()) * c["mask"] + (1 - c["mask"])
            a = c["advantages"].double()
            l1, l2 = -a * r, -a * r.clamp(1 - e, 1 + e)
            fracs.append(_agg_by_hand((l2 > l1).double(), c["mask"], "token-mean"))
            losses.append(_agg_by_hand(torch.max(l1, l2), c["mask"], "token-mean"))
        return sum(fracs) / len(fracs), sum(losses) / len(losses)

    frac, loss = by_hand(eps)
    frac_02, _ = by_hand(0.2)
    assert abs(frac - frac_02) > 0.01 and (frac > 0.01 or eps > 0.2)
    assert hist[0]["policy/clipfrac_avg"] == pytest.approx(frac, abs=1e-6)
    assert hist[0]["loss/policy_avg"] == pytest.approx(loss, abs=1e-5)


# ---- ppo.epochs, ppo.minibatches --------------------------------------------------------------------------


@pytest.mark.parametrize("epochs, minibatches", [(1, 1), (2, 4), (3, 2)])
def test_epochs_times_minibatches_optimiser_steps_over_the_whole_batch(monkeypatch, epochs, minibatches):
    """epochs x minibatches Adam steps (the optimiser's own step count), each on B / minibatches rows,
    every epoch a permutation of the whole batch. Fails if either count is ignored or swapped, or if
    an epoch revisits rows instead of covering the batch."""
    over = {"ppo.epochs": epochs, "ppo.minibatches": minibatches}
    cfg, m, st, hist, tape = _run(monkeypatch, over)
    B = cfg.rollout.batch_size
    assert len(tape.steps) == epochs * minibatches
    assert int(st.optimizer.state[st.params.flat[0]]["step"]) == epochs * minibatches
    calls = tape.calls["policy_loss"]
    assert [c["logprobs"].shape[0] for c in calls] == [B // minibatches] * (epochs * minibatches)
    ro = tape.ro
    for e in range(epochs):
        _assert_rows_reach_the_loss(calls[e * minibatches : (e + 1) * minibatches], ro, ro.logprobs,
                                    field="old_logprobs")


# ---- ppo.target_kl ----------------------------------------------------------------------------------------


def test_target_kl_stops_after_the_first_epoch_whose_mean_approx_kl_exceeds_it(monkeypatch):
    """Early stop (cleanRL): after each epoch, stop if the epoch's mean approx KL > target_kl. The epoch
    means come from policy_loss's own stats of an unstopped run (same seed, same trajectory until the
    stop). Fails if the rule is never applied, applied per minibatch, or checked the other way round."""
    over = {"ppo.epochs": 4, "ppo.lr": 1e-3, "task.response_length": MIXED_LEN}
    mb = TINY["ppo.minibatches"]
    with monkeypatch.context() as mp:
        _, _, _, hist, tape = _run(mp, {**over, "ppo.target_kl": 1e9})
        kls = [c["out"][1]["approxkl"] for c in tape.calls["policy_loss"]]
        assert len(tape.steps) == 4 * mb and hist[0]["policy/early_stop"] == 0.0
    means = [float(sum(kls[e * mb : (e + 1) * mb])) / mb for e in range(4)]
    assert means[0] > 0
    for target in (1e-12, means[0] * 1.0001, means[1] * 1.0001):
        n_epochs = next((e + 1 for e, k in enumerate(means) if k > target), 4)
        with monkeypatch.context() as mp:
            _, _, _, hist, tape = _run(mp, {**over, "ppo.target_kl": target})
        assert len(tape.steps) == n_epochs * mb, (target, means)
        assert hist[0]["policy/early_stop"] == float(n_epochs < 4)
    assert "policy/early_stop" not in _run(monkeypatch, over, spy=())[3][0]


# ---- ppo.lr, ppo.adam_eps, ppo.lr_decay, train.iterations -------------------------------------------------


@pytest.mark.parametrize("lr, adam_eps", [(1e-3, 1e-5), (2e-4, 1e-3)])
def test_first_adam_step_is_minus_lr_g_over_abs_g_plus_eps(monkeypatch, lr, adam_eps):
    """Adam's first step moves each parameter by exactly -lr * g / (|g| + eps), g the gradient it is
    given. Checked on every policy and value parameter. Fails if ppo.lr or ppo.adam_eps do not reach
    the optimiser (the discriminating checks: another lr or eps gives other steps)."""
    over = {"ppo.lr": lr, "ppo.adam_eps": adam_eps, "ppo.minibatches": 1, "ppo.max_grad_norm": None}
    cfg, m, st, hist, tape = _run(monkeypatch, over, spy=(), grads=True)
    (step,) = tape.steps
    for before, g, after in zip(step["params"], step["grads"], st.params.flat, strict=True):
        g = g.double()
        expected = before.double() - lr * g / (g.abs() + adam_eps)
        other_eps = before.double() - lr * g / (g.abs() + (1e-8 if adam_eps != 1e-8 else 1e-3))
        assert (other_eps - expected).abs().max() > 1e-5  # discriminating
        torch.testing.assert_close(after.detach().double(), expected, atol=2e-7, rtol=0)  # fp32 params
        assert float((after.detach().double() - before.double()).abs().max()) == pytest.approx(lr, rel=0.05)


@pytest.mark.parametrize("decay, iterations", [(True, 4), (True, 8), (False, 4)])
def test_lr_decays_linearly_to_zero_over_train_iterations(monkeypatch, decay, iterations):
    """With lr_decay the optimiser steps of iteration i (1-based) use lr * (1 - (i - 1) / n), n =
    train.iterations, and the scheduler ends iteration i at lr * (1 - i / n); without it lr throughout.
    Fails if the decay is ignored, inverted, or uses another horizon."""
    over = {"ppo.lr": 1e-3, "ppo.lr_decay": decay, "train.iterations": iterations, "task.response_length": 3}
    cfg, m, st, hist, tape = _run(monkeypatch, over, iterations=3, spy=())
    mb = cfg.ppo.minibatches
    factor = (lambda i: 1 - (i - 1) / iterations) if decay else (lambda i: 1.0)
    assert [s["lr"] for s in tape.steps] == pytest.approx([1e-3 * factor(i) for i in (1, 2, 3) for _ in range(mb)])
    assert st.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * factor(4))


# ---- ppo.max_grad_norm ------------------------------------------------------------------------------------


def test_max_grad_norm_clips_policy_and_value_gradients_each_to_the_max(monkeypatch):
    """grad/norm and grad/value_norm are the PRE-clip norms (equal to those of an unclipped run); with a
    max below both, the optimiser steps with a policy gradient and a value gradient of norm max each
    (not one joint norm of max); with a max above both, nothing is rescaled. Fails if clipping is
    skipped, done jointly, or the logged norms are the post-clip ones."""
    over = {"ppo.minibatches": 1}
    runs = {}
    for max_norm in (None, 0.05, 1e6):
        with monkeypatch.context() as mp:
            *_, hist, tape = _run(mp, {**over, "ppo.max_grad_norm": max_norm}, spy=())
            runs[max_norm] = (hist[0], tape.steps[0])
    (h0, s0), (h1, s1), (h2, s2) = runs[None], runs[0.05], runs[1e6]
    assert s0["policy_norm"] > 0.1 and s0["value_norm"] > 0.1
    for h in (h0, h1, h2):
        assert h["grad/norm"] == pytest.approx(s0["policy_norm"], rel=1e-4)
        assert h["grad/value_norm"] == pytest.approx(s0["value_norm"], rel=1e-4)
    assert s1["policy_norm"] == pytest.approx(0.05, rel=1e-4) and s1["value_norm"] == pytest.approx(0.05, rel=1e-4)
    assert s2["policy_norm"] == pytest.approx(s0["policy_norm"], rel=1e-5)
    assert s2["value_norm"] == pytest.approx(s0["value_norm"], rel=1e-5)


# ---- ppo.vf_coef, ppo.value_clip --------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_vf_coef_scales_the_value_gradient_and_zero_freezes_the_value_model(monkeypatch, threads):
    """The value gradient is vf_coef x grad(value loss): its (pre-clip) norm triples from 0.1 to 0.3, the
    policy's does not change, and vf_coef=0 leaves every value parameter as it was (while the policy
    moves). Two threads: the value step runs on the trainer's side thread. Fails if vf_coef is ignored,
    applied to the policy loss, or the value model trains anyway."""
    torch.set_num_threads(threads)
    norms = {}
    for vf in (0.0, 0.1, 0.3):
        with monkeypatch.context() as mp:
            cfg, m, st, hist, tape = _run(mp, {"ppo.vf_coef": vf, "ppo.minibatches": 1, "ppo.max_grad_norm": None},
                                          spy=())
            norms[vf] = (hist[0]["grad/norm"], hist[0]["grad/value_norm"])
            if vf == 0.0:
                fresh = _models(cfg)
                for a, b in zip(m.value.parameters(), fresh.value.parameters(), strict=True):
                    assert torch.equal(a, b)
                assert any(not torch.equal(a, b) for a, b in zip(m.policy.parameters(), fresh.policy.parameters(),
                                                                 strict=True))
    assert norms[0.0][1] == 0.0 and norms[0.1][1] > 0
    assert norms[0.3][1] == pytest.approx(3 * norms[0.1][1], rel=1e-4)
    assert norms[0.0][0] == norms[0.1][0] == norms[0.3][0]


@pytest.mark.parametrize("clip", [0.002, None])
def test_value_clip_by_hand_on_the_logged_value_loss(monkeypatch, clip):
    """Per minibatch, value loss = 0.5 mean max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) and its
    clipfrac, by hand with the configured c from the values the update predicted; logged
    loss/value_avg and val/clipfrac_avg are their means; None is the plain squared error with
    clipfrac 0. Fails if ppo.value_clip is not the clip used (discriminating: unclipped differs)."""
    over = {"ppo.value_clip": clip, "ppo.epochs": 3, "ppo.lr": 3e-3, "ppo.vf_coef": 1.0,
            "task.response_length": MIXED_LEN}
    cfg, m, st, hist, tape = _run(monkeypatch, over)

    def by_hand(c_):
        losses, fracs = [], []
        for c in tape.calls["value_loss"]:
            v, old, ret, mask = (c[k].double() for k in ("values", "old_values", "returns", "mask"))
            l1 = (v - ret) ** 2
            l2 = (old + (v - old).clamp(-c_, c_) - ret) ** 2 if c_ is not None else l1
            losses.append(0.5 * _agg_by_hand(torch.max(l1, l2), mask, "token-mean"))
            fracs.append(_agg_by_hand((l2 > l1).double(), mask, "token-mean"))
        return sum(losses) / len(losses), sum(fracs) / len(fracs)

    loss, frac = by_hand(clip)
    assert hist[0]["loss/value_avg"] == pytest.approx(loss, rel=1e-4)
    assert hist[0]["val/clipfrac_avg"] == pytest.approx(frac, abs=1e-6)
    if clip is not None:
        assert frac > 0.05 and abs(loss - by_hand(None)[0]) > 1e-3 * loss  # discriminating
    else:
        assert frac == 0.0


# ---- probe.every, probe.microbatches ----------------------------------------------------------------------


def test_probe_runs_every_n_iterations_on_the_batch_the_update_sees(monkeypatch):
    """probe.every=2 over 3 iterations: the probe runs on iterations 1 and 3 only (its metrics appear
    there), with probe.microbatches splits, the loop's clip, aggregation, temperature and the
    advantages the update uses; probe.every=0 never runs it. Fails if the schedule, K or any input
    is wired wrong."""
    over = {"probe.every": 2, "probe.microbatches": 4, "rollout.temperature": 0.7, "ppo.clip_eps": 0.3,
            "loss.agg": "seq-mean-token-sum", "ppo.epochs": 1, "ppo.minibatches": 1}
    tape = Tape(monkeypatch)
    probes = tape.spy(TR, "probe_gradient_variance")
    cfg = _cfg(over)
    m = _models(cfg)
    st = init_state(cfg, m)
    pl = tape.spy(M, "policy_loss")
    ros = tape.spy(TR, "collect")
    hist = []
    seen = []
    for _ in range(3):
        n_before = len(probes)
        hist.append(ppo_iteration(cfg, m, st, make_score_fn(m.reward, m.task.gold)))
        seen.append(len(probes) > n_before)
    assert seen == [True, False, True]
    assert ["grad/variance" in h for h in hist] == [True, False, True]
    for p in probes:
        assert (p["microbatches"], p["clip_eps"], p["agg"], p["temperature"]) == (4, 0.3, "seq-mean-token-sum", 0.7)
    # iteration 3's probe read the advantages the update used (its own policy_loss calls come first)
    update_call = pl[-1]
    _assert_rows_reach_the_loss([update_call], ros[-1]["out"], probes[-1]["advantages"])
    cfg0 = _cfg({**over, "probe.every": 0})
    m0 = _models(cfg0)
    st0 = init_state(cfg0, m0)
    n = len(probes)
    h0 = ppo_iteration(cfg0, m0, st0, make_score_fn(m0.reward, m0.task.gold))
    assert len(probes) == n and "grad/variance" not in h0
