"""The sweep worker process: claim enqueued trials, run each with ``harness.run.execute``, tell Optuna.

Started by the coordinator as ``python -m harness.sweep --worker <json payload>`` (``worker_command``
builds that command line; ``harness/sweep/__main__.py`` parses it and calls ``worker_main``). It
records a heartbeat for RDB storages, turns SIGINT / SIGTERM into one KeyboardInterrupt (the trial
is failed as "interrupted"), and interrupts itself when its coordinator dies.

The payload: spec (path), hash, study, storage (URL), tracking_uri, runs_dir, parent (run id),
threads, index.
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
from harness.sweep.spec import AblationSpec, load_spec, slot_label
from harness.sweep.study import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
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

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_command(payload: dict[str, Any]) -> list[str]:
    """The command line of a worker process (parsed by ``python -m harness.sweep``)."""
    return [sys.executable, "-m", "harness.sweep", "--worker", json.dumps(payload)]


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


def worker_main(p: dict[str, Any]) -> int:
    """One worker process: run trials until there is no more work; returns its exit code."""
    # Threads first: harness.run imports torch, which sizes its pools on import.
    threads = int(p["threads"])
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    _Interrupt()
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        spec = load_spec(p["spec"])
        if spec.hash != p["hash"]:
            print(f"worker: {p['spec']} changed since the sweep started; stopping", file=sys.stderr)
            return EXIT_USAGE
        quiet_optuna()
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
        self.me = process_owner()
        self.cells = {c.id: c.values for c in spec.cells}

    def loop(self) -> int:
        n = 0
        misses = 0
        while True:
            fail_stale_heartbeats(self.study)
            trial = self.claim()
            if trial is None and self.spec.sampler != "grid":
                trial, exhausted = self.sample()
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
        trial.set_user_attr(Attr.WORKER, self.me)

    def _skip(self, trial, why: str) -> None:
        """Give up a trial that must not run (a duplicate, or over the sampling budget)."""
        from optuna.trial import TrialState

        trial.set_user_attr(Attr.SKIPPED, why)
        self.study.tell(trial, state=TrialState.FAIL)

    def _keep(self, trial) -> bool:
        """A (cell, seed) enqueued twice (two coordinators at once) runs once: the lowest trial number."""
        from optuna.trial import TrialState

        key = slot_key(trial)
        if key is None:
            return True
        for t in self.storage.get_all_trials(self.study_id, deepcopy=False):
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

    # -- running one --
    def run(self, trial) -> None:
        """Run one claimed trial as an MLflow child run and tell Optuna how it ended."""
        from optuna import TrialPruned
        from optuna.exceptions import UpdateFinishedTrialError

        from harness.run import NonFiniteError

        cid, seed = trial.user_attrs[Attr.CELL], int(trial.user_attrs[Attr.SEED])
        values = self._values(trial, cid)
        tags = self._child_tags(trial, cid, seed, values)
        t0 = time.time()
        tid = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        heartbeat = _Heartbeat(self.storage, tid)
        print(f"trial {trial.number}: {slot_label(values, seed)}", flush=True)
        try:
            with heartbeat:
                result = self._execute(trial, values, seed, tags)
            self._finish(trial, result, t0)
        except TrialPruned as e:
            self._pruned(trial, e, t0)
        except KeyboardInterrupt:
            self._fail(trial, "interrupted", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except UpdateFinishedTrialError:
            print(f"trial {trial.number}: already marked finished by a coordinator (stale?)", flush=True)
        except Exception as e:
            kind = "nonfinite" if isinstance(e, NonFiniteError) else "error"
            self._fail(trial, kind, _one_line(e), traceback.format_exc())

    def _values(self, trial, cid: str) -> dict[str, Any]:
        """The trial's axis values, recorded as its Optuna params (fixed when it was enqueued)."""
        spec = self.spec
        if spec.sampler == "grid":
            values = {k: trial.suggest_categorical(k, spec.axis_values(k)) for k in spec.axes}
            return self.cells.get(cid, values)
        return {s.key: s.suggest(trial) for s in spec.search}

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
        return execute(
            cfg,
            self.store,
            experiment=spec.name,
            run_name=slot_label(values, seed)[:250],
            parent_run_id=self.parent,
            tags={k: str(v) for k, v in tags.items()},
            on_eval=self._reporter(trial),
            progress=False,
        )

    def _reporter(self, trial):
        """The ``on_eval`` hook: report the objective to Optuna at each evaluation; prune if it says so."""
        from optuna import TrialPruned

        spec, metric = self.spec, self.spec.objective.metric

        def on_eval(iteration: int, metrics: dict[str, float]) -> None:
            v = metrics.get(metric)
            if v is None or not math.isfinite(v):
                return
            trial.report(float(v), iteration)
            if spec.prune is not None and iteration > 0 and trial.should_prune():
                raise TrialPruned(f"pruned by MedianPruner at iteration {iteration}: {metric}={v:.4g}")

        return on_eval

    def _finish(self, trial, result, t0: float) -> None:
        """The run ended: tell Optuna its final objective, or fail the trial when that is missing or NaN."""
        metric = self.spec.objective.metric
        value = result.final.get(metric)
        trial.set_user_attr(Attr.RUN_ID, result.run_id)
        trial.set_user_attr(Attr.SECONDS, round(time.time() - t0, 2))
        if value is None or not math.isfinite(value):
            reason = f"objective {metric} is {'missing' if value is None else value} at the end of the run"
            self.store.run_logger(result.run_id).set_tags({Tag.FAILURE: reason})
            self.store.set_terminated(result.run_id, "FAILED")
            self._fail(trial, "nonfinite" if value is not None else "error", reason)
            return
        self.study.tell(trial, float(value))
        print(f"trial {trial.number}: {metric}={value:.4g} in {time.time() - t0:.1f}s", flush=True)

    def _pruned(self, trial, e: Exception, t0: float) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr(Attr.SECONDS, round(time.time() - t0, 2))
        trial.set_user_attr(Attr.PRUNED, str(e))
        self.study.tell(trial, state=TrialState.PRUNED)
        flt = run_filter({Tag.SWEEP_STUDY: self.study.study_name, Tag.OPTUNA_TRIAL: trial.number})
        for r in self.store.find_runs(self.spec.name, flt):  # FAILED by execute; say it was a pruning
            self.store.run_logger(r.info.run_id).set_tags({Tag.SWEEP_PRUNED: str(e)})
        print(f"trial {trial.number}: {e}", flush=True)

    def _fail(self, trial, kind: str, reason: str, tb: str | None = None) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        print(f"trial {trial.number} failed: {reason}", flush=True)
        if tb:
            print(tb, flush=True)
        try:
            trial.set_user_attr(Attr.FAIL_REASON, reason[:500])
            trial.set_user_attr(Attr.FAIL_KIND, kind)
            if tb:
                trial.set_user_attr(Attr.TRACEBACK, tb[-4000:])
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
