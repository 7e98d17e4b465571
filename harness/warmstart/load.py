"""Everything one run needs, on one call: warm starts (shipped, cached or built), then the
policy, its frozen reference, the reward and value models. The path checks made before a run exists."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from harness.config import RunConfig
from harness.models.loading import load_classifier, load_lm, looks_local
from harness.models.presets import PRESETS, is_preset, no_dropout
from harness.models.types import ModelError, Models, SharedTrunkValue
from harness.tasks import get_task
from harness.warmstart import artifacts
from harness.warmstart.cache import build_reward_model, build_sft, cache_key, rm_parts, sft_parts


def validate_model_keys(cfg: RunConfig) -> None:
    """Cheap checks before anything is logged: model.policy / model.reward exist.

    A local path must exist; ``org/name`` is taken as a Hugging Face hub id and is
    resolved when the models load.
    """
    p = cfg.model.policy
    if not is_preset(p) and looks_local(p) and not Path(p).expanduser().exists():
        raise ModelError(f"model.policy '{p}': not a built-in preset ({', '.join(PRESETS)}) nor an existing path")
    r = cfg.model.reward
    if r not in ("learned", "gold") and looks_local(r) and not Path(r).expanduser().exists():
        raise ModelError(f"model.reward '{r}': not 'learned', 'gold' or an existing model path")
    # shipped artifacts this run would use are verified now, before anything is logged
    task = get_task(cfg.task.name)
    try:
        artifacts.shipped(task.name, "sft", cache_key(sft_parts(cfg, task)))
        if r == "learned":
            artifacts.shipped(task.name, "rm", cache_key(rm_parts(cfg, task)))
    except artifacts.ArtifactError as e:
        raise ModelError(str(e)) from None


def load_models(cfg: RunConfig, progress=None) -> Models:
    """Everything one run needs, built or loaded from the cache."""
    validate_model_keys(cfg)
    task = get_task(cfg.task.name)
    sft_dir = build_sft(cfg, task, progress)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft_dir / "tokenizer")
    tokenizer.padding_side = "left"
    policy = load_lm(sft_dir / "policy")
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    reward: nn.Module | None
    if cfg.model.reward == "gold":
        reward = None
    elif cfg.model.reward == "learned":
        rm_dir = build_reward_model(cfg, task, sft_dir, progress)
        reward = load_classifier(rm_dir / "rm")
    else:
        try:
            reward = load_classifier(Path(cfg.model.reward))
        except Exception as e:
            raise ModelError(f"model.reward '{cfg.model.reward}': cannot load ({str(e).splitlines()[0][:160]})") from None
    if reward is not None:
        reward.requires_grad_(False)
    value = None
    needs_value = cfg.advantage.level == "token" or cfg.advantage.baseline == "value"
    if needs_value and cfg.model.value_trunk == "shared":
        value = SharedTrunkValue(policy)
    elif needs_value:
        if cfg.model.value_init == "reward" and reward is not None:
            value = copy.deepcopy(reward)
        else:
            from transformers import AutoModelForSequenceClassification

            value = AutoModelForSequenceClassification.from_pretrained(sft_dir / "policy", num_labels=1)
            value = no_dropout(value)
            nn.init.zeros_(value.score.weight)
        value.requires_grad_(True)
        value.train()
    policy.train()
    tags = artifacts.provenance(task.name, "sft", sft_dir)
    if cfg.model.reward == "learned":
        tags.update(artifacts.provenance(task.name, "rm", rm_dir))
    return Models(task=task, tokenizer=tokenizer, policy=policy, ref=ref, reward=reward, value=value,
                  source=str(sft_dir), provenance=tags)
