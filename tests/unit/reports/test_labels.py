"""reports.labels: metric labels from harness.schema, factor and level labels, the advantage factor."""

from __future__ import annotations

import pandas as pd

from harness import schema
from reports import labels as L


def test_axis_labels_carry_units():
    assert L.metric_label("episodes") == "episodes (completions)"
    assert "(nats)" in L.metric_label("eval/kl")
    assert "(tokens/s)" in L.metric_label("perf/tokens_per_s")


def test_metric_labels_are_the_schemas():
    for key, m in schema.METRICS.items():
        assert L.metric_label(key).startswith(schema.label(key))
        assert (f"({m.unit})" in L.metric_label(key)) == bool(m.unit)
    assert L.metric_label("not/a/metric") == "not/a/metric"


def test_factor_labels_fall_back_to_the_key():
    assert L.factor_label("kl.coef") == "KL coef. β" and L.factor_label("x.y") == "x.y"


def test_level_label():
    assert L.level_label(0.1) == "0.1" and L.level_label(16.0) == "16" and L.level_label("tok") == "tok"
    assert L.level_label(16) == "16"


def test_short_breaks_long_labels_once():
    assert L.short("response length (tokens)") == "response length\n(tokens)"
    assert L.short("clip fraction") == "clip fraction"


def test_advantage_label_names_token_runs_by_lambda_only_when_lambda_varies():
    runs = pd.DataFrame({"advantage.level": ["token", "token", "sequence"], "advantage.baseline": ["rloo"] * 3,
                         "advantage.lam": [0.95, 1.0, 0.95]})  # fmt: skip
    assert L.advantage_label(runs).tolist() == ["token/lam=0.95", "token/lam=1", "sequence/rloo"]
    runs["advantage.lam"] = 0.95
    assert L.advantage_label(runs).tolist() == ["token", "token", "sequence/rloo"]
    assert L.advantage_label(pd.DataFrame({"kl.coef": [0.1]})).tolist() == [None]


def test_advantage_column_is_the_one_rule():
    both = pd.DataFrame({"advantage": ["token", "sequence/rloo"], "advantage.level": ["token", "sequence"]})
    assert L.advantage_column(both) == "advantage"
    assert L.advantage_column(both.drop(columns=["advantage"])) == "advantage.level"
    one = pd.DataFrame({"advantage": ["token", "token"]})
    assert L.advantage_column(one) is None and L.advantage_column(one, 1) == "advantage"
    assert L.advantage_column(pd.DataFrame({"kl.coef": [0.1, 0.2]})) is None


def test_advantage_parts_fold_into_the_factor():
    assert all(L.in_advantage(k) for k in ("advantage", *L.ADVANTAGE_PARTS)) and not L.in_advantage("kl.coef")
    assert L.with_advantage(["kl.coef", "advantage.level", "advantage.baseline"], "advantage") == [
        "kl.coef",
        "advantage",
    ]
    assert L.with_advantage(["kl.coef"], "advantage") == ["kl.coef", "advantage"]
