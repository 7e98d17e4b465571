"""`ppo-harness sweep` end to end: real worker processes, real Optuna storages, real MLflow (SQLite).

Every run uses the tiniest config (models are built once and cached; PPO_HARNESS_CACHE is honoured).
"""

from __future__ import annotations

import collections
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY  # noqa: E402

pytestmark = pytest.mark.slow


def write_spec(tmp_path: Path, name: str, **kw) -> Path:
    d = {"name": name, "base": dict(TINY), "seeds": [0, 1]}
    d.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"# test spec {name}\n" + yaml.safe_dump(d, sort_keys=False))
    return path


def sweep(tmp_path: Path, spec: Path, *args: str, timeout: int = 240, background: bool = False):
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(spec), "--runs-dir", str(tmp_path / "runs"), *args]
    if background:
        return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    print(out.stdout[-3000:], out.stderr[-3000:])
    return out


def study_trials(url: str, name: str | None = None):
    """All trials of the only study in a storage (journal path or RDB URL), or of sweep ``name``."""
    import optuna

    from harness.sweep.study import open_storage

    st = open_storage(url)
    (s,) = [s for s in st.get_all_studies() if name is None or s.user_attrs.get("sweep.name") == name]
    return optuna.load_study(study_name=s.study_name, storage=st).get_trials(deepcopy=False)


def mlflow_runs(tmp_path: Path, experiment: str):
    from harness.tracking import Store

    store = Store(tmp_path / "runs")
    runs = store.find_runs(experiment)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") == "child"]
    return store, parents, children


def by_slot(trials, state: str) -> collections.Counter:
    from harness.sweep.study import slot_key

    return collections.Counter(slot_key(t) for t in trials if t.state.name == state)


def test_grid_with_two_workers_runs_every_cell_and_seed_once(tmp_path):
    spec = write_spec(tmp_path, "grid2", grid={"kl.coef": [0.0, 0.2]})
    out = sweep(tmp_path, spec, "--workers", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "done 4/4" in out.stdout

    trials = study_trials(str(tmp_path / "runs" / "sweeps" / "grid2.journal"))
    done = by_slot(trials, "COMPLETE")
    assert len(done) == 4 and set(done.values()) == {1}
    assert len(trials) == 4  # nothing failed, nothing skipped

    store, parents, children = mlflow_runs(tmp_path, "grid2")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.axes"] == '["kl.coef"]'
    assert parent.data.tags["sweep.hash"] and parent.data.tags["sweep.name"] == "grid2"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {(r.data.tags["axis.kl.coef"], r.data.tags["seed"]) for r in children} == {
        ("0.0", "0"), ("0.0", "1"), ("0.2", "0"), ("0.2", "1")
    }
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2, 3]
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert {r.data.params["train.threads"] for r in children} == {str(threads)}
    arts = {a.path for a in store.client.list_artifacts(parent.info.run_id)}
    assert {"summary.md", "summary.csv", "spec"} <= arts
    summary = Path(store.client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path))).read_text()
    assert summary.count("\n") == 3  # header + 2 cells

    again = sweep(tmp_path, spec, "--workers", "2")  # resume of a finished sweep runs nothing
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert len(study_trials(str(tmp_path / "runs" / "sweeps" / "grid2.journal"))) == 4
    assert len(mlflow_runs(tmp_path, "grid2")[2]) == 4


