"""One run: config -> models -> an implementation's training loop -> one MLflow run.

``execute`` is what ``ppo-harness train``, ``compare`` and every sweep trial call, and the one owner of
a run: it validates the model keys once (before the run exists), owns the MLflow run's life (started
with the config and tags, FINISHED on success, FAILED with tag ``failure.reason`` and artifact
``error.txt`` on an exception, KILLED on Ctrl-C) and, inside it, loads the models, builds the score
function with the run's own reward (model, tokenizer or function), opens the progress line and the
``Recorder``, and hands them to ``cfg.impl``'s ``train(cfg, models, recorder)`` (``harness.impls``:
lazy targets, nothing here depends on the loops), which owns only its training loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import torch

from harness import dist
from harness.config import RunConfig, response_length, task_label
from harness.devices import describe as describe_device
from harness.devices import resolve as resolve_device
from harness.errors import describe
from harness.impls import IMPLEMENTATIONS, get, load, resolve
from harness.interrupts import acted_on
from harness.launch import check as check_launch
from harness.launch import note_run
from harness.ppo.update import NonFiniteError
from harness.recording import OnEval, Recorder, RunResult
from harness.schema import GOLD_OPTIMISED, Tag
from harness.tracking import DEFAULT_EXPERIMENT, NullLogger, RunLogger, Store, git_commit, package_versions

if TYPE_CHECKING:
    from harness.models.types import Models
    from harness.tasks import Task

__all__ = ["IMPLEMENTATIONS", "NonFiniteError", "Train", "execute", "resolve", "run_tags", "train"]


class Train(Protocol):
    """The signature every implementation has: its loop on the run's models, recording into ``recorder``."""

    def __call__(self, cfg: RunConfig, models: Models, recorder: Recorder) -> None: ...


def run_tags(cfg: RunConfig) -> dict[str, str]:
    return {
        Tag.TASK: task_label(cfg),
        **data_tags(cfg),
        Tag.GOLD_SOURCE: gold_source(cfg),
        Tag.DEVICE: describe_device(resolve_device(cfg.train.device)),
        Tag.IMPL: cfg.impl,
        Tag.LEVEL: cfg.advantage.level,
        Tag.SEED: str(cfg.seed),
        Tag.WORLD_SIZE: str(dist.world().size),  # sampling differs with it: a run is reproducible per world size
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
    task: Task | None = None,
) -> RunResult:
    """Train one configuration with its implementation and log it as one MLflow run.

    ``resume``: the id of an existing run to continue (back to RUNNING, its newest checkpoint loaded by the
    loop) instead of a new run; ``run_name``, ``parent_run_id`` and ``tags`` are then the run's own already.
    ``task``: what ``validate_model_keys(cfg)`` returned, when the caller checked the keys already (the CLI,
    before the store exists); else they are checked here, before any run exists, and only here."""
    if task is None:
        from harness.warmstart.load import validate_model_keys

        task = validate_model_keys(cfg)  # a bad path fails before any run exists
    world = _join(cfg)  # over N ranks (torchrun): the launch checked, the process group joined
    on_eval = dist.from_main(on_eval, world)  # over N ranks: rank 0's hook decides, every rank hears it
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    held: list[int] = []  # a Ctrl-C / SIGTERM received while the run was being opened
    if not world.main:  # rank 0 alone talks to MLflow and shows progress
        logger, progress = NullLogger(), False
    else:
        logger, held = _open(cfg, store, experiment, run_name, parent_run_id, tags, resume)
    try:
        if held:  # raised here, where the run is marked KILLED
            signal.raise_signal(held[0])
        result = train(cfg, logger, task, on_eval=on_eval, progress=progress)
    except KeyboardInterrupt:
        acted_on()  # the stop is handled here: not raised again (harness.interrupts)
        with _signals_deferred():  # a second Ctrl-C / SIGTERM must not leave the run RUNNING
            try:
                logger.set_tags({Tag.FAILURE: "interrupted"})
            finally:
                logger.end("KILLED")
        raise
    except BaseException as e:
        acted_on()  # a rank's Stopped is handled here too
        reason = describe(e)
        with _signals_deferred(redeliver=True):
            try:
                logger.set_tags({Tag.FAILURE: reason[:500]})
                logger.log_text(traceback.format_exc(), "error.txt")
            finally:
                logger.end("FAILED")
        raise
    finally:
        dist.close()
    logger.end("FINISHED")
    return result


