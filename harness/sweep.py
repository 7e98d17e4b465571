"""Ablation spec -> Optuna study -> worker processes -> one MLflow child run per (cell, seed).

The coordinator (``run_sweep``) validates the spec, opens the study named
``<name>-<hash8>``, reconciles what earlier invocations left behind, enqueues every
(cell, seed) that is not done yet, starts N worker processes and shows progress.
Workers (``python -m harness.sweep --worker ...``) claim enqueued trials, run them with
``harness.run.execute`` and tell Optuna the objective.

Optuna is the queue: a (cell, seed) is one trial, enqueued with ``study.enqueue_trial``
and claimed atomically (WAITING -> RUNNING, the storage refuses a second claimer). The
sampler never decides what a grid runs, so a FAIL is never mistaken for done.

Trial user attrs (the protocol, also read by ``harness.sweep`` on resume):
  sweep.cell, seed          which (cell, seed) the trial is
  sweep.worker              {host, pid, start} of the process running it (stale detection)
  sweep.fail_reason         one line: the exception, NaN/inf, or "worker ... died"
  sweep.fail_kind           nonfinite | error | interrupted | stale
  sweep.traceback           the last lines of the traceback
  sweep.skipped             set on a trial that found its (cell, seed) already claimed
  mlflow.run_id, sweep.seconds
Study user attrs: sweep.name, sweep.hash, sweep.created, sweep.spec_path, sweep.axes.

MLflow: experiment = spec name; one parent run per study (tags sweep.role=parent,
sweep.name, sweep.hash, sweep.study, sweep.axes; artifacts spec/<file>, summary.csv,
summary.md); one child per (cell, seed) (tags sweep.role=child, sweep.cell, seed,
optuna.trial, axis.<key>, sweep.worker).

Exit codes: 0 every (cell, seed) done; 1 some failed or are missing (rerun to retry);
2 a bad spec or a refused study; 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.sweep_spec import AblationSpec, SpecError, load_spec

HEARTBEAT_S = 10  # RDB storages: a worker records a heartbeat this often ...
GRACE_S = 60  # ... and a RUNNING trial without one for this long is stale
ORPHAN_S = 120  # a RUNNING trial that never recorded its worker is stale after this long
POLL_S = 1.0  # progress refresh
HOST = socket.gethostname()

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class SweepRefused(Exception):
    """The sweep cannot start (e.g. the spec changed under the same name): ``key: problem``."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# ---- entry points -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ppo-harness sweep", description="Run an ablation spec as an Optuna study.")
    p.add_argument("spec", nargs="?", help="ablation spec (YAML), e.g. ablations/quick.yaml")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--storage", help="Optuna storage: an RDB URL (postgresql://...) or a journal file path "
                                     "(default <runs-dir>/sweeps/<name>.journal)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite under --runs-dir)")
    p.add_argument("--runs-dir", default="runs", help="local runs folder (default runs)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; create nothing")
    p.add_argument("--new", action="store_true", help="start a fresh study even if one exists for this spec")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: JSON payload of a worker process
    args = p.parse_args(argv)
    if args.worker:
        return _worker_main(json.loads(args.worker))
    if not args.spec:
        p.error("the following arguments are required: spec")
    return run_sweep(
        args.spec,
        workers=args.workers,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        runs_dir=args.runs_dir,
        dry_run=args.dry_run,
        new=args.new,
    )


def run_sweep(
    spec_path: str | Path,
    *,
    workers: int = 1,
    storage: str | None = None,
    tracking_uri: str | None = None,
    runs_dir: str | Path = "runs",
    dry_run: bool = False,
    new: bool = False,
) -> int:
    """Validate, then run (or resume) the sweep; returns the process exit code."""
    try:
        spec = load_spec(spec_path)
    except SpecError as e:
        return _usage_error(spec_path, e.key, e.problem)
    if workers < 1:
        return _usage_error(spec_path, "--workers", f"expected at least 1, got {workers}")
    url = storage_url(spec, storage, runs_dir)
    threads = threads_per_worker(workers)
    if dry_run:
        print_plan(spec, url, tracking_uri, runs_dir, workers, threads)
        return EXIT_OK
    _quiet_optuna()
    st = open_storage(url)
    try:
        study = resolve_study(spec, st, url, new=new)
    except SweepRefused as e:
        return _usage_error(spec_path, e.key, e.problem)
    return Coordinator(spec, st, url, study, tracking_uri, Path(runs_dir), workers, threads).run()


