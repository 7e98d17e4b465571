"""The fast rollout path (KV cache, sampling logprobs) against plain full forward passes."""

import pytest
import torch

from harness.config import build_config
from harness.models import load_models
from harness.ppo import rollout as R


@pytest.fixture(scope="module")
def models():
    from tests.conftest import TINY

    return load_models(build_config(None, TINY))


def test_response_mask_by_hand():
    ids = torch.tensor([[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0]])  # eos id 1
    mask, has_eos = R.response_mask(ids, eos_id=1)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_full_forward(models, temperature):
    tok = models.tokenizer
    prompts = list(models.task.train_prompts[:12])  # different lengths -> left padding
    pids, pmask = R.encode_prompts(tok, prompts)
    assert (pmask == 0).any(), "the test needs padded prompts"
    g = torch.Generator().manual_seed(0)
    rids, mask, has_eos, logp, ent = R.sample(
        models.policy, pids, pmask, 16, temperature, tok.eos_token_id, tok.pad_token_id, g
    )
    with torch.no_grad():
        logits = R.forward_logits(models.policy, pids, pmask, rids)
        full = R.logprobs_from_logits(logits, rids, temperature) * mask
        # an independent route: one unpadded sequence at a time, no cache, no position ids
        for i in range(len(prompts)):
            p = pids[i][pmask[i].bool()]
            n = int(mask[i].sum())
            seq = torch.cat([p, rids[i, :n]])[None]
            lg = models.policy(input_ids=seq).logits[0, len(p) - 1 : len(p) - 1 + n] / temperature
            ref = torch.log_softmax(lg, -1).gather(1, rids[i, :n, None]).squeeze(1)
            torch.testing.assert_close(logp[i, :n], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logp, full, atol=1e-5, rtol=1e-5)
    assert (rids[mask == 0] == tok.pad_token_id).all()
    assert ((rids == tok.eos_token_id).sum(1) <= 1).all()


def test_reward_score_is_read_at_the_last_real_token(models):
    tok = models.tokenizer
    prompts = list(models.task.train_prompts[:4])
    pids, pmask = R.encode_prompts(tok, prompts)
    g = torch.Generator().manual_seed(1)
    rids, mask, *_ = R.sample(models.policy, pids, pmask, 8, 1.0, tok.eos_token_id, tok.pad_token_id, g)
    with torch.no_grad():
        batched = R.sequence_scores(models.reward, pids, pmask, rids, mask)
        for i in range(len(prompts)):
            p = pids[i][pmask[i].bool()]
            n = int(mask[i].sum())
            seq = torch.cat([p, rids[i, :n]])[None]
            h = models.reward.transformer(input_ids=seq).last_hidden_state[0, -1]
            assert float(models.reward.score(h)) == pytest.approx(float(batched[i]), abs=1e-4)


def test_fast_gpt2_path_equals_the_hf_forward_and_decoder(models, monkeypatch):
    """The lean GPT-2 forward and preallocated-KV-cache decoder (gpt2_fast) against plain HF:
    the same sampled tokens and logprobs, the same logits / values / scores, the same gradients."""
    from harness.ppo import gpt2_fast

    tok, policy = models.tokenizer, models.policy
    was_training = policy.training
    assert gpt2_fast.supports(policy) and gpt2_fast.supports(models.value) and gpt2_fast.supports(models.reward)
    prompts = list(models.task.train_prompts[:10])
    pids, pmask = R.encode_prompts(tok, prompts)
    assert (pmask == 0).any(), "the test needs padded prompts"
    args = (pids, pmask, 12, 0.8, tok.eos_token_id, tok.pad_token_id)
    fast = R.sample(policy, *args, torch.Generator().manual_seed(5))
    with monkeypatch.context() as m:  # the HF route: generic forward with its own KV cache
        m.setattr(gpt2_fast, "supports", lambda model: False)
        slow = R.sample(policy, *args, torch.Generator().manual_seed(5))
        rids = fast[0]
        with torch.no_grad():
            hf_logits = R.forward_logits(policy, pids, pmask, rids)
            hf_values = R.token_values(models.value, pids, pmask, rids)
            hf_scores = R.sequence_scores(models.reward, pids, pmask, rids, fast[1])
        policy.train()
        hf_grads = torch.autograd.grad(R.forward_logits(policy, pids, pmask, rids).logsumexp(-1).mean(),
                                       list(policy.parameters()))
    for a, b in zip(fast, slow, strict=True):  # ids, mask, has_eos, logprobs, entropy
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        policy.eval()
        torch.testing.assert_close(R.forward_logits(policy, pids, pmask, rids), hf_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(R.token_values(models.value, pids, pmask, rids), hf_values, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(R.sequence_scores(models.reward, pids, pmask, rids, fast[1]), hf_scores,
                                   atol=1e-5, rtol=1e-5)
    policy.train()
    grads = torch.autograd.grad(R.forward_logits(policy, pids, pmask, rids).logsumexp(-1).mean(),
                                list(policy.parameters()))
    policy.train(was_training)
    for g, h in zip(grads, hf_grads, strict=True):
        torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-4)
