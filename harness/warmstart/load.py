"""A run's models on one call, and the checks made before a run exists.

``validate_model_keys``: every model key, path and shipped artifact a run would read, checked before
anything is logged (it reads the artifact manifest and the cache's keys, so it lives with the warm start).
``load_models``: the warm start (``harness.warmstart.cache``: shipped, cached or built), then the models
loaded from it by ``harness.models.load`` (the layer below, which loads what it is pointed at and never
builds), then the artifacts' provenance tags."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from harness.config import RunConfig
from harness.devices import DeviceError
from harness.devices import resolve as resolve_device
from harness.errors import first_line
from harness.models.load import check_eos, frozen, load_from_start
from harness.models.loading import TOKENIZER, load_classifier, load_tokenizer, looks_local
from harness.models.lora import check_peft
from harness.models.presets import PRESETS, is_preset
from harness.models.reward_fn import is_callable_spec, load_reward_fn, text_reward_fn, try_reward_fn
from harness.models.types import ModelError, Models
from harness.schema import Tag
from harness.tasks import Task, get_task
from harness.tasks.data import PromptFile, data_task, with_gold
from harness.warmstart import artifacts
from harness.warmstart.cache import (
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
        model, tokenizer = frozen(load_classifier(Path(name) if looks_local(name) else name)), load_tokenizer(name)
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
        check_eos(p, load_tokenizer(str(Path(p).expanduser())))
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


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


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
    """Everything one run needs: the warm start (the SFT policy and the learned reward model: shipped, cached or
    built now), the models loaded from it (``harness.models.load``), the artifacts' provenance tags. ``task``:
    what ``validate_model_keys(cfg)`` returned when the run's owner checked the keys already; else they are
    checked now."""
    if task is None:
        task = validate_model_keys(cfg)
    start = policy_start(cfg, task, progress)
    built: list[Path] = []

    def learned_reward() -> Path:  # built (or found) when the load reaches the reward model
        built.append(build_reward_model(cfg, task, start, progress))
        return built[-1] / "rm"

    models = load_from_start(cfg, task, start, learned_reward)
    tags = artifacts.provenance(task.name, "sft", start.sft_dir) if start.sft_dir is not None else {}
    for rm_dir in built:
        tags.update(artifacts.provenance(task.name, "rm", rm_dir))
    tags.update(models.provenance)
    for key in ("policy", "reward"):
        name = getattr(cfg.model, key)
        if not is_preset(name) and not is_callable_spec(name) and name not in ("learned", "gold") and looks_local(name):
            tags[Tag.MODEL_SHA256.format(key)] = artifacts.weights_digest(Path(name).expanduser())
    return dataclasses.replace(models, provenance=tags)