def _usage_error(path: str | Path, key: str, problem: str) -> int:
    print(f"error: {path}: {key}: {problem}", file=sys.stderr)
    return EXIT_USAGE


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


def threads_per_worker(workers: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // workers)


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


# ---- the coordinator ---------------------------------------------------------------------------------


@dataclass
class Snapshot:
    total: int
    counts: dict[str, int]
    best: tuple[float, str, int] | None  # cell mean, cell label, seeds done
    eta_s: float | None
    running: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        c = self.counts
        return max(0, self.total - c["done"] - c["pruned"] - c["running"] - c["failed"])


class Coordinator:
    """One invocation of a sweep: reconcile, enqueue, run the workers, summarise."""

    def __init__(self, spec, storage, url, study, tracking_uri, runs_dir: Path, workers: int, threads: int):
        self.spec, self.storage, self.url, self.study = spec, storage, url, study
        self.tracking_uri, self.runs_dir = tracking_uri, runs_dir
        self.workers, self.threads = workers, threads
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.log_dir = runs_dir / "sweeps" / study.study_name
        self.t0 = time.time()

    # -- the whole invocation --
    def run(self) -> int:
        from harness.tracking import Store

        spec = self.spec
        self.store = Store(self.runs_dir, self.tracking_uri)
        self.store.experiment_id(spec.name)  # once, before any worker races to create it
        self.parent = ensure_parent(self.store, spec, self.study.study_name, self.url)
        self.store.set_run_status(self.parent, "RUNNING")
        interrupted = False
        old_term = _install_sigterm()
        try:
            stale = reconcile(self.study, self.storage, self.store, spec)
            if stale:
                print(f"marked {stale} stale trial(s) of dead workers as failed; they run again now")
            queued = enqueue_missing(self.study, spec)
            work = self._pending()
            print(
                f"sweep {self.study.study_name}: {spec.n_runs} runs ({_plan_shape(spec)}); "
                f"{queued} queued now; storage {redact(self.url)}; MLflow {self.store.where} "
                f"(experiment '{spec.name}', parent run {self.parent})"
            )
            n = min(self.workers, work) if spec.sampler == "grid" else self.workers
            if n > 0:
                self._run_workers(n)
            else:
                print("nothing to run: every (cell, seed) is done or running elsewhere")
        except KeyboardInterrupt:
            interrupted = True
        finally:
            _restore_sigterm(old_term)
            self._stop_workers()
            reconcile(self.study, self.storage, self.store, spec)
        return self._finish(interrupted)

    def _pending(self) -> int:
        from optuna.trial import TrialState

        waiting = len(self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.WAITING,)))
        if self.spec.sampler == "grid":
            return waiting
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        return waiting + max(0, self.spec.n_configs - len(sampled_cells(self.spec, trials)))

    # -- workers --
    def _run_workers(self, n: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[int, subprocess.Popen, Any]] = []
        for i in range(n):
            payload = {
                "spec": str(Path(self.spec.path).resolve()),
                "hash": self.spec.hash,
                "study": self.study.study_name,
                "storage": self.url,
                "tracking_uri": self.tracking_uri,
                "runs_dir": str(self.runs_dir.resolve()),
                "parent": self.parent,
                "threads": self.threads,
                "index": i,
            }
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[var] = str(self.threads)
            log = open(self.log_dir / f"worker-{i}.log", "a")  # noqa: SIM115 - closed in _stop_workers
            cmd = [sys.executable, "-m", "harness.sweep", "--worker", json.dumps(payload)]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
            self.procs.append((i, proc, log))
        print(f"{n} worker(s) x {self.threads} torch thread(s); logs in {self.log_dir}")
        display = Display(self.spec, self.study.study_name)
        reported: set[int] = set()
        with display:
            while True:
                alive = [p for _, p, _ in self.procs if p.poll() is None]
                for i, p, _ in self.procs:
                    if p.returncode not in (None, 0) and i not in reported:
                        reported.add(i)
                        display.note(
                            f"worker {i} (pid {p.pid}) exited with code {p.returncode}; "
                            f"see {self.log_dir / f'worker-{i}.log'}"
                        )
                        reconcile(self.study, self.storage, self.store, self.spec)
                display.update(self.snapshot())
                if not alive:
                    break
                time.sleep(POLL_S)

    def _stop_workers(self) -> None:
        procs = getattr(self, "procs", [])
        for _, p, _ in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # a worker turns it into KeyboardInterrupt: run KILLED
        deadline = time.time() + 30
        for _, p, _ in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for _, _, log in procs:
            log.close()

    # -- progress --
    def snapshot(self) -> Snapshot:
        from optuna.trial import TrialState

        spec = self.spec
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        table = slots(trials)
        counts = dict.fromkeys(("done", "pruned", "running", "queued", "failed", "missing"), 0)
        for ts in table.values():
            counts[slot_state(ts)] += 1
        cells = sampled_cells(spec, trials)
        best = best_cell(spec, table, cells)
        durations = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in trials
            if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete
        ]
        snap = Snapshot(spec.n_runs, counts, best, None)
        running = [t for t in trials if t.state == TrialState.RUNNING and _slot_key(t)]
        snap.running = [
            f"{_label(cells.get(t.user_attrs['sweep.cell'], {}))} seed={t.user_attrs['seed']}" for t in running
        ]
        if durations:
            per_run = statistics.fmean(durations)
            parallel = max(1, min(self.workers, snap.remaining + counts["running"]))
            snap.eta_s = (snap.remaining + 0.5 * counts["running"]) * per_run / parallel
        return snap

    # -- the end --
    def _finish(self, interrupted: bool) -> int:
        spec, store = self.spec, self.store
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        table = slots(trials)
        snap = self.snapshot()
        rows = summary_rows(spec, trials)
        md, text = summary_markdown(spec, rows), summary_csv(spec, rows)
        logger = store.run_logger(self.parent)
        logger.log_text(md, "summary.md")
        logger.log_text(text, "summary.csv")
        done = sum(slot_state(ts) in ("done", "pruned") for ts in table.values())
        c = snap.counts
        complete = done == spec.n_runs
        elsewhere = c["running"] > 0 and not interrupted  # other coordinators (machines) still at work
        logger.set_tags({"sweep.done": done, "sweep.failed": c["failed"]})
        if not elsewhere:  # the last coordinator to finish ends the parent run
            logger.end("KILLED" if interrupted else ("FINISHED" if complete else "FAILED"))
        print(summary_text(spec, rows, limit=10))
        best = f"; best {spec.objective.metric} {snap.best[0]:.4g} at {snap.best[1]}" if snap.best else ""
        print(
            f"sweep {self.study.study_name}: {done}/{spec.n_runs} done, {c['failed']} failed, "
            f"{c['running']} running elsewhere, in {_fmt_s(time.time() - self.t0)}{best}. "
            f"Summary: MLflow parent run {self.parent} (summary.md)."
        )
        if interrupted:
            print("interrupted: rerun the same command to resume")
            return EXIT_INTERRUPTED
        if c["failed"]:
            failed = [
                ts[-1].user_attrs.get("sweep.fail_reason", "unknown")
                for ts in table.values()
                if slot_state(ts) == "failed"
            ]
            print(f"{c['failed']} run(s) failed (e.g. {failed[0]}); rerun the same command to retry them")
            return EXIT_INCOMPLETE
        if not complete and not elsewhere:
            print(f"{spec.n_runs - done} run(s) not started; rerun the same command to run them")
            return EXIT_INCOMPLETE
        if elsewhere:
            print("the rest is running in other processes sharing this study")
        return EXIT_OK


