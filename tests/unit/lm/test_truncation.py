"""rollout.top_k / top_p / min_new_tokens: what tokens are drawn from (transformers' own warpers as the
independent route) and which distribution the returned log-probabilities are of (the untruncated tempered one)."""

from __future__ import annotations

import pytest
import torch

from harness.config import build_config
from harness.lm import forward, sampling
from harness.lm.sampling import Truncation, truncate_logits
from harness.warmstart.load import load_models


@pytest.fixture(scope="module")
def models():
    from tests.conftest import TINY

    return load_models(build_config(None, TINY))


@pytest.mark.parametrize("top_k, top_p", [(1, 1.0), (5, 1.0), (0, 0.3), (0, 0.9), (7, 0.6)])
def test_truncation_equals_transformers_warpers(top_k, top_p):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(top_k))
    want = logits.clone()
    if top_k:
        want = TopKLogitsWarper(top_k)(None, want)
    if top_p < 1.0:
        want = TopPLogitsWarper(top_p)(None, want)
    got = truncate_logits(logits, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.equal(got[~torch.isinf(got)], logits[~torch.isinf(got)])
    assert (~torch.isinf(got)).any(1).all()


def _draw(models, tr: Truncation | None, temperature=0.8, seed=0, n=16, length=8):
    tok = models.tokenizer
    pids, pmask = sampling.encode_prompts(tok, list(models.task.train_prompts[:n]))
    g = torch.Generator().manual_seed(seed)
    out = sampling.sample(models.policy, pids, pmask, length, temperature, tok.eos_token_id, tok.pad_token_id, g, tr)
    with torch.no_grad():
        logits = forward.forward_logits(models.policy, pids, pmask, out[0]).float() / temperature  # (B, T, V)
    return out, logits


def test_top_k_1_is_greedy_and_the_logprobs_are_the_untruncated_distributions(models):
    (rids, mask, _, logp, _), logits = _draw(models, Truncation(top_k=1))
    m = mask.bool()
    assert torch.equal(rids[m], logits.argmax(-1)[m])  # the most likely token, every step
    full = torch.log_softmax(logits, -1).gather(2, rids[..., None]).squeeze(2)
    torch.testing.assert_close(logp[m], full[m], atol=1e-5, rtol=0)
    assert (logp[m] < -1e-3).any()  # not log 1 = 0, which the truncated distribution would give


def test_top_p_draws_inside_the_nucleus_only(models):
    (rids, mask, _, _, _), logits = _draw(models, Truncation(top_p=0.5), temperature=1.0)
    m = mask.bool()
    B, T, V = logits.shape
    kept = ~torch.isinf(truncate_logits(logits.reshape(B * T, V), 0, 0.5)).reshape(B, T, V)
    inside = kept.gather(2, rids[..., None]).squeeze(2)
    assert inside[m].all()
    (rids_full, mask_full, *_), _ = _draw(models, None, temperature=1.0)
    outside = ~kept.reshape(B * T, V).all(1)
    assert outside.any()  # the nucleus does cut tokens here: the test discriminates


def test_min_new_tokens_holds_eos_back_and_nothing_changes_without_options(models):
    first = 10
    (rids, mask, has_eos, _, _), _ = _draw(models, Truncation(min_new_tokens=first), seed=1, n=32, length=24)
    eos = models.tokenizer.eos_token_id
    assert not (rids[:, :first] == eos).any() and has_eos.any()
    (r0, *_), _ = _draw(models, None, seed=1, n=32, length=24)
    assert (r0[:, :first] == eos).any()  # without it EOS comes earlier: the test discriminates
    (r1, *_), _ = _draw(models, Truncation(), seed=1, n=32, length=24)
    assert torch.equal(r0, r1)  # the defaults draw exactly what the untruncated sampler draws


def test_stop_strings_cut_the_response_after_the_token_that_completes_one(models):
    tok = models.tokenizer
    words = "the movie was great . and then".split()
    ids = torch.tensor([tok.convert_tokens_to_ids(words), tok.convert_tokens_to_ids(words)])
    mask = torch.ones(2, len(words))
    mask[1, 3:] = 0  # the second response ended (EOS) before the stop string
    has_eos = torch.tensor([False, True])
    cut, ended = sampling.cut_at_stop(tok, ids, mask, has_eos, ["great ."])
    assert cut[0].tolist() == [1, 1, 1, 1, 1, 0, 0] and bool(ended[0])  # "." completes "great ." at index 4
    assert torch.equal(cut[1], mask[1]) and bool(ended[1])
    assert sampling.decode(tok, ids, cut, tok.eos_token_id)[0] == "the movie was great ."


def test_collect_with_stop_and_chat_template(models):
    """rollout.stop through collect: masks, logprobs and the 'ended' flag follow the cut; task.chat_template:
    the policy is given the templated prompt, the rollout keeps the plain one."""
    import copy

    from harness.lm.rollout import collect

    tok = copy.deepcopy(models.tokenizer)
    tok.chat_template = "{% for m in messages %}the {{ m['content'] }}{% endfor %}{% if add_generation_prompt %} was{% endif %}"
    prompts = list(models.task.train_prompts[:8])

    def run(**kw):
        return collect(models.policy, models.ref, tok, prompts, max_new_tokens=8, temperature=1.0,
                       generator=torch.Generator().manual_seed(0), score_fn=lambda ro: torch.zeros(ro.size),
                       gold_fn=models.task.gold, **kw)

    plain = run()
    common = plain.completions[0].split()[1]  # a word the first completion holds at its second token
    cut = run(stop=(common,))
    assert cut.mask[0].sum() == 2 and bool(cut.has_eos[0]) and (cut.logprobs[0, 2:] == 0).all()
    assert (cut.mask <= plain.mask).all()
    chat = run(chat=True)
    want, _ = sampling.encode_prompts(tok, [f"the {p} was" for p in prompts])
    assert torch.equal(chat.prompt_ids, want) and chat.prompts == prompts


def test_chat_template_is_refused_for_a_tokenizer_without_one():
    from harness.models.types import ModelError
    from harness.warmstart.load import validate_model_keys

    with pytest.raises(ModelError, match="task.chat_template: the tokenizer of model.policy 'tiny' has no chat template"):
        validate_model_keys(build_config(overrides={"task.chat_template": True}))