def _join(cfg: RunConfig) -> dist.World:
    """A process of a run over several (torchrun's environment): the launch checked (LaunchError before any
    run exists, the same on every rank), then the process group joined; ``World()`` for one process."""
    w = dist.launched()
    fsdp = cfg.train.parallel == "fsdp"  # FSDP2 needs a process group, of one process too
    if not w.parallel:
        return dist.init(resolve_device(cfg.train.device).type, cfg.train.dist_timeout_s, group=fsdp) if fsdp else w
    device = resolve_device(cfg.train.device)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", w.size))
    devices = torch.cuda.device_count() if device.type == "cuda" else 0
    check_launch(cfg, w.size, local, device.type, devices, checkpoints=True)  # a sweep's coordinator checked first
    return dist.init(device.type, cfg.train.dist_timeout_s, group=fsdp)


def train(cfg: RunConfig, logger: RunLogger, task: Task, on_eval: OnEval | None = None,
          progress: bool = True) -> RunResult:
    """Inside the run: ``cfg.impl``'s set-up, the models, the score function (always the run's own reward),
    the progress line and the ``Recorder``; the implementation's loop; then ``train.save_policy``."""
    # imported when a run starts (load_models brings transformers, the progress line rich)
    from harness.export import finish_run
    from harness.lm.rollout import make_score_fn
    from harness.progress import RunProgress
    from harness.warmstart.load import load_models

    impl = get(cfg.impl)
    if impl.set_up is not None:
        load(impl.set_up)(cfg, logger)  # refused, environment and tags before anything loads
    shown = cfg.advantage.level if cfg.impl == "custom" else cfg.impl
    with RunProgress(cfg.train.iterations, enabled=progress, title=f"{cfg.task.name} {shown} seed {cfg.seed}") as bar:
        models = load_models(cfg, progress=bar.status, task=task)
        score_fn = make_score_fn(models.reward, models.task.gold, models.reward_fn)
        rec = Recorder(cfg, logger, models, score_fn, response_length(cfg, models.task), bar=bar, on_eval=on_eval)
        load(impl.train)(cfg, models, rec)
        if not dist.world().main:  # the other ranks' replicas are rank 0's: nothing of theirs to save
            return rec.result()
        return finish_run(cfg, models, logger, rec.result())  # train.save_policy


def _open(cfg: RunConfig, store: Store, experiment: str, run_name: str | None, parent_run_id: str | None,
          tags: dict[str, str] | None, resume: str | None) -> tuple[RunLogger, list[int]]:
    """(the run's logger, the stop signals held meanwhile): ``resume`` reopened, or a new run with the config's
    params and tags and config.yaml.

    The run is RUNNING from its first write on, and opening it takes several: a Ctrl-C / SIGTERM meanwhile
    is held and returned, for the caller to raise where the run is marked KILLED (raised in here it would
    leave the run RUNNING); when opening fails, it is raised at once instead (a stop is never lost)."""
    got: list[int] = []
    try:
        with _signals_deferred() as got:
            if resume is not None:
                return _reopen(store, resume, tags), got
            return _start(cfg, store, experiment, run_name, parent_run_id, tags), got
    except BaseException:
        if got:
            signal.raise_signal(got[0])
        raise


def _start(cfg: RunConfig, store: Store, experiment: str, run_name: str | None, parent_run_id: str | None,
           tags: dict[str, str] | None) -> RunLogger:
    """A new run: the config's params, the run's tags, config.yaml; its id noted for a launcher."""
    base_tags = run_tags(cfg)
    logger = store.start_run(
        experiment, run_name=run_name or default_run_name(cfg, base_tags), tags={**base_tags, **(tags or {})},
        params=cfg.flat(), parent_run_id=parent_run_id,
    )
    logger.log_text(cfg.to_yaml(), "config.yaml")
    note_run(logger.run_id)  # a launched run: where its launcher finds it
    return logger


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
def _signals_deferred(redeliver: bool = False) -> Iterator[list[int]]:
    """SIGINT / SIGTERM held back while a run is opened or records how it ended (a second Ctrl-C must not
    leave it RUNNING); yields the signals held, in order. ``redeliver``: raised afterwards, so a stop
    request is never lost (the KeyboardInterrupt path needs none: it is stopping already)."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, h in old.items():
            if h is not None:  # None: a handler not installed from Python, nothing to put back
                signal.signal(s, h)
        if redeliver and got:
            signal.raise_signal(got[0])
