"""`ppo-harness reproduce`: the list, bad input, and one claim end to end at tiny size (real sweep, MLflow)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.cli import main
from reports.claims import CLAIMS
from tests.conftest import TINY, run_cli


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_list_prints_every_claim_its_paper_and_cost(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["reproduce", "--list"], capsys)
    assert code == 0 and err == ""
    for name, claim in CLAIMS.items():
        assert f"\n{name}\n" in f"\n{out}" and claim.paper in out
    assert out.count("  cost      ") == len(CLAIMS) and out.count("  runs      ") == len(CLAIMS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, names", [
    (["reproduce", "clip-hgher"], "CLAIM 'clip-hgher': no such claim (did you mean 'clip-higher'?)"),
    (["reproduce", "nope"], "CLAIM 'nope'"),
    (["reproduce", "clip-higher", "--seeds", "1"], "--seeds: expected 2 to 1000"),
    (["reproduce", "--seeds", "0"], "--seeds"),
    (["reproduce", "clip-higher", "--seeds", "x"], "'--seeds'"),
    (["reproduce", "clip-higher", "--workers", "0"], "--workers"),
    (["reproduce", "clip-higher", "--spec", "missing.yaml"], "--spec"),
    (["reproduce", "--spec", "own.yaml"], "--spec: name the CLAIM"),
    (["reproduce", "clip-higher", "--spec", "own.yaml"], "lacks ppo.clip_eps_high"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_left(argv, names, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own.yaml").write_text(yaml.safe_dump({"name": "own", "base": dict(TINY), "grid": {"kl.coef": [0.0]},
                                                       "seeds": [0]}))
    code, out, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own.yaml"]  # no runs folder, no report


@pytest.mark.slow
def test_one_claim_end_to_end_at_tiny_size(tmp_path):
    """variance-1-over-b on its own tiny variant: 2 batch sizes x 2 baselines x 2 seeds, through the sweep."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny-variance",
        "base": {**{k: v for k, v in TINY.items() if k != "rollout.batch_size"}, "train.iterations": 1, "probe.every": 1, "probe.microbatches": 4, "advantage.level": "sequence",
                 "advantage.whiten": False, "task.name": "sentiment"},
        "grid": {"rollout.batch_size": [8, 16], "advantage.baseline": ["none", "rloo"]},
        "seeds": [0, 1],
    }, sort_keys=False))
    out = tmp_path / "claims"
    r = run_cli("reproduce", "variance-1-over-b", "--spec", str(spec), "--workers", "2", "--runs-dir",
                str(tmp_path / "runs"), "--out", str(out), cwd=tmp_path, timeout=600)
    print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
    assert r.returncode == 0
    table = pd.read_csv(out / "claims.csv")
    assert list(table["claim"]) == ["variance-1-over-b"] * 2 and set(table["seeds"]) == {2}
    assert set(table["verdict"].str.split().str[0]) <= {"reproduced", "contradicted", "unresolved"}
    assert table["wall time"].str.fullmatch(r"\d+m\d\ds").all()
    # the slope by an independent route: MLflow's own client, run by run
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "tiny-variance"]
    bv: dict[tuple, float] = {}
    for run in client.search_runs([exp.experiment_id]):
        if run.data.tags.get("sweep.role") == "child" and run.data.params.get("advantage.baseline") == "rloo":
            (m,) = client.get_metric_history(run.info.run_id, "grad/batch_variance")
            bv[(int(run.data.tags["seed"]), int(run.data.params["rollout.batch_size"]))] = m.value
    slopes = [(math.log(bv[(s, 16)]) - math.log(bv[(s, 8)])) / math.log(2) for s in (0, 1)]
    assert table.loc[0, "estimate"] == pytest.approx(np.mean(slopes), rel=1e-9)
    report = (out / "variance-1-over-b" / "report.md").read_text()
    assert "## Claims" in report and "slope of ln tr(Sigma)/B" in report
    assert "variance-1-over-b" in (out / "claims.md").read_text()
    assert "| variance-1-over-b |" in r.stdout
