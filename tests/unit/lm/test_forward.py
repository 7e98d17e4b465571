"""The fast rollout path (KV cache, sampling logprobs) against plain full forward passes."""

import pytest
import torch

from harness.config import build_config
from harness.lm import forward, rollout, sampling
from harness.warmstart.load import load_models


@pytest.fixture(scope="module")
def models():
    from tests.conftest import TINY

    return load_models(build_config(None, TINY))


def test_response_mask_by_hand():
    ids = torch.tensor([[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0]])  # eos id 1
    mask, has_eos = sampling.response_mask(ids, eos_id=1)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_full_forward(models, temperature):
    tok = models.tokenizer
    prompts = list(models.task.train_prompts[:12])  # different lengths -> left padding
    pids, pmask = sampling.encode_prompts(tok, prompts)
    assert (pmask == 0).any(), "the test needs padded prompts"
    g = torch.Generator().manual_seed(0)
    rids, mask, has_eos, logp, ent = sampling.sample(
        models.policy, pids, pmask, 16, temperature, tok.eos_token_id, tok.pad_token_id, g
    )
    with torch.no_grad():
        logits = forward.forward_logits(models.policy, pids, pmask, rids)
        full = forward.logprobs_from_logits(logits, rids, temperature) * mask
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
    pids, pmask = sampling.encode_prompts(tok, prompts)
    g = torch.Generator().manual_seed(1)
    rids, mask, *_ = sampling.sample(models.policy, pids, pmask, 8, 1.0, tok.eos_token_id, tok.pad_token_id, g)
    with torch.no_grad():
        batched = forward.sequence_scores(models.reward, pids, pmask, rids, mask)
        for i in range(len(prompts)):
            p = pids[i][pmask[i].bool()]
            n = int(mask[i].sum())
            seq = torch.cat([p, rids[i, :n]])[None]
            h = models.reward.transformer(input_ids=seq).last_hidden_state[0, -1]
            assert float(models.reward.score(h)) == pytest.approx(float(batched[i]), abs=1e-4)


