"""Loading models from disk or the Hugging Face hub, and the path checks made before a run exists."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from harness.errors import first_line
from harness.models.presets import no_dropout
from harness.models.types import ModelError


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


quiet_transformers()


TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")  # a folder holds one
HEAD_FILE = "score_head.safetensors"  # the reward head (weight, bias) beside the model: tensors, never a pickle
LEGACY_HEAD_FILE = "score_head.pt"  # what builds before it wrote (the shipped v1 RMs): read weights-only, or refused
# torch < 2.6 let this variable turn an explicit weights_only=True into a full unpickle; later ones do not
_FORCE_UNSAFE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def save_classifier(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    model.save_pretrained(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.score.state_dict().items()}, str(path / HEAD_FILE))


def load_classifier(path: Path) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    state = read_head(Path(path))
    if state is not None:
        head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0], bias="bias" in state)
        head.load_state_dict(state)
        model.score = head
    return no_dropout(model).eval()


def read_head(path: Path) -> dict[str, torch.Tensor] | None:
    """The reward head's tensors in ``path`` (``score_head.safetensors``, else a legacy ``score_head.pt``), or None.

    Nothing here can run code from the file: safetensors holds tensors only, and the legacy pickle is
    read by torch's weights-only unpickler, refused where the environment could switch that off.
    A file that is not a plain {weight[, bias]} head is a ModelError (one line naming it).
    """
    new, legacy = path / HEAD_FILE, path / LEGACY_HEAD_FILE
    if new.exists():
        from safetensors.torch import load_file

        try:
            state = load_file(str(new), device="cpu")
        except Exception as e:  # not a safetensors file (a pickle renamed, a truncated file)
            raise ModelError(f"reward head '{new}': not a safetensors file ({_first_line(e)})") from None
        return _checked_head(state, new)
    if legacy.exists():
        return _checked_head(_load_weights_only(legacy), legacy)
    return None


def _load_weights_only(file: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``, refused when the environment could make torch unpickle anything."""
    forced = os.environ.get(_FORCE_UNSAFE, "0").lower() in ("1", "y", "yes", "true")
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    if forced and (major, minor) < (2, 6):
        raise ModelError(f"reward head '{file}': a pickle, refused while {_FORCE_UNSAFE} is set with torch "
                         f"{torch.__version__} (unset it, or rebuild the model to get {HEAD_FILE})")  # fmt: skip
    try:
        return torch.load(file, map_location="cpu", weights_only=True)  # an explicit True wins over the variable
    except Exception as e:  # UnpicklingError: a global other than tensors (code), or not a torch file
        raise ModelError(f"reward head '{file}': refused, not plain tensors ({_first_line(e)})") from None


def _checked_head(state: object, file: Path) -> dict[str, torch.Tensor]:
    ok = (isinstance(state, dict) and set(state) in ({"weight"}, {"weight", "bias"})
          and all(isinstance(v, torch.Tensor) for v in state.values()) and state["weight"].dim() == 2)  # fmt: skip
    if not ok:
        raise ModelError(f"reward head '{file}': expected the tensors weight [out, in] and bias, got "
                         f"{sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__}")  # fmt: skip
    return dict(state)


def _first_line(e: BaseException) -> str:
    """The line that says what is wrong (torch's weights-only error opens with advice to turn it off)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    why = [line.split(" Please ")[0] for line in lines if "WeightsUnpickler error" in line]  # not its advice
    return (why or lines or [type(e).__name__])[0][:160]


def load_lm(path: Path) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return no_dropout(AutoModelForCausalLM.from_pretrained(path)).eval()


def load_pretrained_lm(name: str):
    """A Hugging Face causal LM + tokenizer by name or path; one-line error when unavailable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name)
    except Exception as e:  # offline, missing path, wrong format
        first = first_line(e) or type(e).__name__
        raise ModelError(f"model.policy '{name}': cannot load ({first[:160]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer, model


def load_tokenizer(source):
    """A model's tokenizer, left-padded, with a pad token (its EOS when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).exists()
