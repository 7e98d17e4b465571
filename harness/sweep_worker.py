"""The sweep worker process: claim enqueued trials, run each with ``harness.run.execute``, tell Optuna.

Started by the coordinator as ``python -m harness.sweep --worker <json payload>``
(``harness.sweep.main`` hands the payload to ``worker_main``). It records a heartbeat for
RDB storages, turns SIGINT / SIGTERM into one KeyboardInterrupt (the trial is failed as
"interrupted"), and interrupts itself when its coordinator dies.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from harness.sweep_spec import AblationSpec, load_spec
from harness.sweep_study import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    _fail_stale,
    _label,
    _me,
    _owner_tag,
    _quiet_optuna,
    _slot_key,
    load_study,
    open_storage,
    sampled_cells,
)


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
        # A race with another worker sampling at the same time: the configurations of the lowest trial
        # numbers win. A lower-numbered trial still being sampled (RUNNING, not yet labelled with its
        # cell) holds a slot too: without it, a later trial that checks first would see a free slot
        # that the earlier one takes when it labels itself, and both would run (one over the budget).
        now = self.storage.get_all_trials(self.study_id, deepcopy=False)
        order = list(sampled_cells(spec, now))
        pending = sum(
            1
            for t in now
            if t.number < trial.number and t.state == TrialState.RUNNING
            and "sweep.cell" not in t.user_attrs and "sweep.skipped" not in t.user_attrs
        )
        ahead = [c for c in order[: order.index(cid)]] if cid in order else order
        if len(ahead) + pending >= spec.n_configs:
            trial.set_user_attr("sweep.skipped", f"over the budget of {spec.n_configs} configurations")
            self.study.tell(trial, state=TrialState.FAIL)
            return None, False  # look again: the pending trial may turn out a duplicate and free its slot
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
