"""The typed, frozen run config: YAML + dotted ``--set`` overrides -> ``RunConfig``.

Every dotted key (``ppo.clip_eps``, ``advantage.level`` ...) is a public contract:
ablation files, the CLI and the TRL baseline all speak it.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.algos.aggregations import AGGREGATIONS
from harness.algos.estimators import BASELINES
from harness.algos.kl_estimators import KL_ESTIMATORS
from harness.algos.losses import POLICY_LOSSES
from harness.algos.offpolicy import CORRECTIONS
from harness.algos.ratio_levels import CORRECTION_LEVELS, RATIO_LEVELS
from harness.errors import InputError
from harness.schema import IMPLEMENTATIONS, REFERENCE_IMPL
from harness.yamlio import YAMLInputError, loads, read_yaml, show_key

# numpy.random.seed takes 0 <= seed < 2**32 and TRL's runs seed numpy (transformers.set_seed);
# torch.manual_seed takes < 2**64, random.Random any int. One bound, so a seed means one run on
# either implementation.
SEED_LIMIT = 2**32


class ConfigError(InputError):
    """A bad config: the message is one line naming the key and the problem (also as .key / .problem)."""

    def __init__(self, message: str, key: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.key, self.problem = key, problem


class _Section(BaseModel):
    # strict: no bool for a number, no "2" for an int (an int is still a float); no inf or nan
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class TaskConfig(_Section):
    name: str = Field(
        default="sentiment",
        description="Task name: a built-in or plugin task (see `ppo-harness tasks`); not read when task.prompts is set.",
    )
    response_length: int | None = Field(
        default=None, ge=1, le=4096, description="Max response tokens; null = the task's own default (64 for task.prompts)."
    )
    prompts: str | None = Field(
        default=None,
        description="A task defined by data (harness/tasks/data.py): a local .jsonl / .csv / .parquet file of prompts, "
        "or a Hugging Face dataset (a save_to_disk folder, a folder of data files or a hub id: from the local cache when "
        "offline; its task.eval_split split is held out); its gold reward is model.gold (or the optimised reward when "
        "that is a function or a reward model).",
    )
    prompt_column: str = Field(default="prompt", min_length=1, description="task.prompts: the column holding the prompt.")
    split_column: str | None = Field(
        default=None, min_length=1,
        description="task.prompts: a column naming each row's split; rows equal to task.eval_split are held out.",
    )
    eval_split: str = Field(default="test", min_length=1, description="task.prompts: the held-out split's name.")
    eval_fraction: float = Field(
        default=0.1, gt=0.0, lt=1.0,
        description="task.prompts without task.split_column: the share of rows held out (a fixed-seed shuffle).",
    )
    template: str = Field(
        default="{prompt}", description="task.prompts: what the policy sees; {prompt} is replaced by the row's prompt."
    )
    chat_template: bool = Field(
        default=False,
        description="impl=custom: give the policy each prompt as a user turn of its tokenizer's chat template "
        "(apply_chat_template, add_generation_prompt=True); refused for a tokenizer without one.",
    )
    completion_column: str | None = Field(
        default=None, min_length=1, description="task.prompts: completions for model.sft=task (SFT pairs)."
    )

    @field_validator("name")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from harness.tasks import list_tasks

        if v not in list_tasks():
            raise ValueError(f"unknown task '{v}' (known: {', '.join(list_tasks())})")
        return v


class LoraConfig(_Section):
    r: int = Field(
        default=0, ge=0,
        description="impl=custom: LoRA rank (peft; pip install 'ppo-harness[lora]'): the policy trains low-rank adapters "
        "only, the reference is the same model with its adapters disabled (one copy of the weights); 0 = full fine-tuning.",
    )
    alpha: float = Field(default=16.0, gt=0.0, description="LoRA scaling alpha (the update is alpha / r x B A).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA adapters' input (training only).")
    target_modules: list[str] | None = Field(
        default=None,
        description="Module names the adapters wrap (e.g. [q_proj, v_proj]); null = peft's default for the architecture "
        "(GPT-2: c_attn; Llama / Qwen2 / Mistral: q_proj, v_proj).",
    )


class ModelConfig(_Section):
    policy: str = Field(
        default="tiny",
        description="A built-in preset (tiny, small) or any causal LM (AutoModelForCausalLM: GPT-2, GPT-NeoX / "
        "Pythia, Llama, Qwen2 ...) by Hugging Face name or local path, with its own tokenizer.",
    )
    sft: Literal["auto", "none", "task"] = Field(
        default="auto",
        description="Warm start of the policy: task = supervised fine-tuning on the task's SFT corpus first (cached); "
        "none = the model as given; auto = task for the built-in presets (random-initialised), none otherwise.",
    )
    gold: str | None = Field(
        default=None,
        description="The held-out measure (eval/gold), when not the task's own: package.module:function or a "
        "sequence-classification model with its tokenizer (a stronger RM, as Gao et al. 2022); null = the task's gold.",
    )
    reward: str = Field(
        default="learned",
        description="learned = proxy RM trained on gold-labelled pairs of policy samples (Gao et al. 2022); gold = "
        "optimise the task's gold reward; package.module:function = a Python function (prompts, completions) -> "
        "scores; else a sequence-classification model (name or path) with its own tokenizer.",
    )
    value_init: Literal["reward", "policy"] = Field(
        default="reward", description="Value model initialised from the reward model (N implementation details) or the SFT policy."
    )
    value_trunk: Literal["separate", "shared"] = Field(
        default="separate",
        description="separate = a value model of its own (TRL); shared = a zero-initialised scalar head on the policy's "
        "trunk (one forward and backward for both losses; the value loss then also moves the policy's features).",
    )
    rm_label_noise: float = Field(default=0.1, ge=0.0, lt=0.5, description="Share of preference labels flipped when training the proxy RM.")
    rm_pairs: int = Field(default=4096, ge=16, le=1_000_000, description="Preference pairs sampled from the SFT policy for the proxy RM "
                          "(at most 1,000,000: two sampled completions each, days of work beyond that).")
    lora: LoraConfig = LoraConfig()


class RolloutConfig(_Section):
    batch_size: int = Field(default=64, ge=1, le=65_536, description="Completions per PPO iteration (B; at most 65,536: one "
                            "batch's tensors are held at once).")
    group_size: int = Field(default=4, ge=1, le=65_536, description="Completions per prompt (k), contiguous in the batch; B/k prompts.")
    temperature: float = Field(default=1.0, ge=1e-3, le=100.0, description="Sampling temperature; logprobs are taken at the same "
                               "temperature (1e-3 to 100: logits / T overflow to inf, and the run to NaN, far below 1e-3).")
    staleness: int = Field(
        default=0, ge=0, le=64,
        description="k: the batch of iteration i is sampled by the policy of iteration i - k (the first k iterations by "
        "the initial policy); the update's pi_old is then the current policy, recomputed by the training forward "
        "(decoupled PPO, as veRL / TRL / OpenRLHF with an inference engine). 0 = on-policy.",
    )
    correction: Literal[CORRECTIONS.names()] = Field(  # type: ignore[valid-type]
        default="none",
        description="Rollout correction of rho = pi_old / pi_rollout (harness/algos/offpolicy.py): "
        + CORRECTIONS.doc() + ". Any value but none recomputes pi_old by the training forward, also at staleness 0.",
    )
    correction_level: Literal[CORRECTION_LEVELS] = Field(  # type: ignore[valid-type]
        default="token",
        description="rho per token, or per completion (the product of its token ratios) on all its tokens "
        "(veRL rollout_is token / sequence, TRL token_* / sequence_*); icepop is token level only. The ratio "
        "levels a correction is taken at (harness/algos/ratio_levels.py): " + " / ".join(CORRECTION_LEVELS) + ".",
    )
    is_threshold: float | None = Field(
        default=None, gt=0.0,
        description="Upper threshold of rho (tis: truncated at it; mis / icepop: above it masked; veRL "
        "rollout_is_threshold, TRL vllm_importance_sampling_clip_max); null = the correction's default "
        "(tis / mis 2, icepop 5).",
    )
    is_threshold_low: float | None = Field(
        default=None, gt=0.0,
        description="Lower threshold of rho (tis: raised to it; mis / icepop: below it masked; TRL "
        "vllm_importance_sampling_clip_min); null = the correction's default (none for tis / mis, 0.5 for icepop).",
    )
    filter_groups: bool = Field(
        default=False,
        description="DAPO dynamic sampling (Yu et al. 2025; veRL algorithm.filter_groups): prompt groups whose scores "
        "have zero variance are dropped and more groups sampled until the batch is full, at most "
        "rollout.filter_rounds extra rounds; a batch still short after them is topped up with dropped groups "
        "(logged as rollout/filtered_frac, rollout/extra_gen_frac).",
    )
    filter_rounds: int = Field(
        default=3, ge=1, le=32,
        description="rollout.filter_groups: extra generation rounds at most per iteration (veRL max_num_gen_batches).",
    )
    top_k: int = Field(
        default=0, ge=0,
        description="impl=custom, trl-grpo, trl-rloo: sample from the k most likely tokens only; 0 = all. Log-probs, ratio "
        "and KL stay those of the untruncated tempered distribution (as TRL computes them; harness/lm/sampling.py).",
    )
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0,
        description="impl=custom, trl-grpo, trl-rloo: nucleus sampling, from the smallest set of most likely tokens whose "
        "probability reaches p; 1 = off. Log-probs, ratio and KL as for rollout.top_k.",
    )
    min_new_tokens: int = Field(
        default=0, ge=0,
        description="impl=custom: no EOS is sampled before this many response tokens (log-probs as for rollout.top_k).",
    )
    stop: list[str] = Field(
        default=[],
        description="impl=custom: stop strings; a response ends after the token that completes one (kept in the text, "
        "as transformers' stop_strings); what follows leaves every loss.",
    )


class PPOConfig(_Section):
    clip_eps: float = Field(
        default=0.2, gt=0.0, lt=1.0,
        description="Clip range eps of the surrogate min(r A, clip(r, 1-eps, 1+eps_high) A) (the lower range when "
        "ppo.clip_eps_high is set).",
    )
    clip_eps_high: float | None = Field(
        default=None, gt=0.0, lt=1.0,
        description="Upper clip range: clip(r, 1 - clip_eps, 1 + clip_eps_high) (DAPO clip-higher, e.g. 0.28; veRL "
        "clip_ratio_high, TRL epsilon_high); null = symmetric (clip_eps).",
    )
    dual_clip: float | None = Field(
        default=None, gt=1.0,
        description="Dual clip c > 1 (Ye et al. 2020; veRL clip_ratio_c, 3 there): for A < 0 the per-token loss is "
        "min(max(-A r, -A clip(r)), -c A), nothing changes for A >= 0; null = off.",
    )
    ratio_level: Literal[RATIO_LEVELS.names()] = Field(  # type: ignore[valid-type]
        default="token",
        description="Importance ratio: token = pi/pi_old per token (PPO); sequence = GSPO (Zheng et al. 2025), "
        "s_i = exp(mean_t log(pi/pi_old)) per completion, clipped and used on all its tokens; sequence-token = "
        "GSPO-token (the value of s_i, a per-token gradient). GSPO's clip ranges are orders of magnitude smaller "
        "than token-level ones (3e-4 / 4e-4 in the paper: s_i is a geometric mean): ppo.clip_eps and "
        "ppo.clip_eps_high must be <= its max_clip there. Names: " + RATIO_LEVELS.doc(max_clip="max_clip") + ".",
    )
    epochs: int = Field(default=4, ge=1, le=1000, description="Passes over each rollout batch (at most 1000).")
    minibatches: int = Field(default=4, ge=1, le=65_536, description="Minibatches per epoch (must divide rollout.batch_size).")
    micro_batch_size: int | None = Field(
        default=None, ge=1,
        description="impl=custom: rows per forward / backward within a minibatch (gradient accumulation; must divide "
        "rollout.batch_size / ppo.minibatches); the step equals the whole minibatch's (harness/ppo/accumulate.py), "
        "only memory changes; null = the whole minibatch at once.",
    )
    lr: float = Field(
        default=1e-4, gt=0.0, le=1.0,
        description="Adam learning rate (tiny models want more than TRL's 3e-6 at 1B; 3e-4 moved 7 nats per iteration; at "
        "most 1: Adam moves every weight by about lr per step, and beyond 1 the first update makes the policy NaN).",
    )
    lr_decay: bool = Field(
        default=True,
        description="Linear decay of the learning rate to 0 over train.iterations (cleanRL anneal_lr); read when "
        "ppo.lr_scheduler_type is null (true = linear, false = constant).",
    )
    lr_scheduler_type: Literal["constant", "constant_with_warmup", "linear", "cosine"] | None = Field(
        default=None,
        description="The learning-rate schedule, per iteration, as TRL's lr_scheduler_type names it (harness/algos/"
        "schedules.py): constant, constant_with_warmup, linear (to 0 at the last iteration), cosine (half a cosine "
        "to 0), the last three after ppo.warmup_iterations of linear warmup; null = ppo.lr_decay decides.",
    )
    warmup_iterations: int = Field(
        default=0, ge=0, description="Iterations of linear learning-rate warmup from 0 (TRL warmup_steps, in iterations)."
    )
    adam_eps: float = Field(default=1e-5, gt=0.0, description="Adam epsilon (cleanRL / N details: 1e-5, not torch's 1e-8).")
    max_grad_norm: float | None = Field(
        default=1.0, gt=0.0,
        description="Max L2 norm of the policy's gradient and, separately, of the value model's; null = no clipping. "
        "With model.value_trunk=shared the trunk's gradient holds both losses and is clipped with the policy's.",
    )
    vf_coef: float = Field(default=0.1, ge=0.0, description="Weight of the value loss (TRL default 0.1).")
    value_clip: float | None = Field(default=0.2, gt=0.0, description="Value clip range (TRL cliprange_value); null = unclipped.")
    entropy_coef: float = Field(default=0.0, ge=0.0, description="Weight of the entropy bonus.")
    target_kl: float | None = Field(
        default=None, gt=0.0, description="Stop an iteration's epochs once the epoch's mean approx KL exceeds this (cleanRL); null = off."
    )
    loss_mode: Literal[POLICY_LOSSES.names()] = Field(  # type: ignore[valid-type]
        default="vanilla",
        description="Policy loss (harness/algos/losses.py; veRL actor policy_loss.loss_mode, TRL GRPOConfig.loss_type): "
        + POLICY_LOSSES.doc() + ". geo_mean reads ppo.clip_eps / clip_eps_high as log-space ranges.",
    )
    sapo_tau_pos: float | None = Field(
        default=None, gt=0.0,
        description="ppo.loss_mode=sapo: gate temperature of tokens with A > 0 (TRL sapo_temperature_pos, veRL tau_pos); null = 1.0.",
    )
    sapo_tau_neg: float | None = Field(
        default=None, gt=0.0,
        description="ppo.loss_mode=sapo: gate temperature of tokens with A <= 0 (TRL sapo_temperature_neg, veRL tau_neg); null = 1.05.",
    )
    cov_ratio: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="ppo.loss_mode=clip_cov / kl_cov: share of tokens selected by covariance (veRL clip_cov_ratio / "
        "kl_cov_ratio); null = 2e-4 (at least one token per minibatch).",
    )
    clip_cov_lb: float | None = Field(
        default=None, description="ppo.loss_mode=clip_cov: lower covariance bound of the candidates (veRL clip_cov_lb); null = 1.0."
    )
    clip_cov_ub: float | None = Field(
        default=None, description="ppo.loss_mode=clip_cov: upper covariance bound of the candidates (veRL clip_cov_ub); null = 5.0."
    )
    kl_cov_coef: float | None = Field(
        default=None, ge=0.0, description="ppo.loss_mode=kl_cov: coefficient of |log r| on the selected tokens (veRL ppo_kl_coef); null = 1.0."
    )


class KLConfig(_Section):
    coef: float = Field(default=0.05, ge=0.0, description="KL coefficient beta (the start value under the adaptive controller).")
    estimator: Literal[KL_ESTIMATORS.names()] = Field(  # type: ignore[valid-type]
        default="k1",
        description="Schulman's estimator of KL(pi || ref) per sampled token: k1 = log(pi/ref), k2 = 0.5 log(pi/ref)^2, "
        "k3 = ref/pi - 1 - log(ref/pi); k1+ / k3+ = straight-through (veRL kl_loss_type): the value of k1 / k3, "
        "the gradient of k2 (kl.placement=loss only). Names: " + KL_ESTIMATORS.doc(unbiased="unbiased",
                                                                                 non_negative="non-negative") + ".",
    )
    placement: Literal["reward", "loss"] = Field(
        default="reward",
        description="reward: -coef * kl_t enters the reward (token level) or R (sequence level); with k1 the policy "
        "gradient is exactly that of the sequence KL(pi || ref) (what objective/kl reports); k3's value is unbiased for it "
        "but its gradient is not, k2 penalises E[(log pi/ref)^2 / 2]. loss: coef * agg(kl_t) is added to the loss and only "
        "its gradient matters, prefixes held fixed: k2 gives the per-token KL(pi || ref) gradient (not the sequence KL's; "
        "Tang and Munos 2025), k3 the per-token KL(ref || pi) one; k1 is refused (zero expected gradient); "
        "k1+ and k3+ take k2's gradient with their own value.",
    )
    target: float | None = Field(
        default=None, gt=0.0, description="Target KL of the adaptive controller (Ziegler et al. 2019); null = a fixed coefficient."
    )
    horizon: int = Field(default=10000, ge=1, description="Adaptive controller horizon, in episodes.")


class AdvantageConfig(_Section):
    level: Literal["token", "sequence"] = Field(
        default="token",
        description="token: per-token rewards, a value function and GAE (MDP); sequence: one return per completion "
        "minus a baseline, broadcast to its tokens (bandit).",
    )
    baseline: Literal[BASELINES.names()] = Field(  # type: ignore[valid-type]
        default="rloo",
        description="Sequence level only: what is subtracted from the return (rloo = leave-one-out over the group; "
        "group_norm = GRPO's (R - mean) / std; group_mean = Dr. GRPO's R - mean; value = V(prompt)); reinforce_pp = "
        "REINFORCE++ as published: per token, the return-to-go s - beta sum_{j>=t} kl_j, normalised over the batch's "
        "tokens with the biased (n) variance as OpenRLHF (veRL uses n - 1); reinforce_pp_baseline = the same with the "
        "group mean of the raw score subtracted first; reinforce_pp_seq / reinforce_pp_baseline_seq = the sequence-level "
        "variants (the whole KL sum on every token). The four REINFORCE++ values normalise already, so advantage.whiten "
        "does not rescale them. Names: " + BASELINES.doc() + ".",
    )
    gamma: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Discount of the token-level MDP (and of REINFORCE++'s return-to-go)."
    )
    lam: float = Field(default=0.95, ge=0.0, le=1.0, description="GAE lambda (1 = Monte Carlo returns minus V).")
    whiten: bool = Field(
        default=True, description="Token level: whiten advantages over the batch; sequence level: divide by their std (no centring)."
    )


class LossConfig(_Section):
    agg: Literal[AGGREGATIONS.names()] = Field(  # type: ignore[valid-type]
        default="token-mean",
        description="How per-token losses become one number per minibatch (veRL loss_agg_mode): the mean over all tokens, "
        "the mean over sequences of their token mean, the mean over sequences of their token sum, the sum over all "
        "tokens, or the sum over all tokens / (B * loss.norm_length) (Dr. GRPO; TRL loss_type=dr_grpo). Names: "
        + AGGREGATIONS.doc(length_biased="length-biased") + ".",
    )
    norm_length: int | None = Field(
        default=None, ge=1,
        description="The fixed length L that loss.agg=seq-mean-token-sum-norm divides by (Dr. GRPO's MAX_TOKENS); "
        "null = the run's response length. Only that mode reads it.",
    )


class TrainConfig(_Section):
    iterations: int = Field(default=40, ge=1, le=1_000_000, description="PPO iterations (each samples rollout.batch_size "
                            "completions; at most 1,000,000).")
    missing_eos_penalty: float | None = Field(
        default=-1.0, ge=-1e6, le=1e6, description="Score given to responses with no EOS (train.truncated=penalty only); null = "
        "off. Within +-1e6: a larger score overflows the whitening and the value loss in float32."
    )
    truncated: Literal["penalty", "mask"] = Field(
        default="penalty",
        description="Completions without EOS: penalty = their score is replaced by train.missing_eos_penalty; mask = "
        "they are left out of the policy and value losses (TRL mask_truncated_completions) and keep their real score, "
        "which still enters the baselines, group statistics and whitening.",
    )
    threads: int | None = Field(default=None, ge=1, le=1024, description="torch intra-op threads; null = torch's default (all "
                                "cores; at most 1024: threads beyond the cores only contend, and torch cannot start a million).")
    device: str = Field(
        default="auto",
        description="auto | cpu | cuda | cuda:N | mps: where the policy, reference, value and reward models and every "
        "tensor of the loop live (auto = CUDA when present, else the CPU). The CPU fast path applies on the CPU only; "
        "warm-start builds (SFT, proxy RM) run on the CPU.",
    )

    @field_validator("device")
    @classmethod
    def _device_spelling(cls, v: str) -> str:
        from harness.devices import check_spelling

        return check_spelling(v)
    overlong_buffer: int | None = Field(
        default=None, ge=1,
        description="DAPO soft overlong punishment (Yu et al. 2025; veRL reward overlong_buffer_cfg.len): a response "
        "of L tokens, L_max - buffer < L <= L_max (L_max the response length), gets "
        "-train.overlong_penalty * (L - (L_max - buffer)) / buffer added to its score; null = off.",
    )
    overlong_penalty: float = Field(
        default=1.0, ge=0.0,
        description="train.overlong_buffer: the penalty at the maximum length (veRL overlong_buffer_cfg.penalty_factor).",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="impl=custom: recompute the policy's and value model's activations in the backward instead of "
        "keeping them (transformers' gradient checkpointing: less memory, ~1 more forward of compute); such models "
        "take the generic forward, not the CPU GPT-2 fast path. TRL: activation_checkpointing.",
    )
    checkpoint_every: int = Field(
        default=0, ge=0,
        description="impl=custom: write a checkpoint every N iterations and after the last (policy and value weights "
        "as safetensors, optimiser and scheduler state, every RNG, the KL coefficient, the iteration) atomically into "
        "<runs-dir>/checkpoints/<run id>/; `ppo-harness train --resume RUN_ID` continues from the newest; 0 = off.",
    )
    keep_checkpoints: int = Field(
        default=1, ge=0, description="How many of the newest checkpoints a run keeps (older ones are deleted); 0 = all."
    )
    save_policy: bool = Field(
        default=False,
        description="impl=custom: at the end of the run, save the policy (save_pretrained, its tokenizer and a model "
        "card README.md) into <runs-dir>/policies/<run id>/ (`ppo-harness export RUN_ID DIR` does it afterwards).",
    )
    log_model: bool = Field(
        default=False, description="impl=custom: also log the saved policy to the MLflow run as the artifact folder policy/."
    )
    dist_timeout_s: int = Field(
        default=600, ge=1, le=86_400,
        description="A run over several processes (ppo-harness train --nproc-per-node, torchrun): seconds a rank "
        "waits at a collective for the others before the run ends FAILED (a rank that died or hangs). It must "
        "exceed the longest stretch one rank works alone: an evaluation, an iteration's sampling.",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="How a run over several processes holds its models. ddp: every rank holds them whole "
        "(replicated; the gradients summed in one all-reduce). fsdp: PyTorch's FSDP2 fully_shard over the ranks, "
        "each transformer block one unit: a rank holds 1/N of each weight, gradient and Adam moment; training "
        "forwards gather one block at a time, sampling and evaluation gather a whole model at a time. impl=custom; "
        "without LoRA, a shared value trunk, the noise probe, stale sampling, group filtering, fp16, checkpoints or train.save_policy. "
        "Also one process (a 1-rank mesh).",
    )
    dtype: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="Precision of the rollout and update forwards: bf16 / fp16 run them under torch.autocast of that "
        "dtype on the run's device; weights, optimiser and evaluation stay fp32. fp16 adds dynamic loss scaling "
        "(an overflowing step is skipped and the scale halved; logged as amp/loss_scale, amp/skipped_steps). Changes "
        "the math: sampler and learner logprobs then differ by the rounding.",
    )


class EvalConfig(_Section):
    every: int = Field(default=5, ge=1, le=1_000_000, description="Held-out evaluation every N iterations (and at 0 and the last).")
    prompts: int = Field(default=64, ge=1, le=65_536, description="Held-out prompts per evaluation (the task's eval split, "
                         "cycled; at most 65,536, as rollout.batch_size).")


class ProbeConfig(_Section):
    every: int = Field(default=0, ge=0, description="Gradient-noise probe (harness/ppo/variance.py) every N iterations from iteration 1; 0 = off.")
    microbatches: int = Field(
        default=8, ge=2,
        description="K equal microbatches of the batch (K must divide rollout.batch_size; K = B gives per-completion gradients).",
    )


class RunConfig(_Section):
    seed: int = Field(
        default=0, description="Seed of prompt sampling, token sampling, shuffles and initialisation (0 <= seed < 2**32)."
    )
    impl: Literal[tuple(IMPLEMENTATIONS)] = Field(  # type: ignore[valid-type]
        default=REFERENCE_IMPL,
        description="; ".join(f"{name} = {what}" for name, (_, what) in IMPLEMENTATIONS.items()) + ".",
    )
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    ppo: PPOConfig = PPOConfig()
    kl: KLConfig = KLConfig()
    advantage: AdvantageConfig = AdvantageConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    probe: ProbeConfig = ProbeConfig()

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < SEED_LIMIT:
            raise ValueError(
                f"expected an integer in [0, 2**32) (numpy's seed range; TRL's runs seed numpy), got {_short(repr(v))}"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        r, p = self.rollout, self.ppo
        if r.batch_size % r.group_size:
            raise _KeyProblem("rollout.group_size", f"{r.group_size} does not divide rollout.batch_size={r.batch_size}")
        if r.batch_size % p.minibatches:
            raise _KeyProblem("ppo.minibatches", f"{p.minibatches} does not divide rollout.batch_size={r.batch_size}")
        if p.micro_batch_size is not None and (r.batch_size // p.minibatches) % p.micro_batch_size:
            raise _KeyProblem("ppo.micro_batch_size", f"{p.micro_batch_size} does not divide the minibatch of "
                              f"{r.batch_size // p.minibatches} rows (rollout.batch_size / ppo.minibatches)")
        if r.batch_size // p.minibatches < 1:
            raise _KeyProblem("ppo.minibatches", "minibatches would be empty")
        a = self.advantage
        if a.level == "sequence" and BASELINES[a.baseline].props["grouped"] and r.group_size < 2:
            raise _KeyProblem("advantage.baseline", f"'{a.baseline}' needs rollout.group_size >= 2, got {r.group_size}")
        if self.probe.every and r.batch_size % self.probe.microbatches:
            raise _KeyProblem(
                "probe.microbatches", f"{self.probe.microbatches} does not divide rollout.batch_size={r.batch_size}"
            )
        if self.kl.placement == "loss" and KL_ESTIMATORS[self.kl.estimator].props["loss_gradient"] is None:
            raise _KeyProblem(
                "kl.estimator",
                f"{self.kl.estimator} with kl.placement=loss has zero expected gradient on on-policy samples (the term "
                "does nothing); use k2 (gradient of KL(pi||ref)) or k3 (gradient of KL(ref||pi))",
            )
        if p.warmup_iterations and p.lr_scheduler_type in (None, "constant"):
            raise _KeyProblem(
                "ppo.warmup_iterations",
                f"{p.lr_scheduler_type or 'the ppo.lr_decay schedule'} has no warmup; set ppo.lr_scheduler_type to "
                "constant_with_warmup, linear or cosine",
            )
        if p.warmup_iterations >= self.train.iterations:
            raise _KeyProblem("ppo.warmup_iterations", f"{p.warmup_iterations} is not below train.iterations="
                              f"{self.train.iterations}")
        if self.model.lora.r and self.model.value_trunk == "shared":
            raise _KeyProblem("model.value_trunk", "shared with model.lora.r > 0: the trunk's weights are frozen under "
                              "LoRA; use a separate value model")
        if self.kl.target is not None and self.kl.coef == 0:
            raise _KeyProblem("kl.coef", "the adaptive controller (kl.target) needs kl.coef > 0 to start from")
        _consistent_levels(self)
        _consistent_loss_mode(self)
        _consistent_rollout(self)
        _consistent_lifecycle(self)
        _consistent_parallel(self)
        return self

    # ---- helpers -------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """Flattened dotted keys -> values (MLflow params, sweep tags)."""
        return flatten(self.model_dump())

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def _consistent_parallel(cfg: RunConfig) -> None:
    """train.parallel=fsdp against the options whose state or forwards assume whole, local weights."""
    if cfg.train.parallel != "fsdp":
        return
    why = "the policy's weights are sharded (train.parallel=fsdp)"
    rules = [
        ("impl", cfg.impl != "custom", f"{cfg.impl} with train.parallel=fsdp: the sharded run is impl=custom"),
        ("model.lora.r", cfg.model.lora.r > 0, "LoRA adapters are not sharded here; with train.parallel=fsdp set it 0"),
        ("model.value_trunk", cfg.model.value_trunk == "shared", f"shared: a head on the trunk would bypass the "
         f"sharded root's forward; {why}, use a separate value model"),
        ("probe.every", cfg.probe.every > 0, f"the probe reads each rank's own gradients, which FSDP's backward "
         f"reduce-scatters; {why}: set it 0 or train.parallel=ddp"),
        ("rollout.staleness", cfg.rollout.staleness > 0, f"the stale behaviour policy is a whole copy; {why}"),
        ("rollout.filter_groups", cfg.rollout.filter_groups, f"ranks would draw different numbers of rounds "
         f"through sharded models; {why}"),
        ("train.dtype", cfg.train.dtype == "fp16", f"fp16's overflow check would see one shard per rank; {why}: "
         "use bf16"),
        ("train.checkpoint_every", cfg.train.checkpoint_every > 0, f"sharded checkpoints are not written; {why}"),
        ("train.save_policy", cfg.train.save_policy, f"a sharded policy is not saved whole; {why}"),
    ]
    for key, bad, problem in rules:
        if bad:
            raise _KeyProblem(key, problem)


def _consistent_lifecycle(cfg: RunConfig) -> None:
    """Checkpoints and gradient accumulation against the options whose state or batch they do not cover."""
    if cfg.train.checkpoint_every and cfg.rollout.staleness:
        raise _KeyProblem("train.checkpoint_every", f"with rollout.staleness={cfg.rollout.staleness}: the stale "
                          "behaviour policies are not checkpointed, so a resumed run would not equal the uninterrupted one")
    if cfg.ppo.micro_batch_size is not None and cfg.ppo.loss_mode in ("clip_cov", "kl_cov"):
        raise _KeyProblem("ppo.micro_batch_size", f"with ppo.loss_mode={cfg.ppo.loss_mode}: its tokens are selected by "
                          "their covariance over the whole minibatch, which micro-batches would split")


def _consistent_levels(cfg: RunConfig) -> None:
    """The rules across the ratio-level, clip, aggregation and straight-through KL keys."""
    p = cfg.ppo
    max_clip = RATIO_LEVELS[p.ratio_level].props["max_clip"]
    if max_clip is not None:
        for key, eps in (("ppo.clip_eps", p.clip_eps), ("ppo.clip_eps_high", p.clip_eps_high)):
            if eps is not None and eps > max_clip:
                raise _KeyProblem(
                    key,
                    f"with ppo.ratio_level={p.ratio_level} it must be <= {max_clip}: GSPO's clip ranges are "
                    f"~1e-4..1e-3 (sequence ratios are geometric means); got {eps}",
                )
    if cfg.loss.norm_length is not None and not AGGREGATIONS[cfg.loss.agg].props["reads_norm_length"]:
        readers = " / ".join(n for n, e in AGGREGATIONS.items() if e.props["reads_norm_length"])
        raise _KeyProblem(
            "loss.norm_length", f"only loss.agg={readers} reads it (loss.agg is {cfg.loss.agg}); set it null"
        )
    kl = KL_ESTIMATORS[cfg.kl.estimator]
    if kl.props["straight_through"] and cfg.kl.placement == "reward":
        raise _KeyProblem(
            "kl.estimator",
            f"{cfg.kl.estimator} with kl.placement=reward: the + variants only change the gradient of a KL loss term "
            f"(use kl.placement=loss, or {kl.props['value_of']})",
        )


# the mode options and the loss modes that read them
_MODE_KEYS = {"sapo_tau_pos": ("sapo",), "sapo_tau_neg": ("sapo",), "cov_ratio": ("clip_cov", "kl_cov"),
              "clip_cov_lb": ("clip_cov",), "clip_cov_ub": ("clip_cov",), "kl_cov_coef": ("kl_cov",)}


def _consistent_loss_mode(cfg: RunConfig) -> None:
    """What ppo.loss_mode combines with: the ratio levels, clip-higher, dual clip and aggregations its registry
    entry accepts (harness/algos/losses.py), and its own option keys only with it."""
    p, mode = cfg.ppo, cfg.ppo.loss_mode
    props = POLICY_LOSSES[mode].props
    if p.ratio_level not in props["ratio_levels"]:
        raise _KeyProblem("ppo.ratio_level", f"ppo.loss_mode={mode} takes {' / '.join(props['ratio_levels'])} only "
                          f"(got {p.ratio_level})")
    if p.clip_eps_high is not None and not props["clip_high"]:
        raise _KeyProblem("ppo.clip_eps_high", f"ppo.loss_mode={mode} has no upper clip range; set it null")
    if p.dual_clip is not None and not props["dual_clip"]:
        raise _KeyProblem("ppo.dual_clip", f"ppo.loss_mode={mode} has no dual clip; set it null")
    if props["aggs"] is not None and cfg.loss.agg not in props["aggs"]:
        raise _KeyProblem("loss.agg", f"ppo.loss_mode={mode} is one loss per completion averaged over completions: "
                          f"use {' / '.join(props['aggs'])} (got {cfg.loss.agg})")
    for key, modes in _MODE_KEYS.items():
        if getattr(p, key) is not None and mode not in modes:
            raise _KeyProblem(f"ppo.{key}", f"only ppo.loss_mode={' / '.join(modes)} reads it (ppo.loss_mode is "
                              f"{mode}); set it null")


def _consistent_rollout(cfg: RunConfig) -> None:
    """The rollout correction's level and thresholds, dynamic sampling's groups, the overlong buffer's size."""
    r = cfg.rollout
    levels = CORRECTIONS[r.correction].props["levels"]
    if r.correction_level not in levels:
        raise _KeyProblem("rollout.correction_level", f"rollout.correction={r.correction} is {' / '.join(levels)} "
                          f"level only (got {r.correction_level})")
    for key in ("is_threshold", "is_threshold_low"):
        if getattr(r, key) is not None and r.correction == "none":
            raise _KeyProblem(f"rollout.{key}", "rollout.correction=none reads no threshold; set it null")
    if r.is_threshold is not None and r.is_threshold_low is not None and r.is_threshold_low >= r.is_threshold:
        raise _KeyProblem("rollout.is_threshold_low", f"must be below rollout.is_threshold={r.is_threshold}")
    if r.filter_groups and r.group_size < 2:
        raise _KeyProblem("rollout.filter_groups", "needs rollout.group_size >= 2 (a group of one has no variance)")
    b = cfg.train.overlong_buffer
    if b is not None and cfg.task.response_length is not None and b > cfg.task.response_length:
        raise _KeyProblem("train.overlong_buffer", f"{b} is longer than task.response_length={cfg.task.response_length}")