def test_fast_gpt2_path_equals_the_hf_forward_and_decoder(models, monkeypatch):
    """The lean GPT-2 forward and preallocated-KV-cache decoder (harness.fast.gpt2) against plain HF:
    the same sampled tokens and logprobs, the same logits / values / scores, the same gradients."""
    from harness.fast import gpt2

    tok, policy = models.tokenizer, models.policy
    was_training = policy.training
    assert gpt2.supports(policy) and gpt2.supports(models.value) and gpt2.supports(models.reward)
    prompts = list(models.task.train_prompts[:10])
    pids, pmask = sampling.encode_prompts(tok, prompts)
    assert (pmask == 0).any(), "the test needs padded prompts"
    args = (pids, pmask, 12, 0.8, tok.eos_token_id, tok.pad_token_id)
    fast = sampling.sample(policy, *args, torch.Generator().manual_seed(5))
    with monkeypatch.context() as m:  # the HF route: generic forward with its own KV cache
        m.setattr(gpt2, "supports", lambda model: False)
        slow = sampling.sample(policy, *args, torch.Generator().manual_seed(5))
        rids = fast[0]
        with torch.no_grad():
            hf_logits = forward.forward_logits(policy, pids, pmask, rids)
            hf_values = forward.token_values(models.value, pids, pmask, rids, fast[1])
            hf_scores = forward.sequence_scores(models.reward, pids, pmask, rids, fast[1])
        policy.train()
        hf_grads = torch.autograd.grad(forward.forward_logits(policy, pids, pmask, rids).logsumexp(-1).mean(),
                                       list(policy.parameters()))
    for a, b in zip(fast, slow, strict=True):  # ids, mask, has_eos, logprobs, entropy
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        policy.eval()
        torch.testing.assert_close(forward.forward_logits(policy, pids, pmask, rids), hf_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(forward.token_values(models.value, pids, pmask, rids, fast[1]), hf_values, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(forward.sequence_scores(models.reward, pids, pmask, rids, fast[1]), hf_scores,
                                   atol=1e-5, rtol=1e-5)
    policy.train()
    grads = torch.autograd.grad(forward.forward_logits(policy, pids, pmask, rids).logsumexp(-1).mean(),
                                list(policy.parameters()))
    policy.train(was_training)
    for g, h in zip(grads, hf_grads, strict=True):
        torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-4)


def test_packed_forwards_equal_the_padded_hf_forward(models, monkeypatch):
    """The loop's packed forwards (no padding, nothing after the last read token, filler rows for
    oneDNN's shapes) against the padded HF forward: the same logprobs, entropies, values and
    scores on the real tokens, zeros elsewhere, and the same gradients."""
    from harness.algos import math as M
    from harness.fast import gemm, gpt2

    tok, policy = models.tokenizer, models.policy
    was_training = policy.training
    prompts = list(models.task.train_prompts[:16])
    pids, pmask = sampling.encode_prompts(tok, prompts)
    rids, mask, *_ = sampling.sample(policy, pids, pmask, 14, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(7))
    pids, pmask, rids, mask = (t.clone() for t in (pids, pmask, rids, mask))  # out of inference mode
    assert (pmask == 0).any() and (mask == 0).any(), "the test needs padded prompts and early EOS"
    seq0 = torch.zeros_like(mask)
    seq0[:, 0] = 1  # the sequence-level value baseline reads V(prompt) only
    input_ids, _, _, keep, out = forward.next_token_reads(pids, pmask, rids, mask)
    pk = gpt2.pack(input_ids, keep, out, policy.config.n_embd)
    assert pk.n == int(pmask.sum() + mask.sum() - len(prompts))  # exactly the tokens that are read
    if gemm.available():
        assert len(pk.ids) > pk.n, "the test needs filler rows"

    def everything():
        policy.train()
        logp, ent, _ = forward.policy_forward(policy, pids, pmask, rids, mask, 0.7, with_entropy=True)
        grads = torch.autograd.grad((logp.sum() + ent.sum()), list(policy.parameters()))
        with torch.no_grad():
            values = forward.token_values(models.value, pids, pmask, rids, mask)
            v0 = forward.token_values(models.value, pids, pmask, rids, seq0)
            scores = forward.sequence_scores(models.reward, pids, pmask, rids, mask)
        return logp.detach(), ent.detach(), values, v0, scores, grads

    fast = everything()
    with monkeypatch.context() as m:  # the padded HF route for every model
        m.setattr(gpt2, "supports", lambda model: False)
        slow = everything()
        with torch.no_grad():  # entropy straight from HF logits, an independent formula route
            logits = policy(*sampling.sequence_inputs(pids, pmask, rids)[:1]).logits  # no padding mask: compare real rows only
    policy.train(was_training)
    for a, b in zip(fast[:5], slow[:5], strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    for g, h in zip(fast[5], slow[5], strict=True):
        torch.testing.assert_close(g, h, atol=5e-5, rtol=1e-4)
    logp, ent, values, v0, _, _ = fast
    assert (logp[mask == 0] == 0).all() and (ent[mask == 0] == 0).all() and (values[mask == 0] == 0).all()
    assert (v0[:, 1:] == 0).all() and torch.allclose(v0[:, 0], values[:, 0], atol=1e-5)
    full = pmask.all(1)  # rows without prompt padding: the plain HF call above is exact for them
    assert full.any()  # the longest prompt sets the width
    P = pids.shape[1]
    ref_ent = M.entropy_from_logits(logits[:, P - 1 : -1].float() / 0.7) * mask
    torch.testing.assert_close(ent[full], ref_ent[full], atol=2e-5, rtol=1e-5)


def test_collect_tells_the_gold_reward_which_responses_ended(models):
    # a budget of 10 tokens: about half the sentiment reviews do not end; those must score the worst gold
    # (-1), the ones that ended their VADER score, exactly as the task's gold rule says
    task, tok = models.task, models.tokenizer
    prompts = list(task.train_prompts[:32])
    ro = rollout.collect(
        models.policy, models.ref, tok, prompts, max_new_tokens=10, temperature=1.0,
        generator=torch.Generator().manual_seed(0), score_fn=rollout.make_score_fn(None, task.gold), gold_fn=task.gold,
    )
    ended = ro.has_eos
    assert (~ended).any() and ended.any(), "the test needs both kinds of response"
    assert torch.all(ro.gold[~ended] == task.gold_range[0])
    expected = task.gold(ro.prompts, ro.completions, [True] * len(prompts))
    assert ro.gold[ended].tolist() == pytest.approx([g for g, e in zip(expected, ended.tolist(), strict=True) if e])
    assert torch.equal(ro.scores, ro.gold)  # model.reward=gold optimises the same rule


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_hf_cache_path_samples_what_a_full_forward_gives_without_deprecation_warnings(arch):
    """Non-GPT-2 models decode through the HF forward with its cache (passed as ``cache``, transformers'
    Cache API): the sampled tokens' log-probs equal a full forward over prompt + response, and no
    ``past_key_values`` FutureWarning is raised."""
    import warnings

    import torch.nn.functional as F
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":
        m = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    else:
        m = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                             num_attention_heads=2))
    m.eval()
    ids = torch.randint(2, 40, (3, 5))
    mask = torch.ones_like(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        resp, rmask, _, logp, _ = sampling.sample(m, ids, mask, 4, 1.0, eos_id=1, pad_id=0,
                                                  generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(input_ids=torch.cat([ids, resp.clone()], 1), use_cache=False).logits[:, ids.shape[1] - 1: -1]
    want = F.log_softmax(full.float(), -1).gather(2, resp[..., None]).squeeze(2) * rmask
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=1e-5)
