"""The schema: every metric key a run logs (label, unit, better direction, meaning) and every MLflow
tag and Optuna user-attribute name the harness writes or reads.

Logged at step = PPO iteration by every implementation (the TRL baseline leaves out what its
loop cannot measure, never fakes it). Sweep objectives must name one of these keys; reports
label axes and tables from here.
"""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    label: str
    unit: str  # "" = dimensionless
    direction: str  # "max", "min" or "" (a diagnostic with no better side)
    meaning: str


# the gradient-noise probe's keys (harness/ppo/variance.py logs them; a reference that has no probe names them absent)
PROBE_KEYS = (
    "grad/variance",
    "grad/signal",
    "grad/rel_variance",
    "grad/noise_scale",
    "grad/sample_variance",
    "grad/batch_variance",
    "grad/cosine",
    "grad/mean_norm",
)

METRICS: dict[str, Metric] = {
    # ---- the rollout's batch
    "objective/scores": Metric("proxy score", "", "max", "mean optimised score (proxy RM or gold; missing-EOS penalty applied under train.truncated=penalty)"),
    "objective/gold": Metric("gold reward", "", "max", "mean gold reward of the training batch"),
    "objective/kl": Metric("KL to reference", "nats", "", "mean over completions of sum_t kl_t (the configured estimator)"),
    "objective/rlhf_reward": Metric("RLHF reward", "", "max", "mean of score - beta * sum_t kl_t"),
    "objective/kl_coef": Metric("KL coefficient", "", "", "beta used this iteration (adaptive controller: before its update)"),
    "objective/entropy": Metric("entropy", "nats/token", "", "mean per-token entropy of the sampling policy"),
    "response/length": Metric("response length", "tokens", "", "mean response tokens, EOS included"),
    "response/length_low": Metric("low-reward response length", "tokens", "", "mean response tokens of the completions whose gold is below the batch's mean gold (Dr. GRPO's length bias); left out when every gold is equal"),
    "response/eos_frac": Metric("EOS fraction", "", "max", "share of responses that emitted EOS"),
    "adv/mean": Metric("advantage mean", "", "", "masked mean of the advantages before whitening"),
    "adv/std": Metric("advantage std", "", "", "masked std of the advantages before whitening"),
    # ---- the update (means over epochs x minibatches)
    "policy/approxkl_avg": Metric("approx. KL (new vs old)", "nats/token", "", "0.5 masked mean of (logp - old)^2"),
    "policy/clipfrac_avg": Metric("clip fraction", "", "", "share of tokens whose surrogate was clipped"),
    "policy/clipfrac_low": Metric("lower clip fraction", "", "", "share of tokens with r < 1 - clip_eps and A < 0 (the lower bound active)"),
    "policy/clipfrac_high": Metric("upper clip fraction", "", "", "share of tokens with r > 1 + clip_eps_high and A > 0 (the upper bound active)"),
    "policy/dualclip_frac": Metric("dual-clip fraction", "", "", "share of tokens with A < 0 whose loss the dual clip -c A bounded (ppo.dual_clip set)"),
    "policy/cov_frac": Metric("covariance-selected fraction", "", "", "share of tokens ppo.loss_mode=clip_cov cut from the gradient or kl_cov penalised (Cui et al. 2025)"),
    # ---- the rollout: off-policy mismatch and its correction (harness/algos/offpolicy.py), dynamic sampling
    "offpolicy/kl_k1": Metric("rollout-vs-train KL (k1)", "nats/token", "", "masked mean of log pi_rollout - log pi_old: sampling policy (stale and / or its code path) vs the training forward"),
    "offpolicy/kl_k3": Metric("rollout-vs-train KL (k3)", "nats/token", "", "masked mean of rho - 1 - log rho, rho = pi_old / pi_rollout per token"),
    "offpolicy/is_mean": Metric("IS weight mean", "", "", "masked mean of rho = pi_old / pi_rollout (rollout.correction_level) before the correction"),
    "offpolicy/is_max": Metric("IS weight max", "", "", "max of rho over the batch's tokens before the correction"),
    "offpolicy/is_truncated_frac": Metric("IS truncated fraction", "", "", "share of tokens whose weight rollout.correction changed (tis)"),
    "offpolicy/is_masked_frac": Metric("IS masked fraction", "", "", "share of tokens rollout.correction took out of the loss (mis, icepop)"),
    "rollout/filtered_frac": Metric("filtered group fraction", "", "", "rollout.filter_groups: share of drawn prompt groups dropped for zero score variance"),
    "rollout/extra_gen_frac": Metric("extra generation", "", "min", "rollout.filter_groups: completions generated beyond the batch, / batch size"),
    "policy/early_stop": Metric("early stop", "", "", "1 when the epochs stopped at ppo.target_kl"),
    "loss/policy_avg": Metric("policy loss", "", "", "clipped surrogate loss"),
    "loss/value_avg": Metric("value loss", "", "min", "(clipped) value loss"),
    "val/clipfrac_avg": Metric("value clip fraction", "", "", "share of value predictions clipped"),
    "val/explained_var": Metric("explained variance", "", "max", "1 - Var[R - V] / Var[R] on the batch"),
    "grad/norm": Metric("policy gradient norm", "", "", "the policy's gradient L2 norm before clipping"),
    "grad/value_norm": Metric("value gradient norm", "", "", "the value model's gradient L2 norm before clipping"),
    # ---- train.dtype=fp16's dynamic loss scaling (harness/algos/scaler.py); absent in fp32 and bf16
    "amp/loss_scale": Metric("loss scale", "", "", "fp16 loss scale after the iteration's update (halves on overflow, doubles after 2000 good steps)"),
    "amp/skipped_steps": Metric("skipped steps", "steps", "min", "optimiser steps of the iteration skipped because a gradient overflowed (inf/NaN) in fp16"),
    # ---- the gradient-noise probe (harness/ppo/variance.py): K microbatches of b completions
    "grad/variance": Metric("microbatch gradient variance", "", "min", "tr(Cov_mb): variance of a b-completion gradient, unbiased over K"),
    "grad/signal": Metric("gradient signal", "", "", "||g_bar||^2 - tr(Cov_mb)/K: unbiased |G|^2; <= 0 = unresolved"),
    "grad/rel_variance": Metric("relative gradient variance", "", "min", "tr(Cov_mb) / signal; NaN when the signal is unresolved"),
    "grad/noise_scale": Metric("gradient noise scale", "completions", "", "B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018); NaN when unresolved"),
    "grad/sample_variance": Metric("per-completion gradient noise", "", "min", "tr(Sigma) = b tr(Cov_mb)"),
    "grad/batch_variance": Metric("batch gradient variance", "", "min", "tr(Sigma) / B: variance of the whole batch's gradient"),
    "grad/cosine": Metric("microbatch gradient cosine", "", "", "mean pairwise cosine of the K microbatch gradients"),
    "grad/mean_norm": Metric("mean gradient norm", "", "", "||g_bar||"),
    # ---- held-out evaluation (every eval.every iterations)
    "eval/gold": Metric("held-out gold reward", "", "max", "mean gold reward on held-out prompts"),
    "eval/proxy": Metric("held-out proxy score", "", "max", "mean optimised score on held-out prompts"),
    "eval/kl": Metric("held-out KL to reference", "nats", "min", "mean sum_t (logp - ref) on held-out prompts (k1)"),
    "eval/gold_se": Metric("held-out gold reward s.e.", "", "", "standard error of eval/gold over the evaluation prompts (per-prompt sd / sqrt(n))"),
    "eval/overopt_onset_kl": Metric("over-optimisation onset KL", "nats", "", "eval/kl at the first evaluation where gold has fallen beyond its noise (harness.onset, 5% run-wide false alarms) while proxy rose; logged once"),
    "eval/length": Metric("held-out response length", "tokens", "", "mean held-out response tokens"),
    # ---- time and progress
    "perf/tokens_per_s": Metric("throughput", "tokens/s", "max", "generated tokens per second of the iteration, the noise probe's time left out"),
    "perf/rollout_s": Metric("rollout time", "s", "min", "seconds spent in steps 1-3 (custom core: with the training forward that measures the rollout-vs-train mismatch)"),
    "perf/max_memory_gb": Metric("peak GPU memory", "GiB", "min", "torch.cuda.max_memory_allocated of the run's device so far (CUDA runs only; rank 0's on several)"),
    "perf/update_s": Metric("update time", "s", "min", "seconds spent in step 6's update (the noise probe's time left out)"),
    "episodes": Metric("episodes", "completions", "", "completions sampled so far"),
}


