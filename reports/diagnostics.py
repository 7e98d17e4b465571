"""Per-cell diagnostics of a sweep: the final gold reward and KL beside the runs' own training diagnostics
(entropy, clip and covariance fractions, the rollout-vs-train mismatch and its importance weights, dynamic
sampling), for the keys the runs logged. Pure pandas on ``collect``'s runs frame."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.schema import METRICS

__all__ = ["CELL_NOTE", "DIAGNOSTIC_KEYS", "cell_table"]

DIAGNOSTIC_KEYS = (
    "objective/entropy", "policy/clipfrac_avg", "policy/cov_frac", "offpolicy/kl_k1", "offpolicy/kl_k3",
    "offpolicy/is_mean", "offpolicy/is_max", "offpolicy/is_truncated_frac", "offpolicy/is_masked_frac",
    "rollout/filtered_frac", "rollout/extra_gen_frac",
)
CELL_NOTE = ("Per sweep cell: mean [sd] over its seeds of a per-run number: the final value (last evaluation) "
             "of eval/*, the mean over the run's iterations of each training diagnostic ('-': not logged); a "
             "diagnostic is shown when some run logged it and it is not the same in every cell.")


def _fmt(values: pd.Series) -> str:
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return "-"
    sd = f" [{np.std(v, ddof=1):.3g}]" if len(v) > 1 else ""
    return f"{np.mean(v):.3g}{sd}"


def cell_table(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """One row per cell: n, gold, KL and the diagnostics (see CELL_NOTE); None when there is one cell or none.

    runs: ``collect``'s runs frame (final values); curves: long histories (run_id, metric, value) of
    DIAGNOSTIC_KEYS (``collect.curves_frame``): a diagnostic's per-run number is its mean over the run's
    iterations; without curves, its final value."""
    if "cell" not in runs or runs["cell"].nunique() < 2:
        return None
    if curves is not None and not curves.empty:
        means = curves.groupby(["run_id", "metric"])["value"].mean().unstack()
        runs = runs.drop(columns=[k for k in means.columns if k in runs]).merge(
            means, left_on="run_id", right_index=True, how="left")
    keys = ["eval/gold", "eval/kl"]
    for k in DIAGNOSTIC_KEYS:
        if k in runs and runs[k].notna().any():
            means = runs.groupby("cell")[k].mean()
            if means.nunique(dropna=False) > 1:  # varies, or logged by some cells only
                keys.append(k)
    keys = [k for k in keys if k in runs]
    rows = []
    for cell, g in runs.groupby("cell", sort=False):
        row = {"cell": cell, "n": int(g["eval/gold"].notna().sum()) if "eval/gold" in g else len(g)}
        for k in keys:
            row[METRICS[k].label if k in METRICS else k] = _fmt(g[k])
        rows.append(row)
    return pd.DataFrame(rows)