def test_nan_trial_is_failed_with_its_reason_and_the_sweep_goes_on(tmp_path):
    # kl.coef=1e30 really blows the run up: -beta * kl makes the value loss inf, and the trainer raises
    # NonFiniteError (ppo.lr=1e30, the old way, is now refused by its bound before anything runs)
    spec = write_spec(tmp_path, "nan", grid={"kl.coef": [1.0e30, 0.0]}, seeds=[0])
    out = sweep(tmp_path, spec, "--workers", "1")
    assert out.returncode == 1, out.stdout + out.stderr  # incomplete: a rerun would retry the failed run
    assert "1 run(s) failed" in out.stdout and "inf" in out.stdout

    trials = sorted(study_trials(str(tmp_path / "runs" / "sweeps" / "nan.journal")), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    bad = trials[0]
    assert bad.system_attrs["fixed_params"]["kl.coef"] == 1e30  # a grid cell: its enqueued values
    assert bad.user_attrs["sweep.fail_kind"] == "nonfinite"
    assert "NonFiniteError" in bad.user_attrs["sweep.fail_reason"] and "inf" in bad.user_attrs["sweep.fail_reason"]
    assert "Traceback" in bad.user_attrs["sweep.traceback"]

    store, parents, children = mlflow_runs(tmp_path, "nan")
    status = {r.data.tags["axis.kl.coef"]: r for r in children}
    assert status["1e+30"].info.status == "FAILED"
    assert "NonFiniteError" in status["1e+30"].data.tags["failure.reason"]
    assert status["0.0"].info.status == "FINISHED"
    assert parents[0].info.status == "FAILED" and parents[0].data.tags["sweep.failed"] == "1"


def test_killed_worker_then_resume_completes_every_slot_once(tmp_path):
    import optuna

    from harness.sweep.study import open_storage

    # eval/gold reported at every iteration (eval.every=1): a trial is mid-run for 7 of its 8 iterations, and the
    # journal is polled every 0.2 s (tests/faults run the same catch on 6 iterations)
    base = dict(TINY, **{"train.iterations": 8})
    spec = write_spec(tmp_path, "kill", base=base, grid={"kl.coef": [0.0, 0.2]})
    journal = tmp_path / "runs" / "sweeps" / "kill.journal"
    proc = sweep(tmp_path, spec, "--workers", "2", background=True)
    victim = None
    deadline = time.time() + 180
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not journal.exists():
                continue
            st = open_storage(str(journal))
            for s in st.get_all_studies():
                sid = st.get_study_id_from_name(s.study_name)
                for t in st.get_all_trials(sid, states=(optuna.trial.TrialState.RUNNING,)):
                    owner = t.user_attrs.get("sweep.worker")
                    if owner and t.intermediate_values:  # mid-trial: its MLflow run exists and is RUNNING
                        os.kill(owner["pid"], signal.SIGKILL)
                        victim = (t.number, owner["pid"])
                        break
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(out[-3000:])
    assert victim is not None, "no trial was caught mid-run"
    assert proc.returncode == 0, out  # the dead worker was replaced and its (cell, seed) ran again
    assert f"pid {victim[1]}" in out and "exited with code -9" in out and "starting a replacement" in out

    trials = study_trials(str(journal))
    killed = next(t for t in trials if t.number == victim[0])
    assert killed.state.name == "FAIL" and "died" in killed.user_attrs["sweep.fail_reason"]
    _, _, children = mlflow_runs(tmp_path, "kill")
    assert "RUNNING" not in {r.info.status for r in children}
    assert {r.info.status for r in children if r.data.tags["optuna.trial"] == str(victim[0])} == {"KILLED"}

    again = sweep(tmp_path, spec, "--workers", "2")  # a rerun finds nothing left to do
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stdout + again.stderr
    trials = study_trials(str(journal))
    done = by_slot(trials, "COMPLETE")
    assert len(done) == 4 and set(done.values()) == {1}  # every cell x seed complete, once
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    _, parents, children = mlflow_runs(tmp_path, "kill")
    assert "RUNNING" not in {r.info.status for r in [*parents, *children]}
    finished = collections.Counter(
        (r.data.tags["sweep.cell"], r.data.tags["seed"]) for r in children if r.info.status == "FINISHED"
    )
    assert len(finished) == 4 and set(finished.values()) == {1}


def test_tpe_runs_every_seed_of_each_sampled_config(tmp_path):
    base = {k: v for k, v in TINY.items() if k != "rollout.batch_size"}
    spec = write_spec(
        tmp_path,
        "tpe",
        base=base,
        sampler="tpe",
        n_trials=3,
        search={"ppo.lr": {"low": 1e-4, "high": 3e-3, "log": True}, "rollout.batch_size": {"choices": [8, 16]}},
        prune={"n_startup_trials": 2},
    )
    out = sweep(tmp_path, spec, "--workers", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    trials = [t for t in study_trials(str(tmp_path / "runs" / "sweeps" / "tpe.journal"))
              if "sweep.skipped" not in t.user_attrs]
    finished = by_slot(trials, "COMPLETE") + by_slot(trials, "PRUNED")
    cells = collections.Counter(cell for cell, _ in finished)
    assert len(cells) == 3 and set(cells.values()) == {2}  # 3 configurations x 2 seeds, each run once
    assert len(trials) == 6
    for t in trials:
        assert 0 in t.intermediate_values  # eval/gold is reported to Optuna at every evaluation
        if t.state.name == "COMPLETE":
            assert sorted(t.intermediate_values) == [0, 1, 2]
        same_cell = [u for u in trials if u.user_attrs["sweep.cell"] == t.user_attrs["sweep.cell"]]
        assert all(u.params == t.params for u in same_cell)
    _, parents, children = mlflow_runs(tmp_path, "tpe")
    assert len(parents) == 1 and len(children) == 6
    assert {"axis.ppo.lr", "axis.rollout.batch_size"} <= set(children[0].data.tags)
    pruned = {str(t.number) for t in trials if t.state.name == "PRUNED"}
    assert {r.data.tags["optuna.trial"] for r in children if "sweep.pruned" in r.data.tags} == pruned


# ---- many machines: PostgreSQL ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_url(request):
    """PPO_HARNESS_PG_URL, else a throwaway server from Debian's binaries on 127.0.0.1 (tests/conftest.py), else skip."""
    if os.environ.get("PPO_HARNESS_PG_URL"):
        yield os.environ["PPO_HARNESS_PG_URL"]
        return
    yield request.getfixturevalue("postgres").url()


def test_two_sweeps_share_one_postgres_study(pg_url, tmp_path):
    """Two coordinators (as on two machines), one worker each, one RDB study: each slot runs once."""
    from harness.tracking import Store

    name = f"pg-{os.getpid()}-{int(time.time())}"  # a server kept between runs keeps old studies
    # both "machines" are this one: one torch thread each, or they oversubscribe the cores
    base = dict(TINY, **{"train.iterations": 8, "train.threads": 1})
    spec = write_spec(tmp_path, name, base=base, grid={"kl.coef": [0.0, 0.1, 0.2]})
    Store(tmp_path / "runs")  # the shared MLflow SQLite file exists before the two race to open it
    procs = [sweep(tmp_path, spec, "--workers", "1", "--storage", pg_url, background=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)
    print("\n----\n".join(o[-2000:] for o in outs))
    assert [p.returncode for p in procs] == [0, 0]
    assert all("storage postgresql://postgres@127.0.0.1" in o for o in outs)

    trials = study_trials(pg_url, name)
    done = by_slot(trials, "COMPLETE")
    assert len(done) == 6 and set(done.values()) == {1}  # 3 cells x 2 seeds, each once
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    workers = {t.user_attrs["sweep.worker"]["pid"] for t in trials if t.state.name == "COMPLETE"}
    assert len(workers) == 2, "both workers should have run trials of the shared study"

    _, parents, children = mlflow_runs(tmp_path, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(finished) == 6 and len(children) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


def test_a_spec_with_more_seeds_runs_exactly_the_new_runs_under_the_same_parent(tmp_path):
    """seeds [0] then the same spec with seeds [0, 1]: the second invocation trains only the seed-1 runs,
    under the first one's MLflow parent, and leaves the seed-0 runs as they were."""
    spec = write_spec(tmp_path, "grow", grid={"kl.coef": [0.0, 0.2]}, seeds=[0])
    first = sweep(tmp_path, spec)
    assert first.returncode == 0, first.stdout + first.stderr
    store, parents, before = mlflow_runs(tmp_path, "grow")
    assert len(parents) == 1 and len(before) == 2
    old_hash = parents[0].data.tags["sweep.hash"]
    snapshot = {r.info.run_id: (r.info.end_time, r.data.metrics, r.data.tags["seed"]) for r in before}

    spec = write_spec(tmp_path, "grow", grid={"kl.coef": [0.0, 0.2]}, seeds=[0, 1])  # edited in place
    dry = sweep(tmp_path, spec, "--dry-run")
    assert dry.returncode == 0 and "4 runs; 2 new (not done yet), 2 done kept" in dry.stdout, dry.stdout
    assert "grows study grow-" in dry.stdout and "for 2 run(s) on 1 worker(s)" in dry.stdout
    second = sweep(tmp_path, spec)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 queued now" in second.stdout and "the spec grew" in second.stdout

    trials = study_trials(str(tmp_path / "runs" / "sweeps" / "grow.journal"))
    assert len(trials) == 4 and len(by_slot(trials, "COMPLETE")) == 4  # two trained now, nothing again
    store, parents, children = mlflow_runs(tmp_path, "grow")
    assert len(parents) == 1 and parents[0].info.run_id == before[0].data.tags["mlflow.parentRunId"]
    slots_seen = collections.Counter((r.data.tags["axis.kl.coef"], r.data.tags["seed"]) for r in children)
    assert slots_seen == {("0.0", "0"): 1, ("0.2", "0"): 1, ("0.0", "1"): 1, ("0.2", "1"): 1}
    for r in children:
        if r.info.run_id in snapshot:  # the first invocation's runs: untouched
            assert (r.info.end_time, r.data.metrics, r.data.tags["seed"]) == snapshot[r.info.run_id]
            assert r.data.tags["sweep.hash"] == old_hash
        else:
            assert r.data.tags["seed"] == "1" and r.data.tags["sweep.hash"] != old_hash
    assert sorted(r.info.run_name for r in children) == ["kl0-s0", "kl0-s1", "kl0.2-s0", "kl0.2-s1"]
    parent = store.get_run(parents[0].info.run_id)
    assert parent.data.tags["sweep.seeds"] == "[0, 1]" and parent.data.tags["sweep.runs"] == "4"
    new_hash = parent.data.tags["sweep.hash"]
    assert parent.data.tags["sweep.specs"] == f'["{old_hash}", "{new_hash}"]'
    arts = {a.path for a in store.client.list_artifacts(parent.info.run_id, "spec")}
    assert arts == {"spec/grow.yaml", f"spec/{new_hash[:8]}"}  # the old spec and the new one beside it
    assert parent.data.metrics["sweep/done"] == 4 and parent.data.metrics["sweep/best_seeds"] == 2
    means = [statistics.fmean(r.data.metrics["eval/gold"] for r in children if r.data.tags["axis.kl.coef"] == v)
             for v in ("0.0", "0.2")]
    assert parent.data.metrics["sweep/best"] == pytest.approx(max(means))
