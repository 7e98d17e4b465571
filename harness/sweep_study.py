"""The Optuna study as the sweep's queue: storage, study, (cell, seed) slots and trial owners.

What the coordinator (``harness.sweep``) and the workers (``harness.sweep_worker``) share.
A (cell, seed) is one trial, enqueued with ``study.enqueue_trial`` and claimed atomically
(WAITING -> RUNNING, the storage refuses a second claimer).

Trial user attrs (the protocol, also read by ``harness.sweep`` on resume):
  sweep.cell, seed          which (cell, seed) the trial is
  sweep.worker              {host, pid, start} of the process running it (stale detection)
  sweep.fail_reason         one line: the exception, NaN/inf, or "worker ... died"
  sweep.fail_kind           nonfinite | error | interrupted | stale
  sweep.traceback           the last lines of the traceback
  sweep.skipped             set on a trial that found its (cell, seed) already claimed
  mlflow.run_id, sweep.seconds
Study user attrs: sweep.name, sweep.hash, sweep.created, sweep.spec_path, sweep.axes.
"""

from __future__ import annotations

import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from harness.sweep_spec import AblationSpec

HEARTBEAT_S = 10  # RDB storages: a worker records a heartbeat this often ...
GRACE_S = 60  # ... and a RUNNING trial without one for this long is stale
HOST = socket.gethostname()

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class SweepRefused(Exception):
    """The sweep cannot start (e.g. the spec changed under the same name): ``key: problem``."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# ---- storage and study ---------------------------------------------------------------------------


def storage_url(spec: AblationSpec, storage: str | None, runs_dir: str | Path) -> str:
    """An RDB URL as given, else a journal file (default ``<runs_dir>/sweeps/<name>.journal``)."""
    if storage:
        return storage if _is_rdb(storage) else str(Path(storage).resolve())
    return str((Path(runs_dir) / "sweeps" / f"{spec.name}.journal").resolve())


def _is_rdb(url: str) -> bool:
    return "://" in url


def redact(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _with_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; use psycopg2 when only that is installed."""
    import importlib.util

    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
    return url


def open_storage(url: str):
    """Optuna storage: RDB (with heartbeat) for URLs, JournalStorage for a file path."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if _is_rdb(url):
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    rdb = optuna.storages.RDBStorage(
                        _with_driver(url),
                        heartbeat_interval=HEARTBEAT_S,
                        grace_period=GRACE_S,
                        engine_kwargs={"pool_pre_ping": True},
                    )
                break
            except Exception as e:  # two coordinators creating the schema of a fresh database at once
                if attempt == 4 or "already exists" not in str(e):
                    raise
                time.sleep(0.5 + attempt)
        # the same cached wrapper Optuna's study uses, so trials claimed here are known to the study
        return optuna.storages.get_storage(rdb)
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


def resolve_study(spec: AblationSpec, storage, url: str, new: bool = False):
    """Load this spec's study or create it; refuse a changed spec under the same name unless ``new``."""
    import optuna

    mine = [s for s in storage.get_all_studies() if s.user_attrs.get("sweep.name") == spec.name]
    names = {s.study_name for s in storage.get_all_studies()}
    latest = max(mine, key=lambda s: s.user_attrs.get("sweep.created", 0.0), default=None)
    if new:
        name, k = spec.study_name, 2
        while name in names:
            name, k = f"{spec.study_name}-r{k}", k + 1
    elif latest is None:
        name = spec.study_name
    elif latest.user_attrs.get("sweep.hash") == spec.hash:
        name = latest.study_name
    else:
        old = latest.user_attrs.get("sweep.hash", "?")[:8]
        raise SweepRefused(
            "name",
            f"spec '{spec.name}' changed since study {latest.study_name} was created in {redact(url)} "
            f"(hash {old} -> {spec.hash[:8]}): restore the spec, rename it, or pass --new to start a fresh study",
        )
    sampler = _sampler(spec)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=spec.objective.direction,
        sampler=sampler,
        pruner=_pruner(spec),
        load_if_exists=True,
    )
    if "sweep.hash" not in study.user_attrs:
        for k, v in {
            "sweep.name": spec.name,
            "sweep.hash": spec.hash,
            "sweep.spec_path": str(spec.path),
            "sweep.axes": list(spec.axes),
            "sweep.created": time.time(),
        }.items():
            study.set_user_attr(k, v)
    return study


def load_study(spec: AblationSpec, storage, study_name: str):
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage, sampler=_sampler(spec), pruner=_pruner(spec))


def _sampler(spec: AblationSpec):
    import optuna

    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler()
    return optuna.samplers.RandomSampler()  # grid: every parameter is fixed by enqueue_trial


def _pruner(spec: AblationSpec):
    import optuna

    if spec.prune is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.prune.n_startup_trials, n_warmup_steps=spec.prune.n_warmup_steps
    )


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used.*")


# ---- slots: the (cell, seed) view of a study --------------------------------------------------------


def _slot_key(t) -> tuple[str, int] | None:
    if "sweep.skipped" in t.user_attrs:
        return None
    c, s = t.user_attrs.get("sweep.cell"), t.user_attrs.get("seed")
    return None if c is None or s is None else (c, int(s))


def slots(trials) -> dict[tuple[str, int], list]:
    """(cell, seed) -> its trials (skipped duplicates left out)."""
    out: dict[tuple[str, int], list] = {}
    for t in trials:
        k = _slot_key(t)
        if k is not None:
            out.setdefault(k, []).append(t)
    return out


def slot_state(trials) -> str:
    """done | pruned | running | queued | failed for a (cell, seed)'s trials."""
    from optuna.trial import TrialState

    states = {t.state for t in trials}
    for st, name in (
        (TrialState.COMPLETE, "done"),
        (TrialState.PRUNED, "pruned"),
        (TrialState.RUNNING, "running"),
        (TrialState.WAITING, "queued"),
    ):
        if st in states:
            return name
    return "failed" if trials else "missing"


def sampled_cells(spec: AblationSpec, trials) -> dict[str, dict[str, Any]]:
    """Cell id -> axis values: the spec's cells (grid) or the configurations sampled so far."""
    if spec.sampler == "grid":
        return {c.id: c.values for c in spec.cells}
    out: dict[str, dict[str, Any]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        c = t.user_attrs.get("sweep.cell")
        if c and "sweep.skipped" not in t.user_attrs and c not in out and t.params:
            out[c] = {k: t.params[k] for k in spec.axes if k in t.params}
    return out


def _label(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in values.items())


def _fmt_value(v: Any) -> str:
    return "null" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


# ---- trial owners: the worker process running a trial -------------------------------------------


def owner_alive(owner: dict[str, Any] | None) -> bool | None:
    """True/False for a worker on this host (pid + start time, so a reused pid is not alive); None elsewhere."""
    import psutil

    if not owner or owner.get("host") != HOST:
        return None
    try:
        proc = psutil.Process(int(owner["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - float(owner["start"])) < 1.0
    except (psutil.Error, KeyError, ValueError):
        return False


def _me() -> dict[str, Any]:
    import psutil

    return {"host": HOST, "pid": os.getpid(), "start": psutil.Process().create_time()}


def _fail_stale(study) -> None:
    """RDB storages: fail RUNNING trials whose heartbeat stopped (a no-op for journal storage)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _owner_tag(owner: dict[str, Any]) -> str:
    return f"{owner['host']}:{owner['pid']}:{owner['start']}"


def _parse_owner(tag: str | None) -> dict[str, Any] | None:
    if not tag:
        return None
    host, pid, start = tag.rsplit(":", 2)
    return {"host": host, "pid": int(pid), "start": float(start)}