# Logged on a sweep's parent run at the end of each invocation (harness.sweep.coordinator), at step =
# runs done, so sweeps sort by their best cell in the MLflow UI. Not objectives: a run never logs these.
SWEEP_METRICS: dict[str, Metric] = {
    "sweep/best": Metric("best cell mean", "", "", "the objective's mean over the done seeds of the best cell"),
    "sweep/best_seeds": Metric("seeds of the best cell", "", "", "seeds done of the best cell"),
    "sweep/done": Metric("runs done", "", "", "(cell, seed) runs done"),
    "sweep/failed": Metric("runs failed", "", "", "(cell, seed) runs whose last attempt failed"),
}


def label(key: str) -> str:
    """'held-out gold reward' for 'eval/gold'; the key itself when it is not in the schema."""
    m = METRICS.get(key)
    return m.label if m else key


# ---- MLflow tags and Optuna user attributes: every writer and reader spells them through these names


class Tag:
    """MLflow run tags (``Tag.X``) the harness writes; readers import the same names."""

    # every run (harness.run.run_tags)
    TASK = "task"
    TASK_DATA = "task.data"  # task.prompts runs: the file, folder or hub id ...
    TASK_DATA_SHA256 = "task.data_sha256"  # ... and its content hash (a file or folder)
    GOLD_SOURCE = "gold.source"  # what eval/gold measures: GOLD_OPTIMISED when it is the optimised reward itself
    VALUE_INIT = "value.init"  # what the value model was initialised from in fact (model.value_init is the request)
    MODEL_SHA256 = "model.{}_sha256"  # model.policy / model.reward given as a local folder: its weights' hash
    DEVICE = "device"  # the run's torch device, e.g. cpu or cuda:0 (NVIDIA ...; CUDA_VISIBLE_DEVICES=3)
    WORLD_SIZE = "world_size"  # the processes one run spans (train --nproc-per-node x --nnodes, torchrun); 1 = one
    IMPL = "impl"
    LEVEL = "advantage.level"
    SEED = "seed"
    GIT_COMMIT = "git_commit"
    FAILURE = "failure.reason"  # FAILED / KILLED runs: one line saying why
    RESUMED = "resumed"  # how many times the run was continued from a checkpoint (train --resume, a sweep rerun)
    IMPL_PROFILE = "impl.profile"  # the implementation's default profile keys applied (ppo-harness train)
    # over-optimisation onset (harness.recording)
    ONSET_ITERATION = "overopt.onset_iteration"
    ONSET_KL = "overopt.onset_kl"
    # which warm-start artifacts a run used (harness.warmstart.artifacts.provenance)
    ARTIFACTS_VERSION = "artifacts.version"
    # implementations compared side by side (harness.compare)
    COMPARE = "compare"
    # sweeps: parent and child runs (harness.sweep)
    SWEEP_ROLE = "sweep.role"  # "parent" | "child"
    SWEEP_NAME = "sweep.name"
    SWEEP_HASH = "sweep.hash"
    SWEEP_STUDY = "sweep.study"
    SWEEP_CELL = "sweep.cell"
    SWEEP_WORKER = "sweep.worker"
    SWEEP_PRUNED = "sweep.pruned"
    SWEEP_DONE = "sweep.done"
    SWEEP_FAILED = "sweep.failed"
    SWEEP_AXES = "sweep.axes"
    SWEEP_SAMPLER = "sweep.sampler"
    SWEEP_SEEDS = "sweep.seeds"
    SWEEP_RUNS = "sweep.runs"
    SWEEP_OBJECTIVE = "sweep.objective"
    SWEEP_DIRECTION = "sweep.direction"
    SWEEP_STORAGE = "sweep.storage"
    SWEEP_SPECS = "sweep.specs"  # a grown sweep's parent: the hashes of its specs, oldest first (JSON list)
    OPTUNA_STUDY = "optuna.study"
    OPTUNA_TRIAL = "optuna.trial"
    AXIS_PREFIX = "axis."  # child runs: axis.<dotted key> = the cell's value of that swept key
    NOTE = "mlflow.note.content"  # MLflow's run description (a sweep parent: the spec's description)


