"""harness/lm/backbones.py: which trunk a model's forwards run through, chosen once per model."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from harness.lm import backbones
from harness.lm.backbones import HF_TRUNK, PACKED_GPT2, backbone
from harness.lm.sampling import sequence_inputs
from harness.models.types import SharedTrunkValue


def _gpt2(dropout: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=30, n_positions=16, n_embd=8, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=1,
                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2LMHeadModel(cfg).eval()


def test_a_gpt2_takes_the_packed_path_and_any_other_model_the_hf_trunk():
    m = _gpt2()
    assert backbone(m) is PACKED_GPT2 and backbone(SharedTrunkValue(m).train()) is PACKED_GPT2
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=30, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert backbone(llama) is HF_TRUNK
    fresh = _gpt2()
    fresh.config.activation_function = "relu"  # a GPT-2 the packed forward cannot read
    assert backbone(fresh) is HF_TRUNK


def test_the_choice_is_made_once_per_model_and_the_fast_path_steps_aside_when_it_cannot_run(monkeypatch):
    m = _gpt2(dropout=0.1)
    assert backbone(m) is PACKED_GPT2
    assert backbones._CHOSEN[m] is PACKED_GPT2
    m.train()  # training mode with active dropout runs the HF trunk
    assert backbone(m) is HF_TRUNK
    m.eval()
    assert backbone(m) is PACKED_GPT2
    monkeypatch.setattr(backbones.gpt2, "packable", lambda model: pytest.fail("chosen again"))
    assert backbone(m) is PACKED_GPT2  # cached: the type is not read again
    m.to("meta")  # parameters off the CPU after the choice: the generic trunk
    assert backbone(m) is HF_TRUNK


def test_both_backbones_read_the_same_hidden_states():
    m = _gpt2()
    prompt = torch.tensor([[0, 5, 6], [7, 8, 9]])
    pmask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    resp = torch.tensor([[3, 4, 1, 0], [2, 2, 2, 2]])
    ids, attn, pos = sequence_inputs(prompt, pmask, resp)
    keep = torch.cat([pmask.bool(), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]]).bool()], 1)
    out = torch.zeros_like(keep)
    out[0, 4], out[1, 5] = True, True
    with torch.no_grad():
        h_fast, n_fast = PACKED_GPT2.read(m, ids, attn, pos, keep, out)
        h_hf, n_hf = HF_TRUNK.read(m, ids, attn, pos, keep, out)
        assert n_fast == n_hf == 2
        torch.testing.assert_close(h_fast[:2], h_hf, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(PACKED_GPT2.hidden(m, ids, attn, pos)[out], h_hf, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(PACKED_GPT2.logits(m, ids, attn, pos, 2), HF_TRUNK.logits(m, ids, attn, pos, 2),
                                   atol=1e-5, rtol=1e-5)
