"""One run: config -> an implementation's training loop -> one MLflow run.

``execute`` is what ``ppo-harness train``, ``compare`` and every sweep trial call. It owns the
MLflow run's life only: started with the config and tags, FINISHED on success, FAILED (tag
``failure.reason``, artifact ``error.txt``) on an exception, KILLED on Ctrl-C. What runs inside
is ``cfg.impl``, resolved through ``harness.impls.IMPLEMENTATIONS`` (lazy ``"module:function"``
targets: nothing here depends on the loops), each ``train(cfg, logger, on_eval, progress) -> RunResult``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from harness.config import RunConfig, task_label
from harness.devices import describe as describe_device
from harness.devices import resolve as resolve_device
from harness.impls import IMPLEMENTATIONS, resolve
from harness.ppo.update import NonFiniteError
from harness.recording import RunResult
from harness.schema import GOLD_OPTIMISED, Tag
from harness.tracking import DEFAULT_EXPERIMENT, RunLogger, Store, git_commit, package_versions

__all__ = ["IMPLEMENTATIONS", "NonFiniteError", "Train", "execute", "resolve", "run_tags"]

class Train(Protocol):
    """The signature every implementation has."""

    def __call__(self, cfg: RunConfig, logger: RunLogger, on_eval: Callable[[int, dict[str, float]], None] | None,
                 progress: bool) -> RunResult: ...


def run_tags(cfg: RunConfig) -> dict[str, str]:
    return {
        Tag.TASK: task_label(cfg),
        **data_tags(cfg),
        Tag.GOLD_SOURCE: gold_source(cfg),
        Tag.DEVICE: describe_device(resolve_device(cfg.train.device)),
        Tag.IMPL: cfg.impl,
        Tag.LEVEL: cfg.advantage.level,
        Tag.SEED: str(cfg.seed),
        Tag.GIT_COMMIT: git_commit(),
        **package_versions(),
    }


def data_tags(cfg: RunConfig) -> dict[str, str]:
    """task.prompts runs: the data (file, folder or hub id) and its content hash (``harness.tasks.data.digest``)."""
    if cfg.task.prompts is None:
        return {}
    from harness.tasks.data import digest

    tags = {Tag.TASK_DATA: cfg.task.prompts}
    if (d := digest(cfg.task.prompts)) is not None:
        tags[Tag.TASK_DATA_SHA256] = d
    return tags


def gold_source(cfg: RunConfig) -> str:
    """What eval/gold measures: model.gold, the task's own gold, or (task.prompts without model.gold) the
    optimised reward itself, which is then no independent gold (``GOLD_OPTIMISED``)."""
    if cfg.model.gold:
        return f"model.gold {cfg.model.gold}"
    if cfg.task.prompts is not None:
        return GOLD_OPTIMISED
    return f"task {cfg.task.name}"


def default_run_name(cfg: RunConfig, tags: dict[str, str] | None = None) -> str:
    """``<task>-<impl>-<level>-s<seed>``; a task.prompts run is named after its data and hash
    (``reviews.3f2a1b9c-custom-token-s0``), never after task.name, which it does not read."""
    task = cfg.task.name
    if cfg.task.prompts is not None:
        task = task_label(cfg).split(":", 1)[-1]
        if sha := (tags or {}).get(Tag.TASK_DATA_SHA256):
            task = f"{task}.{sha[:8]}"
    return f"{task}-{cfg.impl}-{cfg.advantage.level}-s{cfg.seed}"


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
    resume: str | None = None,
) -> RunResult:
    """Train one configuration with its implementation and log it as one MLflow run.

    ``resume``: the id of an existing run to continue (back to RUNNING, its newest checkpoint loaded by the
    loop) instead of a new run; ``run_name``, ``parent_run_id`` and ``tags`` are then the run's own already."""
    from harness.warmstart.load import validate_model_keys

    validate_model_keys(cfg)  # a bad path fails before any run exists
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if resume is not None:
        logger = _reopen(store, resume, tags)
    else:
        base_tags = run_tags(cfg)
        name = run_name or default_run_name(cfg, base_tags)
        logger = store.start_run(
            experiment, run_name=name, tags={**base_tags, **(tags or {})}, params=cfg.flat(),
            parent_run_id=parent_run_id,
        )
        logger.log_text(cfg.to_yaml(), "config.yaml")
    try:
        result = resolve(cfg.impl)(cfg, logger, on_eval, progress)
    except KeyboardInterrupt:
        with _signals_deferred():  # a second Ctrl-C / SIGTERM must not leave the run RUNNING
            try:
                logger.set_tags({Tag.FAILURE: "interrupted"})
            finally:
                logger.end("KILLED")
        raise
    except BaseException as e:
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        with _signals_deferred(redeliver=True):
            try:
                logger.set_tags({Tag.FAILURE: reason[:500]})
                logger.log_text(traceback.format_exc(), "error.txt")
            finally:
                logger.end("FAILED")
        raise
    logger.end("FINISHED")
    return result


def _reopen(store: Store, run_id: str, tags: dict[str, str] | None):
    """A run continued from its checkpoint: RUNNING again, ``tags`` (a sweep's trial and worker) updated,
    its failure reason dropped, ``resumed`` counting the continuations."""
    old = store.get_run(run_id).data.tags
    if Tag.FAILURE in old:
        store.client.delete_tag(run_id, Tag.FAILURE)
    logger = store.run_logger(run_id)
    logger.set_tags({**(tags or {}), Tag.RESUMED: str(int(old.get(Tag.RESUMED, "0")) + 1)})
    store.set_run_status(run_id, "RUNNING")
    return logger


@contextlib.contextmanager
def _signals_deferred(redeliver: bool = False) -> Iterator[None]:
    """SIGINT / SIGTERM held back while a run records how it ended (a second Ctrl-C must not leave it
    RUNNING); ``redeliver``: raised afterwards, so a stop request is never lost (the KeyboardInterrupt
    path needs none: it is stopping already)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            if h is not None:  # None: a handler not installed from Python, nothing to put back
                signal.signal(s, h)
        if redeliver and got:
            signal.raise_signal(got[0])
