"""The figure registry: every figure of a report, in order, with the caption facts it carries.

``FIGURES`` is the ordered registry (``harness.registry``) the report iterates: stem -> (stem, title, draw, meta). ``draw`` takes
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

from harness.registry import Registry
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
    return {"onsets": A.logged_onsets(runs), "grouped": overopt.RM in runs and runs[overopt.RM].nunique() >= 2}


def _sensitivity_meta(runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    """Figure 5's panels, pooled factors and runs per square (as ``sensitivity_grid`` draws them)."""
    from reports.labels import factor_label

    if A.single_level(runs, "eval/gold", ("ppo.clip_eps", "kl.coef")) is not None:
        return {}
    g = A.sensitivity_grid(runs, "eval/gold", "ppo.clip_eps", "kl.coef", by=factors)
    counts = sorted({int(n) for c in g.counts for n in c.ravel() if n > 0})
    return {
        "panels": ["advantage estimator" if i == 0 and g.panel_keys and k.startswith("advantage") else factor_label(k)
                   for i, k in enumerate(g.panel_keys)],
        "pooled": [factor_label(k) for k in g.pooled],
        "n": (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}") if counts else "0",
    }


def _impl_meta(runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    m = A.matched_impl_runs(runs)
    return {"n_matched": len(m), "impls": A.impls_present(m)}


FIGURES: Registry[FigureSpec] = Registry("figure")  # stem -> spec, in the report's order
for _spec in (
    FigureSpec("fig1_learning_curves", "Learning curves", learning_curves),
    FigureSpec("fig2_final_reward", "Final gold reward per factor level", final_by_factor),
    FigureSpec("fig3_reward_kl_frontier", "Reward-KL frontier", reward_kl_frontier, _frontier_meta),
    FigureSpec("fig4_gradient_variance", "Policy-gradient variance", gradient_variance),
    FigureSpec("fig5_sensitivity", "Sensitivity to clip ε and KL coefficient", sensitivity_heatmap, _sensitivity_meta),
    FigureSpec("fig6_custom_vs_trl", "Custom PPO vs TRL", custom_vs_trl, _impl_meta),
    FigureSpec("fig7_training_health", "Training health", training_health),
    FigureSpec(
        "fig8_overoptimisation", "Reward vs sqrt(KL), Gao et al. 2022 fit", overoptimisation, _overopt_meta
    ),
):
    FIGURES.add(_spec.stem, _spec)  # a new figure: its draw function in reports/plots/, one line here


def make_figures(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    factors: Sequence[str],
    style: str | Style = "default",
    out_dir: str | Path = "figures",
    skip: dict[str, str] | None = None,
) -> list[FigureResult]:
    """Draw and save every figure of ``FIGURES`` that has data; skipped ones carry the reason (``skip``:
    stem -> why, figures not to draw at all)."""
    st = get_style(style)
    results = []
    for spec in FIGURES.values():
        if spec.stem in (skip or {}):
            results.append(FigureResult(spec.stem, spec.title, skipped=skip[spec.stem]))
            continue
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
