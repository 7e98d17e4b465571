"""Everything one run needs, on one call: warm starts (shipped, cached or built), then the
policy, its frozen reference, the reward and value models. The path checks made before a run exists."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn

from harness.algos.estimators import BASELINES
from harness.config import RunConfig
from harness.devices import DeviceError
from harness.devices import resolve as resolve_device
from harness.errors import first_line
from harness.models.loading import load_classifier, load_lm, load_tokenizer, looks_local
from harness.models.lora import check_peft, with_lora
from harness.models.presets import PRESETS, is_preset, no_dropout
from harness.models.reward_fn import (
    is_callable_spec,
    load_reward_fn,
    same_vocabulary,
    text_reward_fn,
    try_reward_fn,
)
from harness.models.types import ModelError, Models, SharedTrunkValue
from harness.schema import Tag
from harness.tasks import Task, get_task
from harness.tasks.data import PromptFile, data_task, with_gold
from harness.warmstart import artifacts
from harness.warmstart.cache import (
    PolicyStart,
    build_reward_model,
    cache_key,
    check_cache_dir,
    policy_start,
    rm_parts,
    sft_parts,
    uses_sft,
)

DATA_RESPONSE_LENGTH = 64  # a task.prompts task's response budget unless task.response_length says


def run_task(cfg: RunConfig) -> Task:
    """The run's task: the file's (task.prompts) or a registered one, with model.gold as its gold reward
    when set. A file's task without model.gold is measured by the optimised reward, when that is a function
    or a reward model (learned and gold need a gold reward to exist)."""
    device = resolve_device(cfg.train.device)
    gold = _text_reward("model.gold", cfg.model.gold, device) if cfg.model.gold else None
    t = cfg.task
    if t.prompts is None:
        task = get_task(t.name)
        return with_gold(task, gold) if gold is not None else task
    if gold is None:
        if cfg.model.reward in ("learned", "gold"):
            raise ModelError(f"model.gold: task.prompts '{t.prompts}' has no gold reward of its own, so model.reward="
                             f"{cfg.model.reward} needs one; set model.gold (or model.reward) to a function or a reward model")
        gold = _text_reward("model.reward", cfg.model.reward, device)
    spec = PromptFile(t.prompts, t.prompt_column, t.split_column, t.eval_split, t.eval_fraction, t.template,
                      t.completion_column)
    task = data_task(spec, t.response_length or DATA_RESPONSE_LENGTH, gold)
    if is_preset(cfg.model.policy):
        _check_preset_prompts(t.prompts, task)
    return task


# A built-in preset policy is built for the prompt file: a word-level tokenizer over its words and a context of
# 32 + the longest prompt + the response. SFT and every forward grow with that context (3000-word prompts kept
# an SFT build running for over 15 minutes on 2 CPU cores), so a preset takes prompts of at most this many words.
MAX_PRESET_PROMPT_WORDS = 256


def _check_preset_prompts(path: str, task: Task) -> None:
    longest = max(len(p.split()) for p in (*task.train_prompts, *task.eval_prompts))
    if longest > MAX_PRESET_PROMPT_WORDS:
        raise ModelError(f"task.prompts {path!r}: its longest prompt has {longest} words, more than the "
                         f"{MAX_PRESET_PROMPT_WORDS} a built-in model.policy preset is built for (its context and SFT "
                         "grow with the prompts); set model.policy to your own model for longer prompts")


def _text_reward(key: str, name: str, device="cpu"):
    """A function of the text from ``package.module:function`` or a reward-model folder / hub id with its tokenizer."""
    if is_callable_spec(name):
        return load_reward_fn(name, key)
    if looks_local(name):
        if not Path(name).expanduser().exists():
            raise ModelError(f"{key} '{name}': not a package.module:function nor an existing model path")
        _check_model_dir(key, name, tokenizer=True)
    try:
        model, tokenizer = _frozen(load_classifier(Path(name) if looks_local(name) else name)), load_tokenizer(name)
    except Exception as e:
        raise ModelError(f"{key} '{name}': cannot load ({first_line(e)[:160]})") from None
    return text_reward_fn(model.to(device), tokenizer, name, key)


HUB_TIMEOUT = 5.0  # seconds the Hugging Face hub has to answer whether a model id exists


def _check_hub_id(key: str, name: str) -> None:
    """A hub id ``owner/name`` is in the local cache, or the hub says it exists: else ModelError now, before a
    run exists (offline, an id the hub does not know, a hub that does not answer in HUB_TIMEOUT seconds)."""
    import os

    from huggingface_hub import model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        raise ModelError(f"{key} '{name}': not in the local Hugging Face cache, and the hub is offline (HF_HUB_OFFLINE)")
    try:
        model_info(name, timeout=HUB_TIMEOUT)
    except Exception as e:
        missing = type(e).__name__ in ("RepositoryNotFoundError", "GatedRepoError") or "404" in str(e)[:200]
        raise ModelError(f"{key} '{name}': " + ("no such model on the Hugging Face hub (or it is private)" if missing
                         else "not in the local Hugging Face cache, and the hub does not answer "
                         f"({type(e).__name__})")) from None


def _exists(key: str, path: str) -> bool:
    """Whether a model path exists; a path the system refuses to look up (too long) is a ModelError."""
    try:
        return Path(path).expanduser().exists()
    except OSError as e:
        shown = path if len(path) <= 80 else f"{path[:60]}...({len(path)} characters)"
        raise ModelError(f"{key} {shown!r}: {e.strerror or e}") from None


def validate_model_keys(cfg: RunConfig) -> Task:
    """Cheap checks before anything is logged or cached: model.policy / model.reward exist and are models.

    A local path must be a folder holding a model: a ``config.json`` that loads (no weights are read),
    weights (safetensors headers read) and, for the policy, a tokenizer that loads. ``org/name`` is a
    Hugging Face hub id: in the local cache or known to the hub (``_check_hub_id``). Raises ModelError (one line naming the key and the path); returns the
    run's task (``run_task``: a task.prompts file is read and checked here).
    """
    try:
        resolve_device(cfg.train.device)
    except DeviceError as e:
        raise ModelError(str(e)) from None
    p = cfg.model.policy
    if not is_preset(p) and looks_local(p):
        if not _exists("model.policy", p):
            raise ModelError(f"model.policy '{p}': not a built-in preset ({', '.join(PRESETS)}) nor an existing path")
        _check_model_dir("model.policy", p, tokenizer=True)
        _check_eos(p, load_tokenizer(str(Path(p).expanduser())))
    if cfg.task.chat_template:
        _check_chat_template(p)
    if cfg.model.lora.r:
        check_peft()
    r = cfg.model.reward
    for key, name in (("model.policy", p), ("model.reward", r), ("model.gold", cfg.model.gold)):
        if name and not is_preset(name) and name not in ("learned", "gold") and not is_callable_spec(name) \
                and not looks_local(name):
            _check_hub_id(key, name)
    task = run_task(cfg)
    if uses_sft(cfg) and not task.sft_corpus:
        raise ModelError(f"model.sft: the policy '{p}' needs a warm start on the task's SFT pairs and task.prompts "
                         "has none (give task.completion_column, or a policy used as given: model.sft=none)")
    if is_callable_spec(r):  # imported and tried on two prompts now: a broken function is refused before the run
        try_reward_fn(r, task.train_prompts)
    elif r not in ("learned", "gold") and looks_local(r):
        if not _exists("model.reward", r):
            raise ModelError(f"model.reward '{r}': not 'learned', 'gold' or an existing model path")
        _check_model_dir("model.reward", r, tokenizer=False)
    if cfg.model.gold and is_callable_spec(cfg.model.gold):  # the held-out measure: tried the same way
        try_reward_fn(cfg.model.gold, task.train_prompts, key="model.gold")
    if cfg.model.sft == "none" and is_preset(p):
        raise ModelError(f"model.sft 'none': the preset '{p}' is random-initialised and needs its warm start "
                         "(model.sft=task or auto)")
    # shipped artifacts this run would use are verified now, before anything is logged
    sft_used = uses_sft(cfg)
    try:
        sft = artifacts.shipped(task.name, "sft", cache_key(sft_parts(cfg, task))) if sft_used else "as given"
        rm = artifacts.shipped(task.name, "rm", cache_key(rm_parts(cfg, task))) if r == "learned" else "none"
    except artifacts.ArtifactError as e:
        raise ModelError(str(e)) from None
    if sft is None or rm is None:  # the run reads (or builds) models in the cache: only its owner may write there
        check_cache_dir()
    return task


def _check_eos(name: str, tokenizer) -> None:
    """A policy must be able to end a response: its tokenizer needs an EOS token (responses are cut, scored
    and penalised at it)."""
    if tokenizer.eos_token_id is None:
        raise ModelError(f"model.policy '{name}': its tokenizer has no EOS token, so no response could end; "
                         "give it one (tokenizer.add_special_tokens({'eos_token': ...}), save_pretrained) "
                         "and resize the model's embeddings if the token is new")


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _check_chat_template(policy: str) -> None:
    """task.chat_template: the policy's tokenizer has a chat template (a preset's word-level one has none;
    a local folder names one in tokenizer_config.json or chat_template.jinja; a hub id is checked at load)."""
    why = f"task.chat_template: the tokenizer of model.policy '{policy}' has no chat template"
    if is_preset(policy):
        raise ModelError(why)
    if looks_local(policy):
        folder = Path(policy).expanduser()
        cfg_file = folder / "tokenizer_config.json"
        named = cfg_file.is_file() and "chat_template" in json.loads(cfg_file.read_text())
        if not (named or (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file()):
            raise ModelError(why)


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
        first = first_line(e) or type(e).__name__
        raise ModelError(f"{key} {shown}: config.json does not load ({first[:160]})") from None
    if not any((folder / w).is_file() for w in WEIGHTS):
        raise ModelError(f"{key} {shown}: no weights in this folder (expected one of {', '.join(WEIGHTS)})")
    if tokenizer and not any((folder / t).is_file() for t in TOKENIZER):
        raise ModelError(f"{key} {shown}: no tokenizer in this folder (expected one of {', '.join(TOKENIZER)})")
    for f in sorted(folder.glob("*.safetensors")):
        if problem := safetensors_problem(f):
            raise ModelError(f"{key} {shown}: {f.name} {problem}")
    if not any(folder.glob("*.safetensors")) and (folder / "pytorch_model.bin").is_file():
        raise ModelError(f"{key} {shown}: pytorch_model.bin only (a pickle, which can run code when loaded); save the "
                         "model as safetensors (model.save_pretrained(folder, safe_serialization=True))")
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as e:  # a tokenizer.json that is not JSON, a missing vocabulary ...
            first = first_line(e) or type(e).__name__
            raise ModelError(f"{key} {shown}: its tokenizer does not load ({first[:160]})") from None


MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header, read without loading a tensor; None when sound: the
    8-byte length, a JSON header within the file and the 100 MB limit, every tensor's bytes inside the file."""
    import json
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return "is truncated (no header)"
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or n > size - 8:
                return f"has a corrupt header (length {n} for a file of {size} bytes)"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"has a corrupt header ({type(e).__name__})"
    if not isinstance(header, dict):
        return "has a corrupt header (not a JSON object)"
    data = size - 8 - n
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offsets = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data):
            return f"has a corrupt header (tensor {name[:60]!r} lies outside the file)"
    return None


