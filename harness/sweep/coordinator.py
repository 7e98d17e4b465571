"""The sweep coordinator: ablation spec -> Optuna study -> worker processes -> summary.

``run_sweep`` (what ``ppo-harness sweep`` calls) validates the spec, opens the study named
``<name>-<hash8>``, and hands it to a ``Coordinator``, which reconciles what earlier invocations
left behind (``reconcile``), enqueues every (cell, seed) that is not done yet (``enqueue_missing``),
finds or creates the MLflow parent run (``ensure_parent``), starts N worker processes, shows
progress and writes the summary.
"""

from __future__ import annotations

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

from harness.schema import Attr, Tag
from harness.sweep.display import Display, Snapshot, fmt_s
from harness.sweep.plan import plan_shape, print_plan
from harness.sweep.spec import AblationSpec, SpecError, load_spec, slot_label
from harness.sweep.study import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ROLE_CHILD,
    ROLE_PARENT,
    SweepRefused,
    fail_stale_heartbeats,
    open_storage,
    owner_alive,
    parse_owner,
    quiet_optuna,
    redact,
    resolve_study,
    run_filter,
    sampled_cells,
    slot_attrs,
    slot_key,
    slot_state,
    slots,
    storage_url,
)
from harness.sweep.summary import best_cell, summary_csv, summary_markdown, summary_rows, summary_text
from harness.sweep.worker import THREAD_VARS, worker_command

ORPHAN_S = 120  # a RUNNING trial that never recorded its worker is stale after this long
POLL_S = 1.0  # progress refresh


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
    quiet_optuna()
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
    """Torch threads per worker: this process's cores shared out (at least 1)."""
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
                f"sweep {self.study.study_name}: {spec.n_runs} runs ({plan_shape(spec)}); "
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
        self.procs: list[tuple[int, subprocess.Popen, Any]] = [self._start_worker(i) for i in range(n)]
        print(f"{n} worker(s) x {self.threads} torch thread(s); logs in {self.log_dir}")
        self._watch_workers()

    def _start_worker(self, i: int) -> tuple[int, subprocess.Popen, Any]:
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
        for var in THREAD_VARS:
            env[var] = str(self.threads)
        log = open(self.log_dir / f"worker-{i}.log", "a")  # noqa: SIM115 - closed in _stop_workers
        cmd = worker_command(payload)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        return i, proc, log

    def _watch_workers(self) -> None:
        """Show progress until every worker has exited; a worker that failed is reported once."""
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
        running = [key for t in trials if t.state == TrialState.RUNNING and (key := slot_key(t))]
        snap.running = [slot_label(cells.get(cid, {}), seed) for cid, seed in running]
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
        logger.set_tags({Tag.SWEEP_DONE: done, Tag.SWEEP_FAILED: c["failed"]})
        if not elsewhere:  # the last coordinator to finish ends the parent run
            logger.end("KILLED" if interrupted else ("FINISHED" if complete else "FAILED"))
        print(summary_text(spec, rows, limit=10))
        best = f"; best {spec.objective.metric} {snap.best[0]:.4g} at {snap.best[1]}" if snap.best else ""
        print(
            f"sweep {self.study.study_name}: {done}/{spec.n_runs} done, {c['failed']} failed, "
            f"{c['running']} running elsewhere, in {fmt_s(time.time() - self.t0)}{best}. "
            f"Summary: MLflow parent run {self.parent} (summary.md)."
        )
        return self._exit_code(interrupted, table, done, c["failed"], elsewhere)

    def _exit_code(self, interrupted: bool, table, done: int, failed: int, elsewhere: bool) -> int:
        """Say what is left to do and return the exit code of the invocation."""
        if interrupted:
            print("interrupted: rerun the same command to resume")
            return EXIT_INTERRUPTED
        if failed:
            reasons = [
                ts[-1].user_attrs.get(Attr.FAIL_REASON, "unknown")
                for ts in table.values()
                if slot_state(ts) == "failed"
            ]
            print(f"{failed} run(s) failed (e.g. {reasons[0]}); rerun the same command to retry them")
            return EXIT_INCOMPLETE
        if done != self.spec.n_runs and not elsewhere:
            print(f"{self.spec.n_runs - done} run(s) not started; rerun the same command to run them")
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
                study.enqueue_trial(values, user_attrs=slot_attrs(cid, seed))
                n += 1
    return n


# ---- stale trials and runs -------------------------------------------------------------------------


