"""The typed, frozen run config: YAML + dotted ``--set`` overrides -> ``RunConfig``.

Every dotted key (``ppo.clip_eps``, ``advantage.level`` ...) is a public contract:
ablation files, the CLI and the TRL baseline all speak it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A bad config: the message is one line naming the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Section):
    name: str = "sentiment"
    # None = the task's own default (each task knows how long its answers are).
    response_length: int | None = Field(default=None, ge=1, le=512)

    @field_validator("name")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from harness.tasks import list_tasks

        if v not in list_tasks():
            raise ValueError(f"unknown task '{v}' (known: {', '.join(list_tasks())})")
        return v


class ModelConfig(_Section):
    # A built-in preset ("tiny", "small") or a Hugging Face model name / local path.
    policy: str = "tiny"
    # "learned" = proxy RM trained by the harness on gold-labelled SFT pairs (Gao et al. 2022);
    # "gold" = optimise the task's gold reward directly; else a path to a sequence-classification model.
    reward: str = "learned"
    # Value model initialisation: from the reward model (N implementation details) or the SFT policy.
    value_init: Literal["reward", "policy"] = "reward"
    # "separate": a value model of its own (TRL, N implementation details); "shared": a scalar head
    # (zero-initialised) on the policy's own trunk, one forward and backward for both losses. Shared
    # changes the math (the value loss also moves the policy's features); value_init is then unused.
    value_trunk: Literal["separate", "shared"] = "separate"
    # Share of preference labels flipped when training the proxy RM.
    rm_label_noise: float = Field(default=0.1, ge=0.0, lt=0.5)
    # Preference pairs sampled from the SFT policy for the proxy RM.
    rm_pairs: int = Field(default=4096, ge=16)


class RolloutConfig(_Section):
    batch_size: int = Field(default=64, ge=1)  # completions per PPO iteration
    group_size: int = Field(default=4, ge=1)  # completions per prompt (contiguous in the batch)
    temperature: float = Field(default=1.0, gt=0.0)


class PPOConfig(_Section):
    clip_eps: float = Field(default=0.2, gt=0.0, lt=1.0)
    epochs: int = Field(default=4, ge=1)
    minibatches: int = Field(default=4, ge=1)
    lr: float = Field(default=1e-4, gt=0.0)  # tiny models want more than TRL 3e-6 at 1B; 3e-4 moved 7 nats per iteration
    lr_decay: bool = True  # linear decay to 0 over train.iterations (cleanRL anneal_lr)
    adam_eps: float = Field(default=1e-5, gt=0.0)  # cleanRL / N details: 1e-5, not torch's 1e-8
    # Max L2 norm of the policy's gradient and, separately, of the value model's (null = no clipping).
    # With model.value_trunk=shared the trunk's gradient holds both losses and is clipped with the policy's.
    max_grad_norm: float | None = Field(default=1.0, gt=0.0)
    vf_coef: float = Field(default=0.1, ge=0.0)  # TRL default
    value_clip: float | None = Field(default=0.2, gt=0.0)  # TRL cliprange_value; null = unclipped
    entropy_coef: float = Field(default=0.0, ge=0.0)
    target_kl: float | None = Field(default=None, gt=0.0)  # early-stop epochs on approx KL


class KLConfig(_Section):
    coef: float = Field(default=0.05, ge=0.0)
    # Schulman's estimators of KL(pi || ref) per sampled token: k1 = log(pi/ref), k2 = 0.5 log(pi/ref)^2,
    # k3 = ref/pi - 1 - log(ref/pi).
    estimator: Literal["k1", "k2", "k3"] = "k1"
    # "reward": -coef * kl_t enters the reward (token level) or R (sequence level); every estimator's
    # value then penalises KL(pi || ref). "loss": coef * agg(kl_t) is added to the loss and only its
    # GRADIENT matters: k2 gives the gradient of KL(pi || ref), k3 that of the reverse KL(ref || pi)
    # (Tang and Munos 2025), and k1's expected gradient on on-policy samples is exactly 0, so
    # placement=loss with k1 is refused.
    placement: Literal["reward", "loss"] = "reward"
    # None = fixed coefficient; else the target KL of the adaptive controller (Ziegler et al. 2019).
    target: float | None = Field(default=None, gt=0.0)
    horizon: int = Field(default=10000, ge=1)  # controller horizon, in episodes


class AdvantageConfig(_Section):
    level: Literal["token", "sequence"] = "token"
    # Sequence level only: what is subtracted from the scalar return.
    baseline: Literal["none", "batch_mean", "rloo", "group_norm", "group_mean", "value"] = "rloo"
    gamma: float = Field(default=1.0, ge=0.0, le=1.0)
    lam: float = Field(default=0.95, ge=0.0, le=1.0)
    whiten: bool = True


class LossConfig(_Section):
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"


class TrainConfig(_Section):
    iterations: int = Field(default=40, ge=1)
    missing_eos_penalty: float | None = -1.0  # score given to responses with no EOS; null = off
    threads: int | None = Field(default=None, ge=1)  # torch threads; None = all cores
    # "bf16": rollout and update forwards under torch.autocast(bfloat16); weights, optimiser and
    # evaluation stay fp32. Changes the math: the sampler's and the learner's logprobs then differ
    # by bf16 rounding, so the ratio starts near, not at, 1.
    autocast: Literal["none", "bf16"] = "none"


class EvalConfig(_Section):
    every: int = Field(default=5, ge=1)
    prompts: int = Field(default=64, ge=1)


class ProbeConfig(_Section):
    # Gradient-noise probe (harness/ppo/variance.py) every N iterations, from iteration 1; 0 = off.
    every: int = Field(default=0, ge=0)
    # K equal microbatches of the batch (K must divide rollout.batch_size; K = batch size gives
    # per-completion gradients). More K = a less noisy signal estimate, at K backward passes per probe.
    microbatches: int = Field(default=8, ge=2)


class RunConfig(_Section):
    seed: int = 0
    impl: Literal["custom", "trl"] = "custom"
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

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        r, p = self.rollout, self.ppo
        if r.batch_size % r.group_size:
            raise _KeyProblem("rollout.group_size", f"{r.group_size} does not divide rollout.batch_size={r.batch_size}")
        if r.batch_size % p.minibatches:
            raise _KeyProblem("ppo.minibatches", f"{p.minibatches} does not divide rollout.batch_size={r.batch_size}")
        if r.batch_size // p.minibatches < 1:
            raise _KeyProblem("ppo.minibatches", "minibatches would be empty")
        a = self.advantage
        if a.level == "sequence" and a.baseline in ("rloo", "group_norm", "group_mean") and r.group_size < 2:
            raise _KeyProblem("advantage.baseline", f"'{a.baseline}' needs rollout.group_size >= 2, got {r.group_size}")
        if self.probe.every and r.batch_size % self.probe.microbatches:
            raise _KeyProblem(
                "probe.microbatches", f"{self.probe.microbatches} does not divide rollout.batch_size={r.batch_size}"
            )
        if self.kl.placement == "loss" and self.kl.estimator == "k1":
            raise _KeyProblem(
                "kl.estimator",
                "k1 with kl.placement=loss has zero expected gradient on on-policy samples (the term does "
                "nothing); use k2 (gradient of KL(pi||ref)) or k3 (gradient of KL(ref||pi))",
            )
        if self.kl.target is not None and self.kl.coef == 0:
            raise _KeyProblem("kl.coef", "the adaptive controller (kl.target) needs kl.coef > 0 to start from")
        return self

    # ---- helpers -------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """Flattened dotted keys -> values (MLflow params, sweep tags)."""
        return flatten(self.model_dump())

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


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


def known_keys() -> set[str]:
    return set(flatten(RunConfig().model_dump()))


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree[a][b][c] = value for key 'a.b.c'; unknown keys are refused by name."""
    if key not in known_keys():
        raise ConfigError(f"config key '{key}': unknown key")
    node = tree
    parts = key.split(".")
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{p}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'ppo.clip_eps=0.3' -> ('ppo.clip_eps', 0.3); the value is parsed as a YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"config key '{key}': cannot parse value {raw!r}") from None
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; users mean a number
        try:
            value = float(value) if value.lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            pass
    return key, value


def _error_line(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"] if not isinstance(x, int))
    ctx = e.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, _KeyProblem):
        return f"config key '{inner.key}': {inner.problem}"
    if e["type"] == "extra_forbidden":
        return f"config key '{loc}': unknown key"
    got = e.get("input")
    msg = e["msg"]
    if msg.startswith("Value error, "):
        return f"config key '{loc}': {msg[len('Value error, '):]}"
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"config key '{loc}': {msg[0].lower() + msg[1:]}{got_s}"


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Nested dict (from YAML) + overrides -> validated RunConfig, or a one-line ConfigError."""
    tree: dict[str, Any] = json.loads(json.dumps(data or {}))  # deep copy, plain types
    if not isinstance(tree, dict):
        raise ConfigError("config: top level must be a mapping of sections")
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        set_dotted(tree, key, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_error_line(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}': no such file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}': not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{p}': top level must be a mapping")
    return build_config(data, overrides)


def response_length(cfg: RunConfig, task) -> int:
    """Response tokens of a run: ``task.response_length`` when set, else the task's own default."""
    return cfg.task.response_length or task.response_length