def load_models(cfg: RunConfig, progress=None, task: Task | None = None) -> Models:
    """Everything one run needs, built or loaded from the cache. ``task``: what ``validate_model_keys(cfg)``
    returned when the run's owner checked the keys already; else they are checked now."""
    if task is None:
        task = validate_model_keys(cfg)
    start = policy_start(cfg, task, progress)
    tokenizer = load_tokenizer(start.tokenizer)
    if cfg.task.chat_template and not getattr(tokenizer, "chat_template", None):  # a hub id's, known only now
        raise ModelError(f"task.chat_template: the tokenizer of model.policy '{cfg.model.policy}' has no chat template")
    _check_eos(cfg.model.policy, tokenizer)  # a hub id's tokenizer is first seen here
    policy = load_lm(start.policy)
    if cfg.model.lora.r:  # adapters on the policy; the reference: adapters off, the same weights
        policy, ref = with_lora(policy, cfg.model.lora)
    else:
        ref = copy.deepcopy(policy).eval().requires_grad_(False)
    reward, reward_fn, rm_dir = _reward(cfg, task, start, tokenizer, progress)
    value, value_init = None, "none (no value model)"
    needs_value = cfg.advantage.level == "token" or BASELINES[cfg.advantage.baseline].props["value"]
    if needs_value and cfg.model.value_trunk == "shared":
        value, value_init = SharedTrunkValue(policy), "policy trunk (shared, zero-initialised head)"
    elif needs_value:
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
    if cfg.train.gradient_checkpointing:  # activations recomputed in the backward (the generic forward)
        for m in (policy, None if isinstance(value, SharedTrunkValue) else value):
            if m is not None:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    device = resolve_device(cfg.train.device)
    for m in (policy, ref, reward, value):
        if m is not None:
            m.to(device)
    policy.train()
    tags = artifacts.provenance(task.name, "sft", start.sft_dir) if start.sft_dir is not None else {}
    if rm_dir is not None:
        tags.update(artifacts.provenance(task.name, "rm", rm_dir))
    tags[Tag.VALUE_INIT] = value_init
    for key in ("policy", "reward"):
        name = getattr(cfg.model, key)
        if not is_preset(name) and not is_callable_spec(name) and name not in ("learned", "gold") and looks_local(name):
            tags[Tag.MODEL_SHA256.format(key)] = artifacts.weights_digest(Path(name).expanduser())
    return Models(task=task, tokenizer=tokenizer, policy=policy, ref=ref, reward=reward, value=value,
                  source=str(start.sft_dir or start.policy), provenance=tags, reward_fn=reward_fn, device=device)


