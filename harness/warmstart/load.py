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
from harness.warmstart.cache import (
    build_reward_model,
    build_sft,
    cache_key,
    check_cache_dir,
    rm_parts,
    sft_parts,
)


def validate_model_keys(cfg: RunConfig) -> None:
    """Cheap checks before anything is logged or cached: model.policy / model.reward exist and are models.

    A local path must be a folder holding a model: a ``config.json`` that loads (no weights are read),
    weights and, for the policy, a tokenizer. ``org/name`` is taken as a Hugging Face hub id and is
    resolved when the models load. Raises ModelError (one line naming the key and the path).
    """
    p = cfg.model.policy
    if not is_preset(p) and looks_local(p):
        if not Path(p).expanduser().exists():
            raise ModelError(f"model.policy '{p}': not a built-in preset ({', '.join(PRESETS)}) nor an existing path")
        _check_model_dir("model.policy", p, tokenizer=True)
    r = cfg.model.reward
    if r not in ("learned", "gold") and looks_local(r):
        if not Path(r).expanduser().exists():
            raise ModelError(f"model.reward '{r}': not 'learned', 'gold' or an existing model path")
        _check_model_dir("model.reward", r, tokenizer=False)
    # shipped artifacts this run would use are verified now, before anything is logged
    task = get_task(cfg.task.name)
    try:
        sft = artifacts.shipped(task.name, "sft", cache_key(sft_parts(cfg, task)))
        rm = artifacts.shipped(task.name, "rm", cache_key(rm_parts(cfg, task))) if r == "learned" else sft
    except artifacts.ArtifactError as e:
        raise ModelError(str(e)) from None
    if sft is None or rm is None:  # the run reads (or builds) models in the cache: only its owner may write there
        check_cache_dir()


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _check_model_dir(key: str, name: str, tokenizer: bool) -> None:
    """A Hugging Face model folder: its config loads, its weights and (``tokenizer``) a tokenizer are there."""
    folder = Path(name).expanduser()
    shown = repr(name) if not name.isprintable() else f"'{name}'"
    if not folder.is_dir():
        raise ModelError(f"{key} {shown}: a file, expected a model folder (config.json and weights)")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{key} {shown}: no config.json in this folder, so it holds no model")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # not JSON, no model_type, an unknown architecture
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{key} {shown}: config.json does not load ({first[:160]})") from None
    if not any((folder / w).is_file() for w in WEIGHTS):
        raise ModelError(f"{key} {shown}: no weights in this folder (expected one of {', '.join(WEIGHTS)})")
    if tokenizer and not any((folder / t).is_file() for t in TOKENIZER):
        raise ModelError(f"{key} {shown}: no tokenizer in this folder (expected one of {', '.join(TOKENIZER)})")


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