def _install_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_term(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, on_term)


def _restore_sigterm(old) -> None:
    if old is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, old)


def enqueue_missing(study, spec: AblationSpec) -> int:
    """Enqueue every (cell, seed) of the known cells with no done, running or queued trial."""
    trials = study.get_trials(deepcopy=False)
    table = slots(trials)
    n = 0
    for cid, values in sampled_cells(spec, trials).items():
        for seed in spec.seeds:
            if slot_state(table.get((cid, seed), [])) in ("failed", "missing"):
                study.enqueue_trial(values, user_attrs={"sweep.cell": cid, "seed": seed})
                n += 1
    return n


# ---- stale trials and runs -------------------------------------------------------------------------


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


def reconcile(study, storage, store, spec: AblationSpec) -> int:
    """Fail RUNNING trials whose worker is gone; end their MLflow runs (KILLED / FAILED). Returns #failed."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    _fail_stale(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    now = time.time()
    failed: dict[int, str] = {}
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("sweep.worker")
        if owner:
            if owner_alive(owner) is not False:
                continue
            reason = f"worker pid {owner['pid']} on {owner['host']} died during the trial"
        else:
            started = t.datetime_start.timestamp() if t.datetime_start else now
            if now - started < ORPHAN_S:
                continue
            reason = "no worker recorded for this trial"
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_user_attr(tid, "sweep.fail_reason", reason)
            storage.set_trial_user_attr(tid, "sweep.fail_kind", "stale")
            storage.set_trial_state_values(tid, TrialState.FAIL)
            failed[t.number] = reason
        except UpdateFinishedTrialError:  # it finished (or another coordinator got there) meanwhile
            pass
    _reconcile_runs(study, storage, study_id, store, spec, failed)
    return len(failed)


def _reconcile_runs(study, storage, study_id, store, spec, failed: dict[int, str]) -> None:
    """No child run stays RUNNING once its trial is not; a finished run of a failed trial is FAILED."""
    from optuna.trial import TrialState

    states = {t.number: t.state for t in storage.get_all_trials(study_id, deepcopy=False)}
    base = f"tags.`sweep.study` = '{study.study_name}' and tags.`sweep.role` = 'child'"
    for run in store.find_runs(spec.name, f"{base} and attributes.status = 'RUNNING'"):
        tags = run.data.tags
        number = int(tags.get("optuna.trial", -1))
        alive = owner_alive(_parse_owner(tags.get("sweep.worker")))
        if states.get(number) == TrialState.RUNNING and alive is not False:
            continue
        logger = store.run_logger(run.info.run_id)
        if "failure.reason" not in tags:
            logger.set_tags({"failure.reason": failed.get(number, "the sweep worker running it died")})
        logger.end("KILLED")
    for number, reason in failed.items():
        for run in store.find_runs(spec.name, f"{base} and tags.`optuna.trial` = '{number}'"):
            if run.info.status == "FINISHED":  # died after the run ended, before Optuna heard of it
                store.run_logger(run.info.run_id).set_tags({"failure.reason": reason})
                store.set_terminated(run.info.run_id, "FAILED")


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


# ---- the MLflow parent run ---------------------------------------------------------------------------


def ensure_parent(store, spec: AblationSpec, study_name: str, url: str) -> str:
    """The study's parent run: found by tags, else created (coordinators racing keep the earliest)."""
    flt = f"tags.`sweep.role` = 'parent' and tags.`sweep.study` = '{study_name}'"
    runs = store.find_runs(spec.name, flt)
    if runs:
        return _earliest(runs)
    logger = store.start_run(
        spec.name,
        run_name=study_name,
        tags={
            "sweep.role": "parent",
            "sweep.name": spec.name,
            "sweep.hash": spec.hash,
            "sweep.study": study_name,
            "sweep.axes": json.dumps(list(spec.axes)),
            "sweep.sampler": spec.sampler,
            "sweep.seeds": json.dumps(list(spec.seeds)),
            "sweep.runs": spec.n_runs,
            "sweep.objective": spec.objective.metric,
            "sweep.direction": spec.objective.direction,
            "sweep.storage": redact(url),
        },
        params={f"base.{k}": v for k, v in spec.base.items()},
    )
    logger.log_file(spec.path, "spec")
    if spec.description:
        logger.set_tags({"mlflow.note.content": spec.description})
    runs = store.find_runs(spec.name, flt)
    winner = _earliest(runs) if runs else logger.run_id
    if winner != logger.run_id:
        store.delete_run(logger.run_id)
    return winner


