"""Fixed-effects intervals for factorial contrasts: cell means, pooled within-cell variance.

Pure numpy and scipy. A contrast of a factorial design is sum_j w_j mu_j over its cells (a main
effect a -> b: +1/M on the M cells at b, -1/M on their matched cells at a; a two-way interaction:
+-1/(2Q) on Q matched quadruples). With n_j replicate runs (seeds) in cell j, cell means ybar_j
and cell variances s_j^2:

- Pooled (the standard fixed-effects analysis, e.g. Montgomery, "Design and Analysis of
  Experiments", ch. 5; Box, Hunter and Hunter): s_p^2 = sum_j (n_j - 1) s_j^2 / (N - J) over all J
  cells of the design, se = s_p sqrt(sum_j w_j^2 / n_j), Student's t with N - J df. Assumptions:
  runs independent, normal within a cell, one common within-cell variance; the cells' other-factor
  settings are fixed, so the estimand is the average effect over exactly these settings (the
  interactions with the other factors are part of the design, not noise).
- Welch-Satterthwaite (the robust variant, unequal cell variances): se^2 = sum_j w_j^2 s_j^2 / n_j,
  df = se^4 / sum_j (w_j^2 s_j^2 / n_j)^2 / (n_j - 1) (Satterthwaite 1946); needs n_j >= 2 in every
  cell the contrast weighs. The findings call an effect only when both intervals agree.

Both take arrays (..., J) so a simulation runs many designs at once; their coverage is measured
in tests/unit/reports/test_reports_factorial.py.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as st

CONFIDENCE = 0.95


def pooled_contrast(means, variances, counts, weights, confidence: float = CONFIDENCE):
    """(estimate, low, high, df, p) of sum w_j mu_j with the pooled within-cell variance over all cells.

    ``means``, ``variances`` (unbiased, ddof 1; NaN or anything for n_j = 1), ``counts``: (..., J);
    ``weights``: (J,) or (..., J), 0 for cells outside the contrast (they still pool variance).
    p: two-sided p-value of estimate = 0. NaN everywhere when N - J < 1.
    """
    m, v, n = (np.asarray(x, dtype=float) for x in (means, variances, counts))
    w = np.broadcast_to(np.asarray(weights, dtype=float), m.shape)
    df = (n.sum(-1) - n.shape[-1]) * np.ones(m.shape[:-1])
    ss = np.where(n > 1, (n - 1) * np.nan_to_num(v), 0.0).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sp2 = np.where(df >= 1, ss / df, np.nan)
        se = np.sqrt(sp2 * np.where(w != 0, w**2 / n, 0.0).sum(-1))
    est = (np.where(w != 0, w * m, 0.0)).sum(-1)
    return _interval(est, se, df, confidence)


def welch_contrast(means, variances, counts, weights, confidence: float = CONFIDENCE):
    """(estimate, low, high, df, p) of sum w_j mu_j with each cell's own variance (Welch-Satterthwaite).

    NaN when a weighted cell has fewer than 2 runs.
    """
    m, v, n = (np.asarray(x, dtype=float) for x in (means, variances, counts))
    w = np.broadcast_to(np.asarray(weights, dtype=float), m.shape)
    on = w != 0
    ok = np.where(on, n >= 2, True).all(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(on, w**2 * v / n, 0.0)
        se2 = terms.sum(-1)
        df = se2**2 / np.where(on, terms**2 / np.maximum(n - 1, 1), 0.0).sum(-1)
    est = np.where(on, w * m, 0.0).sum(-1)
    se = np.where(ok, np.sqrt(se2), np.nan)
    return _interval(est, se, np.where(ok, df, np.nan), confidence)


def _interval(est, se, df, confidence):
    with np.errstate(divide="ignore", invalid="ignore"):
        q = st.t.ppf(0.5 + confidence / 2, df)
        p = 2 * st.t.sf(np.abs(est) / se, df)
    bad = ~(np.isfinite(se) & np.isfinite(df) & (df >= 1))
    nan = np.nan
    out = [np.where(bad, nan, x) for x in (est - q * se, est + q * se, df, p)]
    return (est, *out) if np.ndim(est) else (float(est), *(float(x) for x in out))


def p_from_interval(estimate: float, low: float, high: float, df: float, confidence: float = CONFIDENCE) -> float:
    """Two-sided p-value of estimate = 0 from a symmetric t-interval with ``df`` degrees of freedom."""
    if not all(np.isfinite([estimate, low, high, df])) or df < 1 or high <= low:
        return float("nan")
    se = (high - low) / (2 * st.t.ppf(0.5 + confidence / 2, df))
    return float(2 * st.t.sf(abs(estimate) / se, df))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): family-wise error <= alpha when adjusted p <= alpha.

    NaN p-values are left out of the family and stay NaN.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    k = order.size
    adj = np.maximum.accumulate(np.minimum(1.0, (k - np.arange(k)) * p[order]))
    out[order] = adj
    return out
