"""The benchmark's synthetic workload: sizes, tokenizer, prompts, task, models, the RunConfigs, FLOPs.

Both implementations build everything from here, so they time the same models on the same prompts.
"""

from __future__ import annotations

import copy
import random

SIZES: dict[str, dict[str, int]] = {
    "S": dict(n_layer=2, n_embd=64, n_head=2, n_positions=128),
    "M": dict(n_layer=4, n_embd=256, n_head=4, n_positions=128),
}
BATCH = 32  # completions per iteration
PROMPT_TOKENS = 16
RESPONSE_TOKENS = 32
EPOCHS = 4
MINIBATCHES = 4
N_PROMPTS = 256  # distinct prompts; TRL's dataloader drops the last partial batch
CHARS = "abcdefghijklmnopqrstuvwxyz"  # + <pad>, <eos>, <unk> = a vocabulary of 29
LR = 3e-6  # TRL's default; small enough that the policies (and response lengths) barely drift in a bench run
SEED = 0
IMPLS = ("custom", "trl")

# Switches that change the math, benchmarked apart from the equal-math figure: variant -> the custom
# core's config overrides. TRL runs its equal-math loop, with bf16 autocast (PPOConfig(bf16=True))
# wherever the variant has it, so the only difference left is the one the variant names.
VARIANTS: dict[str, dict[str, str]] = {
    "equal": {},
    "shared-trunk": {"model.value_trunk": "shared"},
    "bf16": {"train.dtype": "bf16"},
    "shared-trunk+bf16": {"model.value_trunk": "shared", "train.dtype": "bf16"},
}

# The equal-math RunConfig (TRL PPOTrainer semantics), shared by both sides: the custom core runs it,
# baselines.trl_ppo.trl_args maps it to TRL's PPOConfig.
EQUAL_MATH: dict[str, object] = {
    "task.name": "sort",  # any registered name; the bench passes its own Task object
    "task.response_length": RESPONSE_TOKENS,
    "rollout.batch_size": BATCH,
    "rollout.group_size": 1,
    "rollout.temperature": 1.0,
    "ppo.epochs": EPOCHS,
    "ppo.minibatches": MINIBATCHES,
    "ppo.lr": LR,
    "ppo.lr_decay": True,  # TRL: linear schedule over the run
    "ppo.adam_eps": 1e-5,
    "ppo.max_grad_norm": None,  # TRL's PPO loop does not clip gradients
    "ppo.vf_coef": 0.1,
    "ppo.value_clip": 0.2,
    "ppo.clip_eps": 0.2,
    "ppo.entropy_coef": 0.0,
    "kl.coef": 0.05,
    "kl.estimator": "k1",
    "kl.placement": "reward",
    "advantage.level": "token",
    "advantage.gamma": 1.0,
    "advantage.lam": 0.95,
    "advantage.whiten": True,
    "loss.agg": "token-mean",
    "train.missing_eos_penalty": None,
    "seed": SEED,
}


def uses_bf16(variant: str) -> bool:
    return VARIANTS[variant].get("train.dtype") == "bf16"


def uses_shared_trunk(variant: str) -> bool:
    return VARIANTS[variant].get("model.value_trunk") == "shared"


def run_config(n_iterations: int, threads: int, variant: str = "equal", impl: str = "custom"):
    """The equal-math RunConfig for ``n_iterations`` plus the variant's switches: all of them for the
    custom core; for TRL only bf16 autocast (its loop keeps a separate value model)."""
    from harness.config import build_config

    switches = VARIANTS[variant] if impl == "custom" else ({"train.dtype": "bf16"} if uses_bf16(variant) else {})
    return build_config(None, {**EQUAL_MATH, "train.iterations": n_iterations, "train.threads": threads, **switches})


def make_tokenizer():
    from harness.models.tokenizer import build_tokenizer

    return build_tokenizer(list(CHARS))


def make_prompts(n: int = N_PROMPTS, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(CHARS) for _ in range(PROMPT_TOKENS)) for _ in range(n)]


def make_task(prompts: list[str]):
    from harness.tasks.base import Task

    return Task(
        name="bench",
        description="synthetic benchmark workload: random character prompts",
        train_prompts=tuple(prompts),
        eval_prompts=tuple(prompts[:BATCH]),
        sft_corpus=(),
        gold_fn=lambda prompt, completion, ended: float(len(completion.split())),  # trivial: the length
        response_length=RESPONSE_TOKENS,
        gold_range=(0.0, float(RESPONSE_TOKENS)),
        vocabulary=tuple(CHARS),
    )


def make_models(size: str, tokenizer, seed: int = SEED):
    """(policy, ref, reward, value): random GPT-2s of one size; ref a frozen policy copy,
    value a trainable copy of the frozen reward model (TRL's usual initialisation)."""
    import torch
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    from harness.models.presets import gpt2_config, no_dropout

    config = gpt2_config(SIZES[size], tokenizer)
    torch.manual_seed(seed)
    policy = no_dropout(GPT2LMHeadModel(config))
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    cls_config = copy.deepcopy(config)
    cls_config.num_labels = 1
    reward = no_dropout(GPT2ForSequenceClassification(cls_config))
    reward.eval().requires_grad_(False)
    value = copy.deepcopy(reward).requires_grad_(True).train()
    return policy, ref, reward, value


# ---- useful FLOPs, counted analytically and identically for both sides --------------------------


def matmul_params(size: str, vocab: int) -> tuple[int, int]:
    """(LM, classifier) parameters that take part in matmuls: blocks + output head."""
    d, n = SIZES[size]["n_embd"], SIZES[size]["n_layer"]
    # per block: qkv 3d^2+3d, proj d^2+d, fc 4d^2+4d, fc_proj 4d^2+d  (biases counted, norms not)
    block = 12 * d * d + 9 * d
    return n * block + vocab * d, n * block + d


def flops_per_iteration(
    size: str, vocab: int, response_tokens: float = RESPONSE_TOKENS, shared_trunk: bool = False
) -> dict[str, float]:
    """Useful FLOPs of one iteration whose completions average ``response_tokens`` tokens
    (with ``shared_trunk`` the update trains one trunk for both losses)."""
    n_lm, n_cls = matmul_params(size, vocab)
    seq = BATCH * (PROMPT_TOKENS + response_tokens)
    gen = 2 * n_lm * BATCH * (PROMPT_TOKENS + response_tokens - 1)
    score = 2 * (n_lm + 2 * n_cls) * seq  # ref (LM) + value + reward (classifiers)
    update = EPOCHS * 3 * 2 * (n_lm + (0 if shared_trunk else n_cls)) * seq
    return {"generation": float(gen), "scoring": float(score), "update": float(update), "total": float(gen + score + update)}


FLOP_FORMULA = (
    "2*N*tokens per forward (N = matmul params: blocks + output head), x3 for forward+backward; "
    "over the tokens that exist (l = the implementation's mean response length, EOS included): "
    "generation B*(P+l-1) tokens (KV cache), ref/value/reward B*(P+l) each, "
    "update epochs*3*(policy+value) over B*(P+l); attention scores, norms, optimiser not counted"
)
