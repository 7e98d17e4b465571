"""harness.sweep.spec: validation messages, cells, hashing, the cell label.

Fast: no torch, no Optuna, no training.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.sweep.spec import SpecError, cell_id, cell_label, load_spec, parse_spec, slot_label
from tests.conftest import TINY  # noqa: E402
from tests.unit.sweep.specs import spec


def without(*keys):
    return {k: v for k, v in TINY.items() if k not in keys}




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

    files = sorted(Path(__file__).resolve().parents[3].glob("ablations/*.yaml"))
    assert {f.name for f in files} >= {"quick.yaml", "core.yaml", "baselines.yaml", "variance.yaml",
                                        "custom_vs_trl.yaml"}
    for f in files:
        s = load_spec(f)
        assert f.read_text().lstrip().startswith("#"), f"{f.name}: needs a header comment"
        assert s.n_runs > 0


def test_quick_spec_sweeps_the_four_mission_axes():
    from pathlib import Path

    s = load_spec(Path(__file__).resolve().parents[3] / "ablations" / "quick.yaml")
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


def test_one_cell_label():
    assert cell_label({"kl.coef": 0.0, "ppo.lr": 3e-4, "advantage.level": "token", "kl.target": None}) == (
        "kl.coef=0 ppo.lr=0.0003 advantage.level=token kl.target=null"
    )
    assert slot_label({"kl.coef": 0.2}, 1) == "kl.coef=0.2 seed=1"


def test_import_pulls_no_optuna_mlflow_or_torch():
    code = ("import sys, harness.sweep.spec; bad = {'optuna', 'mlflow', 'torch'} & set(sys.modules); "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