def _earliest(runs) -> str:
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id


# ---- summary -----------------------------------------------------------------------------------------


def best_cell(spec: AblationSpec, table, cells) -> tuple[float, str, int] | None:
    """(mean objective over done seeds, cell label, seeds done) of the best cell so far."""
    sign = 1 if spec.objective.direction == "maximize" else -1
    best = None
    for cid, values in cells.items():
        vals = [_value(table.get((cid, s), [])) for s in spec.seeds]
        vals = [v for v in vals if v is not None]
        if vals:
            m = statistics.fmean(vals)
            if best is None or sign * m > sign * best[0]:
                best = (m, _label(values), len(vals))
    return best


def _value(trials) -> float | None:
    from optuna.trial import TrialState

    for t in trials:
        if t.state == TrialState.COMPLETE and t.value is not None:
            return float(t.value)
    return None


def summary_rows(spec: AblationSpec, trials) -> list[dict[str, Any]]:
    """One row per cell: axis values, seeds done, objective mean / std / min / max, failed attempts."""
    from optuna.trial import TrialState

    table = slots(trials)
    rows = []
    for cid, values in sampled_cells(spec, trials).items():
        vals, failed, pruned = [], 0, 0
        for s in spec.seeds:
            ts = table.get((cid, s), [])
            v = _value(ts)
            if v is not None:
                vals.append(v)
            failed += sum(t.state == TrialState.FAIL for t in ts)
            pruned += sum(t.state == TrialState.PRUNED for t in ts)
        rows.append(
            {
                "cell": cid,
                **values,
                "seeds_done": len(vals),
                "seeds": len(spec.seeds),
                "mean": statistics.fmean(vals) if vals else math.nan,
                "std": statistics.stdev(vals) if len(vals) > 1 else math.nan,
                "min": min(vals) if vals else math.nan,
                "max": max(vals) if vals else math.nan,
                "failed_attempts": failed,
                "pruned": pruned,
            }
        )
    sign = -1 if spec.objective.direction == "maximize" else 1
    rows.sort(key=lambda r: (math.isnan(r["mean"]), sign * r["mean"] if not math.isnan(r["mean"]) else 0))
    return rows


