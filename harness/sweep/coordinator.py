"""The sweep coordinator: ablation spec -> Optuna study -> worker processes -> summary.

``run_sweep`` (what ``ppo-harness sweep`` calls) validates the spec, opens the study named
``<name>-<hash8>``, and hands it to a ``Coordinator``, which reconciles what earlier invocations
left behind (``reconcile``), enqueues every (cell, seed) that is not done yet (``enqueue_missing``),
finds or creates the MLflow parent run (``ensure_parent``), starts N worker processes, shows
progress and writes the summary.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.devices import worker_env
from harness.errors import InputError
from harness.schema import Attr, Tag
from harness.sweep.display import Display, Snapshot, fmt_s
from harness.sweep.faults import (
    OUTAGE_S,
    STOPPING_S,
    NotAJournal,
    Outage,
    StopRequest,
    check_journal,
    is_transient,
    one_line,
    quiet_store_logs,
    retry,
    signals_held,
    tracking_problem,
)
from harness.sweep.plan import plan_shape, print_plan
from harness.sweep.spec import AblationSpec, SpecError, cell_label, load_spec, slot_label
from harness.sweep.study import (
    EXIT_OK,
    EXIT_OUTAGE,
    EXIT_USAGE,
    OUTAGE_MARK,
    ROLE_CHILD,
    ROLE_PARENT,
    SweepEnd,
    SweepRefused,
    fail_stale_heartbeats,
    grown_from,
    is_rdb,
    open_storage,
    owner_alive,
    parse_owner,
    quiet_optuna,
    requeue_retryable,
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
from harness.sweep.worker import THREAD_VARS, payload_bytes, storage_what, tracking_what, worker_command
from harness.urls import redact

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
    devices: list[str] | None = None,
    procs_per_run: int = 1,
) -> SweepEnd:
    """Validate, then run (or resume) the sweep; how it ended. Bad input (the spec, --workers, --procs-per-run,
    the journal, a changed spec under the same name) raises ``SweepInputError`` before anything is written.
    ``procs_per_run`` > 1: each trial one run over that many processes (``harness.sweep.group``)."""
    if procs_per_run < 1:
        raise SweepInputError(spec_path, "--procs-per-run", f"expected at least 1, got {procs_per_run}")
    try:
        spec = load_spec(spec_path)
        check_models(spec)
        check_ranks(spec, procs_per_run, len(devices or []))
    except SpecError as e:
        raise SweepInputError(spec_path, e.key, e.problem) from None
    if workers < 1:
        raise SweepInputError(spec_path, "--workers", f"expected at least 1, got {workers}")
    url = storage_url(spec, storage, runs_dir)
    if not is_rdb(url):
        try:  # a user's file, a link or a FIFO given (or planted) as the journal: refused, left untouched
            check_journal(url)
        except NotAJournal as e:
            shown = repr(url) if not url.isprintable() else f"'{url}'"
            raise SweepInputError(spec_path, "--storage" if storage else "journal", f"{shown}: {e}") from None
    threads = threads_per_worker(workers * procs_per_run)  # every rank of every worker's trial: its share
    if dry_run:
        print_plan(spec, url, tracking_uri, runs_dir, workers, threads)
        _print_ranks(devices or [], procs_per_run)
        return SweepEnd.DONE
    quiet_optuna()
    quiet_store_logs()
    where = storage_what(url)
    try:
        st = retry(where, open_storage, url)
        study = retry(where, resolve_study, spec, st, url, new=new)
        coordinator = Coordinator(spec, st, url, study, tracking_uri, Path(runs_dir), workers, threads, devices or [],
                                  procs_per_run)
    except SweepRefused as e:
        raise SweepInputError(spec_path, e.key, e.problem) from None
    except Outage as e:
        print(f"sweep stopped: {e}. Rerun the same command to resume.", file=sys.stderr)
        return SweepEnd.INCOMPLETE
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume")
        return SweepEnd.INTERRUPTED
    return coordinator.run()


class SweepInputError(InputError):
    """Bad input to a sweep: the spec path (its repr() when it holds a newline or another invisible
    character), the key or option, the problem."""

    def __init__(self, path: str | Path, key: str, problem: str):
        shown = str(path) if str(path).isprintable() else repr(str(path))
        super().__init__(f"{shown}: {key}: {problem}", key=key, problem=problem)


def check_models(spec: AblationSpec) -> None:
    """Every run's model.policy / model.reward / model.gold / train.device passes ``validate_model_keys``
    before a study or run exists, a grid value exactly as a base value (SpecError naming the spec key that
    set it)."""
    from harness.models.types import ModelError
    from harness.warmstart.load import validate_model_keys

    if spec.sampler == "grid":
        variants = [c.values for c in spec.cells]
    else:  # the choices of a searched model key; ranges never name a model
        variants = [{p.key: c} for p in spec.search if p.kind == "categorical" for c in p.choices] or [{}]
    seen: set[str] = set()
    for values in variants:
        cfg = spec.config(values, spec.seeds[0])
        models = json.dumps([cfg.task.model_dump(), cfg.model.model_dump(), cfg.train.device], sort_keys=True)
        if models in seen:
            continue
        seen.add(models)
        try:
            validate_model_keys(cfg)
        except ModelError as e:
            key = next((k for k in ("model.policy", "model.reward", "model.gold", "train.device", "task.prompts")
                        if str(e).startswith(k + " ")), "")
            section = "base" if key in spec.base else ("grid" if spec.sampler == "grid" else "search")
            where = f"{section}.{key}" if key else "base"
            problem = str(e)[len(key) + 1:] if key else str(e)
            swept = key in values
            raise SpecError(where, f"{problem} (in cell {cell_label(values)})" if swept else problem) from None


# the config keys launch.check reads: a searched range over one of them cannot be checked before the sweep
RANK_KEYS = ("impl", "rollout.batch_size", "rollout.group_size", "ppo.minibatches", "probe.every",
             "probe.microbatches", "eval.prompts", "train.checkpoint_every", "train.device")


def check_ranks(spec: AblationSpec, procs: int, devices: int) -> None:
    """``--procs-per-run`` > 1: every run of the sweep can run over that many ranks (``launch.check`` on each
    grid cell, or on each combination of a search's choices; a range over a key it reads is refused), before a
    study or run exists. SpecError naming the spec key that set the value (base, grid or search)."""
    import itertools

    import torch

    from harness.devices import resolve
    from harness.launch import LaunchError, check

    if procs == 1:
        return
    if spec.sampler == "grid":
        variants = [c.values for c in spec.cells]
    else:
        ranged = [p.key for p in spec.search if p.kind != "categorical" and p.key in RANK_KEYS]
        if ranged:
            raise SpecError(f"search.{ranged[0]}", f"a range cannot be checked to split over --procs-per-run {procs} "
                            "ranks; give its values as choices")
        chosen = [p for p in spec.search if p.kind == "categorical"]
        variants = [dict(zip([p.key for p in chosen], combo, strict=True))
                    for combo in itertools.product(*(p.choices for p in chosen))]
    for values in variants:
        cfg = spec.config(values, spec.seeds[0])
        device = resolve(cfg.train.device)
        # with --devices each worker sees its group of procs devices; without, every device of the machine
        visible = (procs if devices else torch.cuda.device_count()) if device.type == "cuda" else 0
        try:
            check(cfg, procs, procs, device.type, visible)
        except LaunchError as e:
            if e.key.startswith("--"):  # more processes than the machine's CUDA devices
                raise SpecError("--procs-per-run", e.problem) from None
            section = "base" if e.key in spec.base else ("grid" if spec.sampler == "grid" else "search")
            where = f"{section}.{e.key}" if e.key in values or e.key in spec.base else e.key
            raise SpecError(where, f"{e.problem} (in cell {cell_label(values)})" if e.key in values
                            else e.problem) from None


def _print_ranks(devices: list[str], procs: int) -> None:
    """The dry run's line about devices and ranks."""
    if procs > 1:
        where = (f"CUDA devices [{', '.join(devices)}][k*{procs}:(k+1)*{procs}], rank r on cuda:r" if devices
                 else "this machine (gloo on the CPU, NCCL on CUDA devices)")
        print(f"ranks     each trial one run over {procs} processes: worker k and {procs - 1} follower(s) on {where}")
    elif devices:
        print(f"devices   worker k on CUDA device [{', '.join(devices)}][k % {len(devices)}] (CUDA_VISIBLE_DEVICES)")


def threads_per_worker(workers: int) -> int:
    """Torch threads per worker: this process's cores shared out (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // workers)


# ---- the coordinator ---------------------------------------------------------------------------------

RESTARTS_PER_WORKER = 2  # dead workers replaced per invocation: at most this x --workers; one more stops it
RETRIES_PER_SLOT = 2  # a (cell, seed) re-queued at most this often per invocation (dead worker, outage)
RECONCILE_S = 15.0  # the watch loop looks for stale trials and stray RUNNING runs this often
STOP_DEADLINE_S = 30.0  # stopping workers: SIGTERM, then SIGKILL after this long


class SweepStopped(Exception):
    """The sweep cannot go on (a store stayed unreachable, too many dead workers): one line, rerun resumes."""


@dataclass
class _Proc:
    """One worker process this coordinator started."""

    index: int
    proc: subprocess.Popen
    log: Any
    path: Path
    slot: int = 0  # its devices: worker_env(devices, slot), a dead worker's replacement takes its slot


class Coordinator:
    """One invocation of a sweep: reconcile, enqueue, run (and replace) the workers, summarise.

    It polls the study once a second: a worker that exited abnormally has its trial failed as stale,
    its run KILLED and its (cell, seed) re-queued, and is replaced (at most ``RESTARTS_PER_WORKER`` x
    workers times); transient storage errors are ridden out for ``OUTAGE_S``; when its workers run out
    of work while other coordinators still run trials of the study, it waits for them, so its summary
    and exit code are the whole sweep's. Whatever ends it, the cleanup (SIGINT / SIGTERM deferred
    meanwhile) leaves no run RUNNING that it can reach.
    """

    def __init__(self, spec, storage, url, study, tracking_uri, runs_dir: Path, workers: int, threads: int,
                 devices: list[str] | None = None, procs_per_run: int = 1):
        self.spec, self.storage, self.url, self.study = spec, storage, url, study
        self.devices = devices or []  # --devices: worker k sees CUDA device devices[k % n] only (or its group)
        self.procs_per_run = procs_per_run  # each trial one run over this many processes, the worker rank 0
        self.tracking_uri, self.runs_dir = tracking_uri, runs_dir
        self.workers, self.threads = workers, threads
        self.storage_what = storage_what(url)
        self.tracking_what = tracking_what(tracking_uri, Path(runs_dir).resolve())
        self.study_id = retry(self.storage_what, storage.get_study_id_from_name, study.study_name)
        self.log_dir = runs_dir / "sweeps" / study.study_name
        self.t0 = time.time()
        self.stop = StopRequest(latch=True)
        self.store = self.parent = self.display = None
        self.procs: list[_Proc] = []
        self.alive: list[_Proc] = []
        self.started = self.target = self.deaths = self.owed = 0
        self.requeued: dict[tuple[str, int], int] = {}
        self.outage_since: float | None = None
        self.last_reconcile = time.monotonic()
        self.said_waiting = False

    # -- the whole invocation --
    def run(self) -> SweepEnd:
        old = self.stop.install()
        failure = None
        try:
            self._begin()
        except KeyboardInterrupt:
            pass
        except (Outage, SweepStopped) as e:
            failure = str(e)
        except Exception as e:  # a bug: show it, and still leave nothing RUNNING
            traceback.print_exc()
            failure = f"unexpected {one_line(e)}"
        self.stop.acknowledge()  # from here on a Ctrl-C waits for the cleanup
        try:
            return self._end(failure)
        finally:
            StopRequest.restore(old)

    def _begin(self) -> None:
        from harness.tracking import Store

        spec, t = self.spec, self.tracking_what
        self.store = retry(t, Store, self.runs_dir, self.tracking_uri)
        retry(t, self.store.experiment_id, spec.name)  # once, before any worker races to create it
        self.parent = retry(t, ensure_parent, self.store, spec, self.study.study_name, self.url)
        retry(t, self.store.set_run_status, self.parent, "RUNNING")
        failed = retry(self.storage_what, fail_stale, self.study, self.storage)
        retry(t, end_stray_runs, self.study, self.storage, self.store, spec, failed)
        if failed:
            print(f"marked {len(failed)} stale trial(s) of dead workers as failed; they run again now")
        queued = retry(self.storage_what, enqueue_missing, self.study, spec)
        if before := grown_from(self.study):
            print(f"the spec grew (study {self.study.study_name}, spec {before[-1]['hash'][:8]} -> {spec.hash[:8]}): "
                  "runs done are kept; only the new (cell, seed)s run")
        print(
            f"sweep {self.study.study_name}: {spec.n_runs} runs ({plan_shape(spec)}); "
            f"{queued} queued now; storage {redact(self.url)}; MLflow {self.store.where} "
            f"(experiment '{spec.name}', parent run {self.parent})"
        )
        if adopted := self._adopt():
            print(f"{adopted} (cell, seed)(s) already had a FINISHED run in MLflow: recorded from it, not run again")
        work = retry(self.storage_what, self._pending)
        n = min(self.workers, work) if spec.sampler == "grid" else self.workers
        running = retry(self.storage_what, self._count, "RUNNING")
        if n == 0:
            print("nothing to run: every (cell, seed) is done or running elsewhere")
        if n > 0 or running:
            self._watch(n)

    def _adopt(self) -> int:
        """Queued (cell, seed)s that MLflow holds as FINISHED are recorded from those runs (a torn or lost journal)."""
        from harness.sweep.worker import Worker

        w = Worker(self.spec, self.storage, self.study, self.store, self.parent, self.threads, self.storage_what)
        try:
            return w.adopt_finished()
        except Outage:
            raise
        except Exception as e:
            if not is_transient(e):
                raise
            print(f"{self.tracking_what}: {one_line(e)}; the workers compare each trial with MLflow instead")
            return 0

    def _pending(self) -> int:
        from optuna.trial import TrialState

        waiting = len(self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.WAITING,)))
        if self.spec.sampler == "grid":
            return waiting
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        return waiting + max(0, self.spec.n_configs - len(sampled_cells(self.spec, trials)))

    def _count(self, state: str) -> int:
        from optuna.trial import TrialState

        return len(self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState[state],)))

    # -- workers --
    def _watch(self, n: int) -> None:
        """Poll the study and the workers until nothing of the study runs or waits (ours or elsewhere)."""
        self.target = n
        for _ in range(n):
            self._start_worker()
        if n:
            print(f"{n} worker(s) x {self.threads} torch thread(s); logs in {self.log_dir}")
        with Display(self.spec, self.study.study_name) as display:
            self.display = display
            while True:
                self.stop.check()  # a Ctrl-C swallowed where it landed still stops the sweep
                dead = self._reap()
                trials = self._poll()
                if trials is not None and not self._tend(trials, dead):
                    break
                time.sleep(POLL_S)

    def _tend(self, trials, dead: int) -> bool:
        """One poll's work: progress, stale trials, re-queues, replacement workers. False when all is over."""
        from optuna.trial import TrialState

        self.display.update(self.snapshot(trials))
        if dead or time.monotonic() - self.last_reconcile > RECONCILE_S:
            self.last_reconcile = time.monotonic()
            if self._reconcile():
                return True  # trials changed: look again
        if self._storage_step(requeue_retryable, self.study, self.spec, trials, self.requeued, RETRIES_PER_SLOT):
            return True
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        unsampled = 0 if self.spec.sampler == "grid" else max(0, self.spec.n_configs - len(sampled_cells(self.spec, trials)))
        self._top_up(waiting, unsampled)
        if self.alive or waiting:
            return True
        if running:
            if not self.said_waiting:
                self.display.note(f"waiting for {running} run(s) of other processes sharing this study "
                                  "(another coordinator); the summary follows when they end")
                self.said_waiting = True
            return True
        return False

    def _top_up(self, waiting: int, unsampled: int) -> None:
        """Start workers for queued work while fewer than the first ones run (replacing dead or finished ones)."""
        need = waiting + (unsampled if self.owed else 0)
        k = max(0, min(max(self.target, 1 if need else 0) - len(self.alive), need))
        for _ in range(k):
            self._start_worker()
        self.owed = max(0, self.owed - k)

    def _start_worker(self) -> None:
        k = self.started
        self.started += 1
        payload = {
            "spec": str(Path(self.spec.path).resolve()),
            "hash": self.spec.hash,
            "study": self.study.study_name,
            "storage": self.url,
            "tracking_uri": self.tracking_uri,
            "runs_dir": str(self.runs_dir.resolve()),
            "parent": self.parent,
            "threads": self.threads,
            "index": k,
            "procs_per_run": self.procs_per_run,
        }
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for var in THREAD_VARS:
            env[var] = str(self.threads)
        slot = self._slot()
        env.update(worker_env(self.devices, slot, self.procs_per_run))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"worker-{os.getpid()}-{k}.log"  # one file per process: coordinators never share one
        log = open(path, "a")  # noqa: SIM115 - closed when the worker is reaped or stopped
        # The worker starts with SIGINT / SIGTERM blocked (the mask survives exec) and unblocks them once its
        # handler is in: a Ctrl-C during its interpreter's start-up waits for it instead of killing it half-way.
        # Here a stop request waits (signals_held) until the worker is on the books, so the cleanup stops it:
        # raised inside Popen or the mask calls it would leave a worker nobody stops (and the mask blocked).
        with signals_held():
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                proc = subprocess.Popen(worker_command(), stdin=subprocess.PIPE, stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            w = _Proc(k, proc, log, path, slot)
            self.procs.append(w)
            self.alive.append(w)
            try:  # the payload (URLs and all) goes through the pipe, never the command line
                proc.stdin.write(payload_bytes(payload))
                proc.stdin.close()
            except OSError:  # it died at once: reaped as a dead worker
                pass

    def _slot(self) -> int:
        """The lowest worker slot (0 .. workers - 1) no live worker holds: a replacement gets the devices of the
        worker it replaces, never a device group another worker holds."""
        held = {w.slot for w in self.alive}
        return next((i for i in range(self.workers) if i not in held), self.started - 1)

    def _reap(self) -> int:
        """Workers that exited: an outage or a refusal stops the sweep; a dead one is replaced. Returns #dead."""
        dead = 0
        for w in list(self.alive):
            rc = w.proc.poll()
            if rc is None:
                continue
            self.alive.remove(w)
            w.log.close()
            if rc == EXIT_OK:
                continue
            if rc == EXIT_OUTAGE:
                raise SweepStopped(_outage_line(w.path))
            if rc == EXIT_USAGE:
                raise SweepStopped(f"worker {w.index} refused to run (see {w.path})")
            dead += 1
            self.deaths += 1
            budget = RESTARTS_PER_WORKER * self.workers
            self.display.note(f"worker {w.index} (pid {w.proc.pid}) exited with code {rc}; see {w.path}")
            if self.deaths > budget:
                raise SweepStopped(f"{self.deaths} worker processes died (at most {budget} = "
                                   f"{RESTARTS_PER_WORKER} x --workers are replaced); the last one: see {w.path}")
            self.owed += 1
            self.display.note(f"the trial it ran (if any) is failed as stale and runs again; starting a replacement "
                              f"({self.deaths} of {budget} allowed)")
        return dead

    def _stop_workers(self) -> None:
        for w in self.alive:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)  # a worker turns it into KeyboardInterrupt: run KILLED
        deadline = time.time() + STOP_DEADLINE_S
        for w in self.alive:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        self.alive = []
        for w in self.procs:
            w.log.close()

    # -- the study while it runs --
    def _poll(self):
        """All trials; None while the storage is unreachable (``Outage`` once that lasts ``OUTAGE_S``)."""
        try:
            trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        except Exception as e:
            if not is_transient(e):
                raise
            self._outage(e)
            return None
        if self.outage_since is not None:
            self.display.note(f"{self.storage_what}: reachable again after {time.monotonic() - self.outage_since:.0f}s")
            self.outage_since = None
        return trials

    def _outage(self, e: Exception) -> None:
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            self.display.note(f"{self.storage_what}: {one_line(e)}; retrying for up to {OUTAGE_S:.0f}s")
        elif now - self.outage_since >= OUTAGE_S:
            raise Outage(self.storage_what, one_line(e), now - self.outage_since)

    def _storage_step(self, fn, *args):
        """A storage write of the watch loop; a transient error only postpones it to the next poll."""
        try:
            return fn(*args)
        except Exception as e:
            if not is_transient(e):
                raise
            self._outage(e)
            return None

    def _reconcile(self) -> int:
        """Fail trials of dead workers (storage), then end their runs (MLflow, best effort). Returns #failed."""
        failed = self._storage_step(fail_stale, self.study, self.storage)
        if failed is None:
            return 0
        try:
            end_stray_runs(self.study, self.storage, self.store, self.spec, failed)
        except Exception as e:
            if not is_transient(e):
                raise
            self.display.note(f"{self.tracking_what}: {one_line(e)}; its runs are ended later")
        return len(failed)

    def snapshot(self, trials=None) -> Snapshot:
        from optuna.trial import TrialState

        spec = self.spec
        if trials is None:
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
    def _end(self, failure: str | None) -> SweepEnd:
        """Stop the workers, leave nothing RUNNING, then the summary (or the one line saying what stopped it)."""
        interrupted = self.stop.signals > 0
        self._stop_workers()
        if self.parent is None:  # stopped before the parent run existed
            return self._stopped(failure, interrupted, tracking_ok=False)
        problem = tracking_problem(self.tracking_uri, self.runs_dir)
        say = failure is None  # a sweep that stopped says what stopped it, in one line, and nothing else
        failed = _quietly(self.storage_what, fail_stale, self.study, self.storage, say=say)
        if problem is None:
            _quietly(self.tracking_what, end_stray_runs, self.study, self.storage, self.store, self.spec, failed or {},
                     say=say)
        if failure is not None:
            return self._stopped(failure, interrupted, tracking_ok=problem is None)
        try:
            trials = retry(self.storage_what, self.storage.get_all_trials, self.study_id, deepcopy=False,
                           budget=STOPPING_S if interrupted else None)
        except Outage as e:
            return self._stopped(str(e), interrupted, tracking_ok=problem is None)
        return self._finish(trials, interrupted, problem)

    def _stopped(self, failure: str | None, interrupted: bool, tracking_ok: bool) -> SweepEnd:
        """The one line of a sweep that could not go on (no traceback), the parent run ended if reachable."""
        if tracking_ok and self.parent is not None:
            status = "KILLED" if interrupted else "FAILED"
            _quietly(self.tracking_what, self._end_parent, {Tag.FAILURE: (failure or "interrupted")[:500]}, status,
                     say=False)
        if failure is None:
            print("interrupted: rerun the same command to resume")
            return SweepEnd.INTERRUPTED
        print(f"sweep stopped: {failure}. Rerun the same command to resume.", file=sys.stderr, flush=True)
        return SweepEnd.INTERRUPTED if interrupted else SweepEnd.INCOMPLETE

    def _end_parent(self, tags: dict[str, Any], status: str | None, files: dict[str, str] | None = None,
                    metrics: dict[str, float] | None = None) -> None:
        logger = self.store.run_logger(self.parent)
        for name, text in (files or {}).items():
            logger.log_text(text, name)
        if metrics:  # step = runs done: the last value is the current best, its history the sweep's growth
            logger.log_metrics(metrics, step=int(metrics.get("sweep/done", 0)))
        logger.set_tags(tags)
        if status is not None:
            logger.end(status)

    def _finish(self, trials, interrupted: bool, problem: str | None) -> SweepEnd:
        spec = self.spec
        table = slots(trials)
        snap = self.snapshot(trials)
        rows = summary_rows(spec, trials)
        done = sum(slot_state(ts) in ("done", "pruned") for ts in table.values())
        c = snap.counts
        complete = done == spec.n_runs
        elsewhere = c["running"] > 0  # other coordinators (machines) still at work: the last one ends the parent
        status = None if elsewhere else ("KILLED" if interrupted else ("FINISHED" if complete else "FAILED"))
        files = {"summary.md": summary_markdown(spec, rows), "summary.csv": summary_csv(spec, rows)}
        tags = {Tag.SWEEP_DONE: done, Tag.SWEEP_FAILED: c["failed"]}
        metrics = {"sweep/done": done, "sweep/failed": c["failed"]}
        if snap.best:
            metrics.update({"sweep/best": snap.best[0], "sweep/best_seeds": snap.best[2]})
        if problem is not None or not _quietly(self.tracking_what, self._end_parent, tags, status, files, metrics,
                                               budget=STOPPING_S if interrupted else None):
            print(f"the summary is not in MLflow ({problem or 'unreachable'}); the next run writes it", file=sys.stderr)
        print(summary_text(spec, rows, limit=10))
        best = (f"; best cell mean {spec.objective.metric} {snap.best[0]:.4g} over {snap.best[2]} seed(s) at "
                f"{snap.best[1]}") if snap.best else ""
        print(
            f"sweep {self.study.study_name}: {done}/{spec.n_runs} done, {c['failed']} failed, "
            f"{c['running']} running elsewhere, in {fmt_s(time.time() - self.t0)}{best}. "
            f"Summary: MLflow parent run {self.parent} (summary.md)."
        )
        return self._ending(interrupted, table, done, c["failed"], elsewhere)

    def _ending(self, interrupted: bool, table, done: int, failed: int, elsewhere: bool) -> SweepEnd:
        """Say what is left to do; how the invocation ended."""
        if interrupted:
            print("interrupted: rerun the same command to resume")
            return SweepEnd.INTERRUPTED
        if failed:
            reasons = [
                ts[-1].user_attrs.get(Attr.FAIL_REASON, "unknown")
                for ts in table.values()
                if slot_state(ts) == "failed"
            ]
            print(f"{failed} run(s) failed (e.g. {reasons[0]}); rerun the same command to retry them")
            return SweepEnd.INCOMPLETE
        if elsewhere:
            print("the rest is still running in other processes sharing this study; rerun to wait for them")
            return SweepEnd.INCOMPLETE
        if done != self.spec.n_runs:
            print(f"{self.spec.n_runs - done} run(s) not started; rerun the same command to run them")
            return SweepEnd.INCOMPLETE
        return SweepEnd.DONE


