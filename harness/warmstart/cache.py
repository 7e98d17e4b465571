"""The on-disk cache of built warm starts: keys hashing what made them, a lock, an atomic rename.

``build_sft`` and ``build_reward_model`` return a shipped artifact when one matches the key
(verified), else build into the cache once across processes. The cache holds models that runs
load, so only its owner may write there: a cache root (``$PPO_HARNESS_CACHE`` or
``~/.cache/ppo-harness``) or task folder that is group- or world-writable, or owned by another
user, is refused (``check_cache_dir``); builds go into a fresh private ``mkdtemp`` folder beside
their destination and are renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from harness.config import RunConfig, response_length
from harness.locks import locked
from harness.models.loading import load_lm, load_pretrained_lm, load_tokenizer, save_classifier
from harness.models.presets import PRESETS, gpt2_config, is_preset, no_dropout
from harness.models.tokenizer import build_tokenizer
from harness.models.types import ModelError, PolicyStart
from harness.tasks import Task
from harness.warmstart import artifacts
from harness.warmstart.preferences import preference_pairs
from harness.warmstart.reward_model import RM_RECIPE, train_reward_model
from harness.warmstart.sft import sft, sft_recipe

CACHE_VERSION = 4  # bump when the build recipe changes (4: the RM key names its SFT by key, not by folder)


def cache_root() -> Path:
    return Path(os.environ.get("PPO_HARNESS_CACHE") or Path.home() / ".cache" / "ppo-harness")


def check_cache_dir(path: Path | None = None, create: bool = False) -> Path:
    """``path`` (default the cache root) when only its owner, this user, can write it; else ModelError.

    ``create``: make it (0700) when missing; otherwise a missing folder passes (it is made 0700 by
    the build that needs it)."""
    path = Path(path or cache_root())
    try:
        if create:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            return path
        st = path.stat()
    except OSError as e:
        raise ModelError(f"model cache '{path}': {e.strerror or e}") from None
    fix = f"set PPO_HARNESS_CACHE to a folder of your own, or fix it: chmod go-w '{path}'"
    if not stat.S_ISDIR(st.st_mode):
        raise ModelError(f"model cache '{path}': not a folder; set PPO_HARNESS_CACHE to a folder of your own")
    if st.st_uid != os.geteuid():
        raise ModelError(f"model cache '{path}': owned by another user (uid {st.st_uid}), who could swap the "
                         "models it holds; set PPO_HARNESS_CACHE to a folder of your own")  # fmt: skip
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "everyone" if st.st_mode & stat.S_IWOTH else "its group"
        raise ModelError(f"model cache '{path}': writable by {who} (mode {stat.S_IMODE(st.st_mode):o}), who could "
                         f"plant or swap models there; {fix}")  # fmt: skip
    return path


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(out: Path, parts: dict, build) -> Path:
    """Build into ``out`` once: private folders, a lock across processes, a fresh temp dir, an atomic rename.

    ``build(tmp)`` writes the artifacts into ``tmp`` and returns stats for done.json. The temp dir
    is ``mkdtemp`` beside ``out`` (unpredictable, 0700), removed when the build fails.
    """
    check_cache_dir(cache_root(), create=True)
    check_cache_dir(out.parent, create=True)
    if (out / "done.json").exists():
        return out
    with locked(out.with_name(out.name + ".lock")):
        if (out / "done.json").exists():
            return out
        t0 = time.time()
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.build-"))
        try:
            stats = build(tmp)
            done = {"key": cache_key(parts), **parts, **stats, "build_s": time.time() - t0}
            (tmp / "done.json").write_text(json.dumps(done, default=str))
            shutil.rmtree(out, ignore_errors=True)  # a folder left by a build that died before done.json
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def sft_parts(cfg: RunConfig, task: Task) -> dict[str, Any]:
    """What makes the SFT policy of a run: its cache key (and the shipped artifact's) hashes this."""
    name = cfg.model.policy
    recipe = sft_recipe(None if is_preset(name) else len(task.sft_corpus))
    return {"v": CACHE_VERSION, "task": task.name, "policy": name, "sft": recipe,
            "preset": PRESETS.get(name), "corpus": cache_key({"sft": task.sft_corpus, "vocab": task.words()})}


def uses_sft(cfg: RunConfig) -> bool:
    """model.sft: task, or auto with a built-in preset (random-initialised: it needs its warm start)."""
    return cfg.model.sft == "task" or (cfg.model.sft == "auto" and is_preset(cfg.model.policy))


def start_key(cfg: RunConfig, task: Task) -> str:
    """The key of the policy a run starts from: its SFT build's, or the model as given (model.sft=none)."""
    if uses_sft(cfg):
        return cache_key(sft_parts(cfg, task))
    return cache_key({"v": CACHE_VERSION, "policy": cfg.model.policy, "sft": "none"})


def policy_start(cfg: RunConfig, task: Task, progress=None) -> PolicyStart:
    """The SFT build (shipped, cached or built now) when the run uses one, else the policy as named."""
    if uses_sft(cfg):
        return PolicyStart.of_sft(build_sft(cfg, task, progress))
    return PolicyStart(cfg.model.policy, cfg.model.policy)


def rm_parts(cfg: RunConfig, task: Task) -> dict[str, Any]:
    """What makes the proxy RM of a run: its policy's key, the pairs, label noise, length and recipe."""
    parts = {"v": CACHE_VERSION, "sft": start_key(cfg, task), "pairs": cfg.model.rm_pairs,
             "noise": cfg.model.rm_label_noise, "len": response_length(cfg, task), "rm": RM_RECIPE}
    if not uses_sft(cfg):  # the SFT key names the task; a policy as given does not: the prompts do
        parts["prompts"] = cache_key({"task": task.name, "train": task.train_prompts})
    if cfg.model.gold is not None:  # the preference labels come from model.gold
        parts["gold"] = cfg.model.gold
    return parts


def build_sft(cfg: RunConfig, task: Task, progress=None, use_shipped: bool = True) -> Path:
    """Tokenizer + SFT policy for (task, policy): shipped (verified), or built and cached; returns the directory."""
    name = cfg.model.policy
    parts = sft_parts(cfg, task)
    if use_shipped and (found := artifacts.shipped(task.name, "sft", cache_key(parts))) is not None:
        return found

    def build(tmp: Path) -> dict:
        torch.manual_seed(0)
        if is_preset(name):
            tokenizer = build_tokenizer(task.words())
            from transformers import GPT2LMHeadModel

            n_pos = 32 + _max_prompt_tokens(tokenizer, task) + max(64, task.response_length)
            model = GPT2LMHeadModel(gpt2_config({**PRESETS[name], "n_positions": n_pos}, tokenizer))
        else:
            tokenizer, model = load_pretrained_lm(name)
        stats = sft(no_dropout(model), tokenizer, task.sft_corpus, seed=0, progress=progress, recipe=parts["sft"],
                    say=not is_preset(name))
        model.save_pretrained(tmp / "policy")
        tokenizer.save_pretrained(tmp / "tokenizer")
        return stats

    return _cached(cache_root() / task.name / f"sft-{_safe(name)}-{cache_key(parts)}", parts, build)


def build_reward_model(cfg: RunConfig, task: Task, start: Path | PolicyStart, progress=None,
                       use_shipped: bool = True) -> Path:
    """Proxy RM trained on gold-labelled preference pairs of the policy's samples (``start``: its SFT
    folder or a ``PolicyStart``), initialised from that policy: shipped (verified), or built and cached."""
    start = start if isinstance(start, PolicyStart) else PolicyStart.of_sft(start)
    parts = rm_parts(cfg, task)
    if use_shipped and (found := artifacts.shipped(task.name, "rm", cache_key(parts))) is not None:
        return found

    def build(tmp: Path) -> dict:
        from transformers import AutoModelForSequenceClassification

        tokenizer = load_tokenizer(start.tokenizer)
        policy = load_lm(start.policy)
        chosen, rejected = preference_pairs(
            policy, tokenizer, task, cfg.model.rm_pairs, response_length(cfg, task), cfg.model.rm_label_noise, seed=0
        )
        torch.manual_seed(0)
        rm = AutoModelForSequenceClassification.from_pretrained(start.policy, num_labels=1)
        rm.config.pad_token_id = tokenizer.pad_token_id
        stats = train_reward_model(no_dropout(rm), tokenizer, chosen, rejected, seed=0, progress=progress)
        save_classifier(rm, tmp / "rm")
        return stats

    return _cached(cache_root() / task.name / f"rm-{cache_key(parts)}", parts, build)


def _max_prompt_tokens(tokenizer, task: Task) -> int:
    return max(len(tokenizer.encode(p, add_special_tokens=False)) for p in task.train_prompts + task.eval_prompts)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-40:]
