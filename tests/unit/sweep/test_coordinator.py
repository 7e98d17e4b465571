"""harness.sweep.coordinator and worker: enqueue, claim, duplicates, requeue, stale owners, the dry run.

Fast: no torch, no training. Real Optuna journal storages and a real MLflow SQLite store in tmp_path.
"""

from __future__ import annotations

import subprocess
import sys

from harness.sweep.spec import load_spec
from harness.sweep.study import SweepEnd
from tests.unit.sweep.specs import spec, write_spec

# ---- the trial protocol: enqueue, claim, duplicates, stale owners -----------------------------------


def test_enqueue_claim_and_duplicates(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from harness.sweep.coordinator import enqueue_missing
    from harness.sweep.study import open_storage, resolve_study, slot_attrs, slot_state, slots
    from harness.sweep.worker import Worker

    s = load_spec(write_spec(tmp_path / "s.yaml", spec()))
    url = str(tmp_path / "j.journal")
    st = open_storage(url)
    study = resolve_study(s, st, url)
    assert enqueue_missing(study, s) == 4
    assert enqueue_missing(study, s) == 0  # idempotent: queued slots are not queued again
    # a second coordinator racing the first enqueues the same slot again
    c0 = s.cells[0]
    study.enqueue_trial(c0.values, user_attrs=slot_attrs(c0.id, 0))

    w = Worker(s, st, optuna.load_study(study_name=study.study_name, storage=st), store=None, parent="p", threads=1)
    claimed = []
    while (t := w.claim()) is not None:
        claimed.append((t.user_attrs["sweep.cell"], t.user_attrs["seed"]))
        assert t.user_attrs["sweep.worker"]["pid"] > 0
        study.tell(t, 1.0)
    assert sorted(claimed) == sorted((c.id, seed) for c in s.cells for seed in s.seeds)  # each slot once
    trials = study.get_trials()
    skipped = [t for t in trials if "sweep.skipped" in t.user_attrs]
    assert len(skipped) == 1 and skipped[0].state == TrialState.FAIL
    assert all(slot_state(ts) == "done" for ts in slots(trials).values())
    assert enqueue_missing(study, s) == 0


def test_failed_slots_are_requeued(tmp_path):
    from optuna.trial import TrialState

    from harness.sweep.coordinator import enqueue_missing
    from harness.sweep.study import open_storage, resolve_study, slot_state, slots

    s = load_spec(write_spec(tmp_path / "s.yaml", spec()))
    url = str(tmp_path / "j.journal")
    study = resolve_study(s, open_storage(url), url)
    enqueue_missing(study, s)
    for i in range(4):
        t = study.ask()
        study.tell(t, state=TrialState.FAIL if i == 2 else TrialState.COMPLETE, values=None if i == 2 else 1.0)
    table = slots(study.get_trials())
    assert sorted(slot_state(ts) for ts in table.values()) == ["done", "done", "done", "failed"]
    assert enqueue_missing(study, s) == 1
    table = slots(study.get_trials())
    assert sorted(slot_state(ts) for ts in table.values()) == ["done", "done", "done", "queued"]


def test_reconcile_fails_trials_and_kills_runs_of_dead_workers(tmp_path):
    from optuna.trial import TrialState

    from harness.sweep.coordinator import enqueue_missing, ensure_parent, reconcile
    from harness.sweep.study import open_storage, owner_tag, process_owner, resolve_study
    from harness.tracking import Store

    s = load_spec(write_spec(tmp_path / "s.yaml", spec()))
    url = str(tmp_path / "j.journal")
    st = open_storage(url)
    study = resolve_study(s, st, url)
    enqueue_missing(study, s)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = process_owner(p.pid)
    p.wait()
    live = process_owner()
    t_dead, t_live = study.ask(), study.ask()
    t_dead.set_user_attr("sweep.worker", dead)
    t_live.set_user_attr("sweep.worker", live)

    store = Store(tmp_path / "runs")
    parent = ensure_parent(store, s, study.study_name, url)
    assert ensure_parent(store, s, study.study_name, url) == parent  # found again, not created twice
    runs = {}
    for t, owner in ((t_dead, dead), (t_live, live)):
        runs[t.number] = store.start_run(
            s.name, tags={"sweep.role": "child", "sweep.study": study.study_name, "optuna.trial": t.number,
                          "sweep.worker": owner_tag(owner)}, parent_run_id=parent).run_id

    assert reconcile(study, st, store, s) == 1
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[t_dead.number].state == TrialState.FAIL
    assert "died" in by_number[t_dead.number].user_attrs["sweep.fail_reason"]
    assert by_number[t_live.number].state == TrialState.RUNNING
    assert store.get_run(runs[t_dead.number]).info.status == "KILLED"
    assert "died" in store.get_run(runs[t_dead.number]).data.tags["failure.reason"]
    assert store.get_run(runs[t_live.number]).info.status == "RUNNING"
    assert enqueue_missing(study, s) == 1  # the dead worker's slot runs again


# ---- entry points ------------------------------------------------------------------------------------


def test_import_does_not_pull_torch():
    code = ("import sys, harness.sweep.coordinator, harness.sweep.worker; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_the_worker_entry_point_takes_only_a_payload():
    out = subprocess.run([sys.executable, "-m", "harness.sweep"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--worker" in out.stderr, out.stderr


def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path, capsys):
    from harness.sweep.coordinator import run_sweep

    p = write_spec(tmp_path / "s.yaml", spec(grid={"kl.coef": [0.0, 0.1, 0.2], "ppo.clip_eps": [0.1, 0.2, 0.3]}))
    runs = tmp_path / "runs"
    assert run_sweep(p, dry_run=True, runs_dir=runs, workers=2) is SweepEnd.DONE
    out = capsys.readouterr().out
    assert "9 cells x 2 seeds = 18 runs" in out
    assert "journal" in out and "t.journal" in out
    assert "kl.coef=0 ppo.clip_eps=0.1" in out
    assert "9 cells (x seeds [0, 1]" in out and "kl.coef=0.2 ppo.clip_eps=0.3" in out  # every cell, the last too
    assert "18 runs; 18 new" in out and "no estimate (no finished run to time yet)" in out
    assert not runs.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.yaml"]


def test_a_stop_signal_landing_before_the_cleanup_is_acknowledged_still_fails_the_trial_as_interrupted(tmp_path):
    """The coordinator's SIGTERM (or a second Ctrl-C) can land just after the first KeyboardInterrupt was
    caught and before ``STOP.acknowledge()``: the trial must still be failed as "interrupted", not left
    RUNNING for the coordinator to find stale."""
    import signal

    import optuna
    import pytest
    from optuna.trial import TrialState

    from harness.sweep import worker as worker_mod
    from harness.sweep.coordinator import enqueue_missing
    from harness.sweep.faults import STOP
    from harness.sweep.study import open_storage, resolve_study
    from harness.sweep.worker import Worker

    s = load_spec(write_spec(tmp_path / "s.yaml", spec()))
    url = str(tmp_path / "j.journal")
    st = open_storage(url)
    study = resolve_study(s, st, url)
    enqueue_missing(study, s)
    w = Worker(s, st, optuna.load_study(study_name=study.study_name, storage=st), store=None, parent="p", threads=1)
    trial = w.claim()

    def interrupted(trial, t0):
        raise KeyboardInterrupt

    real_ack, landed = STOP.acknowledge, []

    def ack_after_a_signal():
        if not landed:
            landed.append(1)
            signal.raise_signal(signal.SIGTERM)  # through the real handler: raises, the cleanup not begun yet
        real_ack()

    old = STOP.install()
    w._attempt = interrupted
    STOP.acknowledge = ack_after_a_signal
    try:
        with pytest.raises(KeyboardInterrupt):
            w.run(trial)
    finally:
        STOP.acknowledge = real_ack
        STOP.restore(old)
        STOP.signals, STOP.stopping = 0, False
    assert landed == [1] and worker_mod.STOP is STOP
    t = next(t for t in study.get_trials() if t.number == trial.number)
    assert t.state == TrialState.FAIL and t.user_attrs["sweep.fail_kind"] == "interrupted"
