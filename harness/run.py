"""One run: config -> models -> the PPO loop -> MLflow. The glue between trainer and tracking.

``execute`` is what ``ppo-harness train`` and every sweep trial call. It owns the
MLflow run's life: FINISHED on success, FAILED (tag ``failure.reason``, artifact
``error.txt``) on an exception, KILLED on Ctrl-C.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from harness.config import RunConfig
from harness.evaluate import overopt_onset
from harness.ppo.loop import NonFiniteError
from harness.tracking import DEFAULT_EXPERIMENT, RunLogger, Store, git_commit, package_versions

__all__ = ["NonFiniteError", "RunResult", "execute"]

SAMPLE_ROWS = 16  # completions kept per sampled evaluation for the samples table


@dataclass
class RunResult:
    run_id: str
    final: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def run_tags(cfg: RunConfig) -> dict[str, str]:
    return {
        "task": cfg.task.name,
        "impl": cfg.impl,
        "advantage.level": cfg.advantage.level,
        "seed": str(cfg.seed),
        "git_commit": git_commit(),
        **package_versions(),
    }


def sample_iterations(n: int, every: int) -> set[int]:
    evals = sorted({0, n, *range(every, n + 1, every)})
    return {evals[0], evals[len(evals) // 2], evals[-1]}


class Recorder:
    """What every implementation does around its loop: held-out evaluation with a
    samples table, metric logging with a local history, and the final RunResult."""

    def __init__(self, cfg: RunConfig, logger: RunLogger, models, score_fn, response_length: int):
        self.cfg, self.logger, self.models, self.score_fn = cfg, logger, models, score_fn
        self.response_length = response_length
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.samples: list[dict] = []
        self.sample_at = sample_iterations(cfg.train.iterations, cfg.eval.every)
        self.evals: list[dict[str, float]] = []  # every evaluation's metrics, in order
        self.onset: int | None = None  # iteration of the over-optimisation onset, once seen
        if models.provenance:
            logger.set_tags(models.provenance)  # which task artifacts this run used: shipped or local, checksums

    def evaluate(self, it: int) -> dict[str, float]:
        from harness.evaluate import evaluate

        m = self.models
        em, rows = evaluate(
            m.policy, m.ref, m.tokenizer, m.task, self.score_fn,
            n_prompts=self.cfg.eval.prompts, response_length=self.response_length,
            temperature=self.cfg.rollout.temperature, missing_eos_penalty=self.cfg.train.missing_eos_penalty,
        )
        if it in self.sample_at:
            self.samples.extend({"iteration": it, **r} for r in rows[:SAMPLE_ROWS])
        self.evals.append(em)
        if self.onset is None:
            k = overopt_onset([e["eval/gold"] for e in self.evals], [e["eval/proxy"] for e in self.evals])
            if k is not None:  # logged once, at the evaluation that shows it
                self.onset = it
                em = {**em, "eval/overopt_onset_kl": em["eval/kl"]}
                self.logger.set_tags({"overopt.onset_iteration": str(it), "overopt.onset_kl": f"{em['eval/kl']:.4g}"})
        return em

    def log(self, it: int, metrics: dict[str, float]) -> None:
        self.logger.log_metrics(metrics, step=it)
        for k, v in metrics.items():
            self.history.setdefault(k, []).append((it, v))

    def result(self) -> RunResult:
        """Write the samples table and return the run's result."""
        if self.samples:
            import pandas as pd

            self.logger.log_table(pd.DataFrame(self.samples), "samples.parquet")
            self.logger.log_text(samples_markdown(self.samples), "samples.md")
        final = {k: v[-1][1] for k, v in self.history.items()}
        return RunResult(run_id=self.logger.run_id, final=final, history=self.history)


def execute(
    cfg: RunConfig,
    store: Store,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> RunResult:
    """Train one configuration and log it as one MLflow run."""
    from harness.warmstart.load import validate_model_keys

    validate_model_keys(cfg)  # a bad path fails before any run exists
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    name = run_name or f"{cfg.task.name}-{cfg.impl}-{cfg.advantage.level}-s{cfg.seed}"
    logger = store.start_run(
        experiment, run_name=name, tags={**run_tags(cfg), **(tags or {})}, params=cfg.flat(), parent_run_id=parent_run_id
    )
    logger.log_text(cfg.to_yaml(), "config.yaml")
    try:
        result = _train(cfg, logger, on_eval, progress)
    except KeyboardInterrupt:
        logger.set_tags({"failure.reason": "interrupted"})
        logger.end("KILLED")
        raise
    except BaseException as e:
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        try:
            logger.set_tags({"failure.reason": reason[:500]})
            logger.log_text(traceback.format_exc(), "error.txt")
        finally:
            logger.end("FAILED")
        raise
    logger.end("FINISHED")
    return result


def _train(cfg: RunConfig, logger: RunLogger, on_eval, progress: bool) -> RunResult:
    if cfg.impl == "trl":
        from baselines.trl_ppo import train_trl

        return train_trl(cfg, logger, on_eval, progress)
    from harness.config import response_length
    from harness.lm.rollout import make_score_fn
    from harness.ppo.loop import init_state, ppo_iteration
    from harness.progress import RunProgress
    from harness.warmstart.load import load_models

    n = cfg.train.iterations
    with RunProgress(n, enabled=progress, title=f"{cfg.task.name} {cfg.advantage.level} seed {cfg.seed}") as bar:
        models = load_models(cfg, progress=bar.status)
        score_fn = make_score_fn(models.reward, models.task.gold)
        st = init_state(cfg, models)
        rec = Recorder(cfg, logger, models, score_fn, response_length(cfg, models.task))
        em = rec.evaluate(0)
        rec.log(0, {**em, "episodes": 0.0})
        bar.update(0, em)
        if on_eval:
            on_eval(0, em)
        for it in range(1, n + 1):
            t0 = time.perf_counter()
            metrics = ppo_iteration(cfg, models, st, score_fn)
            if it % cfg.eval.every == 0 or it == n:
                metrics.update(rec.evaluate(it))
            rec.log(it, metrics)
            bar.update(it, metrics, seconds=time.perf_counter() - t0)
            if on_eval and ("eval/gold" in metrics):
                on_eval(it, {k: v for k, v in metrics.items() if k.startswith("eval/")})
        return rec.result()


def samples_markdown(samples: list[dict]) -> str:
    lines = ["| iteration | prompt | completion | proxy | gold |", "|---|---|---|---|---|"]
    for r in samples:
        lines.append(f"| {r['iteration']} | {r['prompt']} | {r['completion']} | {r['proxy']:.3f} | {r['gold']:.3f} |")
    return "\n".join(lines) + "\n"