def _columns(spec: AblationSpec) -> list[str]:
    return ["cell", *spec.axes, "seeds_done", "seeds", "mean", "std", "min", "max", "failed_attempts", "pruned"]


def summary_csv(spec: AblationSpec, rows) -> str:
    buf = io.StringIO()
    cols = _columns(spec)
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt_value(r.get(k)) if k in spec.axes else r.get(k) for k in cols})
    return buf.getvalue()


def summary_markdown(spec: AblationSpec, rows) -> str:
    metric = spec.objective.metric
    head = ["cell", *spec.axes, "seeds", f"{metric} mean", "std", "min", "max", "failed"]
    lines = [
        f"# {spec.name}: {spec.objective.direction} final {metric} over seeds {list(spec.seeds)}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [
            r["cell"],
            *(_fmt_value(r.get(a)) for a in spec.axes),
            f"{r['seeds_done']}/{r['seeds']}",
            *(_fmt_num(r[k]) for k in ("mean", "std", "min", "max")),
            str(r["failed_attempts"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_text(spec: AblationSpec, rows, limit: int = 10) -> str:
    metric = spec.objective.metric
    out = [f"{'seeds':>5}  {metric + ' mean':>14}  {'std':>8}  cell"]
    for r in rows[:limit]:
        values = {a: r.get(a) for a in spec.axes}
        out.append(f"{r['seeds_done']:>2}/{r['seeds']:<2}  {_fmt_num(r['mean']):>14}  {_fmt_num(r['std']):>8}  "
                   f"{_label(values)}")
    if len(rows) > limit:
        out.append(f"... {len(rows) - limit} more cells in summary.md")
    return "\n".join(out)


def _fmt_num(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _plan_shape(spec: AblationSpec) -> str:
    if spec.sampler == "grid":
        return f"{len(spec.cells)} cells x {len(spec.seeds)} seeds"
    return f"{spec.sampler}: {spec.n_trials} configurations x {len(spec.seeds)} seeds"


# ---- the dry run ------------------------------------------------------------------------------------


def print_plan(spec: AblationSpec, url: str, tracking_uri, runs_dir, workers: int, threads: int, first: int = 8):
    """What the sweep would do; opens nothing that does not exist yet."""
    print(f"spec      {spec.path}  (hash {spec.hash[:8]})")
    if spec.description:
        print(f"          {spec.description.strip().splitlines()[0]}")
    print(f"study     {spec.study_name}  sampler {spec.sampler}, {spec.objective.direction} "
          f"final {spec.objective.metric}" + ("  (MedianPruner)" if spec.prune else ""))
    print(f"runs      {_plan_shape(spec)} = {spec.n_runs} runs")
    print(f"storage   {redact(url)}  ({_storage_state(spec, url)})")
    print(f"tracking  {redact(tracking_uri) if tracking_uri else Path(runs_dir).resolve() / 'mlflow.db'}  "
          f"experiment '{spec.name}'")
    print(f"workers   {workers} process(es) x {threads} torch thread(s)")
    if spec.base:
        print("base      " + ", ".join(f"{k}={_fmt_value(v)}" for k, v in spec.base.items()))
    if spec.sampler == "grid":
        print(f"first {min(first, len(spec.cells))} of {len(spec.cells)} cells (x seeds {list(spec.seeds)}):")
        for i, c in enumerate(spec.cells[:first]):
            print(f"  {i + 1:>3}  {c.id}  {_label(c.values)}")
    else:
        print(f"search (x seeds {list(spec.seeds)}):")
        for s in spec.search:
            print(f"  {s.key} in {s.describe()}")


def _storage_state(spec: AblationSpec, url: str) -> str:
    if _is_rdb(url):
        return "RDB, not opened in a dry run"
    if not Path(url).exists():
        return "journal file, created on the first run"
    _quiet_optuna()
    st = open_storage(url)
    for s in st.get_all_studies():
        if s.study_name == spec.study_name:
            sid = st.get_study_id_from_name(s.study_name)
            table = slots(st.get_all_trials(sid, deepcopy=False))
            done = sum(slot_state(ts) in ("done", "pruned") for ts in table.values())
            return f"journal file, study exists: {done}/{spec.n_runs} done"
    others = [s.study_name for s in st.get_all_studies() if s.user_attrs.get("sweep.name") == spec.name]
    if others:
        return f"journal file; the spec changed since {others[-1]}: a run needs --new"
    return "journal file, no study yet"


# ---- live display ------------------------------------------------------------------------------------


class Display:
    """Done / running / failed / remaining, best so far and ETA: rich Live on a terminal, lines otherwise."""

    def __init__(self, spec: AblationSpec, study_name: str):
        from rich.console import Console

        self.spec, self.study_name = spec, study_name
        self.console = Console()
        self.live = None
        self._last = ""
        self._snap: Snapshot | None = None

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def update(self, snap: Snapshot) -> None:
        self._snap = snap
        if self.live is not None:
            self.live.update(self._render())
            return
        line = self._line(snap)
        if line != self._last:
            self._last = line
            print(line, flush=True)

    def _line(self, s: Snapshot) -> str:
        c = s.counts
        best = f"  best {self.spec.objective.metric} {s.best[0]:.4g} ({s.best[1]})" if s.best else ""
        pruned = f"  pruned {c['pruned']}" if c["pruned"] else ""
        return (
            f"[{self.study_name}] done {c['done']}/{s.total}{pruned}  running {c['running']}  "
            f"failed {c['failed']}  remaining {s.remaining}{best}  ETA {_fmt_s(s.eta_s)}"
        )

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        s = self._snap
        if s is None:
            return Text(f"{self.study_name}: starting workers ...")
        c = s.counts
        head = Text.assemble(
            (self.study_name, "bold"),
            "  ",
            (f"done {c['done']}/{s.total}", "green"),
            f"  pruned {c['pruned']}" if c["pruned"] else "",
            "  ",
            (f"running {c['running']}", "cyan"),
            "  ",
            (f"failed {c['failed']}", "red" if c["failed"] else ""),
            f"  remaining {s.remaining}  ETA {_fmt_s(s.eta_s)}",
        )
        lines = [head]
        if s.best:
            lines.append(Text(f"best {self.spec.objective.metric} {s.best[0]:.4g} "
                              f"({s.best[2]} seed(s)): {s.best[1]}"))
        lines += [Text(f"  running  {r}", style="cyan") for r in s.running[:8]]
        return Group(*lines)


# ---- the worker process --------------------------------------------------------------------------------


class _Interrupt:
    """SIGINT / SIGTERM -> one KeyboardInterrupt (later signals are ignored while the run cleans up)."""

    def __init__(self) -> None:
        self.fired = False
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)

    def __call__(self, signum, frame) -> None:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def _watch_parent(ppid: int) -> None:
    """An orphaned worker (its coordinator was killed) interrupts itself instead of running on."""
    while True:
        time.sleep(2)
        if os.getppid() != ppid:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _worker_main(p: dict[str, Any]) -> int:
    # Threads first: harness.run imports torch, which sizes its pools on import.
    threads = int(p["threads"])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    _Interrupt()
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        spec = load_spec(p["spec"])
        if spec.hash != p["hash"]:
            print(f"worker: {p['spec']} changed since the sweep started; stopping", file=sys.stderr)
            return EXIT_USAGE
        _quiet_optuna()
        from harness.tracking import Store

        storage = open_storage(p["storage"])
        study = load_study(spec, storage, p["study"])
        store = Store(p["runs_dir"], p.get("tracking_uri"))
        worker = Worker(spec, storage, study, store, p["parent"], threads)
        n = worker.loop()
        print(f"worker {p['index']}: no more work after {n} trial(s)")
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"worker {p['index']}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


class Worker:
    """Claim a trial, run it, tell Optuna; until the queue (and the sampling budget) is empty."""

    def __init__(self, spec: AblationSpec, storage, study, store, parent: str, threads: int):
        self.spec, self.storage, self.study, self.store = spec, storage, study, store
        self.parent, self.threads = parent, threads
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.me = _me()
        self.cells = {c.id: c.values for c in spec.cells}

    def loop(self) -> int:

        n = 0
        misses = 0
        while True:
            _fail_stale(self.study)
            trial = self.claim()
            if trial is None and self.spec.sampler != "grid":
                trial, exhausted = self.sample()
                if trial is None and not exhausted:
                    misses += 1
                    if misses < 20:
                        continue
                    print("search space exhausted: the sampler keeps proposing sampled configurations")
            if trial is None:
                return n
            misses = 0
            self.run(trial)
            n += 1

    # -- getting a trial --
    def claim(self):
        """Pop a WAITING trial (atomic in the storage) that is the canonical one of its (cell, seed)."""
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        while True:
            waiting = self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.WAITING,))
            if not waiting:
                return None
            for t in sorted(waiting, key=lambda t: t.number):
                tid = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
                try:
                    if not self.storage.set_trial_state_values(tid, TrialState.RUNNING):
                        continue
                except UpdateFinishedTrialError:
                    continue
                trial = optuna.Trial(self.study, tid)
                self._own(trial)
                if self._keep(trial):
                    return trial
                break  # skipped a duplicate: look at the queue again

    def _own(self, trial) -> None:
        trial.set_user_attr("sweep.worker", self.me)

    def _keep(self, trial) -> bool:
        """A (cell, seed) enqueued twice (two coordinators at once) runs once: the lowest trial number."""
        from optuna.trial import TrialState

        key = _slot_key(trial)
        if key is None:
            return True
        for t in self.storage.get_all_trials(self.study_id, deepcopy=False):
            if t.number == trial.number or _slot_key(t) != key:
                continue
            dup = t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < trial.number
            )
            if dup:
                trial.set_user_attr("sweep.skipped", f"duplicate of trial {t.number}")
                self.study.tell(trial, state=TrialState.FAIL)
                return False
        return True

    def sample(self):
        """tpe / random: a new configuration (its other seeds are enqueued). Returns (trial, exhausted)."""
        from optuna.trial import TrialState

        spec = self.spec
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        known = sampled_cells(spec, trials)
        if len(known) >= spec.n_configs:
            return None, True
        trial = self.study.ask()  # may pop a WAITING seed enqueued meanwhile
        self._own(trial)
        if "sweep.cell" in trial.user_attrs:
            return (trial if self._keep(trial) else None), False
        values = {s.key: s.suggest(trial) for s in spec.search}
        cid = spec.cell_for(values).id
        if cid in known:
            trial.set_user_attr("sweep.skipped", f"configuration {cid} was sampled before")
            self.study.tell(trial, state=TrialState.FAIL)
            return None, False
        trial.set_user_attr("sweep.cell", cid)
        trial.set_user_attr("seed", spec.seeds[0])
        # a race with another worker sampling at the same time: the first n_configs cells win
        order = list(sampled_cells(spec, self.storage.get_all_trials(self.study_id, deepcopy=False)))
        if cid in order and order.index(cid) >= spec.n_configs:
            trial.set_user_attr("sweep.skipped", f"over the budget of {spec.n_configs} configurations")
            self.study.tell(trial, state=TrialState.FAIL)
            return None, True
        for seed in spec.seeds[1:]:
            self.study.enqueue_trial(values, user_attrs={"sweep.cell": cid, "seed": seed})
        return trial, False

    # -- running one --
    def run(self, trial) -> None:
        from optuna import TrialPruned
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        from harness.config import build_config
        from harness.run import NonFiniteError, execute

        spec = self.spec
        cid, seed = trial.user_attrs["sweep.cell"], int(trial.user_attrs["seed"])
        if spec.sampler == "grid":
            values = {k: trial.suggest_categorical(k, spec.axis_values(k)) for k in spec.axes}
            values = self.cells.get(cid, values)
        else:
            values = {s.key: s.suggest(trial) for s in spec.search}
        tags = {
            "sweep.role": "child",
            "sweep.name": spec.name,
            "sweep.hash": spec.hash,
            "sweep.study": self.study.study_name,
            "sweep.cell": cid,
            "seed": seed,
            "optuna.study": self.study.study_name,
            "optuna.trial": trial.number,
            "sweep.worker": _owner_tag(self.me),
            **{f"axis.{k}": _tag_value(v) for k, v in values.items()},
        }
        metric = spec.objective.metric
        t0 = time.time()
        tid = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        heartbeat = _Heartbeat(self.storage, tid)

        def on_eval(iteration: int, metrics: dict[str, float]) -> None:
            v = metrics.get(metric)
            if v is None or not math.isfinite(v):
                return
            trial.report(float(v), iteration)
            if spec.prune is not None and iteration > 0 and trial.should_prune():
                raise TrialPruned(f"pruned by MedianPruner at iteration {iteration}: {metric}={v:.4g}")

        print(f"trial {trial.number}: {_label(values)} seed={seed}", flush=True)
        try:
            with heartbeat:
                cfg = build_config(None, spec.overrides(values, seed, self.threads))
                result = execute(
                    cfg,
                    self.store,
                    experiment=spec.name,
                    run_name=f"{_label(values)} seed={seed}"[:250],
                    parent_run_id=self.parent,
                    tags={k: str(v) for k, v in tags.items()},
                    on_eval=on_eval,
                    progress=False,
                )
            value = result.final.get(metric)
            trial.set_user_attr("mlflow.run_id", result.run_id)
            trial.set_user_attr("sweep.seconds", round(time.time() - t0, 2))
            if value is None or not math.isfinite(value):
                reason = f"objective {metric} is {'missing' if value is None else value} at the end of the run"
                self.store.run_logger(result.run_id).set_tags({"failure.reason": reason})
                self.store.set_terminated(result.run_id, "FAILED")
                self._fail(trial, "nonfinite" if value is not None else "error", reason)
                return
            self.study.tell(trial, float(value))
            print(f"trial {trial.number}: {metric}={value:.4g} in {time.time() - t0:.1f}s", flush=True)
        except TrialPruned as e:
            trial.set_user_attr("sweep.seconds", round(time.time() - t0, 2))
            trial.set_user_attr("sweep.pruned", str(e))
            self.study.tell(trial, state=TrialState.PRUNED)
            flt = f"tags.`sweep.study` = '{self.study.study_name}' and tags.`optuna.trial` = '{trial.number}'"
            for r in self.store.find_runs(spec.name, flt):  # FAILED by execute; say it was a pruning
                self.store.run_logger(r.info.run_id).set_tags({"sweep.pruned": str(e)})
            print(f"trial {trial.number}: {e}", flush=True)
        except KeyboardInterrupt:
            self._fail(trial, "interrupted", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except UpdateFinishedTrialError:
            print(f"trial {trial.number}: already marked finished by a coordinator (stale?)", flush=True)
        except Exception as e:
            kind = "nonfinite" if isinstance(e, NonFiniteError) else "error"
            self._fail(trial, kind, _one_line(e), traceback.format_exc())

    def _fail(self, trial, kind: str, reason: str, tb: str | None = None) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        print(f"trial {trial.number} failed: {reason}", flush=True)
        if tb:
            print(tb, flush=True)
        try:
            trial.set_user_attr("sweep.fail_reason", reason[:500])
            trial.set_user_attr("sweep.fail_kind", kind)
            if tb:
                trial.set_user_attr("sweep.traceback", tb[-4000:])
            self.study.tell(trial, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass


class _Heartbeat:
    """RDB storages: record the trial's heartbeat while it runs (what ``study.optimize`` would do)."""

    def __init__(self, storage, trial_id: int):
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # a lost heartbeat is reported, never fatal to the trial
                print(f"heartbeat: {_one_line(e)}", file=sys.stderr, flush=True)

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)


def _tag_value(v: Any) -> str:
    return "null" if v is None else str(v)


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}".strip()


if __name__ == "__main__":
    sys.exit(main())
