"""Built-in model presets: GPT-2 architectures with dropout off (N implementation details: no dropout in RL)."""

from __future__ import annotations

from torch import nn

# Built-in presets: GPT-2 architecture, dropout off (N implementation details: no dropout in RL).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_embd=128, n_head=4),
    "small": dict(n_layer=4, n_embd=256, n_head=4),
}


def gpt2_config(arch: dict[str, int], tokenizer):
    """A GPT-2 config for ``tokenizer`` with dropout off; ``arch`` gives n_layer, n_embd, n_head, n_positions."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        activation_function="gelu_new",
        **arch,
    )


def no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def is_preset(name: str) -> bool:
    return name in PRESETS