def _why_not_reward(cfg: RunConfig) -> str:
    """Why model.value_init=reward fell back to the policy: no reward model shares the policy's tokens."""
    r = cfg.model.reward
    if r == "gold":
        return "model.reward=gold: no reward model"
    if is_callable_spec(r):
        return "model.reward is a function: no reward model"
    return "the reward model has another vocabulary: it scores the text"


def _reward(cfg: RunConfig, task, start: PolicyStart, tokenizer, progress):
    """(reward model sharing the policy's tokens or None, reward function of the text or None, proxy RM folder).

    A reward model whose tokenizer maps tokens to other ids than the policy's is scored on the text
    (``text_reward_fn``: decoded and re-tokenised for it), on the custom core and TRL alike."""
    r = cfg.model.reward
    if r == "gold":
        return None, None, None
    if is_callable_spec(r):
        return None, load_reward_fn(r), None
    if r == "learned":
        rm_dir = build_reward_model(cfg, task, start, progress)
        return _frozen(load_classifier(rm_dir / "rm")), None, rm_dir
    try:
        reward = _frozen(load_classifier(Path(r) if looks_local(r) else r))
        own = load_tokenizer(r) if _has_tokenizer(r) else None
    except Exception as e:
        raise ModelError(f"model.reward '{r}': cannot load ({first_line(e)[:160]})") from None
    if own is not None and not same_vocabulary(own, tokenizer):
        return None, text_reward_fn(reward.to(resolve_device(cfg.train.device)), own, r), None
    return reward, None, None


def _frozen(model: nn.Module) -> nn.Module:
    return model.requires_grad_(False).eval()


def _has_tokenizer(name: str) -> bool:
    """A local folder with tokenizer files, or a hub id (whose tokenizer is its own)."""
    folder = Path(name).expanduser()
    if not looks_local(name):
        return True
    return folder.is_dir() and any((folder / t).is_file() for t in TOKENIZER)
