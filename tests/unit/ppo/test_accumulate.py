"""ppo.micro_batch_size: an optimiser step from micro-batches equals the step from the whole minibatch (the
weights of harness/ppo/accumulate.py), for every aggregation; equal weights (1 / n_micro) would not."""

from __future__ import annotations

import pytest
import torch

from harness.config import ConfigError, build_config
from harness.ppo import accumulate as A
from tests.unit.ppo.test_options import _run


def _grads(monkeypatch, over):
    """The flat gradient the first optimiser step stepped with, and the iteration's metrics."""
    *_, hist, tape = _run(monkeypatch, over, spy=(), grads=True)
    return torch.cat([g.flatten() for g in tape.steps[0]["grads"]]), hist[0]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "token-sum"])
def test_micro_batches_give_the_minibatch_step(monkeypatch, agg):
    over = {"ppo.minibatches": 2, "ppo.epochs": 1, "loss.agg": agg, "ppo.entropy_coef": 0.01,
            "task.response_length": 16, "ppo.max_grad_norm": None}
    whole, h_whole = _grads(monkeypatch, over)
    micro, h_micro = _grads(monkeypatch, {**over, "ppo.micro_batch_size": 2})
    scale = float(whole.abs().max())
    assert scale > 0
    assert float((micro - whole).abs().max()) < 1e-4 * scale  # float rounding only
    for key in ("policy/approxkl_avg", "policy/clipfrac_avg", "loss/value_avg"):
        assert h_micro[key] == pytest.approx(h_whole[key], rel=1e-4, abs=1e-7), key
    # the policy loss (~5e-3 here) is what is left of larger per-token terms that cancel: the two orders of
    # summation differ in steps of 2.4e-7 (float32's ulp between 2 and 4), seen 1 to 3 steps across torch builds
    assert h_micro["loss/policy_avg"] == pytest.approx(h_whole["loss/policy_avg"], rel=1e-4, abs=2e-6)
    if agg == "token-mean":  # 1 / n_micro per micro-batch (veRL's) is another gradient when lengths differ
        monkeypatch.setattr(A, "micro_weights", lambda agg, mask, chunks: [1 / len(chunks)] * len(chunks))
        naive, _ = _grads(monkeypatch, {**over, "ppo.micro_batch_size": 2})
        assert float((naive - whole).abs().max()) > 1e-2 * scale


def test_micro_weights_by_hand():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    chunks = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    assert A.micro_weights("token-mean", mask, chunks) == [4 / 6, 2 / 6]
    assert A.micro_weights("seq-mean-token-mean", mask, chunks) == [0.5, 0.5]
    assert A.micro_weights("token-sum", mask, chunks) == [1.0, 1.0]


def test_a_micro_batch_that_does_not_divide_the_minibatch_is_refused():
    with pytest.raises(ConfigError, match="'ppo.micro_batch_size': 3 does not divide the minibatch of 16 rows"):
        build_config(overrides={"ppo.micro_batch_size": 3})


def test_gradient_checkpointing_saves_less_for_the_backward_and_keeps_the_gradient():
    """train.gradient_checkpointing: the update's forward (``policy_forward``, the generic path) keeps far fewer
    activation bytes for the backward (counted by a saved-tensors hook: the checkpointed blocks keep only their
    inputs), and the gradient is the same as without (float rounding)."""
    from harness.fast import gpt2
    from harness.lm import forward, rollout
    from harness.warmstart.load import load_models
    from tests.conftest import TINY

    out = {}
    for on in (False, True):
        cfg = build_config(None, {**TINY, "train.gradient_checkpointing": on, "train.device": "cpu"})
        m = load_models(cfg)
        assert gpt2.supports(m.policy) is not on  # checkpointing takes the generic forward
        if not on:  # one rollout for both: the same responses differentiated
            ro = rollout.collect(m.policy, m.ref, m.tokenizer, list(m.task.train_prompts[:8]), max_new_tokens=6,
                                 temperature=1.0, generator=torch.Generator().manual_seed(0),
                                 score_fn=lambda r: torch.zeros(r.size), gold_fn=m.task.gold)
        m.policy.train()
        saved: list[int] = []

        def pack(t, saved=saved):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lp = forward.policy_forward(m.policy, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.mask, 1.0).logprobs
        lp.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in m.policy.parameters() if p.grad is not None])
        out[on] = (sum(saved), grads)
    (bytes_off, g_off), (bytes_on, g_on) = out[False], out[True]
    assert bytes_on < 0.5 * bytes_off
    assert float((g_on - g_off).abs().max()) < 1e-4 * float(g_off.abs().max())
