"""harness.sweep.spec: validation messages, cells, hashing, the cell label.

Fast: no torch, no Optuna, no training.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    # strict types: no bool or numeric string for a number, no inf / nan
    ({"grid": {"kl.horizon": [True, 2]}}, "grid.kl.horizon", "expected an integer, got a boolean (true)"),
    ({"grid": {"kl.horizon": ["2"]}}, "grid.kl.horizon", "expected an integer, got the string '2'"),
    ({"grid": {"kl.coef": [0.1, False]}}, "grid.kl.coef", "expected a number, got a boolean (false)"),
    ({"grid": {"advantage.whiten": [1, 0]}}, "grid.advantage.whiten", "expected true or false, got 1"),
    ({"grid": {"ppo.lr": [0.001, float("nan")]}}, "grid.ppo.lr", "must be a finite number (got nan)"),
    ({"base": dict(TINY, **{"kl.coef": float("inf")})}, "base.kl.coef", "must be a finite number (got inf)"),
    ({"base": dict(TINY, **{"kl.horizon": "5"})}, "base.kl.horizon", "expected an integer, got the string '5'"),
    ({"grid": {"zip": [{"kl.coef": [0.1, float("-inf")], "kl.horizon": [1, 2]}]}}, "grid.zip[0].kl.coef", "finite"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "search": {"kl.coef": {"choices": [0.1, True]}}},
     "search.kl.coef.choices", "expected a number, got a boolean (true)"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "search": {"ppo.lr": {"low": 1e-4, "high": float("inf")}}},
     "search.ppo.lr.high", "expected a finite number, got inf"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "search": {"ppo.lr": {"low": 1e-4, "high": 0.1,
                                                                            "step": float("nan")}}},
     "search.ppo.lr.step", "positive finite number"),
    # seeds: what every RNG a run seeds accepts
    ({"seeds": [0, 2**64]}, "seeds[1]", "expected an integer in [0, 2**32)"),
    ({"seeds": [2**32]}, "seeds[0]", "expected an integer in [0, 2**32)"),
    ({"seeds": [-1]}, "seeds[0]", "expected an integer in [0, 2**32)"),
    ({"seeds": [True]}, "seeds[0]", "expected an integer"),
    # every field's type before it is used
    ({"objective": {"metric": ["eval/gold"]}}, "objective.metric", "expected a metric name (a string), got a list"),
    ({"objective": {"metric": {"a": 1}}}, "objective.metric", "expected a metric name (a string), got a mapping"),
    ({"objective": {"direction": ["maximize"]}}, "objective.direction", "maximize or minimize"),
    ({"sampler": ["grid"]}, "sampler", "grid, tpe, random"),
    ({"description": ["a"]}, "description", "expected a string"),
    # one spelling per key
    ({"grid": {"kl.coef": [0.1], "kl": {"coef": [0.2]}}}, "grid.kl.coef",
     "given twice, as 'kl.coef' and as 'kl: {coef}' (one spelling per key)"),
    ({"base": dict(TINY, **{"kl": {"coef": 0.1}, "kl.coef": 0.2})}, "base.kl.coef", "one spelling per key"),
    ({"grid": {"zip": [{"kl.coef": [0.1, 0.2], "kl": {"coef": [0.3, 0.4]}}]}}, "grid.zip[0].kl.coef",
     "one spelling per key"),
    ({"grid": None, "sampler": "tpe", "n_trials": 3, "search": {"ppo.lr": {"low": 1e-4, "high": 0.1},
                                                               "ppo": {"lr": {"low": 1e-3, "high": 0.1}}}},
     "search.ppo.lr", "one spelling per key"),
    # odd characters are shown
    ({"grid": {"kl.coef\u200b": [0.1]}}, "grid.'kl.coef\\u200b'", "unknown config key (did you mean kl.coef?)"),
    ({"\u200bgrid": 1}, "'\\u200bgrid'", "unknown key (did you mean grid?)"),
    # the size, before a cell is built
    ({"grid": {"kl.horizon": list(range(1, 318)), "kl.coef": [i / 1000 for i in range(317)]}}, "grid",
     "100489 cells x 2 seeds = 200978 runs is more than 100000"),
    ({"grid": None, "sampler": "random", "n_trials": 10**9, "search": {"kl.coef": {"choices": [0.1]}}},
     "n_trials", "is more than 100000"),
    # impl=trl: TRL's refusals, per cell
    ({"base": dict(TINY, impl="trl"), "grid": {"advantage.level": ["token", "sequence"]}}, "grid.advantage.level",
     "'sequence' cannot be expressed by TRL's PPOTrainer (TRL's PPO is token level (GAE) only) "
     "(in cell advantage.level=sequence)"),
    ({"grid": {"impl": ["custom", "trl"], "kl.estimator": ["k1", "k2"]}}, "grid.kl.estimator",
     "(in cell impl=trl kl.estimator=k2)"),
    ({"base": dict(TINY, **{"ppo.entropy_coef": 0.01}), "grid": {"impl": ["custom", "trl"]}},
     "base.ppo.entropy_coef", "TRL has no entropy bonus) (in cell impl=trl)"),
    ({"base": dict(TINY, impl="trl", **{"kl.placement": "loss", "kl.estimator": "k3"}), "grid": {"kl.coef": [0.1]}},
     "base.kl.placement", "cannot be expressed by TRL's PPOTrainer"),
    ({"base": dict(TINY, impl="trl"), "grid": None, "sampler": "tpe", "n_trials": 2,
      "search": {"loss.agg": {"choices": ["token-mean", "seq-mean-token-sum"]}}}, "search.loss.agg", "TRL"),
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


# ---- strict input: the file, the size before the cells, the shipped specs unchanged ----------------

# The content hashes of the shipped specs: a change here renames their studies (an existing study
# would be refused as "changed"), so it is deliberate or a bug.
SHIPPED_HASHES = {
    "levels.yaml": "107d046a8576085d500b44751b4f8bacc9b057d8ae5ed6527c17fd8a185b5ce3",
    "clipping.yaml": "d6d37c0e79ed8a39ae54c46b53f5168347e66410552a5b0cde31660f1a288cc0",
    "baselines.yaml": "2103ac1404e9163a4c14752a5c7dffe326058e31f86124e4bc9b2a66ad15f147",
    "core.yaml": "aa4a7a6b897241744f45f29eefa7edf90e325cde5f6e1f68e51c5756f88ade06",
    "custom_vs_trl.yaml": "84da693a3625eb0cbdba870239a917a69f55c447df802af48f39132a80625000",
    "overopt.yaml": "75822a2469d31a856accb7508fbfac1cc3e5b3b9ca4a46b71925b1296f84650d",
    "quick.yaml": "2f2fd1ff39c20ea3b8d4d62d6ec455c0e0f160338b1e278d3e8b00dddcb7f18a",
    "variance.yaml": "b2470f2470d41511f6a7288037f1bd3619f445ac319f142ed025dffc6eb76a5a",
    "loss_modes.yaml": "3c1dc92d50749c8b4f169cc1dd83e055dd806332b1075dd84f693c6022a38368",
    "offpolicy.yaml": "f8c017060635e8c8dfc1efdf97213433c7bacc0f23bc818501c6ccd6db7c8c86",
}


def test_shipped_specs_keep_their_hashes_and_cells():
    import yaml

    root = Path(__file__).resolve().parents[3] / "ablations"
    assert {f.name for f in root.glob("*.yaml")} == set(SHIPPED_HASHES)
    for name, digest in SHIPPED_HASHES.items():
        s = load_spec(root / name)
        assert s.hash == digest, name
        same = parse_spec(yaml.safe_load((root / name).read_text()), root / name)  # the lax reader of before
        assert (same.hash, same.cells, same.base, same.seeds) == (s.hash, s.cells, s.base, s.seeds), name
    assert load_spec(root / "quick.yaml").study_name == "quick-2f2fd1ff"


def _refused_file(tmp_path, body: str | bytes) -> SpecError:
    p = tmp_path / "s.yaml"
    p.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert "\n" not in str(e.value)
    return e.value


GOOD = "name: t\nbase: {train.iterations: 2}\ngrid: {kl.coef: [0.0, 0.2]}\nseeds: [0]\n"


def test_a_spec_file_is_read_strictly(tmp_path):
    body = GOOD.encode() + b"# caf\xe9\n"
    e = _refused_file(tmp_path, body)
    assert (e.key, e.problem) == ("(file)", f"not UTF-8 text (byte 0xe9 at offset {body.index(0xE9)})")
    e = _refused_file(tmp_path, GOOD.replace("grid: {kl.coef: [0.0, 0.2]}", "grid:\n  kl.coef: [0.1]\n  kl.coef: [0.2]"))
    assert (e.key, e.problem) == ("line 5", "duplicate key 'grid.kl.coef'")
    e = _refused_file(tmp_path, GOOD + "seeds: [1]\n")
    assert (e.key, e.problem) == ("line 5", "duplicate key 'seeds'")
    e = _refused_file(tmp_path, GOOD.replace("[0.0, 0.2]}", "&a [0.0, 0.2], ppo.clip_eps: *a}"))
    assert (e.key, e.problem) == ("line 3", "YAML aliases (*a) are not supported")
    e = _refused_file(tmp_path, "name: t\ngrid: {kl.coef: [0.1]\n")
    assert e.key.startswith("line ") and e.problem.startswith("not valid YAML: ")  # as before


def test_a_huge_grid_is_refused_before_any_cell_is_built(monkeypatch):
    import harness.sweep.spec as spec_module

    def enumerate_cells(*a, **k):
        raise AssertionError("the grid's cells were enumerated before its size was checked")

    monkeypatch.setattr(spec_module, "_enumerate_cells", enumerate_cells)
    keys = ["kl.coef", "ppo.clip_eps", "ppo.lr", "ppo.vf_coef", "ppo.entropy_coef", "advantage.lam",
            "rollout.temperature"]
    grid = {k: [round(0.01 + i / 100, 2) for i in range(10)] for k in keys}  # 10^7 cells
    with pytest.raises(SpecError) as e:
        parse_spec(spec(grid=grid))
    assert e.value.key == "grid" and e.value.problem.startswith("10000000 cells x 2 seeds = 20000000 runs")
    zipped = {"zip": [{"kl.coef": [i / 1000 for i in range(400)], "kl.horizon": list(range(1, 401))}],
              "ppo.lr": [i / 10000 + 1e-4 for i in range(300)]}  # a zip group counts once: 400 x 300
    with pytest.raises(SpecError, match="120000 cells"):
        parse_spec(spec(grid=zipped, seeds=[0]))


def test_trl_cells_that_trl_can_express_pass():
    s = parse_spec(spec(grid={"impl": ["custom", "trl"], "kl.estimator": ["k1", "k3"]}))
    assert len(s.cells) == 4


def test_spec_reuses_the_configs_did_you_mean():
    import harness.sweep.spec as spec_module

    assert "difflib" not in vars(spec_module)
    with pytest.raises(SpecError, match=r"unknown config key \(did you mean kl.coef\?\)"):
        parse_spec(spec(grid={"kl.coeff": [0.1]}))