def _quietly(what: str, fn, *args, budget: float | None = STOPPING_S, say: bool = True, **kwargs):
    """A cleanup step: retried briefly; a store that stays away is said in one line (``say``), never a
    traceback. Returns the step's result (True for None), or None when it could not be done."""
    try:
        if not say:
            with contextlib.redirect_stderr(io.StringIO()):  # retry()'s own notes too
                out = retry(what, fn, *args, budget=budget, **kwargs)
        else:
            out = retry(what, fn, *args, budget=budget, **kwargs)
        return True if out is None else out
    except Exception as e:
        if say:
            print(f"cleanup: {one_line(e)}", file=sys.stderr, flush=True)
        return None


def _outage_line(path: Path) -> str:
    """The worker's last ``outage:`` line (what stayed unreachable), from its log."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith(OUTAGE_MARK):
            return line[len(OUTAGE_MARK):]
    return f"a store stayed unreachable for a worker (see {path})"


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
    """Fail RUNNING trials whose worker is gone; end their MLflow runs (KILLED). Returns #failed."""
    failed = fail_stale(study, storage)
    end_stray_runs(study, storage, store, spec, failed)
    return len(failed)


def fail_stale(study, storage) -> dict[int, str]:
    """Fail RUNNING trials whose worker is gone (or that no worker ever claimed): trial number -> why."""
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
    return failed


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


