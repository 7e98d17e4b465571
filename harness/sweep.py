"""The ``ppo-harness sweep`` CLI and its coordinator: ablation spec -> Optuna study -> worker processes.

The coordinator (``run_sweep``) validates the spec, opens the study named
``<name>-<hash8>``, reconciles what earlier invocations left behind, enqueues every
(cell, seed) that is not done yet, starts N worker processes and shows progress.
Workers (``python -m harness.sweep --worker ...``) claim enqueued trials, run them with
``harness.run.execute`` and tell Optuna the objective.

Optuna is the queue: a (cell, seed) is one trial, enqueued with ``study.enqueue_trial``
and claimed atomically (WAITING -> RUNNING, the storage refuses a second claimer). The
sampler never decides what a grid runs, so a FAIL is never mistaken for done.

Modules:
  harness.sweep          this: the CLI (``main``, ``run_sweep``, the dry-run plan) and the coordinator
  harness.sweep_study    the shared protocol: storage, study, (cell, seed) slots, trial owners, user attrs
  harness.sweep_worker   the worker process loop (claim, run, heartbeat, signals)
  harness.sweep_summary  the summary tables and the live progress display
Every public name of those modules that callers used to import from here still imports from here.

MLflow: experiment = spec name; one parent run per study (tags sweep.role=parent,
sweep.name, sweep.hash, sweep.study, sweep.axes; artifacts spec/<file>, summary.csv,
summary.md); one child per (cell, seed) (tags sweep.role=child, sweep.cell, seed,
optuna.trial, axis.<key>, sweep.worker).

Exit codes: 0 every (cell, seed) done; 1 some failed or are missing (rerun to retry);
2 a bad spec or a refused study; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness.sweep_spec import AblationSpec, SpecError, load_spec
from harness.sweep_study import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    GRACE_S,
    HEARTBEAT_S,
    HOST,
    SweepRefused,
    _fail_stale,
    _fmt_value,
    _is_rdb,
    _label,
    _parse_owner,
    _quiet_optuna,
    _slot_key,
    load_study,
    open_storage,
    owner_alive,
    redact,
    resolve_study,
    sampled_cells,
    slot_state,
    slots,
    storage_url,
)
from harness.sweep_study import _owner_tag as _owner_tag  # re-exported: tests tag child runs with it
from harness.sweep_summary import (
    Display,
    Snapshot,
    _fmt_s,
    best_cell,
    summary_csv,
    summary_markdown,
    summary_rows,
    summary_text,
)
from harness.sweep_worker import Worker, worker_main

__all__ = [
    "EXIT_INCOMPLETE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "GRACE_S", "HEARTBEAT_S", "HOST",
    "ORPHAN_S", "POLL_S",
    "Coordinator", "Display", "Snapshot", "SweepRefused", "Worker",
    "best_cell", "enqueue_missing", "ensure_parent", "load_study", "main", "open_storage", "owner_alive",
    "print_plan", "reconcile", "redact", "resolve_study", "run_sweep", "sampled_cells", "slot_state", "slots",
    "storage_url", "summary_csv", "summary_markdown", "summary_rows", "summary_text", "threads_per_worker",
]

ORPHAN_S = 120  # a RUNNING trial that never recorded its worker is stale after this long
POLL_S = 1.0  # progress refresh


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
        return worker_main(json.loads(args.worker))
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


def threads_per_worker(workers: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // workers)


# ---- the coordinator ---------------------------------------------------------------------------------


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


# ---- the dry run ------------------------------------------------------------------------------------


def _plan_shape(spec: AblationSpec) -> str:
    if spec.sampler == "grid":
        return f"{len(spec.cells)} cells x {len(spec.seeds)} seeds"
    return f"{spec.sampler}: {spec.n_trials} configurations x {len(spec.seeds)} seeds"


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


if __name__ == "__main__":
    sys.exit(main())
