"""Loading models from disk or the Hugging Face hub, and the path checks made before a run exists."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from harness.models.presets import no_dropout
from harness.models.types import ModelError


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


quiet_transformers()


def save_classifier(model: nn.Module, path: Path) -> None:
    model.save_pretrained(path)
    torch.save(model.score.state_dict(), path / "score_head.pt")


def load_classifier(path: Path) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    head_file = path / "score_head.pt"
    if head_file.exists():
        state = torch.load(head_file, map_location="cpu", weights_only=True)  # tensors only, never code
        head = nn.Linear(state["weight"].shape[1], 1, bias="bias" in state)
        head.load_state_dict(state)
        model.score = head
    return no_dropout(model).eval()


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model.policy '{name}': cannot load ({first[:160]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer, model


def looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).exists()
