"""Malformed spec files: each exits 2 with one line naming the file and the key, and creates nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.errors import InputError

HEAD = """\
name: bad
base:
  train.iterations: 2
  rollout.batch_size: 8
  rollout.group_size: 2
  ppo.minibatches: 2
"""

# (file body, key named in the error)
MALFORMED = {
    "unknown_top_key": (HEAD + "grid: {kl.coef: [0.1]}\nseeds: [0]\nsweeps: 3\n", "sweeps"),
    "unknown_dotted_key": (HEAD + "grid: {kl.coeff: [0.1, 0.2]}\nseeds: [0]\n", "grid.kl.coeff"),
    "unknown_nested_key": (HEAD + "  ppo:\n    clip: 0.1\ngrid: {kl.coef: [0.1]}\nseeds: [0]\n", "base.ppo.clip"),
    "unknown_section": (HEAD + "grid:\n  optim:\n    lr: [0.1]\nseeds: [0]\n", "grid.optim.lr"),
    "empty_axis": (HEAD + "grid: {kl.coef: []}\nseeds: [0]\n", "grid.kl.coef"),
    "axis_not_a_list": (HEAD + "grid: {kl.coef: 0.1}\nseeds: [0]\n", "grid.kl.coef"),
    "wrong_type": (HEAD + "grid: {ppo.epochs: [two]}\nseeds: [0]\n", "grid.ppo.epochs"),
    "refused_value": (HEAD + "grid: {ppo.clip_eps: [0.2, 2.0]}\nseeds: [0]\n", "grid.ppo.clip_eps"),
    "refused_literal": (HEAD + "grid: {advantage.level: [token, episode]}\nseeds: [0]\n", "grid.advantage.level"),
    "cross_key_refusal": (HEAD + "grid: {ppo.minibatches: [2, 3]}\nseeds: [0]\n", "grid.ppo.minibatches"),
    "duplicate_cells": (HEAD + "grid: {kl.coef: [0, 0.0]}\nseeds: [0]\n", "grid"),
    "zip_unequal": (HEAD + "grid:\n  zip:\n    - {kl.coef: [0.1, 0.2], ppo.lr: [0.001]}\nseeds: [0]\n", "grid.zip[0]"),
    "no_seeds": (HEAD + "grid: {kl.coef: [0.1]}\n", "seeds"),
    "seed_in_grid": (HEAD + "grid: {seed: [0, 1]}\nseeds: [0]\n", "grid.seed"),
    "bad_sampler": (HEAD + "grid: {kl.coef: [0.1]}\nseeds: [0]\nsampler: annealing\n", "sampler"),
    "tpe_without_n_trials": (HEAD + "sampler: tpe\nsearch: {ppo.lr: {low: 0.001, high: 0.01}}\nseeds: [0]\n",
                             "n_trials"),
    "bad_range": (HEAD + "sampler: random\nn_trials: 3\nsearch: {kl.coef: {low: 0.5, high: 0.1}}\nseeds: [0]\n",
                  "search.kl.coef"),
    "bad_objective": (HEAD + "grid: {kl.coef: [0.1]}\nseeds: [0]\nobjective: {metric: eval/reward}\n",
                      "objective.metric"),
    "prune_on_grid": (HEAD + "grid: {kl.coef: [0.1]}\nseeds: [0]\nprune: true\n", "prune"),
    "missing_name": ("grid: {kl.coef: [0.1]}\nseeds: [0]\n", "name"),
    "not_yaml": (HEAD + "grid: {kl.coef: [0.1\nseeds: [0]\n", "line "),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_spec_exits_2_naming_the_key_and_creates_nothing(case, tmp_path, monkeypatch, capsys):
    from harness.sweep.coordinator import run_sweep

    body, key = MALFORMED[case]
    spec = tmp_path / f"{case}.yaml"
    spec.write_text(body)
    monkeypatch.chdir(tmp_path)  # the default runs dir ("runs") would appear here
    with pytest.raises(InputError) as e:
        run_sweep(spec, workers=2)
    err = str(e.value)
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"{spec}: {key}"), err
    assert [p.name for p in tmp_path.iterdir()] == [spec.name]  # no runs/, no journal, no mlflow.db


def test_malformed_spec_exit_code_from_a_real_process(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(MALFORMED["unknown_dotted_key"][0])
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "sweep", str(spec), "--runs-dir", str(tmp_path / "runs"),
         "--storage", str(tmp_path / "j.journal")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: {spec}: grid.kl.coeff: unknown config key (did you mean kl.coef?)"
    )
    assert out.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]


def test_bad_worker_count_is_a_usage_error(tmp_path, capsys):
    from harness.sweep.coordinator import run_sweep

    spec = tmp_path / "ok.yaml"
    spec.write_text(HEAD + "grid: {kl.coef: [0.1]}\nseeds: [0]\n")
    with pytest.raises(InputError, match="--workers"):
        run_sweep(spec, workers=0, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
