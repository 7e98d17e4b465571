"""`compare`: every impl per seed at equal settings -> table with Student-t CIs, saved as Markdown + CSV.

Most tests replace ``execute`` by a stub that records the configs it gets and returns known histories,
so the table can be checked by hand; the last one runs ``ppo-harness compare --impl custom,trl-grpo``
for real and checks the table against the MLflow runs.
"""

from __future__ import annotations

import pandas as pd
import pytest

import harness.run
from harness.compare import check_comparable, compare, run_value
from harness.recording import RunResult

GOLD = {("custom", 0): 0.5, ("custom", 1): 0.6, ("custom", 2): 0.7, ("trl", 0): 0.52, ("trl", 1): 0.58, ("trl", 2): 0.71}


@pytest.fixture
def stub_execute(monkeypatch):
    calls = []

    def execute(cfg, store, *, experiment, run_name, tags, progress):
        calls.append((cfg, experiment, run_name, tags))
        g = GOLD[(cfg.impl, cfg.seed)]
        history = {"eval/gold": [(0, 0.0), (2, g)], "eval/kl": [(0, 0.0), (2, 10 * g)],
                   "perf/tokens_per_s": [(1, 100.0), (2, 300.0)]}
        return RunResult(run_id=f"{cfg.impl}{cfg.seed}", final={k: v[-1][1] for k, v in history.items()},
                         history=history)

    monkeypatch.setattr(harness.run, "execute", execute)
    return calls