class _KeyProblem(ValueError):
    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# ---- dotted keys -------------------------------------------------------------------------------


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@functools.cache
def known_keys() -> frozenset[str]:
    """Every dotted key of RunConfig (computed once: every override and spec value asks)."""
    return frozenset(flatten(RunConfig().model_dump()))


@functools.cache
def sections() -> frozenset[str]:
    """The section names (``ppo``, ``kl`` ...): a mapping of dotted keys, never a value."""
    return frozenset(k.split(".", 1)[0] for k in known_keys() if "." in k)


def field_kind(key: str) -> str:
    """'int' | 'float' | 'bool' | 'str' | 'choice' | 'value' for a known dotted key (X | None as X)."""
    model: Any = RunConfig
    parts = key.split(".")
    for p in parts[:-1]:
        model = model.model_fields[p].annotation
    ann = model.model_fields[parts[-1]].annotation
    args = [a for a in get_args(ann) if a is not type(None)]
    if isinstance(ann, types.UnionType) or get_origin(ann) is Union:
        ann = args[0] if len(args) == 1 else ann
    if get_origin(ann) is Literal:
        return "choice"
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(ann, "value")


class KeyDoc(NamedTuple):
    key: str  # dotted
    type: str
    default: Any
    description: str


def describe() -> list[KeyDoc]:
    """Every dotted key with its type, default and meaning, in declaration order (``ppo-harness config``)."""
    out: list[KeyDoc] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            sub = f.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                walk(sub, f"{prefix}{name}.")
                continue
            out.append(KeyDoc(f"{prefix}{name}", _type_name(sub), f.default, f.description or ""))

    walk(RunConfig, "")
    return out


