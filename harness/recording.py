"""What every implementation does around its training loop, written once.

Held-out evaluation (with a samples table at three iterations), metric logging into the run
with a local history, the over-optimisation onset tag, the progress line and the ``on_eval``
hook (sweeps report and prune there), and the final ``RunResult``. The custom loop
(``harness.ppo.loop.train``) and the TRL baseline's callback (``baselines.trl_ppo``) both drive
a ``Recorder``: ``begin()`` before the first iteration, ``step(it, metrics)`` after each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness import dist, shard
from harness import evaluate as E
from harness.config import RunConfig
from harness.lm.sampling import generation_options
from harness.schema import Tag

if TYPE_CHECKING:  # annotations only: importing the loop needs neither MLflow nor rich
    from harness.progress import RunProgress
    from harness.tracking import RunLogger

__all__ = ["SAMPLE_ROWS", "Recorder", "RunResult", "eval_due", "sample_iterations", "samples_markdown"]

SAMPLE_ROWS = 16  # completions kept per sampled evaluation for the samples table

OnEval = Callable[[int, dict[str, float]], None]


@dataclass
class RunResult:
    run_id: str
    final: dict[str, float]  # the last logged value of every metric
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(iteration, value)]


def sample_iterations(n: int, every: int) -> set[int]:
    """The evaluations whose samples are kept: the first (0), the middle one and the last."""
    evals = sorted({0, n, *range(every, n + 1, every)})
    return {evals[0], evals[len(evals) // 2], evals[-1]}


def n_evaluations(cfg: RunConfig) -> int:
    """How many evaluations a run makes: iteration 0, every ``eval.every``, and after the last."""
    n = cfg.train.iterations
    return len({0, n, *range(cfg.eval.every, n + 1, cfg.eval.every)})


def eval_due(cfg: RunConfig, it: int) -> bool:
    """Evaluate after iteration ``it``: every ``eval.every`` iterations and after the last."""
    return it % cfg.eval.every == 0 or it == cfg.train.iterations


def samples_markdown(samples: list[dict]) -> str:
    lines = ["| iteration | prompt | completion | proxy | gold |", "|---|---|---|---|---|"]
    for r in samples:
        lines.append(f"| {r['iteration']} | {r['prompt']} | {r['completion']} | {r['proxy']:.3f} | {r['gold']:.3f} |")
    return "\n".join(lines) + "\n"


class Recorder:
    """Evaluation, logging, progress and ``on_eval`` around one run's loop; the final RunResult.

    ``begin()`` evaluates the initial policy (iteration 0); ``step(it, metrics)`` evaluates when due,
    logs, updates the progress line and, after an evaluation, calls ``on_eval(it, eval metrics)``
    (which may raise to stop the run, e.g. a pruned sweep trial: the metrics are logged first).
    """

    def __init__(self, cfg: RunConfig, logger: RunLogger, models, score_fn, response_length: int, *,
                 bar: RunProgress | None = None, on_eval: OnEval | None = None):
        self.cfg, self.logger, self.models, self.score_fn = cfg, logger, models, score_fn
        self.response_length = response_length
        self.bar, self.on_eval = bar, on_eval
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.samples: list[dict] = []
        self.sample_at = sample_iterations(cfg.train.iterations, cfg.eval.every)
        self.evals: list[dict[str, float]] = []  # every evaluation's metrics, in order
        self.onset: int | None = None  # iteration of the over-optimisation onset, once seen
        if models.provenance:
            logger.set_tags(models.provenance)  # which task artifacts this run used: shipped or local, checksums

    def evaluate(self, it: int) -> dict[str, float]:
        """Held-out evaluation of the current policy (eval/*); tags the over-optimisation onset once."""
        m = self.models
        with shard.gathered(m.policy, m.ref, m.reward):  # train.parallel=fsdp: ranks sample different lengths
            em, rows = E.evaluate(
                m.policy, m.ref, m.tokenizer, m.task, self.score_fn,
                n_prompts=self.cfg.eval.prompts, response_length=self.response_length,
                temperature=self.cfg.rollout.temperature, missing_eos_penalty=self.cfg.train.missing_eos_penalty,
                options=generation_options(self.cfg),  # rollout.top_k / top_p / min_new_tokens / stop, chat template
                world=dist.world(),  # over N ranks: each samples its share of the prompts, all get every row
            )
        if it in self.sample_at:
            self.samples.extend({"iteration": it, **r} for r in rows[:SAMPLE_ROWS])
        self.evals.append(em)
        if self.onset is None:
            gold, proxy = [e["eval/gold"] for e in self.evals], [e["eval/proxy"] for e in self.evals]
            se = [e.get("eval/gold_se", float("nan")) for e in self.evals]
            k = E.overopt_onset(gold, se, proxy, n_total=n_evaluations(self.cfg), prompts=self.cfg.eval.prompts)
            if k is not None:  # logged once, at the evaluation that shows it
                self.onset = it
                em = {**em, "eval/overopt_onset_kl": em["eval/kl"]}
                self.logger.set_tags({Tag.ONSET_ITERATION: str(it), Tag.ONSET_KL: f"{em['eval/kl']:.4g}"})
        return em

    def log(self, it: int, metrics: dict[str, float]) -> None:
        """Log ``metrics`` at step ``it`` and keep them in the local history."""
        self.logger.log_metrics(metrics, step=it)
        for k, v in metrics.items():
            self.history.setdefault(k, []).append((it, v))

    def begin(self) -> dict[str, float]:
        """Iteration 0: evaluate the initial policy, log it (episodes 0), show it, report it."""
        em = self.evaluate(0)
        self.log(0, {**em, "episodes": 0.0})
        self._report(0, em, em)
        return em

    def step(self, it: int, metrics: dict[str, float], seconds: float | None = None) -> dict[str, float]:
        """After iteration ``it``: evaluate if due, log the iteration's metrics (+ eval/*), show, report."""
        em = self.evaluate(it) if eval_due(self.cfg, it) else None
        if em is not None:
            metrics = {**metrics, **em}
        if getattr(self.models.device, "type", None) == "cuda":  # every implementation's peak, the same way
            import torch

            metrics["perf/max_memory_gb"] = torch.cuda.max_memory_allocated(self.models.device) / 2**30
        self.log(it, metrics)
        self._report(it, metrics, em, seconds)
        return metrics

    def _report(self, it: int, metrics: dict[str, float], em: dict[str, float] | None,
                seconds: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(it, metrics, seconds=seconds)
        if self.on_eval is not None and em is not None:
            self.on_eval(it, em)

    def state(self) -> dict:
        """What a checkpoint keeps of the recorder (JSON-able): history, evaluations, samples, the onset."""
        return {"history": self.history, "evals": self.evals, "samples": self.samples, "onset": self.onset}

    def load_state(self, state: dict) -> None:
        """Continue from ``state()`` (a resumed run): its iteration 0 is evaluated and logged already."""
        self.history = {k: [(int(i), v) for i, v in pts] for k, pts in state["history"].items()}
        self.evals, self.samples, self.onset = state["evals"], state["samples"], state["onset"]

    def result(self) -> RunResult:
        """Write the samples table and return the run's result."""
        if self.samples:
            import pandas as pd

            self.logger.log_table(pd.DataFrame(self.samples), "samples.parquet")
            self.logger.log_text(samples_markdown(self.samples), "samples.md")
        final = {k: v[-1][1] for k, v in self.history.items()}
        return RunResult(run_id=self.logger.run_id, final=final, history=self.history)
