"""The ablation spec: validation messages, cells, hashing; study naming and the trial protocol.

Fast: no torch, no training. Real Optuna journal storages and a real MLflow SQLite store in tmp_path.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from harness.sweep_spec import SpecError, cell_id, load_spec, parse_spec
from tests.conftest import TINY  # noqa: E402


def without(*keys):
    return {k: v for k, v in TINY.items() if k not in keys}


def spec(**kw):
    d = {"name": "t", "base": dict(TINY), "grid": {"kl.coef": [0.0, 0.2]}, "seeds": [0, 1]}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not None or k == "name"}  # grid=None drops the grid


# ---- the good path ----------------------------------------------------------------------------


def test_grid_cells_are_the_product_of_axes_and_zip_groups():
    s = parse_spec(
        spec(
            grid={
                "kl.coef": [0.0, 0.2],
                "zip": [{"advantage.level": ["token", "sequence"], "advantage.baseline": ["rloo", "group_norm"]}],
            }
        )
    )
    assert s.axes == ("kl.coef", "advantage.level", "advantage.baseline")
    assert [c.values for c in s.cells] == [
        {"kl.coef": 0.0, "advantage.level": "token", "advantage.baseline": "rloo"},
        {"kl.coef": 0.0, "advantage.level": "sequence", "advantage.baseline": "group_norm"},
        {"kl.coef": 0.2, "advantage.level": "token", "advantage.baseline": "rloo"},
        {"kl.coef": 0.2, "advantage.level": "sequence", "advantage.baseline": "group_norm"},
    ]
    assert s.n_runs == 8 and s.seeds == (0, 1)
    assert s.study_name == f"t-{s.hash[:8]}"
    cfg = s.config(s.cells[1].values, seed=1, threads=3)
    assert (cfg.seed, cfg.kl.coef, cfg.advantage.baseline, cfg.train.threads) == (1, 0.0, "group_norm", 3)


def test_nested_sections_equal_dotted_keys_and_hash_ignores_layout(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("# a comment\nname: t\nseeds: [0]\ngrid: {kl.coef: [0.1, 0.3]}\nbase: {ppo.clip_eps: 0.3}\n")
    b.write_text("name: t\nbase:\n  ppo:\n    clip_eps: 0.30\ngrid:\n  kl:\n    coef: [0.1, 0.3]\nseeds: [0]\n")
    sa, sb = load_spec(a), load_spec(b)
    assert sa.base == sb.base == {"ppo.clip_eps": 0.3}
    assert sa.hash == sb.hash
    assert parse_spec(spec(seeds=[0, 1, 2])).hash != parse_spec(spec()).hash


def test_cell_ids_are_stable_and_order_independent():
    assert cell_id({"a": 1, "b": "x"}) == cell_id({"b": "x", "a": 1})
    s1 = parse_spec(spec(grid={"kl.coef": [0.0, 0.2], "ppo.clip_eps": [0.1, 0.3]}))
    s2 = parse_spec(spec(grid={"ppo.clip_eps": [0.3, 0.1], "kl.coef": [0.2, 0.0]}))
    assert {c.id for c in s1.cells} == {c.id for c in s2.cells}


def test_search_spec():
    s = parse_spec(
        spec(
            grid=None,
            sampler="tpe",
            n_trials=6,
            search={"ppo.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "rollout.batch_size": {"choices": [8, 16]},
                    "ppo.vf_coef": {"low": 0, "high": 1}, "probe.microbatches": {"low": 2, "high": 8, "step": 2}},
            prune={"n_startup_trials": 2},
            objective={"metric": "eval/kl", "direction": "minimize"},
        )
        | {"base": without("rollout.batch_size")}
    )
    assert s.sampler == "tpe" and s.n_runs == 12 and s.cells == ()
    kinds = {p.key: p.kind for p in s.search}
    assert kinds == {"ppo.lr": "float", "rollout.batch_size": "categorical", "ppo.vf_coef": "float",
                     "probe.microbatches": "int"}
    assert s.prune.n_startup_trials == 2 and s.objective.direction == "minimize"


def test_shipped_specs_validate():
    from pathlib import Path

    files = sorted(Path(__file__).resolve().parents[2].glob("ablations/*.yaml"))
    assert {f.name for f in files} >= {"quick.yaml", "core.yaml", "baselines.yaml", "variance.yaml",
                                        "custom_vs_trl.yaml"}
    for f in files:
        s = load_spec(f)
        assert f.read_text().lstrip().startswith("#"), f"{f.name}: needs a header comment"
        assert s.n_runs > 0


def test_quick_spec_sweeps_the_four_mission_axes():
    from pathlib import Path

    s = load_spec(Path(__file__).resolve().parents[2] / "ablations" / "quick.yaml")
    assert {"ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"} <= set(s.axes)
    assert s.n_runs <= 32  # a 2^4 factorial x 2 seeds; "quick" by design
    seq = [c for c in s.cells if c.values.get("advantage.level") == "sequence"]
    assert seq and ("advantage.baseline" in s.axes or "advantage.baseline" in s.base)


# ---- refusals: one line naming the key -------------------------------------------------------------

BAD = [
    ({"foo": 1}, "foo", "unknown key"),
    ({"name": None}, "name", "missing"),
    ({"name": "has space"}, "name", "expected letters"),
    ({"seeds": []}, "seeds", "non-empty"),
    ({"seeds": [0, 0]}, "seeds", "twice"),
    ({"seeds": [0, "a"]}, "seeds[1]", "integer"),
    ({"base": {"ppo.clip_epss": 0.2}}, "base.ppo.clip_epss", "unknown config key (did you mean ppo.clip_eps?)"),
    ({"base": {"ppo": {"nope": 1}}}, "base.ppo.nope", "unknown config key"),
    ({"base": {"ppo.clip_eps": [0.1]}}, "base.ppo.clip_eps", "single value"),
    ({"base": {"seed": 3}}, "base.seed", "seeds"),
    ({"grid": {"kl.coef": []}}, "grid.kl.coef", "empty"),
    ({"grid": {"kl.coef": 0.1}}, "grid.kl.coef", "list"),
    ({"grid": {"kl.coef": [0.1, 0.1]}}, "grid.kl.coef", "twice"),
    ({"grid": {"kl.coef": [0, 0.0]}}, "grid", "duplicate cells"),
    ({"grid": {"kl.coef": [-1.0]}}, "grid.kl.coef", "greater than or equal to 0"),
    ({"grid": {"ppo.clip_eps": [0.2, 1.5]}}, "grid.ppo.clip_eps", "less than 1"),
    ({"grid": {"kl.estimator": ["k4"]}}, "grid.kl.estimator", "k1"),
    ({"grid": {"probe.microbatches": ["many"]}}, "grid.probe.microbatches", "integer"),
    ({"base": without("rollout.batch_size"), "grid": {"rollout.batch_size": [8, 9]}},
     "base.rollout.group_size", "does not divide"),
    ({"grid": {"rollout.group_size": [2]}}, "grid.rollout.group_size", "also set in base"),
    ({"grid": {}}, "grid", "no axes"),
    ({"grid": {"zip": [{"kl.coef": [0.1, 0.2], "ppo.lr": [0.001]}]}}, "grid.zip[0]", "unequal length"),
    ({"grid": {"kl.coef": [0.1], "zip": [{"kl.coef": [0.2]}]}}, "grid.zip[0].kl.coef", "already swept"),
    ({"grid": {"zip": [["kl.coef"]]}}, "grid.zip[0]", "mapping"),
    ({"grid": {"seed": [1, 2]}}, "grid.seed", "seeds"),
    ({"sampler": "bayes"}, "sampler", "grid, tpe, random"),
    ({"n_trials": 5}, "n_trials", "only for sampler tpe or random"),
    ({"prune": True}, "prune", "only for sampler tpe or random"),
    ({"objective": {"metric": "eval/gol"}}, "objective.metric", "did you mean eval/gold"),
    ({"objective": {"direction": "up"}}, "objective.direction", "maximize or minimize"),
    ({"objective": {"metric": "eval/gold", "agg": "max"}}, "objective.agg", "unknown key"),
    ({"grid": None, "sampler": "tpe", "search": {"ppo.lr": {"low": 1e-4, "high": 1e-2}}}, "n_trials", "missing"),
    ({"grid": None, "sampler": "tpe", "n_trials": 0, "search": {}}, "n_trials", "positive"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3}, "search", "missing"),
    ({"sampler": "tpe", "n_trials": 3, "search": {"ppo.lr": {"low": 1, "high": 2}}}, "grid", "not used by sampler"),
    ({"grid": None, "sampler": "random", "n_trials": 3, "search": {"ppo.lr": {"low": 0.1, "high": 0.01}}},
     "search.ppo.lr", "below high"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "search": {"ppo.lr": {"low": 0, "high": 1, "log": True}}},
     "search.ppo.lr.low", "log range"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "search": {"ppo.lr": {"lo": 0, "high": 1}}},
     "search.ppo.lr.lo", "unknown key"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "search": {"advantage.level": {"low": 0, "high": 1}}},
     "search.advantage.level", "use choices"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "search": {"ppo.clip_eps": {"low": 0.1, "high": 1.5}}},
     "search.ppo.clip_eps", "less than 1"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "search": {"ppo.max_grad_norm": {"low": 1, "high": 2}, "probe.microbatches": {"low": 2, "high": 2.5}}},
     "search.probe.microbatches.high", "integer"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "search": {"kl.coef": {"choices": []}}},
     "search.kl.coef.choices", "empty"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "prune": True, "objective": {"metric": "objective/kl"},
      "search": {"kl.coef": {"choices": [0.1]}}}, "prune", "eval/"),
]


@pytest.mark.parametrize("patch,key,problem", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_specs_name_the_key(patch, key, problem):
    d = spec(**patch)
    with pytest.raises(SpecError) as e:
        parse_spec(d)
    assert e.value.key == key, str(e.value)
    assert problem in e.value.problem, str(e.value)


def test_yaml_and_file_errors(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "missing.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: t\ngrid: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML") as e:
        load_spec(p)
    assert e.value.key.startswith("line ")
    p.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(p)


def test_cross_key_refusal_names_the_cell():
    with pytest.raises(SpecError) as e:
        parse_spec(spec(base=dict(TINY, **{"rollout.group_size": 1}),
                        grid={"zip": [{"advantage.level": ["token", "sequence"],
                                       "advantage.baseline": ["rloo", "rloo"]}]}))
    assert e.value.key == "grid.zip[0].advantage.baseline"
    assert "advantage.level=sequence" in e.value.problem


# ---- study naming and the changed-spec refusal (real journal storage) -------------------------------


def _write(path, d):
    path.write_text(yaml.safe_dump(d))
    return path


def test_study_resolution_refuses_a_changed_spec(tmp_path):
    from harness.sweep import SweepRefused, open_storage, resolve_study, storage_url

    s1 = load_spec(_write(tmp_path / "s.yaml", spec()))
    url = storage_url(s1, None, tmp_path / "runs")
    assert url.endswith("runs/sweeps/t.journal")
    st = open_storage(url)
    study = resolve_study(s1, st, url)
    assert study.study_name == s1.study_name
    assert study.user_attrs["sweep.hash"] == s1.hash
    assert resolve_study(s1, st, url).study_name == s1.study_name  # resume: the same study

    s2 = load_spec(_write(tmp_path / "s.yaml", spec(seeds=[0, 1, 2])))
    with pytest.raises(SweepRefused) as e:
        resolve_study(s2, st, url)
    assert e.value.key == "name" and "--new" in e.value.problem and s1.study_name in e.value.problem
    fresh = resolve_study(s2, st, url, new=True)
    assert fresh.study_name == s2.study_name
    assert resolve_study(s2, st, url).study_name == s2.study_name  # the newest study is the one resumed
    again = resolve_study(s2, st, url, new=True)
    assert again.study_name == f"{s2.study_name}-r2"


# ---- the trial protocol: enqueue, claim, duplicates, stale owners -----------------------------------


def test_enqueue_claim_and_duplicates(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from harness.sweep import Worker, enqueue_missing, open_storage, resolve_study, slot_state, slots

    s = load_spec(_write(tmp_path / "s.yaml", spec()))
    url = str(tmp_path / "j.journal")
    st = open_storage(url)
    study = resolve_study(s, st, url)
    assert enqueue_missing(study, s) == 4
    assert enqueue_missing(study, s) == 0  # idempotent: queued slots are not queued again
    # a second coordinator racing the first enqueues the same slot again
    c0 = s.cells[0]
    study.enqueue_trial(c0.values, user_attrs={"sweep.cell": c0.id, "seed": 0})

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

    from harness.sweep import enqueue_missing, open_storage, resolve_study, slot_state, slots

    s = load_spec(_write(tmp_path / "s.yaml", spec()))
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


def test_owner_alive_uses_pid_and_start_time():
    import psutil

    from harness.sweep import HOST, owner_alive

    me = psutil.Process()
    assert owner_alive({"host": HOST, "pid": me.pid, "start": me.create_time()}) is True
    assert owner_alive({"host": HOST, "pid": me.pid, "start": me.create_time() - 50}) is False  # pid reused
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    start = psutil.Process(p.pid).create_time()
    p.wait()
    assert owner_alive({"host": HOST, "pid": p.pid, "start": start}) is False
    assert owner_alive({"host": "elsewhere", "pid": 1, "start": 0}) is None


def test_reconcile_fails_trials_and_kills_runs_of_dead_workers(tmp_path):
    import psutil
    from optuna.trial import TrialState

    from harness.sweep import (
        HOST,
        _owner_tag,
        enqueue_missing,
        ensure_parent,
        open_storage,
        reconcile,
        resolve_study,
    )
    from harness.tracking import Store

    s = load_spec(_write(tmp_path / "s.yaml", spec()))
    url = str(tmp_path / "j.journal")
    st = open_storage(url)
    study = resolve_study(s, st, url)
    enqueue_missing(study, s)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = {"host": HOST, "pid": p.pid, "start": psutil.Process(p.pid).create_time()}
    p.wait()
    me = psutil.Process()
    live = {"host": HOST, "pid": me.pid, "start": me.create_time()}
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
                          "sweep.worker": _owner_tag(owner)}, parent_run_id=parent).run_id

    assert reconcile(study, st, store, s) == 1
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[t_dead.number].state == TrialState.FAIL
    assert "died" in by_number[t_dead.number].user_attrs["sweep.fail_reason"]
    assert by_number[t_live.number].state == TrialState.RUNNING
    assert store.get_run(runs[t_dead.number]).info.status == "KILLED"
    assert "died" in store.get_run(runs[t_dead.number]).data.tags["failure.reason"]
    assert store.get_run(runs[t_live.number]).info.status == "RUNNING"
    assert enqueue_missing(study, s) == 1  # the dead worker's slot runs again


def test_import_does_not_pull_torch():
    code = "import sys, harness.sweep; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path, capsys):
    from harness.sweep import main

    p = _write(tmp_path / "s.yaml", spec(grid={"kl.coef": [0.0, 0.1, 0.2], "ppo.clip_eps": [0.1, 0.2, 0.3]}))
    runs = tmp_path / "runs"
    assert main([str(p), "--dry-run", "--runs-dir", str(runs), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "9 cells x 2 seeds = 18 runs" in out
    assert "journal" in out and "t.journal" in out
    assert "kl.coef=0 ppo.clip_eps=0.1" in out
    assert not runs.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.yaml"]


def test_storage_urls_are_redacted():
    from harness.sweep import redact

    assert redact("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("postgresql://me@db/x") == "postgresql://me@db/x"
