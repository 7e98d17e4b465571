"""Paper figures from the tidy frames of ``reports.collect``: the only package importing matplotlib/seaborn.

Every figure function takes ``(runs, curves, factors, style)`` and returns a matplotlib
``Figure``, or ``None`` when its data is absent (no gradient probe, no TRL runs, one clip
level ...); ``fn.explain(...)`` returns the reason instead of ``None``. The numbers come from
``reports.aggregate``: a figure only draws what it is given. ``make_figures`` draws and saves all
of ``FIGURES`` as vector PDF (Type 42 fonts) + PNG (300 dpi).

- ``style``: ``Style``, ``get_style``, ``styled``, ``palette``, ``save_figure`` and the shared axis helpers.
- ``curves`` (figures 1, 2), ``frontier`` (3), ``noise`` (4), ``heatmap`` (5), ``impl`` (6),
  ``health`` (7), ``overopt`` (8): one module per figure family.
- ``registry``: ``FIGURES`` (stem, title, draw, meta), ``FigureResult``, ``make_figures``.
"""

from reports.plots.curves import final_by_factor, learning_curves
from reports.plots.frontier import reward_kl_frontier
from reports.plots.health import HEALTH_METRICS, training_health
from reports.plots.heatmap import sensitivity_heatmap
from reports.plots.impl import custom_vs_trl
from reports.plots.noise import gradient_variance
from reports.plots.overopt import overoptimisation
from reports.plots.registry import FIGURES, FigureResult, FigureSpec, make_figures
from reports.plots.style import PALETTE, STYLES, Style, get_style, palette, save_figure, styled

__all__ = [
    "FIGURES",
    "HEALTH_METRICS",
    "PALETTE",
    "STYLES",
    "FigureResult",
    "FigureSpec",
    "Style",
    "custom_vs_trl",
    "final_by_factor",
    "get_style",
    "gradient_variance",
    "learning_curves",
    "make_figures",
    "overoptimisation",
    "palette",
    "reward_kl_frontier",
    "save_figure",
    "sensitivity_heatmap",
    "styled",
    "training_health",
]
