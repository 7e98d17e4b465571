"""reports.diagnostics.cell_table on a hand-made runs frame."""

from __future__ import annotations

import math

import pandas as pd

from reports.diagnostics import cell_table


def test_cell_table_means_sds_and_only_varying_diagnostics():
    """Two cells x two seeds: gold 0.1 / 0.3 -> '0.2 [0.141]'; offpolicy/kl_k3 differs between cells (shown),
    policy/cov_frac is the same everywhere (left out), a key nobody logged is absent."""
    runs = pd.DataFrame({
        "cell": ["a", "a", "b", "b"],
        "eval/gold": [0.1, 0.3, 0.5, 0.5],
        "eval/kl": [1.0, 1.0, 2.0, 4.0],
        "offpolicy/kl_k3": [0.0, 0.0, 0.01, 0.03],
        "policy/cov_frac": [0.1, 0.1, 0.1, 0.1],
    })
    t = cell_table(runs)
    assert list(t["cell"]) == ["a", "b"] and list(t["n"]) == [2, 2]
    assert t.loc[0, "held-out gold reward"] == f"0.2 [{math.sqrt(0.02):.3g}]"
    assert t.loc[1, "held-out KL to reference"] == f"3 [{math.sqrt(2):.3g}]"
    assert t.loc[1, "rollout-vs-train KL (k3)"] == f"0.02 [{math.sqrt(2e-4):.3g}]"
    assert "covariance-selected fraction" not in t.columns
    assert cell_table(runs[runs["cell"] == "a"]) is None
    runs["policy/cov_frac"] = [float("nan"), float("nan"), 0.1, 0.3]  # logged by one cell only: shown
    assert list(cell_table(runs)["covariance-selected fraction"]) == ["-", "0.2 [0.141]"]


def test_cell_table_takes_a_diagnostics_mean_over_iterations_from_the_curves():
    """With histories, run r1's k3 is the mean of its iterations (0.1, 0.3 -> 0.2), not its final value."""
    runs = pd.DataFrame({"run_id": ["r1", "r2"], "cell": ["a", "b"], "eval/gold": [0.1, 0.2],
                         "offpolicy/kl_k3": [0.3, 0.0]})
    curves = pd.DataFrame({"run_id": ["r1", "r1", "r2", "r2"], "metric": ["offpolicy/kl_k3"] * 4,
                           "value": [0.1, 0.3, 0.0, 0.0]})
    t = cell_table(runs, curves)
    assert list(t["rollout-vs-train KL (k3)"]) == ["0.2", "0"]
