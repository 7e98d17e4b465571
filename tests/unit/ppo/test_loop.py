"""The PPO loop on the tiniest config: it learns, it is deterministic, every option runs."""

import pytest
import torch

from harness.config import build_config
from harness.lm import forward, sampling
from harness.lm.rollout import make_score_fn
from harness.ppo.loop import init_state, ppo_iteration
from harness.warmstart.load import load_models
from tests.conftest import TINY


def _run(overrides: dict, iterations: int = 2):
    cfg = build_config(None, {**TINY, **overrides})
    m = load_models(cfg)
    before = [p.detach().clone() for p in m.policy.parameters()]
    st = init_state(cfg, m)
    score = make_score_fn(m.reward, m.task.gold)
    hist = [ppo_iteration(cfg, m, st, score) for _ in range(iterations)]
    return m, before, hist, st


def test_one_iteration_changes_the_policy_and_reports_the_schema():
    m, before, hist, st = _run({})
    changed = any(not torch.equal(a, b) for a, b in zip(before, m.policy.parameters(), strict=True))
    assert changed
    assert not any(p.requires_grad for p in m.ref.parameters())
    keys = set(hist[-1])
    for k in ("objective/scores", "objective/gold", "objective/kl", "objective/rlhf_reward", "objective/kl_coef",
              "objective/entropy", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg",
              "loss/value_avg", "val/clipfrac_avg", "val/explained_var", "adv/mean", "adv/std", "grad/norm",
              "response/length", "response/eos_frac", "perf/tokens_per_s", "perf/rollout_s", "perf/update_s",
              "episodes"):
        assert k in keys, k
    assert hist[0]["episodes"] == 8 and hist[1]["episodes"] == 16
    # iteration 1 samples from the initial policy == ref: KL is zero up to float noise
    assert abs(hist[0]["objective/kl"]) < 1e-3


def test_same_seed_same_metrics():
    _, _, h1, _ = _run({"seed": 3})
    _, _, h2, _ = _run({"seed": 3})
    strip = lambda h: [{k: v for k, v in d.items() if not k.startswith("perf/")} for d in h]  # noqa: E731
    assert strip(h1) == strip(h2)
    _, _, h3, _ = _run({"seed": 4})
    assert strip(h1) != strip(h3)


@pytest.mark.parametrize(
    "overrides",
    [
        {"advantage.level": "sequence", "advantage.baseline": b}
        for b in ("none", "batch_mean", "rloo", "group_norm", "group_mean", "value")
    ]
    + [
        {"loss.agg": "seq-mean-token-mean"},
        {"loss.agg": "seq-mean-token-sum"},
        {"kl.placement": "loss", "kl.estimator": "k3"},
        {"kl.estimator": "k2", "ppo.value_clip": None, "ppo.entropy_coef": 0.01},
        {"model.reward": "gold", "model.value_init": "policy"},
        {"probe.every": 1, "probe.microbatches": 2},
        {"ppo.max_grad_norm": None, "advantage.whiten": False},
        {"model.value_trunk": "shared"},
        {"model.value_trunk": "shared", "advantage.level": "sequence", "advantage.baseline": "value"},
        {"train.dtype": "bf16"},
        {"train.dtype": "bf16", "model.value_trunk": "shared", "ppo.entropy_coef": 0.01},
    ],
)
def test_every_option_runs_and_stays_finite(overrides):
    _, _, hist, _ = _run(overrides, iterations=1)
    assert all(v == v and abs(v) != float("inf") for k, v in hist[-1].items() if k != "val/explained_var")
    if "probe.every" in overrides:
        assert hist[-1]["grad/variance"] > 0 and 0 < hist[-1]["grad/rel_variance"]
    if overrides.get("advantage.level") == "sequence" and overrides["advantage.baseline"] != "value":
        assert "loss/value_avg" not in hist[-1]


def test_adaptive_kl_moves_the_coefficient_toward_the_target():
    # a target far below the observed KL must raise beta; far above must lower it
    _, _, hist, st = _run({"kl.target": 1e-6, "kl.coef": 0.1, "kl.horizon": 100}, iterations=2)
    assert hist[0]["objective/kl_coef"] == 0.1
    assert st.kl_coef > 0.1 or hist[0]["objective/kl"] <= 1e-6
    _, _, hist, st = _run({"kl.target": 100.0, "kl.coef": 0.1, "kl.horizon": 100}, iterations=2)
    assert st.kl_coef < 0.1


def test_target_kl_stops_epochs_early():
    _, _, hist, _ = _run({"ppo.target_kl": 1e-12, "ppo.epochs": 4, "ppo.lr": 1e-3}, iterations=2)
    assert hist[-1]["policy/early_stop"] == 1.0