def _type_name(annotation: Any) -> str:
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return " | ".join(str(a) for a in args)
    if args:  # X | None
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


def did_you_mean(word: str, options, quote: str = "'") -> str:
    """' (did you mean 'ppo.clip_eps'?)' for the nearest option, or ''; ``quote=""`` prints it bare."""
    close = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.6)
    if not close and "." in word:  # a right leaf in the wrong section: 'kl.clip_eps' -> 'ppo.clip_eps'
        leaf = word.rsplit(".", 1)[1]
        close = [k for k in sorted(options) if k.rsplit(".", 1)[-1] == leaf][:1]
    return f" (did you mean {quote}{close[0]}{quote}?)" if close else ""


class SpeltTwice(InputError):
    """One dotted key written two ways in one mapping (``kl.coef: ...`` beside ``kl: {coef: ...}``)."""

    def __init__(self, key: str, first: str, second: str):
        self.key = key
        self.problem = f"given twice, as {first} and as {second} (one spelling per key)"
        super().__init__(f"{key}: {self.problem}")


def flat_items(d: dict, leaf: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
    """Nested sections and dotted keys alike -> [(dotted key, value)], in the order written.

    A mapping is walked into as a section unless its path is a known key, it is empty and not a
    known section (``optim: {}`` is then an unknown key, not nothing), or ``leaf(mapping)`` says it
    is a value. A dotted key reached by two spellings raises ``SpeltTwice``.
    """
    keys, secs = known_keys(), sections()
    out: dict[str, tuple[Any, tuple[str, ...]]] = {}

    def walk(node: dict, parts: tuple[str, ...]) -> None:
        for k, v in node.items():
            path = (*parts, str(k))
            key = ".".join(path)
            if isinstance(v, dict) and key not in keys and (v or key in secs) and not (leaf and leaf(v)):
                walk(v, path)
                continue
            if key in out:
                raise SpeltTwice(key, _spelling(out[key][1]), _spelling(path))
            out[key] = (v, path)

    walk(d, ())
    return [(k, v) for k, (v, _) in out.items()]


def _spelling(path: tuple[str, ...]) -> str:
    """('kl', 'coef') -> "'kl: {coef}'"; ('kl.coef',) -> "'kl.coef'"."""
    text = path[-1]
    for p in reversed(path[:-1]):
        text = f"{p}: {{{text}}}"
    return f"'{text}'"


# keys that were renamed: refused with what to write instead (one way to say each thing)
RENAMED = {"train.autocast": "renamed: write train.dtype (none -> fp32, bf16 -> bf16; fp16 is also offered)"}


def _unknown(key: str) -> ConfigError:
    if key in RENAMED:
        return _refuse(key, RENAMED[key])
    return _refuse(key, f"unknown key{did_you_mean(key, known_keys())}")


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree[a][b][c] = value for key 'a.b.c'; unknown keys are refused by name, with the nearest known one."""
    if key in sections():
        raise _refuse(key, f"a section: expected a mapping of {key}.* keys, got {_got(value)}")
    if key not in known_keys():
        raise _unknown(key)
    node = tree
    parts = key.split(".")
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise _refuse(key, f"'{p}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'ppo.clip_eps=0.3' -> ('ppo.clip_eps', 0.3); the value is parsed as a YAML scalar (harness.yamlio).

    For a float key, text that Python's float() reads is that number (the CLI's own parsing):
    'inf', 'nan' and '1e309' then reach the finite-number check and are refused by name.
    """
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: no key before '=' (expected dotted.key=value)")
    try:
        value = loads(raw, f"--set {key}") if raw.strip() else None
    except YAMLInputError:
        raise _refuse(key, f"cannot parse value {raw!r}") from None
    if isinstance(value, str) and key in known_keys() and field_kind(key) == "float":
        try:
            value = float(value)
        except ValueError:
            pass
    return key, value


def check_value(key: str, value: Any) -> None:
    """One dotted key's value on its own: type, range, choices (not the rules across keys).

    Raises a one-line ConfigError naming the key, as ``build_config`` would.
    """
    if key not in known_keys():
        raise _unknown(key)
    section, _, leaf = key.rpartition(".")
    model: Any = RunConfig
    for part in section.split(".") if section else []:  # model.lora.r: two sections deep
        model = model.model_fields[part].annotation
    try:
        model.model_validate({leaf: value})
    except ValidationError as err:
        raise _error_line(err, f"{section}." if section else "") from None


# pydantic's strict type errors, said as what the key expects
_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false", "string_type": "a string"}
_MAPPING = ("model_type", "model_attributes_type", "dict_type")


def _error_line(err: ValidationError, prefix: str = "") -> ConfigError:
    e = err.errors()[0]
    loc = prefix + ".".join(str(x) for x in e["loc"] if not isinstance(x, int))
    ctx = e.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, _KeyProblem):
        return _refuse(inner.key, inner.problem)
    if e["type"] == "extra_forbidden":
        return _unknown(loc)
    got = e.get("input")
    msg = e["msg"]
    if e["type"] == "finite_number":
        return _refuse(loc, f"must be a finite number (got {got!r})")
    if e["type"] in _EXPECTED:
        return _refuse(loc, f"expected {_EXPECTED[e['type']]}, got {_got(got)}")
    if e["type"] in _MAPPING:
        return _refuse(loc, f"expected a mapping of {loc}.* keys, got {_got(got)}")
    if msg.startswith("Value error, "):
        return _refuse(loc, msg[len("Value error, "):])
    got_s = "" if isinstance(got, dict) else f" (got {_short(repr(got))})"
    return _refuse(loc, f"{msg[0].lower() + msg[1:]}{got_s}")


