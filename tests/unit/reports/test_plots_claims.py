"""reports.plots.claims: the claim figures draw what reports.claims measures."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.plots.claims import clip_higher, critical_batch
from reports.plots.style import get_style
from tests.unit.reports.test_claims import critical_tables


def test_the_critical_batch_figure_draws_runs_the_hyperbola_and_b_simple():
    runs, curves = critical_tables(s_min=10.0, e_min=640.0, simple=40.0)
    fig = critical_batch(runs, curves, get_style("default"))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "B = 16" in labels and any(lab.startswith("(S/S_min-1)(E/E_min-1)=1, B_crit 64") for lab in labels)
    assert "B_simple 40" in labels
    (curve,) = ax.get_lines()  # the fitted hyperbola: S = 10 + 640 / B, E = B S
    x, y = np.asarray(curve.get_xdata()), np.asarray(curve.get_ydata())
    assert np.allclose((y / 10 - 1) * (x / 640 - 1), 1.0)
    # the runs' points: E = B S at every batch size
    pts = np.vstack([c.get_offsets() for c in ax.collections[:4]])
    assert np.allclose(sorted(pts[:, 1]), sorted(np.repeat(10 + 640 / np.array([16, 32, 64, 128.0]), 3)))


def test_a_claim_figure_without_data_says_why():
    runs, curves = critical_tables(s_min=10.0, e_min=640.0, simple=40.0)
    never = curves.assign(value=np.where(curves["metric"] == "eval/gold", 0.1, curves["value"]))
    assert critical_batch.explain(runs, never, get_style("default")) == "no run reached the gold target"
    assert clip_higher.explain(runs, pd.DataFrame(), get_style("default")) == "no objective/entropy history"