# cfg.impl's values, in order, with how reports and the CLI name them: spelled here only. The reference
# implementation of every comparison is the first; harness.impls registers each one's lazy targets.
IMPLEMENTATIONS: dict[str, tuple[str, str]] = {  # name -> (short label, what it is)
    "custom": ("custom", "the harness's PPO core"),
    "trl": ("TRL", "TRL's PPOTrainer"),
    "trl-grpo": ("TRL GRPO", "TRL's GRPOTrainer"),
    "trl-rloo": ("TRL RLOO", "TRL's RLOOTrainer"),
}
REFERENCE_IMPL = next(iter(IMPLEMENTATIONS))


def impl_label(name: str) -> str:
    """How figures and tables name an implementation (its own name when unknown)."""
    return IMPLEMENTATIONS[name][0] if name in IMPLEMENTATIONS else name


GOLD_OPTIMISED = "optimised reward (no independent gold)"  # Tag.GOLD_SOURCE of a task.prompts run without model.gold


def artifact_tags(kind: str) -> tuple[str, str]:
    """The (source, checksum) tag names of one warm-start artifact kind ("sft" or "rm")."""
    return f"artifacts.{kind}", f"artifacts.{kind}_sha256"


class Attr:
    """Optuna study and trial user attributes of a sweep (harness.sweep)."""

    CELL = "sweep.cell"
    SEED = "seed"
    SKIPPED = "sweep.skipped"  # a trial that found its (cell, seed) already claimed
    FAIL_KIND = "sweep.fail_kind"  # nonfinite | error | interrupted | stale | outage
    FAIL_REASON = "sweep.fail_reason"
    PRUNED = "sweep.pruned"  # why the MedianPruner stopped the trial
    TRACEBACK = "sweep.traceback"
    SECONDS = "sweep.seconds"
    RUN_ID = "mlflow.run_id"
    ADOPTED = "sweep.adopted"  # recorded from this FINISHED MLflow run, not run again
    WORKER = "sweep.worker"
    NAME = "sweep.name"
    HASH = "sweep.hash"
    SPEC_PATH = "sweep.spec_path"
    SHAPE = "sweep.shape"  # the current spec's cells, seeds and shared-settings hash (spec.spec_shape)
    SPECS = "sweep.specs"  # every spec the study has run under: [{hash, path, at}], oldest first
    AXES = "sweep.axes"
    CREATED = "sweep.created"