def _refuse(key: str, problem: str) -> ConfigError:
    return ConfigError(f"config key {show_key(key)}: {problem}", key, problem)


def _got(v: Any) -> str:
    """A refused value for people: the type where it is the problem, else the value itself."""
    if isinstance(v, bool):
        return f"a boolean ({'true' if v else 'false'})"
    if v is None:
        return "null"
    if isinstance(v, str):
        return f"the string {_short(repr(v))}"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list | tuple):
        return "a list"
    return _short(repr(v))


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Nested dict (from YAML; dotted keys too) + overrides -> validated RunConfig, or a one-line ConfigError."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError("config: top level must be a mapping of sections")
    try:
        items = flat_items(data or {})
    except SpeltTwice as e:
        raise _refuse(e.key, e.problem) from None
    tree: dict[str, Any] = {}
    for key, value in items:
        set_dotted(tree, key, value)
    for key, value in overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or []):
        set_dotted(tree, key, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise _error_line(err) from None


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """A YAML config file (read by harness.yamlio: UTF-8, no duplicate keys or aliases) + overrides."""
    data: Any = None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}': no such file")
        try:
            data = read_yaml(p)
        except YAMLInputError as e:
            if e.yaml_error is not None:
                raise ConfigError(f"config file '{p}': not valid YAML ({str(e.yaml_error).splitlines()[0]})") from None
            raise ConfigError(f"config file '{p}': {e.detail}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{p}': top level must be a mapping")
    return build_config(data, overrides)


def task_label(cfg: RunConfig) -> str:
    """The run's task as tags and reports name it: task.name, or for task.prompts ``prompts:<file stem>`` (a file)
    or ``prompts:<last part>`` (a dataset folder or hub id: ``owner/name`` -> ``prompts:name``), as the task's name."""
    if cfg.task.prompts is None:
        return cfg.task.name
    from harness.tasks.data import label

    return label(cfg.task.prompts)


def response_length(cfg: RunConfig, task) -> int:
    """Response tokens of a run: ``task.response_length`` when set, else the task's own default."""
    return cfg.task.response_length or task.response_length