def test_shared_value_trunk_trains_one_trunk_and_a_head():
    """model.value_trunk=shared: the optimiser holds every parameter once (policy + a zero-initialised
    head), the head learns, and the values the update reads off the policy's forward are those a
    separate forward of the same trunk gives."""
    from harness.models.types import SharedTrunkValue

    m, _, hist, st = _run({"model.value_trunk": "shared"}, iterations=2)
    assert isinstance(m.value, SharedTrunkValue)
    ids = [id(p) for p in st.params.params]
    assert len(ids) == len(set(ids)) == len(list(m.policy.parameters())) + 1
    assert m.value.transformer is m.policy.transformer
    assert m.value.score.weight.abs().sum() > 0  # moved off its zero start
    assert hist[-1]["loss/value_avg"] > 0

    tok = m.tokenizer
    pids, pmask = sampling.encode_prompts(tok, list(m.task.train_prompts[:6]))
    rids, mask, *_ = sampling.sample(m.policy, pids, pmask, 6, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(0))
    with torch.no_grad():
        read = forward.policy_forward(m.policy, pids, pmask, rids, mask, 1.0, value_head=m.value.score).values
        separate = forward.token_values(m.value, pids, pmask, rids, mask)
    torch.testing.assert_close(read, separate, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_is_used_in_the_loop_and_only_when_asked():
    """train.dtype=bf16 against the default at the same seed: the same sampling distribution up to
    bf16 rounding (entropies close but not equal); fp32 twice gives identical numbers."""
    ent = {}
    for mode in ("fp32", "bf16"):
        _, _, hist, _ = _run({"train.dtype": mode}, iterations=1)
        ent[mode] = hist[-1]["objective/entropy"]
    _, _, again, _ = _run({}, iterations=1)
    assert again[-1]["objective/entropy"] == ent["fp32"]
    assert 1e-6 < abs(ent["bf16"] - ent["fp32"]) < 0.05 * ent["fp32"], ent


def test_the_policy_step_does_not_depend_on_a_value_model_being_there():
    # Sequence-level RLOO: the advantages never read the value model, so the policy's gradient is
    # the same with or without one. With clipping active (a tiny max norm) the policy's step must be
    # the same too: its gradient is clipped on its own, not together with the value's.
    import dataclasses

    over = {"advantage.level": "sequence", "advantage.baseline": "rloo", "ppo.max_grad_norm": 0.01, "seed": 2}
    cfg = build_config(None, {**TINY, **over})
    with_value = load_models(build_config(None, {**TINY, **over, "advantage.baseline": "value"}))
    assert with_value.value is not None
    without = dataclasses.replace(load_models(cfg), value=None)
    steps = []
    for m in (with_value, without):
        st = init_state(cfg, m)
        h = ppo_iteration(cfg, m, st, make_score_fn(m.reward, m.task.gold))
        steps.append((h, [p.detach().clone() for p in m.policy.parameters()]))
    (h_v, p_v), (h_n, p_n) = steps
    assert h_v["grad/norm"] > 0.01 and h_v["grad/value_norm"] > 0.01  # both clipped
    assert h_v["grad/norm"] == pytest.approx(h_n["grad/norm"], rel=1e-4)
    for a, b in zip(p_v, p_n, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class _Logger:
    """A stand-in for the MLflow run logger: what the Recorder writes."""

    run_id = "loop-test"

    def __init__(self):
        self.steps: list[int] = []

    def log_metrics(self, metrics, step):
        self.steps.append(step)

    def set_tags(self, tags):
        pass

    def log_table(self, frame, name):
        pass

    def log_text(self, text, name):
        pass


def test_train_runs_the_iterations_evaluates_and_closes_its_state(monkeypatch):
    """``train`` (impl=custom, inside the run's owner ``harness.run.train``): evaluation at 0 and every
    eval.every, one log per iteration, on_eval after each evaluation, and the state's side thread released
    at the end (also when a hook raises)."""
    from harness.ppo import loop
    from harness.run import train
    from harness.warmstart.load import validate_model_keys

    closed = []
    monkeypatch.setattr(loop.PPOState, "close", lambda self: closed.append(self.iteration))
    cfg = build_config(None, {**TINY, "train.iterations": 3, "eval.every": 2})
    logger, seen = _Logger(), []
    task = validate_model_keys(cfg)
    result = train(cfg, logger, task, on_eval=lambda it, em: seen.append((it, sorted(em))), progress=False)
    assert logger.steps == [0, 1, 2, 3] and closed == [3]
    assert [it for it, _ in seen] == [0, 2, 3] and all(k.startswith("eval/") for _, keys in seen for k in keys)
    assert [s for s, _ in result.history["eval/gold"]] == [0, 2, 3]
    assert result.final["episodes"] == 24.0 and result.run_id == "loop-test"

    def stop(it, em):
        if it == 2:
            raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):
        train(cfg, _Logger(), task, on_eval=stop, progress=False)
    assert closed == [3, 2]


def test_the_low_reward_length_is_logged_within_the_response_budget():
    # sort: gold = fraction of positions right, varied across a batch (TINY's 6 tokens never end: all equal)
    _, _, hist, _ = _run({"task.name": "sort", "task.response_length": 10})
    got = [h["response/length_low"] for h in hist if "response/length_low" in h]
    assert len(got) == len(hist), "response/length_low not logged"
    assert all(1 <= v <= 10 for v in got)
