"""reports.plots.health: figure 7, one row per training-health metric, one column per factor."""

from __future__ import annotations

from reports.plots.health import HEALTH_METRICS, training_health
from reports.plots.style import get_style

FACTORS = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]


def test_no_health_metric_skips_the_figure(frames):
    runs, curves = frames
    no_health = curves[~curves["metric"].isin(HEALTH_METRICS)]
    assert training_health(runs, no_health, FACTORS, get_style("default")) is None
    assert training_health.explain(runs, no_health, FACTORS, get_style("default")) == "no training-health metrics logged"


def test_rows_are_metrics_and_columns_factors(frames):
    runs, curves = frames
    fig = training_health(runs, curves, FACTORS, get_style("default"))
    assert len(fig.axes) == len(HEALTH_METRICS) * len(FACTORS)
