"""A run's models loaded from where their weights are: the tokenizer, the policy (LoRA adapters on it when
model.lora.r) and its frozen reference, the reward model or the reward function of the text, the value model
or the shared-trunk head, all on train.device.

Where the weights are is the warm start's answer, handed in: ``harness.warmstart`` (the layer above) builds
the SFT policy and the learned reward model with the sampling and forwards of ``harness.lm`` and the loaders
of this package, so this module cannot ask it. ``load_from_start`` takes a ``PolicyStart`` (the policy's
and its tokenizer's folders) and ``learned_reward``, a function giving the learned proxy reward model's
folder (model.reward=learned), called at the point of the load where the model is read: a build runs
there, after the policy and its adapters are made, as it always has. ``harness.warmstart.load.load_models``
is the one call a run's owner makes: the keys checked, the warm start, this load, the artifacts' provenance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from torch import nn

from harness.algos.estimators import BASELINES
from harness.config import RunConfig
from harness.devices import resolve as resolve_device
from harness.errors import first_line
from harness.models.loading import TOKENIZER, load_classifier, load_lm, load_tokenizer, looks_local
from harness.models.lora import with_lora
from harness.models.presets import no_dropout
from harness.models.reward_fn import is_callable_spec, load_reward_fn, same_vocabulary, text_reward_fn
from harness.models.types import ModelError, Models, PolicyStart, SharedTrunkValue
from harness.schema import Tag
from harness.tasks import Task

__all__ = ["check_eos", "frozen", "load_from_start"]


def load_from_start(cfg: RunConfig, task: Task, start: PolicyStart, learned_reward: Callable[[], Path]) -> Models:
    """The run's models from ``start``; ``provenance`` holds the value model's origin (``Tag.VALUE_INIT``)."""
    tokenizer = load_tokenizer(start.tokenizer)
    if cfg.task.chat_template and not getattr(tokenizer, "chat_template", None):  # a hub id's, known only now
        raise ModelError(f"task.chat_template: the tokenizer of model.policy '{cfg.model.policy}' has no chat template")
    check_eos(cfg.model.policy, tokenizer)  # a hub id's tokenizer is first seen here
    policy = load_lm(start.policy)
    if cfg.model.lora.r:  # adapters on the policy; the reference: adapters off, the same weights
        policy, ref = with_lora(policy, cfg.model.lora)
    else:
        ref = copy.deepcopy(policy).eval().requires_grad_(False)
    reward, reward_fn = _reward(cfg, tokenizer, learned_reward)
    value, value_init = _value(cfg, start, policy, reward, tokenizer)
    if cfg.train.gradient_checkpointing:  # activations recomputed in the backward (the generic forward)
        for m in (policy, None if isinstance(value, SharedTrunkValue) else value):
            if m is not None:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    device = resolve_device(cfg.train.device)
    for m in (policy, ref, reward, value):
        if m is not None:
            m.to(device)
    policy.train()
    return Models(task=task, tokenizer=tokenizer, policy=policy, ref=ref, reward=reward, value=value,
                  source=str(start.sft_dir or start.policy), provenance={Tag.VALUE_INIT: value_init},
                  reward_fn=reward_fn, device=device)


def _value(cfg: RunConfig, start: PolicyStart, policy: nn.Module, reward: nn.Module | None,
           tokenizer) -> tuple[nn.Module | None, str]:
    """(the value model or None, where it starts from): token level and baseline=value need one; a head on the
    policy's trunk (model.value_trunk=shared), a copy of the reward model, or the policy's weights."""
    needs_value = cfg.advantage.level == "token" or BASELINES[cfg.advantage.baseline].props["value"]
    if not needs_value:
        return None, "none (no value model)"
    if cfg.model.value_trunk == "shared":
        return SharedTrunkValue(policy), "policy trunk (shared, zero-initialised head)"
    if cfg.model.value_init == "reward" and reward is not None:
        value, value_init = copy.deepcopy(reward), "reward"
    else:
        value_init = "policy" if cfg.model.value_init == "policy" else f"policy ({_why_not_reward(cfg)})"
        from transformers import AutoModelForSequenceClassification

        value = AutoModelForSequenceClassification.from_pretrained(start.policy, num_labels=1)
        value.config.pad_token_id = tokenizer.pad_token_id
        value = no_dropout(value)
        nn.init.zeros_(value.score.weight)
    value.requires_grad_(True)
    value.train()
    return value, value_init


def _why_not_reward(cfg: RunConfig) -> str:
    """Why model.value_init=reward fell back to the policy: no reward model shares the policy's tokens."""
    r = cfg.model.reward
    if r == "gold":
        return "model.reward=gold: no reward model"
    if is_callable_spec(r):
        return "model.reward is a function: no reward model"
    return "the reward model has another vocabulary: it scores the text"


def _reward(cfg: RunConfig, tokenizer, learned_reward: Callable[[], Path]):
    """(reward model sharing the policy's tokens or None, reward function of the text or None).

    A reward model whose tokenizer maps tokens to other ids than the policy's is scored on the text
    (``text_reward_fn``: decoded and re-tokenised for it), on the custom core and TRL alike."""
    r = cfg.model.reward
    if r == "gold":
        return None, None
    if is_callable_spec(r):
        return None, load_reward_fn(r)
    if r == "learned":
        return frozen(load_classifier(learned_reward())), None
    try:
        reward = frozen(load_classifier(Path(r) if looks_local(r) else r))
        own = load_tokenizer(r) if _has_tokenizer(r) else None
    except Exception as e:
        raise ModelError(f"model.reward '{r}': cannot load ({first_line(e)[:160]})") from None
    if own is not None and not same_vocabulary(own, tokenizer):
        return None, text_reward_fn(reward.to(resolve_device(cfg.train.device)), own, r)
    return reward, None


def frozen(model: nn.Module) -> nn.Module:
    """``model`` without gradients, in eval mode: the reference, the reward and the gold reward models."""
    return model.requires_grad_(False).eval()


def _has_tokenizer(name: str) -> bool:
    """A local folder with tokenizer files, or a hub id (whose tokenizer is its own)."""
    folder = Path(name).expanduser()
    if not looks_local(name):
        return True
    return folder.is_dir() and any((folder / t).is_file() for t in TOKENIZER)


def check_eos(name: str, tokenizer) -> None:
    """A policy must be able to end a response: its tokenizer needs an EOS token (responses are cut, scored
    and penalised at it)."""
    if tokenizer.eos_token_id is None:
        raise ModelError(f"model.policy '{name}': its tokenizer has no EOS token, so no response could end; "
                         "give it one (tokenizer.add_special_tokens({'eos_token': ...}), save_pretrained) "
                         "and resize the model's embeddings if the token is new")
