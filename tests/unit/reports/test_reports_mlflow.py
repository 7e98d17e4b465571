"""collect + make_report / build_report against a real SQLite MLflow store holding a schema-correct fake sweep.

The numbers in the written tables are checked against IQMs recomputed independently from
``Store.search_runs`` (scipy's trim_mean over the child runs' final metrics).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import AXES, fake_sweep, write_sweep
from scipy.stats import trim_mean

from harness.tracking import Store
from reports import report
from reports.collect import ReportError, collect, parse_value

NAME = "quick"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    s = Store(root)
    # 8 children: kl.coef x advantage.level x 2 seeds (clip and batch fixed), plus 1 FAILED child.
    runs = fake_sweep(seeds=2, iterations=6, eval_every=3, probe_every=2, clip=(0.2,), kl=(0.02, 0.1),
                      batch=(16,), levels=("token", "sequence"), trl_cells=0, failed=1)  # fmt: skip
    assert sum(r.status == "FINISHED" for r in runs) == 8
    s.parent_id = write_sweep(s, NAME, runs)
    # An experiment whose only child failed, and plain `ppo-harness train` runs without a parent.
    write_sweep(s, "all-failed", [r for r in runs if r.status == "FAILED"])
    for coef in (0.02, 0.1):
        run = s.start_run("ppo-harness", params={"kl.coef": coef, "seed": 0, "impl": "custom",
                                                 "advantage.level": "token"})  # fmt: skip
        for step in range(3):
            run.log_metrics(
                {"eval/gold": 0.1 * step + coef, "eval/kl": 0.2 * step, "episodes": 16 * step}, step
            )
        run.end()
    return s


@pytest.fixture(scope="module")
def built(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert report.make_report(experiment=NAME, runs_dir=store.runs_dir, out=out, style="icml") == out / "report.md"
    return out


def _children(store: Store) -> pd.DataFrame:
    df = store.search_runs(experiments=[NAME])
    return df[(df["tags.sweep.role"] == "child") & (df["status"] == "FINISHED")]


def test_collect_reads_the_sweep_layout(store):
    sweep = collect(store, experiment=NAME)
    assert sweep.parent_run_id == store.parent_id
    assert sweep.axes == AXES
    assert sweep.factors == ["kl.coef", "advantage.level"]  # clip and batch have one level
    assert len(sweep.runs) == 8 and sweep.excluded == {"FAILED": 1}
    r = sweep.runs
    assert r["kl.coef"].dtype == float and r["rollout.batch_size"].dtype.kind == "i"
    assert set(r["advantage"]) == {"token", "sequence/rloo"} and set(r["seed"]) == {0, 1}
    assert r["cell"].nunique() == 4
    # final values = the last logged evaluation (iteration 6)
    child = _children(store).set_index("run_id")
    np.testing.assert_allclose(
        r.set_index("run_id")["eval/gold"], child.loc[r["run_id"], "metrics.eval/gold"]
    )
    c = sweep.curves
    assert {"run_id", "kl.coef", "advantage.level", "step", "episodes", "metric", "value"} <= set(c.columns)
    gold = c[c["metric"] == "eval/gold"]
    assert sorted(gold["step"].unique()) == [0, 3, 6] and len(gold) == 8 * 3
    assert (gold["episodes"] == gold["step"] * 16).all()
    every = sorted(c.loc[c["metric"] == "policy/clipfrac_avg", "step"].unique())
    assert every == list(range(7))  # train metrics: every iteration


def test_collect_by_spec_and_by_parent_run(store, tmp_path):
    spec = tmp_path / "quick.yaml"
    spec.write_text(f"# header comment\nname: {NAME}\nseeds: 2\ngrid:\n  kl.coef: [0.02, 0.1]\n")
    assert collect(store, spec=spec).parent_run_id == store.parent_id
    by_parent = collect(store, parent_run=store.parent_id)
    assert by_parent.name == NAME and len(by_parent.runs) == 8


def test_collect_plain_runs_infers_axes(store):
    sweep = collect(store, experiment="ppo-harness")
    assert sweep.parent_run_id is None and sweep.axes == ["kl.coef"] and len(sweep.runs) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"experiment": "nope"}, "no MLflow experiment 'nope'"),
        ({"parent_run": "0" * 32}, "no MLflow run with id"),
        ({"experiment": "all-failed"}, "has no finished runs (1 failed)"),
        ({"spec": "missing.yaml"}, "ablation spec 'missing.yaml' not found"),
        ({}, "give exactly one of"),
    ],
)
def test_collect_errors_are_one_line(store, kwargs, message):
    with pytest.raises(ReportError) as err:
        collect(store, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_spec_without_name(store, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("grid: {}\n")
    with pytest.raises(ReportError, match="has no 'name' field"):
        collect(store, spec=spec)


def test_parse_value():
    assert parse_value("0.2") == 0.2 and parse_value("16") == 16 and parse_value("token") == "token"
    assert parse_value("None") == "None" and parse_value(None) is None


def test_every_output_file_exists(built):
    for rel in ("report.md", "report.html", "tables/final_by_factor.csv", "tables/final_by_factor.md",
                "tables/final_by_factor.tex", "tables/poi_advantage.csv", "tables/poi_advantage.md",
                "tables/poi_advantage.tex", "tables/runs.csv", "tables/effects.csv", "tables/effects.md",
                "tables/effects.tex"):  # fmt: skip
        assert (built / rel).is_file(), rel
    drawn = ["fig1_learning_curves", "fig2_final_reward", "fig3_reward_kl_frontier",
             "fig4_gradient_variance", "fig7_training_health", "fig8_overoptimisation"]  # fmt: skip
    for stem in drawn:
        assert (built / "figures" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        pdf = (built / "figures" / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/Type3" not in pdf
    # one clip level and no TRL runs: those figures are skipped and the report says why
    assert not (built / "figures" / "fig5_sensitivity.png").exists()
    assert not (built / "figures" / "fig6_custom_vs_trl.png").exists()
    md = (built / "report.md").read_text()
    assert "a single ppo.clip_eps level" in md and "no cell run by both custom and another implementation" in md
    assert md.count("![Figure") == len(drawn) and "Left out: 1 failed child run." in md


def test_table_numbers_equal_those_recomputed_from_search_runs(store, built):
    table = pd.read_csv(built / "tables" / "final_by_factor.csv")
    children = _children(store)
    assert set(table["factor"]) == {"kl.coef", "advantage.level"}
    assert set(table["metric"]) == {"eval/gold", "eval/kl", "perf/tokens_per_s"}
    for row in table.itertuples(index=False):
        level = children[f"tags.axis.{row.factor}"].map(parse_value)
        values = children.loc[level == parse_value(str(row.level)), f"metrics.{row.metric}"].astype(float)
        if row.metric == "perf/tokens_per_s":  # a run's throughput: the mean over its iterations
            ids = children.loc[level == parse_value(str(row.level)), "run_id"]
            values = pd.Series([np.mean([v for _, v in store.metric_history(i, row.metric)]) for i in ids])
        assert row.n == len(values) == 4
        assert row.iqm == pytest.approx(trim_mean(values, 0.25), rel=1e-12)
        assert row.mean == pytest.approx(values.mean(), rel=1e-12)
        assert row.ci_low <= row.iqm <= row.ci_high
    # the Markdown table shows the same numbers, formatted
    md = (built / "tables" / "final_by_factor.md").read_text()
    gold = table[(table["factor"] == "kl.coef") & (table["metric"] == "eval/gold")].iloc[0]
    from reports.stats import Interval

    assert Interval(gold.iqm, gold.ci_low, gold.ci_high, int(gold.n)).fmt() in md


def test_report_is_logged_to_the_parent_run(store, built):
    names = {a.path for a in store.client.list_artifacts(store.parent_id, "report")}
    assert {"report/report.md", "report/report.html", "report/figures", "report/tables"} <= names
    figs = {a.path for a in store.client.list_artifacts(store.parent_id, "report/figures")}
    assert "report/figures/fig1_learning_curves.pdf" in figs


def test_build_report_by_parent_run_rejects_unknown_style(store, tmp_path):
    with pytest.raises(ReportError, match="unknown style"):
        report.build_report(report.Source(parent_run=store.parent_id), tmp_path, "acl", store)


def test_make_report_errors(store, tmp_path):
    """Bad input is a ReportError (an InputError: exit 2 from the CLI), one line, nothing written."""
    from harness.errors import EXIT_INPUT, InputError

    def refused(**kw) -> str:
        with pytest.raises(ReportError) as e:
            report.make_report(**kw)
        assert isinstance(e.value, InputError) and e.value.exit_code == EXIT_INPUT
        assert "\n" not in str(e.value)
        return str(e.value)

    assert refused(experiment="nope", runs_dir=store.runs_dir).startswith("no MLflow experiment 'nope'")
    assert refused(runs_dir=store.runs_dir) == "give exactly one of: SPEC, --experiment NAME, --parent-run ID"
    assert refused(experiment=NAME, parent_run="abc", runs_dir=store.runs_dir).startswith("give exactly one of")
    assert refused(experiment=NAME, runs_dir=tmp_path / "empty").startswith("no MLflow store at")
    assert refused(parent_run="deadbeef", runs_dir=store.runs_dir).startswith("no MLflow run with id 'deadbeef'")
    assert "unknown style 'acl'" in refused(experiment=NAME, style="acl", out=tmp_path / "out", runs_dir=store.runs_dir)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "empty").exists()


def test_source_parse(tmp_path):
    assert report.Source.parse("ablations/quick.yaml").spec == "ablations/quick.yaml"
    assert report.Source.parse("quick").experiment == "quick"
    src = report.Source(parent_run="abc")
    assert report.Source.parse(src) is src
    assert json.loads(json.dumps(AXES)) == AXES


def test_zipped_advantage_level_and_baseline_are_one_factor():
    """baselines.yaml's zip group (level, baseline) becomes the single factor 'advantage'; a baseline
    that does not vary leaves advantage.level a factor of its own."""
    import pandas as pd

    from reports.collect import Sweep
    from reports.labels import advantage_label

    zipped = [("token", "rloo"), ("sequence", "none"), ("sequence", "rloo"), ("sequence", "group_norm")]
    runs = pd.DataFrame(
        [
            {"advantage.level": lvl, "advantage.baseline": b, "kl.coef": c, "seed": s}
            for lvl, b in zipped
            for c in (0.0, 0.1)
            for s in (0, 1)
        ]
    )
    runs["advantage"] = advantage_label(runs)
    sweep = Sweep("baselines", None, ["kl.coef", "advantage.level", "advantage.baseline"], runs)
    assert sweep.factors == ["kl.coef", "advantage"]
    assert sorted(runs["advantage"].unique()) == [
        "sequence/group_norm",
        "sequence/none",
        "sequence/rloo",
        "token",
    ]

    one_baseline = runs[runs["advantage.baseline"] == "rloo"].copy()
    sweep = Sweep("levels", None, ["advantage.level", "advantage.baseline", "kl.coef"], one_baseline)
    assert sweep.factors == ["advantage.level", "kl.coef"]


def test_report_of_a_zipped_level_baseline_sweep_has_one_advantage_factor(tmp_path):
    """A baselines.yaml-style sweep (level and baseline in one zip group) through MLflow and
    build_report: one 'advantage' factor with a level per (level, baseline) pair, no pooled
    'advantage.baseline' panel or row."""
    import copy

    s = Store(tmp_path / "runs")
    runs = [r for r in fake_sweep(seeds=2, iterations=4, eval_every=2, probe_every=2, clip=(0.2,), kl=(0.05,),
                                  batch=(16,), levels=("token", "sequence"), trl_cells=0, failed=0)]  # fmt: skip
    for r in [r for r in runs if r.params["advantage.level"] == "sequence"]:
        other = copy.deepcopy(r)
        other.params["advantage.baseline"] = other.tags["axis.advantage.baseline"] = "none"
        r.tags["axis.advantage.baseline"] = "rloo"
        runs.append(other)
    for r in runs:
        r.tags.setdefault("axis.advantage.baseline", "rloo")
    write_sweep(s, "baselines", runs, axes=["advantage.level", "advantage.baseline"])
    sweep = collect(s, experiment="baselines")
    assert sweep.factors == ["advantage"]
    out = tmp_path / "report"
    assert report.make_report(experiment="baselines", runs_dir=s.runs_dir, out=out) == out / "report.md"
    table = pd.read_csv(out / "tables" / "final_by_factor.csv")
    assert set(table["factor"]) == {"advantage"}
    assert set(table["level"]) == {"token", "sequence/rloo", "sequence/none"}
    assert (table[table["metric"] == "eval/gold"]["n"] == 2).all()  # 2 seeds per pair, nothing pooled
    assert (out / "figures" / "fig2_final_reward.png").is_file()
