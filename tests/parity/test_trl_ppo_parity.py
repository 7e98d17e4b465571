"""Parity: on identical tensors the custom core's PPO math equals what TRL's PPOTrainer computes.

TRL's importable helpers (masked_mean / masked_var / masked_whiten, truncate_response,
first_true_indices, get_reward, selective_log_softmax) are used as they are; the parts of
``PPOTrainer.train()`` that are inline code are re-derived below, each with a pointer to
the lines of ``trl/experimental/ppo/ppo_trainer.py`` (trl 1.12.0) they transcribe.

Where TRL and the custom core genuinely differ (the score one token after EOS), the
difference is pinned by an exact formula rather than hidden.

The custom side of the reward / GAE / whitening comparisons is the REAL loop: one
``ppo_iteration`` on the tiny cached models, with spies on the functions it calls
(``loop.collect``, ``math.gae``, ``math.policy_loss``) recording the tensors it builds;
TRL's transcribed code then runs on that iteration's rollout.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("trl.experimental.ppo")

from trl.experimental.ppo import ppo_trainer as T  # noqa: E402
from trl.experimental.utils import first_true_indices, get_reward  # noqa: E402
from trl.trainer.utils import selective_log_softmax  # noqa: E402

from baselines.trl_ppo import ClippedAdam, check_expressible, group_collator, make_optimizer, trl_args  # noqa: E402
from baselines.trl_reward import RewardAdapter  # noqa: E402
from harness.algos import math as M  # noqa: E402
from harness.config import build_config  # noqa: E402
from harness.lm import forward, rollout, sampling  # noqa: E402
from harness.lm.rollout import make_score_fn  # noqa: E402
from harness.ppo import loop  # noqa: E402
from harness.ppo.loop import init_state, ppo_iteration  # noqa: E402
from harness.warmstart.load import load_models  # noqa: E402
from tests.conftest import TINY  # noqa: E402

EOS, PAD = 1, 0


# ---- TRL's inline code, transcribed --------------------------------------------------------------


def trl_masks(postprocessed_responses: torch.Tensor):
    """ppo_trainer.py train(), "Response Processing 2" and the padding masks (lines ~727, ~761-767)."""
    sequence_lengths = first_true_indices(postprocessed_responses == PAD) - 1
    B, L = postprocessed_responses.shape
    response_idxs = torch.arange(L).repeat(B, 1)
    padding_mask = response_idxs > sequence_lengths.unsqueeze(1)
    sequence_lengths_p1 = sequence_lengths + 1
    padding_mask_p1 = response_idxs > sequence_lengths_p1.unsqueeze(1)
    return sequence_lengths, padding_mask, padding_mask_p1


def trl_advantages(logprobs, ref_logprobs, scores, values, responses, *, kl_coef, estimator, gamma, lam):
    """ppo_trainer.py train(), steps 4-6 (lines ~761-808): rewards, GAE, returns, whitening.

    Returns (rewards, advantages (whitened, 0 on padding), returns, padding_mask, padding_mask_p1).
    """
    sequence_lengths, padding_mask, padding_mask_p1 = trl_masks(responses)
    logprobs = torch.masked_fill(logprobs, padding_mask, T.INVALID_LOGPROB)
    ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, T.INVALID_LOGPROB)
    values = torch.masked_fill(values, padding_mask_p1, 0)
    # 4. compute rewards
    logr = ref_logprobs - logprobs
    kl = -logr if estimator == "k1" else (logr.exp() - 1) - logr
    non_score_reward = -kl_coef * kl
    rewards = non_score_reward.clone()
    actual_start = torch.arange(rewards.size(0))
    sequence_lengths_p1 = sequence_lengths + 1
    actual_end = torch.where(sequence_lengths_p1 < rewards.size(1), sequence_lengths_p1, sequence_lengths)
    rewards[actual_start, actual_end] += scores
    # 6. compute advantages and returns
    lastgaelam = 0
    advantages_reversed = []
    gen_length = responses.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    returns = advantages + values
    raw = advantages
    advantages = T.masked_whiten(advantages, ~padding_mask)
    advantages = torch.masked_fill(advantages, padding_mask, 0)
    return rewards, raw, advantages, returns, padding_mask, padding_mask_p1


def trl_losses(new_logprobs, mb_logprobs, mb_advantage, vpred, mb_values, mb_return, padding_mask, padding_mask_p1,
               *, cliprange, cliprange_value):
    """ppo_trainer.py train(), the minibatch update (lines ~823-870)."""
    new_logprobs = torch.masked_fill(new_logprobs, padding_mask, T.INVALID_LOGPROB)
    mb_logprobs = torch.masked_fill(mb_logprobs, padding_mask, T.INVALID_LOGPROB)
    vpred = torch.masked_fill(vpred, padding_mask_p1, 0)
    vpredclipped = torch.clamp(vpred, mb_values - cliprange_value, mb_values + cliprange_value)
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss_max = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * T.masked_mean(vf_loss_max, ~padding_mask_p1)
    vf_clipfrac = T.masked_mean((vf_losses2 > vf_losses1).float(), ~padding_mask_p1)
    logprobs_diff = new_logprobs - mb_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    pg_loss = T.masked_mean(pg_loss_max, ~padding_mask)
    pg_clipfrac = T.masked_mean((pg_losses2 > pg_losses).float(), ~padding_mask)
    approxkl = 0.5 * (logprobs_diff**2).mean()
    return pg_loss, vf_loss, {"pg_clipfrac": pg_clipfrac, "vf_clipfrac": vf_clipfrac, "approxkl": approxkl}


# ---- the custom core's composition, observed in the real loop (harness/ppo/loop.py ppo_iteration) ---


def custom_iteration(monkeypatch, *, response_length, kl_coef, estimator, gamma, lam, seed=0):
    """One real ``ppo_iteration`` (token level, whitened, one minibatch, one epoch) on the tiny models,
    the policy moved off the reference by seeded noise so that KL != 0.

    Returns what the trainer built, recorded by spies that call the originals:
      ro        the rollout (``rollout.collect``'s result)
      rewards   the rewards matrix handed to ``math.gae``; raw, returns: what GAE returned
      adv       the advantages that reached ``math.policy_loss``, rows put back in rollout order
      values    V at EVERY response position, from the value model at rollout time: equal to
                ro.values up to EOS, plus V(s_e+1) on the state after EOS, which TRL also reads
    """
    cfg = build_config(None, {**TINY, "task.response_length": response_length, "kl.coef": kl_coef,
                              "kl.estimator": estimator, "advantage.gamma": gamma, "advantage.lam": lam,
                              "ppo.minibatches": 1, "ppo.epochs": 1, "train.missing_eos_penalty": None,
                              "seed": seed})
    m = load_models(build_config(None, TINY))  # TINY's response length: the cached reward model
    assert (m.tokenizer.eos_token_id, m.tokenizer.pad_token_id) == (EOS, PAD)  # TRL's masks below use them
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in m.policy.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=g))
    rec: dict = {}
    collect, gae, policy_loss = rollout.collect, M.gae, M.policy_loss

    def collect_spy(*a, **kw):
        ro = rec["ro"] = collect(*a, **kw)
        with torch.no_grad():
            rec["values"] = forward.token_values(kw["value_model"], ro.prompt_ids, ro.prompt_mask, ro.response_ids,
                                           torch.ones_like(ro.mask))
        return ro

    def gae_spy(rewards, *a, **kw):
        rec["rewards"] = rewards.clone()
        rec["raw"], rec["returns"] = out = gae(rewards, *a, **kw)
        return out

    def policy_loss_spy(logprobs, old_logprobs, advantages, *a, **kw):
        rec.setdefault("loss_calls", []).append((old_logprobs.clone(), advantages.clone()))
        return policy_loss(logprobs, old_logprobs, advantages, *a, **kw)

    monkeypatch.setattr(loop, "collect", collect_spy)
    monkeypatch.setattr(M, "gae", gae_spy)
    monkeypatch.setattr(M, "policy_loss", policy_loss_spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models run far faster on one thread of a shared machine
    try:
        ppo_iteration(cfg, m, init_state(cfg, m), make_score_fn(m.reward, m.task.gold))
    finally:
        torch.set_num_threads(threads)
    ro = rec["ro"]
    ((old, adv),) = rec["loss_calls"]
    # the minibatch is a permutation of the batch: a row is known by its old logprobs (ro.logprobs[perm]);
    # two identical rows (same prompt, same sample) have identical advantages, so either may take either
    order, free = [], list(range(ro.size))
    for row in old:
        j = next(j for j in free if torch.equal(ro.logprobs[j], row))
        free.remove(j)
        order.append(j)
    rec["adv"] = torch.zeros_like(adv).index_copy(0, torch.tensor(order), adv)
    torch.testing.assert_close(rec["values"] * ro.mask, ro.values, atol=1e-5, rtol=1e-5)
    return rec


# ---- fixtures ----------------------------------------------------------------------------------------


def _responses(lengths: list[int | None], T_: int, g: torch.Generator) -> torch.Tensor:
    """(B, T) token ids in [2, 20); row i ends with EOS at index lengths[i] - 1 then PAD, or runs to T (None)."""
    B = len(lengths)
    out = torch.randint(2, 20, (B, T_), generator=g)
    for i, n in enumerate(lengths):
        if n is not None:
            out[i, n - 1] = EOS
            out[i, n:] = PAD
    return out


def _batch(lengths, T_=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    resp = _responses(lengths, T_, g)
    mask, has_eos = sampling.response_mask(resp, EOS)
    B = len(lengths)
    return dict(
        resp=resp, mask=mask, has_eos=has_eos,
        logprobs=-torch.rand(B, T_, generator=g) * 3,
        ref_logprobs=-torch.rand(B, T_, generator=g) * 3,
        values=torch.randn(B, T_, generator=g),
        scores=torch.randn(B, generator=g),
    )


NO_EOS = [None, None, None, None]
MIXED = [3, None, 5, 1, 7, None]


# ---- masked statistics, KL, masks ----------------------------------------------------------------


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_statistics_equal_trls_helpers(shift_mean):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 9, generator=g)
    mask = torch.rand(5, 9, generator=g) > 0.3
    torch.testing.assert_close(M.masked_mean(x, mask), T.masked_mean(x, mask))
    torch.testing.assert_close(M.masked_mean(x, mask, dim=1), T.masked_mean(x, mask, axis=1))
    torch.testing.assert_close(M.masked_var(x, mask), T.masked_var(x, mask))
    torch.testing.assert_close(M.masked_var(x, mask, unbiased=False), T.masked_var(x, mask, unbiased=False))
    torch.testing.assert_close(M.masked_whiten(x, mask, shift_mean), T.masked_whiten(x, mask, shift_mean))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_equal_trls(estimator):
    b = _batch(MIXED)
    logr = b["ref_logprobs"] - b["logprobs"]  # ppo_trainer.py ~line 772
    trl_kl = -logr if estimator == "k1" else (logr.exp() - 1) - logr
    torch.testing.assert_close(M.kl_penalty(b["logprobs"], b["ref_logprobs"], estimator), trl_kl)


def test_response_mask_equals_trls_truncation_and_padding_mask():
    g = torch.Generator().manual_seed(2)
    raw = torch.randint(1, 20, (16, 9), generator=g)  # EOS may appear several times; no PAD sampled
    truncated = T.truncate_response(EOS, PAD, raw)
    mask, has_eos = sampling.response_mask(raw, EOS)
    _, padding_mask, _ = trl_masks(truncated)
    torch.testing.assert_close(mask, (~padding_mask).float())
    # TRL's contain_eos_token (ppo_trainer.py ~line 757)
    assert torch.equal(has_eos, torch.any(truncated == EOS, dim=-1))


def test_logprobs_at_temperature_equal_trls():
    g = torch.Generator().manual_seed(3)
    logits, tokens, temp = torch.randn(3, 5, 11, generator=g), torch.randint(0, 11, (3, 5), generator=g), 0.7
    # TRL: logits /= temperature + 1e-7; selective_log_softmax (ppo_trainer.py ~lines 716-718, 831-833)
    trl = selective_log_softmax(logits / (temp + 1e-7), tokens)
    torch.testing.assert_close(forward.logprobs_from_logits(logits, tokens, temp), trl, atol=1e-5, rtol=1e-5)


# ---- rewards, GAE, whitening: TRL's code on the real loop's rollout -----------------------------------


def _trl_on(rec, values, **kw):
    ro = rec["ro"]
    return trl_advantages(ro.logprobs, ro.ref_logprobs, ro.scores, values, ro.response_ids, **kw)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_rewards_advantages_returns_equal_trl_when_no_response_stops(monkeypatch, estimator, gamma, lam):
    """Every row runs to T tokens: TRL's score index is then the last token, as the custom core's."""
    kw = dict(kl_coef=0.05, estimator=estimator, gamma=gamma, lam=lam)
    rec = custom_iteration(monkeypatch, response_length=6, **kw)
    assert not rec["ro"].has_eos.any()
    assert (rec["rewards"] - rec["rewards"][:, -1:]).abs().max() > 1e-4  # the KL part is there
    t_rew, t_raw, t_adv, t_ret, *_ = _trl_on(rec, rec["values"], **kw)
    torch.testing.assert_close(rec["rewards"], t_rew)
    torch.testing.assert_close(rec["raw"], t_raw)
    torch.testing.assert_close(rec["returns"], t_ret)
    torch.testing.assert_close(rec["adv"], t_adv)


def test_trl_puts_the_score_one_token_after_eos(monkeypatch):
    """The one reward difference: TRL adds the score at EOS + 1 (when it fits), the custom core at EOS."""
    kw = dict(kl_coef=0.1, estimator="k1", gamma=1.0, lam=0.95)
    rec = custom_iteration(monkeypatch, response_length=12, **kw)
    ro, c_rew = rec["ro"], rec["rewards"]
    t_rew, *_ = _trl_on(rec, rec["values"], **kw)
    Tn = ro.mask.shape[1]
    moved = 0
    for i, end in enumerate(ro.mask.sum(1).long().tolist()):  # tokens up to and including EOS
        score = float(ro.scores[i])
        if end < Tn:  # TRL: actual_end = sequence_lengths + 1, the first padding position
            assert float(t_rew[i, end]) == pytest.approx(score)  # KL is 0 there (INVALID_LOGPROB on both)
            assert float(c_rew[i, end - 1] - t_rew[i, end - 1]) == pytest.approx(score, abs=1e-5)
            torch.testing.assert_close(t_rew[i, : end - 1], c_rew[i, : end - 1])
            moved += 1
        else:  # no room after the last token (no EOS, or EOS at T): same place, same rewards
            torch.testing.assert_close(t_rew[i], c_rew[i])
    assert 0 < moved < ro.size


@pytest.mark.parametrize("lam", [0.95, 0.5, 1.0])
def test_gae_difference_from_the_post_eos_state_is_exactly_lam_power_times_value_error(monkeypatch, lam):
    """gamma = 1: A_trl(t) - A_custom(t) = lam^(e - t) * (1 - lam) * (V(s_e+1) - score), t <= e.

    TRL bootstraps from V(s_e+1), the value head on the EOS hidden state (the reward model's own
    feature when the value model starts from it), where the custom core takes the episode as
    terminal. Zero when lam = 1 or once the value head predicts the score after EOS; pre-whitening.
    """
    kw = dict(kl_coef=0.05, estimator="k1", gamma=1.0, lam=lam)
    rec = custom_iteration(monkeypatch, response_length=12, **kw)
    ro, values, c_raw = rec["ro"], rec["values"], rec["raw"]
    _, t_raw, *_ = _trl_on(rec, values, **kw)
    Tn = ro.mask.shape[1]
    stopped = 0
    for i, end in enumerate(ro.mask.sum(1).long().tolist()):
        e = end - 1
        v_post = float(values[i, end]) if end < Tn else None
        stopped += v_post is not None
        for t in range(end):
            expected = 0.0 if v_post is None else lam ** (e - t) * (1 - lam) * (v_post - float(ro.scores[i]))
            assert float(t_raw[i, t] - c_raw[i, t]) == pytest.approx(expected, abs=1e-5)
    assert stopped > 0


def test_whitened_advantages_equal_trl_when_the_post_eos_value_equals_the_score(monkeypatch):
    """With V(s_e+1) = score (the value model initialised from the RM, at iteration 1) everything matches."""
    kw = dict(kl_coef=0.05, estimator="k3", gamma=1.0, lam=0.95)
    rec = custom_iteration(monkeypatch, response_length=12, **kw)
    ro = rec["ro"]
    values = rec["values"].clone()
    Tn = values.shape[1]
    n = ro.mask.sum(1).long()
    assert (n < Tn).any()
    for i in range(ro.size):
        if n[i] < Tn:
            values[i, n[i]] = ro.scores[i]
    *_, t_adv, t_ret, padding_mask, _ = _trl_on(rec, values, **kw)
    torch.testing.assert_close(rec["adv"], t_adv)
    torch.testing.assert_close(rec["returns"] * ro.mask, t_ret * (~padding_mask).float())


# ---- losses ----------------------------------------------------------------------------------------


def _update_tensors(lengths, seed=4):
    b = _batch(lengths, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    Tn = b["mask"].shape[1]
    new_logprobs = (b["logprobs"] + 0.3 * torch.randn(len(lengths), Tn, generator=g)).requires_grad_(True)
    adv = torch.randn(len(lengths), Tn, generator=g) * b["mask"]
    vpred = (b["values"] + 0.4 * torch.randn(len(lengths), Tn, generator=g)).requires_grad_(True)
    returns = torch.randn(len(lengths), Tn, generator=g)
    return b, new_logprobs, adv, vpred, returns


@pytest.mark.parametrize("lengths", [NO_EOS, MIXED])
def test_policy_loss_clipfrac_and_gradient_equal_trls(lengths):
    b, new_lp, adv, vpred, returns = _update_tensors(lengths)
    _, padding_mask, padding_mask_p1 = trl_masks(T.truncate_response(EOS, PAD, b["resp"]))
    t_pg, _, t_st = trl_losses(new_lp, b["logprobs"], adv, vpred, b["values"], returns, padding_mask, padding_mask_p1,
                               cliprange=0.2, cliprange_value=0.2)
    (t_grad,) = torch.autograd.grad(t_pg, new_lp)
    c_pg, c_st = M.policy_loss(new_lp, b["logprobs"], adv, b["mask"], 0.2, "token-mean")
    (c_grad,) = torch.autograd.grad(c_pg, new_lp)
    torch.testing.assert_close(c_pg, t_pg)
    torch.testing.assert_close(c_grad, t_grad)
    torch.testing.assert_close(c_st["clipfrac"], t_st["pg_clipfrac"])
    # TRL's approxkl averages over all B*T positions (padding contributes 0): custom * n_real / (B*T)
    n_real = b["mask"].sum()
    torch.testing.assert_close(c_st["approxkl"] * n_real / b["mask"].numel(), t_st["approxkl"])


@pytest.mark.parametrize("clip", [0.2, None])
def test_value_loss_equals_trls_on_the_same_mask(clip):
    """Same formula; TRL's mask reaches one token past EOS (``padding_mask_p1``), equal without EOS.

    value_clip=None maps to cliprange_value=inf (clamp is then the identity): also checked here.
    """
    for lengths in (NO_EOS, MIXED):
        b, new_lp, adv, vpred, returns = _update_tensors(lengths)
        _, padding_mask, padding_mask_p1 = trl_masks(T.truncate_response(EOS, PAD, b["resp"]))
        cv = clip if clip is not None else math.inf
        _, t_vf, t_st = trl_losses(new_lp, b["logprobs"], adv, vpred, b["values"], returns, padding_mask,
                                   padding_mask_p1, cliprange=0.2, cliprange_value=cv)
        (t_grad,) = torch.autograd.grad(t_vf, vpred)
        trl_mask = (~padding_mask_p1).float()
        c_vf, c_st = M.value_loss(vpred, b["values"], returns, trl_mask, clip, "token-mean")
        (c_grad,) = torch.autograd.grad(c_vf, vpred)
        torch.testing.assert_close(c_vf, t_vf)
        torch.testing.assert_close(c_grad, t_grad)
        torch.testing.assert_close(c_st["clipfrac"], t_st["vf_clipfrac"])
        if lengths is NO_EOS:
            assert torch.equal(trl_mask, b["mask"])


# ---- what the baseline hands to TRL ------------------------------------------------------------------


def test_trl_args_map_every_expressible_key(tmp_path):
    cfg = build_config(overrides={
        "seed": 7, "rollout.batch_size": 12, "rollout.group_size": 3, "rollout.temperature": 0.8,
        "ppo.clip_eps": 0.15, "ppo.epochs": 3, "ppo.minibatches": 4, "ppo.lr": 2e-4, "ppo.adam_eps": 1e-6,
        "ppo.vf_coef": 0.3, "ppo.value_clip": None, "ppo.lr_decay": False, "kl.coef": 0.02, "kl.estimator": "k3",
        "advantage.gamma": 0.99, "advantage.lam": 0.9, "train.iterations": 5, "task.response_length": 9,
    })
    check_expressible(cfg)
    a = trl_args(cfg, 9, str(tmp_path))
    assert (a.seed, a.cliprange, a.num_ppo_epochs, a.num_mini_batches) == (7, 0.15, 3, 4)
    assert (a.learning_rate, a.adam_epsilon, a.vf_coef, a.kl_coef, a.kl_estimator) == (2e-4, 1e-6, 0.3, 0.02, "k3")
    assert (a.gamma, a.lam, a.response_length, a.temperature) == (0.99, 0.9, 9, 0.8)
    assert a.cliprange_value == math.inf and a.lr_scheduler_type == "constant"
    assert a.total_episodes == 5 * 12 and a.per_device_train_batch_size == 12 and a.gradient_accumulation_steps == 1
    assert a.local_rollout_forward_batch_size == 12 and a.stop_token == "eos" and a.missing_eos_penalty is None
    assert a.report_to == [] and a.use_cpu and not a.bf16 and not a.gradient_checkpointing and not a.whiten_rewards


def test_optimizer_and_schedule_equal_the_custom_cores():
    """The TRL baseline's Adam has the custom core's hyperparameters in each of its two groups (policy,
    value: clipped apart), over the same parameters in the same order as the custom core's flat
    buffer, and the same LR schedule."""
    from harness.models.types import Models
    from harness.ppo.loop import init_state

    torch.manual_seed(0)
    policy, value = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)
    cfg = build_config(overrides={"train.iterations": 4, "ppo.lr": 1e-3, "ppo.adam_eps": 1e-6})
    opt, sched = make_optimizer(cfg, policy, value)
    st = init_state(cfg, Models(task=None, tokenizer=None, policy=policy, ref=None, reward=None, value=value,
                                source=""))
    (theirs,) = st.optimizer.param_groups
    assert type(st.optimizer) is torch.optim.Adam and isinstance(opt, torch.optim.Adam)
    # the custom core steps one flat buffer whose views are exactly these parameters
    assert [p is q for p, q in zip(theirs["params"], st.params.flat, strict=True)] == [True] and st.params.intact()
    ours_policy, ours_value = opt.param_groups
    assert [p is q for p, q in zip(ours_policy["params"] + ours_value["params"], st.params.params, strict=True)] \
        == [True] * 4
    assert [id(p) for p in ours_policy["params"]] == [id(p) for p in policy.parameters()]
    for ours in (ours_policy, ours_value):
        for k in ("lr", "eps", "betas", "weight_decay", "amsgrad"):
            assert ours[k] == theirs[k], k
    lrs = []
    for _ in range(4):
        lrs.append((sched.get_last_lr()[0], st.scheduler.get_last_lr()[0]))
        opt.step(), st.optimizer.step(), sched.step(), st.scheduler.step()
    assert [a for a, _ in lrs] == pytest.approx([b for _, b in lrs]) and lrs[-1][0] == pytest.approx(2.5e-4)


def test_clipped_adam_clips_each_group_like_the_custom_core():
    """ClippedAdam clips the policy group and the value group apart, with the custom core's clip_norm_ rule
    (harness/ppo/update.py on st.params.group_grads): the same pre-clip norms, the same clipped gradients."""
    from harness.fast.flat import clip_norm_

    w, v = torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(3))
    opt = ClippedAdam([[w], [v]], lr=1e-3, eps=1e-5, max_grad_norm=0.5)
    w.grad, v.grad = torch.full((5,), 2.0), torch.full((3,), 0.1)
    gw, gv = w.grad.clone(), v.grad.clone()
    opt.step()
    norm_w, norm_v = clip_norm_([gw], 0.5), clip_norm_([gv], 0.5)
    assert opt.norms == [pytest.approx(float(norm_w))] and float(norm_w) == pytest.approx(2.0 * math.sqrt(5))
    assert opt.value_norms == [pytest.approx(float(norm_v))]
    torch.testing.assert_close(w.grad, gw)  # clipped to 0.5
    torch.testing.assert_close(v.grad, gv)  # 0.17 < 0.5: untouched, not scaled with the policy's
    assert float(w.grad.norm()) == pytest.approx(0.5)


# ---- the reward model TRL calls -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rm():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from harness.models.tokenizer import build_tokenizer
    from harness.tasks import get_task

    task = get_task("sentiment")
    tok = build_tokenizer(task.words())
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_layer=1, n_embd=32, n_head=2, num_labels=1,
                     pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    rm = GPT2ForSequenceClassification(cfg).eval()
    head = torch.nn.Linear(32, 1, bias=True)  # the harness folds normalisation into a biased head
    torch.nn.init.normal_(head.bias)
    rm.score = head
    return task, tok, rm


def _query_responses(task, tok, n_resp=6):
    prompts = list(task.train_prompts[:4])
    pids, pmask = sampling.encode_prompts(tok, prompts)
    words = [tok.convert_tokens_to_ids(w) for w in ("good", "bad", "the", "plot", "was")]
    rows = [[words[0], words[2], tok.eos_token_id], [words[1]] * n_resp, [tok.eos_token_id], words[:4] + [words[1], words[2]]]
    resp = torch.full((4, n_resp), tok.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        resp[i, : len(r)] = torch.tensor(r[:n_resp])
    return prompts, pids, pmask, resp


@pytest.mark.parametrize("penalty", [None, -1.0])
def test_reward_adapter_gives_trls_get_reward_the_custom_cores_scores(tiny_rm, penalty):
    task, tok, rm = tiny_rm
    prompts, pids, pmask, resp = _query_responses(task, tok)
    mask, has_eos = sampling.response_mask(resp, tok.eos_token_id)
    expected = forward.sequence_scores(rm, pids, pmask, resp, mask)
    if penalty is not None:  # harness.lm.rollout.collect: REPLACE the score of a row with no EOS
        expected = torch.where(has_eos, expected, torch.full_like(expected, penalty))
    adapter = RewardAdapter(rm, tok, task.gold, pids.shape[1], penalty, task.train_prompts)
    with torch.no_grad():
        _, got, _ = get_reward(adapter, torch.cat([pids, resp], 1), tok.pad_token_id, pids.shape[1])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    rec = adapter.drain()
    completions = sampling.decode(tok, resp, mask, tok.eos_token_id)
    assert rec.gold == pytest.approx(task.gold(prompts, completions, has_eos.tolist()))
    assert rec.lengths == mask.sum(1).tolist() and rec.has_eos == has_eos.tolist()
    assert [p for p, _ in rec.samples] == prompts and adapter.drain().empty


def test_reward_adapter_scores_gold_when_there_is_no_reward_model(tiny_rm):
    task, tok, _ = tiny_rm
    prompts, pids, pmask, resp = _query_responses(task, tok)
    mask, has_eos = sampling.response_mask(resp, tok.eos_token_id)
    adapter = RewardAdapter(None, tok, task.gold, pids.shape[1], -1.0, task.train_prompts)
    _, got, _ = get_reward(adapter, torch.cat([pids, resp], 1), tok.pad_token_id, pids.shape[1])
    texts = sampling.decode(tok, resp, mask, tok.eos_token_id)
    gold = torch.tensor(task.gold(prompts, texts, has_eos.tolist()), dtype=torch.float32)
    torch.testing.assert_close(got, torch.where(has_eos, gold, torch.full_like(gold, -1.0)))


def test_group_collator_repeats_each_kept_prompt_group_size_times(tiny_rm):
    task, tok, _ = tiny_rm
    feats = [{"input_ids": tok.encode(p, add_special_tokens=False)} for p in task.train_prompts[:6]]
    out = group_collator(tok, 12, 3)(feats)
    ids = out["input_ids"]
    assert ids.shape == (6, 12) and torch.equal(ids[0], ids[2]) and torch.equal(ids[3], ids[5])
    assert not torch.equal(ids[0], ids[3]) and (ids[:, 0] == tok.pad_token_id).all()  # left padding
    first = feats[0]["input_ids"]
    assert ids[0, -len(first):].tolist() == first
