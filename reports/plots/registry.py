"""The figure registry: every figure of a report, in order, with the caption facts it carries.

``FIGURES`` is the ordered list the report iterates: (stem, title, draw, meta). ``draw`` takes
``(runs, curves, factors, style)`` and returns a Figure or None (``draw.explain`` says why not);
``meta(runs, factors)`` returns the facts its caption quotes. ``make_figures`` draws and saves
all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from matplotlib.figure import Figure

from reports import aggregate as A
from reports import overopt
from reports.plots.curves import final_by_factor, learning_curves
from reports.plots.frontier import reward_kl_frontier
from reports.plots.health import training_health
from reports.plots.heatmap import sensitivity_heatmap
from reports.plots.impl import custom_vs_trl
from reports.plots.noise import gradient_variance
from reports.plots.overopt import overoptimisation
from reports.plots.style import Style, get_style, save_figure, styled
from reports.stats import finite_rows


@dataclass
class FigureResult:
    stem: str  # file name without suffix, e.g. "fig1_learning_curves"
    title: str
    files: list[Path] = field(default_factory=list)  # [pdf, png] when drawn
    skipped: str | None = None  # why it was not drawn
    meta: dict[str, Any] = field(default_factory=dict)  # facts for the caption


def _no_meta(runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    return {}


class FigureSpec(NamedTuple):
    stem: str
    title: str
    draw: Callable[..., Figure | None]
    meta: Callable[[pd.DataFrame, Sequence[str]], dict[str, Any]] = _no_meta


def _frontier_meta(runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    return {
        "hue": A.frontier_hue(runs, factors),
        "proxy": not finite_rows(runs, "eval/proxy").empty,
        "onsets": A.logged_onsets(runs),
    }


def _overopt_meta(runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    return {"onsets": A.logged_onsets(runs), "grouped": overopt.RM in runs}


def _impl_meta(runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    return {"n_matched": len(A.matched_impl_runs(runs))}


FIGURES: list[FigureSpec] = [
    FigureSpec("fig1_learning_curves", "Learning curves", learning_curves),
    FigureSpec("fig2_final_reward", "Final gold reward per factor level", final_by_factor),
    FigureSpec("fig3_reward_kl_frontier", "Reward-KL frontier", reward_kl_frontier, _frontier_meta),
    FigureSpec("fig4_gradient_variance", "Policy-gradient variance", gradient_variance),
    FigureSpec("fig5_sensitivity", "Sensitivity to clip ε and KL coefficient", sensitivity_heatmap),
    FigureSpec("fig6_custom_vs_trl", "Custom PPO vs TRL", custom_vs_trl, _impl_meta),
    FigureSpec("fig7_training_health", "Training health", training_health),
    FigureSpec(
        "fig8_overoptimisation", "Reward vs sqrt(KL) per RM size, Gao et al. 2022 fit", overoptimisation, _overopt_meta
    ),
]


def make_figures(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    factors: Sequence[str],
    style: str | Style = "default",
    out_dir: str | Path = "figures",
) -> list[FigureResult]:
    """Draw and save every figure of ``FIGURES`` that has data; skipped ones carry the reason."""
    st = get_style(style)
    results = []
    for spec in FIGURES:
        with styled(st):
            out = spec.draw.explain(runs, curves, list(factors), st)  # type: ignore[attr-defined]
        res = FigureResult(spec.stem, spec.title)
        if isinstance(out, str):
            res.skipped = out
        else:
            res.files = save_figure(out, out_dir, spec.stem, st)
        res.meta = {"n_runs": len(runs), **spec.meta(runs, factors)}
        results.append(res)
    return results