def end_stray_runs(study, storage, store, spec, failed: dict[int, str]) -> int:
    """No child run stays RUNNING once its trial is not RUNNING or its worker is gone: KILLED, saying why.

    With the storage unreachable, the worker's liveness alone decides. A FINISHED run is left as it
    is: it is the record of a (cell, seed) done, which a worker records instead of running it again.
    Returns #runs ended."""
    from optuna.trial import TrialState

    try:
        trials = {t.number: t for t in storage.get_all_trials(storage.get_study_id_from_name(study.study_name),
                                                               deepcopy=False)}
    except Exception as e:
        if not is_transient(e):
            raise
        trials = None
    children = {Tag.SWEEP_STUDY: study.study_name, Tag.SWEEP_ROLE: ROLE_CHILD}
    n = 0
    for run in store.find_runs(spec.name, run_filter(children, status="RUNNING")):
        tags = run.data.tags
        number = int(tags.get(Tag.OPTUNA_TRIAL, -1))
        alive = owner_alive(parse_owner(tags.get(Tag.SWEEP_WORKER)))
        t = trials.get(number) if trials is not None else None
        if alive is not False and (trials is None or (t is not None and t.state == TrialState.RUNNING)):
            continue
        reason = failed.get(number) or (t.user_attrs.get(Attr.FAIL_REASON) if t is not None else None)
        logger = store.run_logger(run.info.run_id)
        if Tag.FAILURE not in tags:
            logger.set_tags({Tag.FAILURE: reason or "the sweep worker running it died"})
        logger.end("KILLED")
        n += 1
    return n


