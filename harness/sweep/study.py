"""The Optuna study as the sweep's queue: storage, study, (cell, seed) slots and trial owners.

What the coordinator (``harness.sweep.coordinator``) and the workers (``harness.sweep.worker``)
share. A (cell, seed) is one trial, enqueued with ``study.enqueue_trial`` and claimed atomically
(WAITING -> RUNNING, the storage refuses a second claimer).

Trial user attrs (``harness.schema.Attr``; the protocol, also read by the coordinator on resume):
  Attr.CELL, Attr.SEED      which (cell, seed) the trial is (``slot_attrs``)
  Attr.WORKER               {host, pid, start} of the process running it (stale detection)
  Attr.FAIL_REASON          one line: the exception, NaN/inf, or "worker ... died"
  Attr.FAIL_KIND            nonfinite | error | interrupted | stale | outage (a store unreachable)
  Attr.TRACEBACK            the last lines of the traceback
  Attr.SKIPPED              set on a trial that found its (cell, seed) already claimed
  Attr.PRUNED               why the pruner stopped it
  Attr.RUN_ID, Attr.SECONDS the child MLflow run and the trial's wall time
  Attr.ADOPTED              the FINISHED MLflow run a trial was recorded from instead of being run again
Study user attrs: Attr.NAME, Attr.HASH, Attr.CREATED, Attr.SPEC_PATH, Attr.AXES, Attr.SHAPE (what a later
spec is checked against: a spec that only adds seeds, cells or levels grows the same study) and
Attr.SPECS (each spec the study ran under, oldest first).

The MLflow side of the protocol: runs are found by tags (``run_filter``); ``Tag.SWEEP_ROLE`` is
``ROLE_PARENT`` or ``ROLE_CHILD``, ``Tag.SWEEP_WORKER`` is ``owner_tag`` of the trial's owner.
"""

from __future__ import annotations

import enum
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.schema import Attr
from harness.sweep.faults import NotAJournal, check_journal, journal_backend, repair_journal
from harness.sweep.spec import AblationSpec, growth_problem, spec_shape
from harness.urls import redact

HEARTBEAT_S = 10  # RDB storages: a worker records a heartbeat this often ...
GRACE_S = 60  # ... and a RUNNING trial without one for this long is stale
HOST = socket.gethostname()

# a worker process's exit status (its protocol with the coordinator)
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
EXIT_OUTAGE = 3  # a worker's own code: a store stayed unreachable (its last line says which)


class SweepEnd(enum.Enum):
    """How one ``run_sweep`` invocation ended (the CLI picks the exit code)."""

    DONE = "done"  # every run of the spec done (or a dry run)
    INCOMPLETE = "incomplete"  # runs failed, not started, or still running elsewhere: rerun to resume
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C / SIGTERM: rerun to resume
OUTAGE_MARK = "outage: "  # ... and that line starts so
RETRY_KINDS = ("stale", "outage", "interrupted")  # failures re-queued within the same invocation

ROLE_PARENT, ROLE_CHILD = "parent", "child"  # values of Tag.SWEEP_ROLE


