"""ppo.lr_scheduler_type / ppo.warmup_iterations: the factors equal transformers' own schedulers (an
independent implementation, stepped once per iteration), and the optimiser of a real run steps with them."""

from __future__ import annotations

import pytest
import torch

from harness.algos.schedules import lr_factor, scheduler_kind
from harness.config import ConfigError, build_config
from tests.unit.ppo.test_options import _run

HF_NAMES = {"constant": "constant", "constant_with_warmup": "constant_with_warmup", "linear": "linear",
            "cosine": "cosine"}


@pytest.mark.parametrize("kind, n, w", [("constant", 7, 0), ("constant_with_warmup", 7, 3), ("linear", 7, 0),
                                        ("linear", 9, 2), ("cosine", 8, 0), ("cosine", 10, 3)])
def test_factors_equal_transformers_get_scheduler(kind, n, w):
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_scheduler(HF_NAMES[kind], opt, num_warmup_steps=w, num_training_steps=n)
    want = []
    for _ in range(n + 1):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        hf.step()
    f = lr_factor(kind, n, w)
    assert [f(i) for i in range(n + 1)] == pytest.approx(want, abs=1e-12)


def test_the_old_key_keeps_its_meaning():
    assert scheduler_kind(None, True) == "linear" and scheduler_kind(None, False) == "constant"
    assert scheduler_kind("cosine", False) == "cosine"
    f = lr_factor("linear", 4)
    assert [f(i) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]  # cleanRL's anneal_lr, as before


@pytest.mark.parametrize("over, key", [({"ppo.warmup_iterations": 2}, "ppo.warmup_iterations"),
                                       ({"ppo.lr_scheduler_type": "constant", "ppo.warmup_iterations": 1},
                                        "ppo.warmup_iterations"),
                                       ({"ppo.lr_scheduler_type": "cosine", "ppo.warmup_iterations": 40},
                                        "ppo.warmup_iterations"),
                                       ({"ppo.lr_scheduler_type": "polynomial"}, "ppo.lr_scheduler_type")])
def test_bad_schedules_are_refused_naming_the_key(over, key):
    with pytest.raises(ConfigError) as e:
        build_config(overrides=over)
    assert f"'{key}'" in str(e.value) and "\n" not in str(e.value)


def test_the_optimiser_steps_with_warmup_then_cosine(monkeypatch):
    """Iteration i (1-based) steps with lr * factor(i - 1): 0 at the first (warmup from 0), then rising, then
    the cosine. Fails if the schedule does not reach the custom core's optimiser."""
    n, w, lr = 6, 2, 1e-3
    over = {"ppo.lr": lr, "ppo.lr_scheduler_type": "cosine", "ppo.warmup_iterations": w, "train.iterations": n,
            "task.response_length": 3, "ppo.minibatches": 1, "ppo.epochs": 1}
    cfg, m, st, hist, tape = _run(monkeypatch, over, iterations=4, spy=())
    f = lr_factor("cosine", n, w)
    assert [s["lr"] for s in tape.steps] == pytest.approx([lr * f(i) for i in range(4)])
    assert [s["lr"] for s in tape.steps][:3] == pytest.approx([0.0, lr / 2, lr])


def test_rollout_truncation_keys_reach_the_loops_sampler(monkeypatch):
    """rollout.top_k / top_p / min_new_tokens reach the custom core's rollout (the sampler's Truncation), and
    top_k=1 then samples greedily: each response token the argmax of the policy. Fails if a key is not wired."""
    from harness.lm.sampling import Truncation

    over = {"rollout.top_k": 1, "rollout.top_p": 0.7, "rollout.min_new_tokens": 2, "task.response_length": 4}
    cfg, m, st, hist, tape = _run(monkeypatch, over, spy=("collect",))
    (call,) = tape.calls["collect"]
    assert call["truncation"] == Truncation(1, 0.7, 2)
    ro = call["out"]
    from harness.lm import forward

    with torch.no_grad():
        # the reference is the policy as it sampled (iteration 1, before the update)
        logits = forward.forward_logits(call["ref"], ro.prompt_ids, ro.prompt_mask, ro.response_ids)
    keep = ro.mask.bool()
    assert torch.equal(ro.response_ids[keep], logits.argmax(-1)[keep])
