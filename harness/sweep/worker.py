"""The sweep worker process: claim enqueued trials, run each with ``harness.run.execute``, tell Optuna.

Started by the coordinator as ``python -m harness.sweep --worker -`` (``worker_command``) with its
JSON payload on stdin, never on the command line (``ps`` shows command lines to every local user,
and the payload holds the storage URL and the tracking URI); ``harness/sweep/__main__.py`` reads it
and calls ``worker_main``. Its signal handling (``faults.STOP``) is installed before anything else:
SIGINT / SIGTERM become a KeyboardInterrupt (the trial is failed as "interrupted", its run KILLED),
raised again for every signal until the cleanup has begun. It records a heartbeat for RDB storages,
interrupts itself when its coordinator dies, retries the storage on transient errors, does not claim
a trial while the tracking store cannot take a run (``faults.tracking_problem``), and records a
(cell, seed) that already has a FINISHED child run in MLflow instead of running it again.

The payload: spec (path), hash, study, storage (URL), tracking_uri, runs_dir, parent (run id),
threads, index, procs_per_run (each trial a run over that many processes: ``harness.sweep.group``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from harness.schema import Attr, Tag
from harness.sweep.faults import (
    OUTAGE_S,
    STOP,
    STOPPING_S,
    Outage,
    is_transient,
    one_line,
    quiet_store_logs,
    retry,
    tracking_problem,
)
from harness.sweep.spec import AblationSpec, load_spec, run_name, slot_label
from harness.sweep.study import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTAGE,
    EXIT_USAGE,
    OUTAGE_MARK,
    ROLE_CHILD,
    fail_stale_heartbeats,
    load_study,
    open_storage,
    owner_tag,
    process_owner,
    quiet_optuna,
    run_filter,
    sampled_cells,
    slot_attrs,
    slot_key,
)
from harness.urls import redact

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_command() -> list[str]:
    """The command line of a worker process: no payload, no URL in it (the payload goes to its stdin)."""
    return [sys.executable, "-m", "harness.sweep", "--worker", "-"]


def payload_bytes(payload: dict[str, Any]) -> bytes:
    """What the coordinator writes to a worker's stdin."""
    return json.dumps(payload).encode("utf-8")


def storage_what(url: str) -> str:
    return f"the Optuna storage {redact(url)}"


def tracking_what(uri: str | None, runs_dir) -> str:
    return f"the MLflow tracking store {redact(uri) if uri else os.path.join(str(runs_dir), 'mlflow.db')}"


