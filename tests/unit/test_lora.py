"""model.lora.*: on a locally built tiny Llama, the policy trains its LoRA adapters only, the reference is the
base model (adapters disabled, the same weights in memory), before and after an update."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from harness.config import ConfigError, build_config  # noqa: E402
from harness.lm import forward, rollout  # noqa: E402
from harness.ppo.loop import init_state, ppo_iteration  # noqa: E402
from harness.warmstart.load import load_models  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.smoke.test_own_models import make_model  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from harness.tasks import get_task

    return make_model(tmp_path_factory.mktemp("llama") / "llama", "llama", get_task("sentiment").words())


def _logprobs(model, ro) -> torch.Tensor:
    with torch.no_grad():
        return forward.logprobs_from_logits(
            forward.forward_logits(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids), ro.response_ids, 1.0
        ) * ro.mask


def test_only_the_adapters_train_and_the_reference_is_the_base(llama):
    from transformers import AutoModelForCausalLM

    cfg = build_config(None, {**TINY, "model.policy": str(llama), "model.reward": "gold", "model.lora.r": 4,
                              "model.lora.target_modules": ["q_proj", "v_proj"], "ppo.lr": 1e-2})
    m = load_models(cfg)
    base = AutoModelForCausalLM.from_pretrained(llama).eval()
    assert {id(p) for p in m.ref.parameters()} == {id(p) for p in m.policy.parameters()}  # one copy of the weights
    trainable = {n for n, p in m.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in m.policy.named_parameters()}

    st = init_state(cfg, m)
    ppo_iteration(cfg, m, st, rollout.make_score_fn(m.reward, m.task.gold))
    st.close()
    changed = {n for n, p in m.policy.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= trainable  # only adapters moved
    assert any("lora_B" in n for n in changed)  # B starts at 0: the policy now differs from the base

    ro = rollout.collect(m.policy, m.ref, m.tokenizer, list(m.task.train_prompts[:8]), max_new_tokens=6,
                         temperature=1.0, generator=torch.Generator().manual_seed(0),
                         score_fn=lambda r: torch.zeros(r.size), gold_fn=m.task.gold)
    torch.testing.assert_close(ro.ref_logprobs, _logprobs(base, ro), atol=1e-5, rtol=0)  # reference = base
    assert float((_logprobs(m.policy, ro) - ro.ref_logprobs).abs().max()) > 1e-4  # adapters on in the policy


def test_lora_with_a_shared_trunk_is_refused():
    with pytest.raises(ConfigError, match="'model.value_trunk'"):
        build_config(overrides={"model.lora.r": 4, "model.value_trunk": "shared"})