def reconcile(study, storage, store, spec: AblationSpec) -> int:
    """Fail RUNNING trials whose worker is gone; end their MLflow runs (KILLED / FAILED). Returns #failed."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    fail_stale_heartbeats(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    now = time.time()
    failed: dict[int, str] = {}
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _stale_reason(t, now)
        if reason is None:
            continue
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_user_attr(tid, Attr.FAIL_REASON, reason)
            storage.set_trial_user_attr(tid, Attr.FAIL_KIND, "stale")
            storage.set_trial_state_values(tid, TrialState.FAIL)
            failed[t.number] = reason
        except UpdateFinishedTrialError:  # it finished (or another coordinator got there) meanwhile
            pass
    _reconcile_runs(study, storage, study_id, store, spec, failed)
    return len(failed)


def _stale_reason(t, now: float) -> str | None:
    """Why a RUNNING trial is stale (its worker died, or none ever claimed it); None while it is not."""
    owner = t.user_attrs.get(Attr.WORKER)
    if owner:
        if owner_alive(owner) is not False:
            return None
        return f"worker pid {owner['pid']} on {owner['host']} died during the trial"
    started = t.datetime_start.timestamp() if t.datetime_start else now
    if now - started < ORPHAN_S:
        return None
    return "no worker recorded for this trial"


def _reconcile_runs(study, storage, study_id, store, spec, failed: dict[int, str]) -> None:
    """No child run stays RUNNING once its trial is not; a finished run of a failed trial is FAILED."""
    from optuna.trial import TrialState

    states = {t.number: t.state for t in storage.get_all_trials(study_id, deepcopy=False)}
    children = {Tag.SWEEP_STUDY: study.study_name, Tag.SWEEP_ROLE: ROLE_CHILD}
    for run in store.find_runs(spec.name, run_filter(children, status="RUNNING")):
        tags = run.data.tags
        number = int(tags.get(Tag.OPTUNA_TRIAL, -1))
        alive = owner_alive(parse_owner(tags.get(Tag.SWEEP_WORKER)))
        if states.get(number) == TrialState.RUNNING and alive is not False:
            continue
        logger = store.run_logger(run.info.run_id)
        if Tag.FAILURE not in tags:
            logger.set_tags({Tag.FAILURE: failed.get(number, "the sweep worker running it died")})
        logger.end("KILLED")
    for number, reason in failed.items():
        for run in store.find_runs(spec.name, run_filter({**children, Tag.OPTUNA_TRIAL: number})):
            if run.info.status == "FINISHED":  # died after the run ended, before Optuna heard of it
                store.run_logger(run.info.run_id).set_tags({Tag.FAILURE: reason})
                store.set_terminated(run.info.run_id, "FAILED")


# ---- the MLflow parent run ---------------------------------------------------------------------------


def ensure_parent(store, spec: AblationSpec, study_name: str, url: str) -> str:
    """The study's parent run: found by tags, else created (coordinators racing keep the earliest)."""
    flt = run_filter({Tag.SWEEP_ROLE: ROLE_PARENT, Tag.SWEEP_STUDY: study_name})
    runs = store.find_runs(spec.name, flt)
    if runs:
        return _earliest(runs)
    logger = store.start_run(
        spec.name,
        run_name=study_name,
        tags={
            Tag.SWEEP_ROLE: ROLE_PARENT,
            Tag.SWEEP_NAME: spec.name,
            Tag.SWEEP_HASH: spec.hash,
            Tag.SWEEP_STUDY: study_name,
            Tag.SWEEP_AXES: json.dumps(list(spec.axes)),
            Tag.SWEEP_SAMPLER: spec.sampler,
            Tag.SWEEP_SEEDS: json.dumps(list(spec.seeds)),
            Tag.SWEEP_RUNS: spec.n_runs,
            Tag.SWEEP_OBJECTIVE: spec.objective.metric,
            Tag.SWEEP_DIRECTION: spec.objective.direction,
            Tag.SWEEP_STORAGE: redact(url),
        },
        params={f"base.{k}": v for k, v in spec.base.items()},
    )
    logger.log_file(spec.path, "spec")
    if spec.description:
        logger.set_tags({Tag.NOTE: spec.description})
    runs = store.find_runs(spec.name, flt)
    winner = _earliest(runs) if runs else logger.run_id
    if winner != logger.run_id:
        store.delete_run(logger.run_id)
    return winner


def _earliest(runs) -> str:
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