# ---- the MLflow parent run ---------------------------------------------------------------------------


def ensure_parent(store, spec: AblationSpec, study_name: str, url: str) -> str:
    """The study's parent run: found by tags, else created (coordinators racing keep the earliest)."""
    flt = run_filter({Tag.SWEEP_ROLE: ROLE_PARENT, Tag.SWEEP_STUDY: study_name})
    runs = store.find_runs(spec.name, flt)
    if runs:
        parent = _earliest(runs)
        record_growth(store, spec, parent)
        return parent
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
            Tag.SWEEP_SPECS: json.dumps([spec.hash]),
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


def record_growth(store, spec: AblationSpec, parent: str) -> bool:
    """A parent run made under an earlier spec that this one grows: the new spec file logged beside the
    old one (``spec/<hash8>/``), the tags brought to the new spec, its hash added to ``Tag.SWEEP_SPECS``.
    Returns whether anything changed."""
    tags = store.get_run(parent).data.tags
    if tags.get(Tag.SWEEP_HASH) == spec.hash:
        return False
    try:
        hashes = json.loads(tags.get(Tag.SWEEP_SPECS) or "[]")
    except ValueError:
        hashes = []
    hashes = hashes or [tags.get(Tag.SWEEP_HASH)]
    logger = store.run_logger(parent)
    logger.log_file(spec.path, f"spec/{spec.hash[:8]}")
    logger.set_tags({
        Tag.SWEEP_HASH: spec.hash,
        Tag.SWEEP_SEEDS: json.dumps(list(spec.seeds)),
        Tag.SWEEP_RUNS: spec.n_runs,
        Tag.SWEEP_SPECS: json.dumps([*hashes, spec.hash]),
    })
    return True


def _earliest(runs) -> str:
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