def _watch_parent(ppid: int) -> None:
    """An orphaned worker (its coordinator was killed) interrupts itself instead of running on."""
    while True:
        time.sleep(2)
        if os.getppid() != ppid:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def worker_main(p: dict[str, Any]) -> int:
    """One worker process: run trials until there is no more work; returns its exit code."""
    STOP.install()  # again, for callers other than __main__ (which installed it before its imports)
    # Threads first: harness.run imports torch, which sizes its pools on import.
    threads = int(p["threads"])
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    from harness.urls import remember_secrets

    for url in (p.get("storage"), p.get("tracking_uri"), os.environ.get("MLFLOW_TRACKING_URI")):
        remember_secrets(url or "")  # masked in every line this worker prints or logs
    try:
        STOP.check()
        spec = load_spec(p["spec"])
        if spec.hash != p["hash"]:
            print(f"worker: {p['spec']} changed since the sweep started; stopping", file=sys.stderr)
            return EXIT_USAGE
        quiet_optuna()
        quiet_store_logs()
        from harness.tracking import Store

        where = storage_what(p["storage"])
        storage = retry(where, open_storage, p["storage"])
        study = retry(where, load_study, spec, storage, p["study"])
        store = retry(tracking_what(p.get("tracking_uri"), p["runs_dir"]), Store, p["runs_dir"], p.get("tracking_uri"))
        worker = Worker(spec, storage, study, store, p["parent"], threads, where, int(p.get("procs_per_run", 1)))
        n = worker.loop()
        print(f"worker {p['index']}: no more work after {n} trial(s)")
        return EXIT_OK
    except KeyboardInterrupt:
        STOP.acknowledge()
        print(f"worker {p['index']}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Outage as e:
        STOP.acknowledge()
        print(f"{OUTAGE_MARK}{e}", flush=True)
        return EXIT_OUTAGE


class Worker:
    """Claim a trial, run it, tell Optuna; until the queue (and the sampling budget) is empty."""

    def __init__(self, spec: AblationSpec, storage, study, store, parent: str, threads: int, where: str = "",
                 procs_per_run: int = 1):
        self.spec, self.storage, self.study, self.store = spec, storage, study, store
        self.parent, self.threads = parent, threads
        self.procs_per_run = procs_per_run  # > 1: each trial one run over that many processes, this one rank 0
        self.where = where or "the Optuna storage"
        self.study_id = self._r(storage.get_study_id_from_name, study.study_name)
        self.me = process_owner()
        self.cells = {c.id: c.values for c in spec.cells}

    def _r(self, fn, *args, **kwargs):
        """A storage call, retried on transient errors (briefly once the worker is stopping)."""
        return retry(self.where, fn, *args, budget=STOPPING_S if STOP.stopping else None, **kwargs)

    def loop(self) -> int:
        n = 0
        misses = 0
        while True:
            STOP.check()  # a stop request swallowed where it landed still ends the worker here
            self.wait_for_tracking()
            self._r(fail_stale_heartbeats, self.study)
            trial = self.claim()
            if trial is None and self.spec.sampler != "grid":
                trial, exhausted = self._r(self.sample)
                if trial is None and not exhausted:
                    misses += 1
                    if misses < 20:
                        time.sleep(0.05)  # let a concurrent sampler label its trial
                        continue
                    print("search space exhausted: the sampler keeps proposing sampled configurations")
            if trial is None:
                return n
            misses = 0
            self.run(trial)
            n += 1

    def wait_for_tracking(self) -> None:
        """Claim nothing while the tracking store cannot take a run; ``Outage`` after ``OUTAGE_S``."""
        if self.store is None:
            return
        t0, delay, said = time.monotonic(), 1.0, False
        while (problem := tracking_problem(getattr(self.store, "uri", None), self.store.runs_dir)) is not None:
            waited = time.monotonic() - t0
            if waited >= OUTAGE_S:
                raise Outage("the MLflow tracking store", problem, waited)
            if not said:
                print(f"{problem}: not claiming trials until it is back (up to {OUTAGE_S:.0f}s)", flush=True)
                said = True
            STOP.check()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        if said:
            print(f"the tracking store is back after {time.monotonic() - t0:.0f}s; claiming trials again", flush=True)

    # -- getting a trial --
    def claim(self, only=None):
        """Pop a WAITING trial (atomic in the storage) that is the canonical one of its (cell, seed).
        ``only``: a set of trial numbers to consider (the coordinator's adoption of finished runs)."""
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        while True:
            waiting = self._r(self.storage.get_all_trials, self.study_id, deepcopy=False, states=(TrialState.WAITING,))
            waiting = [t for t in waiting if only is None or t.number in only]
            if not waiting:
                return None
            for t in sorted(waiting, key=lambda t: t.number):
                tid = self._r(self.storage.get_trial_id_from_study_id_trial_number, self.study_id, t.number)
                try:
                    if not self._r(self.storage.set_trial_state_values, tid, TrialState.RUNNING):
                        continue
                except UpdateFinishedTrialError:
                    continue
                trial = optuna.Trial(self.study, tid)
                self._own(trial)
                if self._keep(trial):
                    return trial
                break  # skipped a duplicate: look at the queue again

    def _own(self, trial) -> None:
        self._r(trial.set_user_attr, Attr.WORKER, self.me)

    def _skip(self, trial, why: str) -> None:
        """Give up a trial that must not run (a duplicate, or over the sampling budget)."""
        from optuna.trial import TrialState

        self._r(trial.set_user_attr, Attr.SKIPPED, why)
        self._tell(trial, state=TrialState.FAIL)

    def _keep(self, trial) -> bool:
        """A (cell, seed) enqueued twice (two coordinators at once) runs once: the lowest trial number."""
        from optuna.trial import TrialState

        key = slot_key(trial)
        if key is None:
            return True
        for t in self._r(self.storage.get_all_trials, self.study_id, deepcopy=False):
            if t.number == trial.number or slot_key(t) != key:
                continue
            dup = t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < trial.number
            )
            if dup:
                self._skip(trial, f"duplicate of trial {t.number}")
                return False
        return True

    def sample(self):
        """tpe / random: a new configuration (its other seeds are enqueued). Returns (trial, exhausted)."""
        spec = self.spec
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        known = sampled_cells(spec, trials)
        if len(known) >= spec.n_configs:
            return None, True
        trial = self.study.ask()  # may pop a WAITING seed enqueued meanwhile
        self._own(trial)
        if Attr.CELL in trial.user_attrs:
            return (trial if self._keep(trial) else None), False
        values = {s.key: s.suggest(trial) for s in spec.search}
        cid = spec.cell_for(values).id
        if cid in known:
            self._skip(trial, f"configuration {cid} was sampled before")
            return None, False
        for k, v in slot_attrs(cid, spec.seeds[0]).items():
            trial.set_user_attr(k, v)
        if self._over_budget(trial, cid):
            self._skip(trial, f"over the budget of {spec.n_configs} configurations")
            return None, False  # look again: the pending trial may turn out a duplicate and free its slot
        for seed in spec.seeds[1:]:
            self.study.enqueue_trial(values, user_attrs=slot_attrs(cid, seed))
        return trial, False

    def _over_budget(self, trial, cid: str) -> bool:
        """A race with another worker sampling at the same time: the configurations of the lowest trial
        numbers win. A lower-numbered trial still being sampled (RUNNING, not yet labelled with its
        cell) holds a slot too: without it, a later trial that checks first would see a free slot
        that the earlier one takes when it labels itself, and both would run (one over the budget)."""
        from optuna.trial import TrialState

        now = self.storage.get_all_trials(self.study_id, deepcopy=False)
        order = list(sampled_cells(self.spec, now))
        pending = sum(
            1
            for t in now
            if t.number < trial.number and t.state == TrialState.RUNNING
            and Attr.CELL not in t.user_attrs and Attr.SKIPPED not in t.user_attrs
        )
        ahead = [c for c in order[: order.index(cid)]] if cid in order else order
        return len(ahead) + pending >= self.spec.n_configs

    # -- a (cell, seed) MLflow already holds as FINISHED --
    def finished_runs(self, cell: str | None = None, seed: int | None = None) -> dict[tuple[str, int], Any]:
        """(cell, seed) -> the earliest FINISHED child run of this sweep (MLflow: the second record of what is done)."""
        tags = {Tag.SWEEP_STUDY: self.study.study_name, Tag.SWEEP_ROLE: ROLE_CHILD}
        if cell is not None:
            tags.update({Tag.SWEEP_CELL: cell, Tag.SEED: seed})
        out: dict[tuple[str, int], Any] = {}
        for run in sorted(self.store.find_runs(self.spec.name, run_filter(tags, status="FINISHED")),
                          key=lambda r: (r.info.start_time, r.info.run_id)):
            t = run.data.tags
            if Tag.SWEEP_CELL in t and Tag.SEED in t:
                out.setdefault((t[Tag.SWEEP_CELL], int(t[Tag.SEED])), run)
        return out

    def adopt_finished(self) -> int:
        """Record every queued (cell, seed) that has a FINISHED child run from that run (the coordinator
        calls this before starting workers: a lost or torn journal does not rerun finished work)."""
        from optuna.trial import TrialState

        done = self.finished_runs()
        if not done:
            return 0
        waiting = self._r(self.storage.get_all_trials, self.study_id, deepcopy=False, states=(TrialState.WAITING,))
        numbers = {t.number for t in waiting if slot_key(t) in done}
        n = 0
        while numbers and (trial := self.claim(only=numbers)) is not None:
            numbers.discard(trial.number)
            try:
                self._adopt(trial, done[slot_key(trial)])
            except Exception as e:  # MLflow went away meanwhile: the trial is retried (kind outage)
                self._fail(trial, "outage" if is_transient(e) else "error", one_line(e))
                if not is_transient(e):
                    raise
                break
            n += 1
        return n

    def _adopt(self, trial, run) -> None:
        """Tell Optuna the objective of a FINISHED run of this (cell, seed) instead of running it again."""
        values = self._values(trial, trial.user_attrs[Attr.CELL])  # records the params fixed at enqueue time
        seconds = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
        self._r(trial.set_user_attr, Attr.ADOPTED, run.info.run_id)
        self.store.run_logger(run.info.run_id).set_tags({Tag.OPTUNA_TRIAL: trial.number})
        print(f"trial {trial.number}: {slot_label(values, int(trial.user_attrs[Attr.SEED]))} already FINISHED "
              f"as MLflow run {run.info.run_id}: recorded from it, not run again", flush=True)
        self._finish(trial, _Finished(run.info.run_id, dict(run.data.metrics)), time.time() - seconds, say=False)

    # -- running one --
    def run(self, trial) -> None:
        """Run one claimed trial as an MLflow child run and tell Optuna how it ended."""
        from optuna import TrialPruned

        from harness.run import NonFiniteError

        t0 = time.time()
        try:
            self._attempt(trial, t0)
        except TrialPruned as e:
            self._pruned(trial, e, t0)
        except KeyboardInterrupt:
            self._interrupted(trial)
            raise
        except Outage:
            raise
        except Exception as e:
            kind = "nonfinite" if isinstance(e, NonFiniteError) else ("outage" if self._outage(e) else "error")
            self._fail(trial, kind, one_line(e), None if kind == "outage" else traceback.format_exc())

    def _outage(self, e: Exception) -> bool:
        """A store's transient error (the trial is retried at once); a rank of the trial's group that died or
        timed out at a collective (``Connection closed``, ``timed out``) is not one: the trial failed."""
        if self.procs_per_run > 1:
            from harness.sweep.group import lost_rank

            if lost_rank(e):
                return False
        return is_transient(e)

    def _interrupted(self, trial) -> None:
        """Fail the trial as "interrupted" (retried, its run KILLED), even when a later stop signal (the
        coordinator's SIGTERM, a second Ctrl-C) lands before the cleanup is acknowledged: that one starts
        the cleanup again instead of leaving the trial RUNNING for the coordinator to find stale."""
        for _ in range(100):
            try:
                STOP.acknowledge()  # the cleanup has begun: later signals must not interrupt it
                self._fail(trial, "interrupted", "interrupted (Ctrl-C or SIGTERM)")
                return
            except KeyboardInterrupt:
                continue

    def _attempt(self, trial, t0: float) -> None:
        cid, seed = trial.user_attrs[Attr.CELL], int(trial.user_attrs[Attr.SEED])
        done = self.finished_runs(cid, seed).get((cid, seed))
        if done is not None:
            self._adopt(trial, done)
            return
        values = self._values(trial, cid)
        tags = self._child_tags(trial, cid, seed, values)
        tid = self._r(self.storage.get_trial_id_from_study_id_trial_number, self.study_id, trial.number)
        print(f"trial {trial.number}: {slot_label(values, seed)}", flush=True)
        with _Heartbeat(self.storage, tid):
            result = self._execute(trial, values, seed, tags)
        self._finish(trial, result, t0)

    def _values(self, trial, cid: str) -> dict[str, Any]:
        """The trial's axis values. A grid cell's are the spec's (also the trial's enqueued fixed params;
        they are not suggested as categorical params, whose choices could not grow with the grid); a
        sampled configuration's are its Optuna params."""
        spec = self.spec
        if spec.sampler == "grid":
            if cid in self.cells:
                return self.cells[cid]
            frozen = self._r(self.storage.get_trial, trial._trial_id)
            return dict(frozen.system_attrs.get("fixed_params", {}))
        return {s.key: self._r(s.suggest, trial) for s in spec.search}

    def _child_tags(self, trial, cid: str, seed: int, values: dict[str, Any]) -> dict[str, Any]:
        spec, study = self.spec, self.study.study_name
        return {
            Tag.SWEEP_ROLE: ROLE_CHILD,
            Tag.SWEEP_NAME: spec.name,
            Tag.SWEEP_HASH: spec.hash,
            Tag.SWEEP_STUDY: study,
            Tag.SWEEP_CELL: cid,
            Tag.SEED: seed,
            Tag.OPTUNA_STUDY: study,
            Tag.OPTUNA_TRIAL: trial.number,
            Tag.SWEEP_WORKER: owner_tag(self.me),
            **{f"{Tag.AXIS_PREFIX}{k}": _tag_value(v) for k, v in values.items()},
        }

    def _execute(self, trial, values: dict[str, Any], seed: int, tags: dict[str, Any]):
        from harness.config import build_config
        from harness.run import execute

        spec = self.spec
        cfg = build_config(None, spec.overrides(values, seed, self.threads))
        resume = self._resumable(tags, cfg)
        if resume is not None:
            print(f"trial {trial.number}: continues MLflow run {resume} from its checkpoint", flush=True)
        with self._ranks(trial, cfg):  # --procs-per-run N: this process is rank 0 of N for the trial
            return execute(
                cfg,
                self.store,
                resume=resume,
                experiment=spec.name,
                run_name=run_name(values, seed, spec.varying_axes),
                parent_run_id=self.parent,
                tags={k: str(v) for k, v in tags.items()},
                on_eval=self._reporter(trial),
                progress=False,
            )

    def _ranks(self, trial, cfg):
        """The trial's other ranks (``harness.sweep.group.Group``) around its run; nothing for one process."""
        import contextlib

        if self.procs_per_run == 1:
            return contextlib.nullcontext()
        from harness.sweep.group import Group

        return Group(cfg, self.procs_per_run, say=lambda line: print(f"trial {trial.number}: {line}", flush=True))

    def _resumable(self, tags: dict[str, Any], cfg) -> str | None:
        """A KILLED child run of this trial's (cell, seed) with a checkpoint of the same config (a trial killed
        earlier, ``train.checkpoint_every``): the newest such run's id, which the trial continues; else None."""
        from harness import checkpoint

        if not cfg.train.checkpoint_every:
            return None
        slot = {k: tags[k] for k in (Tag.SWEEP_STUDY, Tag.SWEEP_ROLE, Tag.SWEEP_CELL, Tag.SEED)}
        runs = self.store.find_runs(self.spec.name, run_filter(slot, status="KILLED"))
        for run in sorted(runs, key=lambda r: r.info.start_time, reverse=True):
            path = checkpoint.latest(checkpoint.run_folder(self.store.runs_dir, run.info.run_id))
            if path is not None and (path / "config.yaml").read_text() == cfg.to_yaml():
                return run.info.run_id
        return None

    def _reporter(self, trial):
        """The ``on_eval`` hook: report the objective to Optuna at each evaluation; prune if it says so."""
        from optuna import TrialPruned

        spec, metric = self.spec, self.spec.objective.metric

        def on_eval(iteration: int, metrics: dict[str, float]) -> None:
            STOP.check()
            v = metrics.get(metric)
            if v is None or not math.isfinite(v):
                return
            self._r(trial.report, float(v), iteration)
            if spec.prune is not None and iteration > 0 and self._r(trial.should_prune):
                raise TrialPruned(f"pruned by MedianPruner at iteration {iteration}: {metric}={v:.4g}")

        return on_eval

    def _tell(self, trial, *args, **kwargs) -> bool:
        """``study.tell``, retried; False when the trial was already finished (by a coordinator: stale)."""
        from optuna.exceptions import UpdateFinishedTrialError

        attempts = []

        def tell():
            attempts.append(1)  # a retry after a lost reply must not fail on the state it set itself
            return self.study.tell(trial, *args, skip_if_finished=len(attempts) > 1, **kwargs)

        try:
            self._r(tell)
            return True
        except (UpdateFinishedTrialError, ValueError) as e:
            if isinstance(e, ValueError) and not str(e).startswith("Cannot tell"):
                raise
            print(f"trial {trial.number}: already marked finished by a coordinator (stale?)", flush=True)
            return False

    def _finish(self, trial, result, t0: float, say: bool = True) -> None:
        """The run ended: tell Optuna its final objective, or fail the trial when that is missing or NaN."""
        metric = self.spec.objective.metric
        value = result.final.get(metric)
        self._r(trial.set_user_attr, Attr.RUN_ID, result.run_id)
        self._r(trial.set_user_attr, Attr.SECONDS, round(time.time() - t0, 2))
        if value is None or not math.isfinite(value):
            reason = f"objective {metric} is {'missing' if value is None else value} at the end of the run"
            self.store.run_logger(result.run_id).set_tags({Tag.FAILURE: reason})
            self.store.set_terminated(result.run_id, "FAILED")
            self._fail(trial, "nonfinite" if value is not None else "error", reason)
            return
        if self._tell(trial, float(value)) and say:
            print(f"trial {trial.number}: {metric}={value:.4g} in {time.time() - t0:.1f}s", flush=True)

    def _pruned(self, trial, e: Exception, t0: float) -> None:
        from optuna.trial import TrialState

        self._r(trial.set_user_attr, Attr.SECONDS, round(time.time() - t0, 2))
        self._r(trial.set_user_attr, Attr.PRUNED, str(e))
        self._tell(trial, state=TrialState.PRUNED)
        flt = run_filter({Tag.SWEEP_STUDY: self.study.study_name, Tag.OPTUNA_TRIAL: trial.number})
        try:
            for r in self.store.find_runs(self.spec.name, flt):  # FAILED by execute; say it was a pruning
                self.store.run_logger(r.info.run_id).set_tags({Tag.SWEEP_PRUNED: str(e)})
        except Exception as err:  # the tag is a courtesy: the trial is PRUNED either way
            print(f"trial {trial.number}: could not tag its run as pruned ({one_line(err)})", flush=True)
        print(f"trial {trial.number}: {e}", flush=True)

    def _fail(self, trial, kind: str, reason: str, tb: str | None = None) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        print(f"trial {trial.number} failed: {reason}", flush=True)
        if tb:
            print(tb, flush=True)
        try:
            self._r(trial.set_user_attr, Attr.FAIL_REASON, reason[:500])
            self._r(trial.set_user_attr, Attr.FAIL_KIND, kind)
            if tb:
                self._r(trial.set_user_attr, Attr.TRACEBACK, tb[-4000:])
            self._tell(trial, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass
        except Outage as e:  # stopping anyway: the coordinator (or the next run) fails it as stale
            print(f"trial {trial.number}: could not record the failure ({e})", flush=True)
            if not STOP.stopping:
                raise


class _Finished:
    """What ``_finish`` reads of a run: its id and final metrics (an adopted MLflow run)."""

    def __init__(self, run_id: str, final: dict[str, float]):
        self.run_id, self.final = run_id, final


class _Heartbeat:
    """RDB storages: record the trial's heartbeat while it runs (what ``study.optimize`` would do)."""

    def __init__(self, storage, trial_id: int):
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            self._record()

    def _record(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as e:  # a lost heartbeat is reported, never fatal to the trial
            print(f"heartbeat: {one_line(e)}", file=sys.stderr, flush=True)

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self._record()
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)


def _tag_value(v: Any) -> str:
    return "null" if v is None else str(v)