class SweepRefused(InputError):
    """The sweep cannot start (e.g. the spec changed under the same name): ``key: problem``."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# ---- storage and study ---------------------------------------------------------------------------


def storage_url(spec: AblationSpec, storage: str | None, runs_dir: str | Path) -> str:
    """An RDB URL as given, else a journal file (default ``<runs_dir>/sweeps/<name>.journal``)."""
    if storage:
        return storage if is_rdb(storage) else str(Path(storage).resolve())
    return str((Path(runs_dir) / "sweeps" / f"{spec.name}.journal").resolve())


def is_rdb(url: str) -> bool:
    """An RDB URL (``postgresql://...``), not a journal file path."""
    return "://" in url


def _with_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; use psycopg2 when only that is installed."""
    import importlib.util

    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
    return url


def open_storage(url: str):
    """Optuna storage: RDB (with heartbeat) for URLs, JournalStorage for a file path.

    A journal whose last record was cut (kill -9, a full disk) is repaired first (``repair_journal``:
    truncated to its last complete record under the journal's lock, one line on stderr); one that
    still does not parse is cut at its first bad line."""
    import optuna
    from optuna.storages.journal import JournalStorage

    if is_rdb(url):
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
    try:
        check_journal(url)  # a user's file, a link, a FIFO: refused before anything is created or cut
    except NotAJournal as e:
        raise SweepRefused("journal " + (repr(url) if not url.isprintable() else f"'{url}'"), str(e)) from None
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    repair_journal(url)
    try:
        return JournalStorage(journal_backend(url))
    except ValueError:  # JSONDecodeError / "Invalid log format": a bad record before the last one
        if repair_journal(url, full=True) is None:
            raise
        return JournalStorage(journal_backend(url))


def peek_journal(url: str):
    """A JournalStorage that reads an existing journal and never writes it (a dry run's look): nothing is
    created, locked, cut or appended; a cut last record is skipped as Optuna's reader skips it."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    check_journal(url)

    class ReadOnlyJournal(JournalFileBackend):
        def __init__(self, file_path: str):  # JournalFileBackend's own creates the file: not here
            self._file_path, self._log_number_offset = file_path, {0: 0}

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            raise RuntimeError("a read-only look at a journal writes nothing")

    return JournalStorage(ReadOnlyJournal(url))


def resolve_study(spec: AblationSpec, storage, url: str, new: bool = False):
    """Load this spec's study or create it. A spec that only adds seeds, cells or levels to the latest
    study's spec grows that study (its new spec recorded beside the old ones); any other change under
    the same name is refused unless ``new``."""
    import optuna

    name, grows = _study_name(spec, storage, url, new)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=spec.objective.direction,
        sampler=_sampler(spec),
        pruner=_pruner(spec),
        load_if_exists=True,
    )
    entry = {"hash": spec.hash, "path": str(spec.path), "at": time.time()}
    if Attr.HASH not in study.user_attrs:
        for k, v in {
            Attr.NAME: spec.name,
            Attr.HASH: spec.hash,
            Attr.SPEC_PATH: str(spec.path),
            Attr.AXES: list(spec.axes),
            Attr.CREATED: entry["at"],
            Attr.SHAPE: spec_shape(spec),
            Attr.SPECS: [entry],
        }.items():
            study.set_user_attr(k, v)
    elif grows:
        study.set_user_attr(Attr.SPECS, [*study.user_attrs.get(Attr.SPECS, []), entry])
        study.set_user_attr(Attr.SPEC_PATH, str(spec.path))
        study.set_user_attr(Attr.SHAPE, spec_shape(spec))
        study.set_user_attr(Attr.HASH, spec.hash)  # last: a crash before it leaves the growth to redo
    return study


def _study_name(spec: AblationSpec, storage, url: str, new: bool) -> tuple[str, bool]:
    """(the study to open, whether the spec grows it)."""
    studies = storage.get_all_studies()
    mine = [s for s in studies if s.user_attrs.get(Attr.NAME) == spec.name]
    names = {s.study_name for s in studies}
    latest = max(mine, key=lambda s: s.user_attrs.get(Attr.CREATED, 0.0), default=None)
    if new:
        name, k = spec.study_name, 2
        while name in names:
            name, k = f"{spec.study_name}-r{k}", k + 1
        return name, False
    if latest is None:
        return spec.study_name, False
    if latest.user_attrs.get(Attr.HASH) == spec.hash:
        return latest.study_name, False
    shape = latest.user_attrs.get(Attr.SHAPE)
    problem = growth_problem(shape, spec) if shape else "the study does not record its spec's cells and seeds"
    if problem is None:
        return latest.study_name, True
    old = latest.user_attrs.get(Attr.HASH, "?")[:8]
    raise SweepRefused(
        "name",
        f"spec '{spec.name}' changed since study {latest.study_name} was created in {redact(url)} "
        f"(hash {old} -> {spec.hash[:8]}): {problem}; a spec may only add seeds, cells or levels to go on "
        "with a study: restore the spec, rename it, or pass --new to start a fresh study",
    )


def grown_from(study) -> list[dict[str, Any]]:
    """The specs a study ran under before its current one (empty for a study never grown)."""
    return list(study.user_attrs.get(Attr.SPECS, []))[:-1]


def load_study(spec: AblationSpec, storage, study_name: str):
    """An existing study with the spec's sampler and pruner (a worker's view of it)."""
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


def quiet_optuna() -> None:
    """Optuna's INFO lines and experimental warnings off (the sweep prints its own progress)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used.*")


# ---- slots: the (cell, seed) view of a study --------------------------------------------------------


def slot_attrs(cell: str, seed: int) -> dict[str, Any]:
    """The user attrs that make a trial the one of (cell, seed) (``enqueue_trial(..., user_attrs=...)``)."""
    return {Attr.CELL: cell, Attr.SEED: seed}


def slot_key(t) -> tuple[str, int] | None:
    """(cell, seed) of a trial; None for a skipped duplicate or a trial not labelled yet."""
    if Attr.SKIPPED in t.user_attrs:
        return None
    c, s = t.user_attrs.get(Attr.CELL), t.user_attrs.get(Attr.SEED)
    return None if c is None or s is None else (c, int(s))


def slots(trials) -> dict[tuple[str, int], list]:
    """(cell, seed) -> its trials (skipped duplicates left out)."""
    out: dict[tuple[str, int], list] = {}
    for t in trials:
        k = slot_key(t)
        if k is not None:
            out.setdefault(k, []).append(t)
    return out


def slot_state(trials) -> str:
    """done | pruned | running | queued | failed | missing for a (cell, seed)'s trials."""
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
        c = t.user_attrs.get(Attr.CELL)
        if c and Attr.SKIPPED not in t.user_attrs and c not in out and t.params:
            out[c] = {k: t.params[k] for k in spec.axes if k in t.params}
    return out


def requeue_retryable(study, spec: AblationSpec, trials, requeued: dict, limit: int) -> int:
    """Enqueue again each failed (cell, seed) whose last attempt died with its worker, was interrupted
    or hit an outage (``RETRY_KINDS``), at most ``limit`` times per (cell, seed) per invocation (counted in
    ``requeued``). NaN and errors wait for a rerun: they would fail the same way. Returns #enqueued."""
    table = slots(trials)
    cells = sampled_cells(spec, trials)
    n = 0
    for key, ts in table.items():
        if slot_state(ts) != "failed" or key[0] not in cells or requeued.get(key, 0) >= limit:
            continue
        last = max(ts, key=lambda t: t.number)
        if last.user_attrs.get(Attr.FAIL_KIND) not in RETRY_KINDS:
            continue
        study.enqueue_trial(cells[key[0]], user_attrs=slot_attrs(*key))
        requeued[key] = requeued.get(key, 0) + 1
        n += 1
    return n


# ---- trial owners: the worker process running a trial -------------------------------------------


def process_owner(pid: int | None = None) -> dict[str, Any]:
    """{host, pid, start} of a process on this host (default: this one), as ``Attr.WORKER`` records it."""
    import psutil

    proc = psutil.Process(pid)
    return {"host": HOST, "pid": proc.pid, "start": proc.create_time()}


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


def fail_stale_heartbeats(study) -> None:
    """RDB storages: fail RUNNING trials whose heartbeat stopped (a no-op for journal storage)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def owner_tag(owner: dict[str, Any]) -> str:
    """An owner as the ``Tag.SWEEP_WORKER`` tag of a child run: ``host:pid:start``."""
    return f"{owner['host']}:{owner['pid']}:{owner['start']}"


def parse_owner(tag: str | None) -> dict[str, Any] | None:
    """The inverse of ``owner_tag`` (None for a run without the tag)."""
    if not tag:
        return None
    host, pid, start = tag.rsplit(":", 2)
    return {"host": host, "pid": int(pid), "start": float(start)}


# ---- MLflow: finding the sweep's runs ------------------------------------------------------------


def run_filter(tags: dict[str, Any], status: str | None = None) -> str:
    """An MLflow search filter: every tag equal to its value (and the run in ``status``, if given)."""
    parts = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if status is not None:
        parts.append(f"attributes.status = '{status}'")
    return " and ".join(parts)