def test_compare_trains_both_impls_per_seed_at_equal_settings_and_saves_the_table(stub_execute, tmp_path):
    lines = []
    res = compare("sentiment", 3, {"train.iterations": 2, "ppo.lr": 3e-4}, store=None, out=tmp_path / "out",
                  progress=False, echo=lines.append)
    assert [(c.impl, c.seed) for c, *_ in stub_execute] == [(i, s) for s in range(3) for i in ("custom", "trl")]
    first, second = stub_execute[0][0], stub_execute[1][0]
    assert first.model_copy(update={"impl": "trl"}) == second  # identical settings but the implementation
    assert first.ppo.lr == 3e-4 and first.train.iterations == 2
    assert len({c[3]["compare"] for c in stub_execute}) == 1 and len(lines) == 6 and lines[-1].startswith("[6/6] trl")

    t = res.table.set_index(["metric", "impl"])
    assert t.loc[("eval/gold", "custom"), "point"] == pytest.approx(0.6)
    assert t.loc[("eval/kl", "trl"), "point"] == pytest.approx(18.1 / 3)
    assert t.loc[("perf/tokens_per_s", "trl"), "point"] == pytest.approx(200.0)  # mean over iterations
    lo, hi = t.loc[("eval/gold", "custom"), ["low", "high"]]
    # Student's t-interval by hand: mean 0.6, sd 0.1 over 3 seeds, t_{2, 0.975} = 4.3027
    half = 4.302653 * 0.1 / 3**0.5
    assert (lo, hi) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-6)
    assert res.overlap("eval/gold")

    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| eval/gold | 0.600 [" in md and "CIs overlap" in md and "ppo.lr=0.0003" in md
    csv = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert set(csv.columns) >= {"metric", "impl", "n", "point", "low", "high"} and len(csv) == 6
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 6


def test_compare_refuses_settings_trl_cannot_express_before_any_run(stub_execute):
    with pytest.raises(ValueError, match="'advantage.level'"):
        compare("sentiment", 2, {"advantage.level": "sequence"}, store=None, progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        check_comparable("sentiment", 0, {})
    assert stub_execute == []


def test_run_value_is_the_last_eval_or_the_mean_over_iterations():
    h = {"eval/gold": [(0, 0.1), (5, 0.4)], "perf/tokens_per_s": [(1, 10.0), (2, 30.0)]}
    assert run_value(h, "eval/gold", "final") == 0.4
    assert run_value(h, "perf/tokens_per_s", "mean") == 20.0
    assert run_value(h, "eval/kl", "final") != run_value(h, "eval/kl", "final")  # NaN when never logged


# ---- --impl: which implementations, each against the first -----------------------------------------

def test_parse_impls_refuses_unknown_duplicate_and_single_names_naming_impl():
    from harness.compare import parse_impls

    assert parse_impls("custom,trl-grpo") == ("custom", "trl-grpo")
    assert parse_impls(" custom , trl ") == ("custom", "trl")
    for bad, why in (("custom,nope", "unknown"), ("custom,custom", "twice"), ("custom", "at least two"), ("", "unknown")):
        with pytest.raises(ValueError, match=why) as e:
            parse_impls(bad)
        assert str(e.value).startswith("--impl:") and "\n" not in str(e.value)


def test_compare_three_impls_sets_each_against_the_first(stub_execute, monkeypatch, tmp_path):
    import harness.compare as C

    monkeypatch.setitem(GOLD, ("trl-rloo", 0), 0.9)
    monkeypatch.setitem(GOLD, ("trl-rloo", 1), 0.95)
    monkeypatch.setitem(GOLD, ("trl-rloo", 2), 0.92)
    monkeypatch.setattr(C, "check_expressible", lambda cfg: None)  # the stub trains anything
    res = compare("sentiment", 3, {}, store=None, progress=False, echo=lambda _: None,
                  impls=("custom", "trl", "trl-rloo"), out=tmp_path)
    assert [c.impl for c, *_ in stub_execute[:3]] == ["custom", "trl", "trl-rloo"]
    assert res.overlap("eval/gold", "trl") and not res.overlap("eval/gold", "trl-rloo")
    md = res.markdown()
    assert "| metric | custom: mean [95% CI] | TRL: mean [95% CI] | TRL RLOO: mean [95% CI] |" in md
    assert "TRL vs custom: CIs overlap | TRL RLOO vs custom: CIs overlap |" in md
    gold = next(line for line in md.splitlines() if line.startswith("| eval/gold |"))
    assert gold.endswith("| yes | NO |")
    assert set(pd.read_csv(tmp_path / "compare.csv").impl) == {"custom", "trl", "trl-rloo"}


def test_compare_refuses_impl_in_set_and_bad_impls_before_any_run(stub_execute):
    with pytest.raises(ValueError, match="--set impl"):
        compare("sentiment", 2, {"impl": "trl"}, store=None, progress=False)
    with pytest.raises(ValueError, match="--impl"):
        compare("sentiment", 2, {}, store=None, progress=False, impls=("custom",))
    assert stub_execute == []


def test_compare_custom_vs_trl_grpo_checks_grpo_expressibility(stub_execute):
    pytest.importorskip("baselines.trl_grpo")
    # token-level advantages have no GRPOTrainer equivalent: refused by the GRPO baseline, naming the key
    with pytest.raises(ValueError, match="advantage.level"):
        compare("sentiment", 2, {"advantage.level": "token"}, store=None, progress=False, impls=("custom", "trl-grpo"))
    assert stub_execute == []
    ok = {"advantage.level": "sequence", "advantage.baseline": "group_norm", "advantage.whiten": False,
          "kl.placement": "loss", "kl.estimator": "k3"}  # GRPO: no batch rescaling, k3 KL in the loss
    assert check_comparable("sentiment", 2, ok, ("custom", "trl-grpo")) == [0, 1]


@pytest.mark.parametrize("impl, names", [("custom", "--impl"), ("custom,bogus", "--impl"), ("trl,trl", "--impl")])
def test_cli_compare_impl_usage_errors_are_one_line_exit_2(impl, names, capsys, tmp_path, monkeypatch):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["compare", "--impl", impl, "--seeds", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and names in err[0] and err[0].startswith("error: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_compare_custom_vs_trl_grpo_trains_both_for_real_and_tabulates_their_mlflow_runs(tmp_path):
    """The real path: ``ppo-harness compare --impl custom,trl-grpo`` trains both (no stand-in for execute);
    the table's numbers are the final eval/gold and eval/kl of the runs MLflow holds."""
    from harness.tracking import Store
    from tests.conftest import run_cli, tiny_args
    from tests.smoke.test_trl_grpo_baseline import GRPO, as_cli

    out = tmp_path / "out"
    r = run_cli("compare", "--impl", "custom,trl-grpo", "--seeds", "2", *tiny_args(as_cli(GRPO)),
                "--runs-dir", str(tmp_path / "runs"), "--out", str(out), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(zip(runs.impl, runs.seed, strict=True)) == [("custom", 0), ("custom", 1), ("trl-grpo", 0),
                                                              ("trl-grpo", 1)]
    store = Store(tmp_path / "runs")
    for row in runs.to_dict("records"):
        run = store.get_run(row["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["impl"] == row["impl"]
        assert run.data.params["seed"] == str(row["seed"])
        assert row["eval/gold"] == pytest.approx(run.data.metrics["eval/gold"])
        assert row["eval/kl"] == pytest.approx(run.data.metrics["eval/kl"])
    table = pd.read_csv(out / "compare.csv")
    for impl in ("custom", "trl-grpo"):
        got = table[(table.metric == "eval/gold") & (table.impl == impl)].iloc[0]
        assert got.point == pytest.approx(runs.loc[runs.impl == impl, "eval/gold"].mean())
    assert "custom vs TRL GRPO" in (out / "compare.md").read_text()
