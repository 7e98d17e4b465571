"""Display labels: the one place a report spells a metric, a factor or a level, and the one rule
that names the advantage factor.

- Metric labels come from ``harness.schema`` (which owns every metric key with its label, unit
  and direction): ``metric_label`` is the schema's label with its unit, "episodes (completions)".
- Factor labels (figures) and the LaTeX factor names and column titles of the tables.
- ``level_label``: how a factor level is written everywhere (tables, figures, findings, keys).
- ``short``: a label broken onto two lines for a narrow panel.
- The advantage factor: ``advantage_label`` builds the merged ``advantage`` column ("token",
  "sequence/<baseline>", "token/lam=<lambda>"), ``advantage_column`` says which column is the
  advantage factor of a frame, ``in_advantage`` whether a key is that factor or one of its parts.

Pure: numpy, pandas and ``harness.schema``; no I/O, no statistics, no plotting.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd

from harness import schema

ALL_RUNS = "all runs"  # the one group's label when a figure or table has no grouping column

# ---- metrics -------------------------------------------------------------------------------------


NO_GOLD = "held-out optimised reward (no independent gold)"  # eval/gold of runs whose gold.source is GOLD_OPTIMISED
_gold_is_proxy = [False]  # set by ``no_independent_gold`` while one report is built


@contextmanager
def no_independent_gold(on: bool) -> Iterator[None]:
    """While on, eval/gold is labelled ``NO_GOLD`` (its runs had no model.gold: eval/gold is the optimised
    reward itself on held-out prompts, without the missing-EOS penalty)."""
    before = _gold_is_proxy[0]
    _gold_is_proxy[0] = on
    try:
        yield
    finally:
        _gold_is_proxy[0] = before


def gold_is_proxy() -> bool:
    return _gold_is_proxy[0]


def metric_label(key: str) -> str:
    """The schema's label of ``key`` with its unit in parentheses ("episodes (completions)"); the key
    itself when the schema does not know it; eval/gold as ``NO_GOLD`` under ``no_independent_gold``."""
    if key == "eval/gold" and _gold_is_proxy[0]:
        return NO_GOLD
    m = schema.METRICS.get(key)
    if m is None:
        return schema.label(key)
    return f"{m.label} ({m.unit})" if m.unit else m.label


# Table column titles per metric (tables/final_by_factor.md and .tex).
COLUMN_TITLES = {
    "eval/gold": "final gold reward",
    "eval/kl": "final KL (nats)",
    "perf/tokens_per_s": "tokens/s",
}
LATEX_COLUMNS = {
    "eval/gold": "Gold reward",
    "eval/kl": "KL (nats)",
    "perf/tokens_per_s": "Tokens/s",
}

# ---- factors -------------------------------------------------------------------------------------

FACTOR_LABELS = {
    "ppo.clip_eps": "clip ε",
    "kl.coef": "KL coef. β",
    "rollout.batch_size": "batch size",
    "advantage.level": "advantage level",
    "advantage.baseline": "baseline",
    "advantage": "advantage",
    "impl": "implementation",
    "loss.agg": "loss aggregation",
    "kl.estimator": "KL estimator",
    "model.rm_pairs": "RM training pairs",
}
LATEX_FACTORS = {
    "ppo.clip_eps": r"Clip $\epsilon$",
    "kl.coef": r"KL coef.\ $\beta$",
    "rollout.batch_size": "Batch size",
    "advantage.level": "Advantage level",
    "advantage.baseline": "Baseline",
    "advantage": "Advantage",
    "impl": "Implementation",
}


def factor_label(key: str) -> str:
    return FACTOR_LABELS.get(key, key)


# ---- levels --------------------------------------------------------------------------------------


def level_label(v) -> str:
    """How a factor level is written everywhere (tables, figures, findings): 0.1 -> '0.1', 16.0 -> '16'."""
    if isinstance(v, float | np.floating):
        return f"{float(v):g}"
    return str(v)


def short(label: str) -> str:
    """Break 'response length (tokens)' onto two lines to fit a narrow row."""
    return label.replace(" (", "\n(", 1) if len(label) > 14 else label


# ---- the advantage factor ------------------------------------------------------------------------

ADVANTAGE = "advantage"  # the merged factor: level, baseline and (token level) GAE lambda as one label
ADVANTAGE_PARTS = ("advantage.level", "advantage.baseline", "advantage.lam")


def advantage_label(runs: pd.DataFrame) -> pd.Series:
    """'token' or 'sequence/<baseline>'; 'token/lam=<lambda>' when token-level runs differ in GAE lambda.

    The values of the ``advantage`` column (``reports.collect``); None where a run has no level.
    """
    if "advantage.level" not in runs:
        return pd.Series([None] * len(runs), index=runs.index, dtype=object)
    base = runs["advantage.baseline"] if "advantage.baseline" in runs else pd.Series("", index=runs.index)
    lam = runs["advantage.lam"] if "advantage.lam" in runs else pd.Series(None, index=runs.index, dtype=object)
    token_lams = lam[(runs["advantage.level"] == "token") & lam.notna()]
    by_lam = token_lams.nunique() >= 2

    def label(lvl, b, lm) -> str | None:
        if lvl is None:
            return None
        if lvl == "sequence" and b:
            return f"sequence/{b}"
        if lvl == "token" and by_lam and lm is not None and lm == lm:
            return f"token/lam={level_label(float(lm))}"
        return str(lvl)

    return pd.Series(
        [label(lvl, b, lm) for lvl, b, lm in zip(runs["advantage.level"], base, lam, strict=True)],
        index=runs.index,
        dtype=object,
    )


def advantage_column(frame: pd.DataFrame, min_levels: int = 2) -> str | None:
    """The column that is the advantage factor of ``frame``, with at least ``min_levels`` levels.

    ``advantage`` (``advantage_label``: level and baseline as one factor) when present, else
    ``advantage.level``; None when neither has ``min_levels`` levels.
    """
    for col in (ADVANTAGE, "advantage.level"):
        if col in frame and frame[col].nunique(dropna=True) >= min_levels:
            return col
    return None


def in_advantage(key: str) -> bool:
    """Whether ``key`` is the advantage factor or one of its parts (level, baseline, lambda)."""
    return key == ADVANTAGE or key in ADVANTAGE_PARTS


def with_advantage(factors: Sequence[str], column: str) -> list[str]:
    """``factors`` with every advantage part replaced by ``column`` (the advantage factor), once, and
    ``column`` appended when absent."""
    return list(dict.fromkeys([column if in_advantage(f) else f for f in factors] + [column]))


# the figure styles (reports.plots.style.STYLES has one per name): checked before matplotlib is imported,
# whose first import writes its config and font cache under $HOME
STYLE_NAMES = ("default", "icml", "neurips", "iclr")
