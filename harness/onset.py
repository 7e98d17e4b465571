"""Over-optimisation onset: a fall of the gold reward larger than the evaluation noise allows.

Pure numpy. Each evaluation k gives the held-out gold g_k (a mean over the evaluation prompts),
its standard error s_k (the per-prompt scores' sd / sqrt(n), logged as ``eval/gold_se``) and the
proxy p_k. A fall is tested by a segment scan: for every split of a stretch of consecutive
evaluations into a segment before [i, m] and a segment after [m + 1, k],

    Z(i, m, k) = (mean g[i..m] - mean g[m+1..k]) / sqrt(sum s[i..m]^2 / w_b^2 + sum s[m+1..k]^2 / w_a^2)

(w_b, w_a the segments' lengths; segment lengths 1-8, then x1.5 steps, so long runs stay cheap).
A fall is called at the first evaluation k at which some segment ending at k has Z > c_N while the
proxy's mean over the after-segment exceeds its mean over the before-segment (the proxy rose as
the gold fell: optimising it past the point where it tracks the gold, Gao et al. 2022).

False-alarm rate. c_N is the (1 - alpha) quantile of max Z over all segments of N evaluations of
a flat gold curve with independent N(0, s^2) noise, by Monte Carlo (a scan statistic: Glaz, Naus
and Wallenstein 2001, "Scan Statistics"; the maximum over segments handles the multiplicity of
looking at every evaluation). N is the number of evaluations the run will make, and the scan over
a prefix is a maximum over fewer segments, so checking at every evaluation and stopping at the
first call keeps the run-wide false-alarm rate at alpha. A flat curve is the least favourable
curve without a fall: for any non-decreasing gold curve each contrast has mean <= 0, so the
maximum is stochastically smaller (rising and saturating curves alarm less than a plateau). The
calibration estimates s from as many per-prompt scores as the evaluation has (``eval.prompts``),
so the rate holds with s estimated too (measured in tests/unit/test_overopt_onset.py). Evaluations reuse the same prompts and sampling seed, so the
noise of a difference is at most what the independent-noise s allows: the test is conservative there.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

ALPHA = 0.05  # run-wide false-alarm rate of the onset call
CALIBRATION_DRAWS = 20_000  # Monte Carlo draws for c_N (fixed seed: the same c_N on every machine)
CALIBRATION_SEED = 20221010


def segment_lengths(n: int) -> list[int]:
    """Segment lengths scanned for n evaluations: 1..8, then steps of x1.5 (at most n - 1)."""
    out = list(range(1, min(8, n - 1) + 1))
    w = 8
    while True:
        w = int(np.ceil(w * 1.5))
        if w > n - 1:
            return out
        out.append(w)


@lru_cache(maxsize=64)
def segments(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, split, end) of every scanned segment pair of n evaluations: before = [start, split),
    after = [split, end) (end exclusive), sorted by end."""
    rows = [(k + 1 - a - b, k + 1 - a, k + 1) for k in range(n)
            for a in segment_lengths(n) for b in segment_lengths(n) if k + 1 - a - b >= 0]  # fmt: skip
    rows.sort(key=lambda r: r[2])
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def _seg_mean(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (cum[..., hi] - cum[..., lo]) / (hi - lo)


def _cumsum0(x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(x, axis=-1)], axis=-1)


def contrasts(gold, se) -> np.ndarray:
    """Z of every segment pair (``segments(n)`` order) of curves ``gold`` (..., n) with standard errors ``se``."""
    g = np.asarray(gold, dtype=float)
    s2 = np.broadcast_to(np.asarray(se, dtype=float) ** 2, g.shape)
    lo, mid, hi = segments(g.shape[-1])
    cg, cv = _cumsum0(g), _cumsum0(s2)
    diff = _seg_mean(cg, lo, mid) - _seg_mean(cg, mid, hi)
    var = (cv[..., mid] - cv[..., lo]) / (mid - lo) ** 2 + (cv[..., hi] - cv[..., mid]) / (hi - mid) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return diff / np.sqrt(var)


@lru_cache(maxsize=64)
def critical_value(n: int, alpha: float = ALPHA, prompts: int | None = None) -> float:
    """c_n: the (1 - alpha) quantile of the scan's maximum over n evaluations of a flat curve.

    Unit noise; with ``prompts`` the standard errors are estimated as the real ones are, from that
    many per-prompt scores (s_hat = s sqrt(chi2_{prompts-1} / (prompts - 1)) per evaluation, exact for
    normal scores), which raises c_n a little; None = known standard errors.
    """
    if n < 2:
        return float("inf")
    rng = np.random.default_rng(CALIBRATION_SEED + n)
    n_seg = len(segments(n)[0])
    chunk = max(1, min(CALIBRATION_DRAWS, 4_000_000 // max(n_seg, 1)))
    maxima = []
    for start in range(0, CALIBRATION_DRAWS, chunk):
        size = (min(chunk, CALIBRATION_DRAWS - start), n)
        se = 1.0 if not prompts or prompts < 2 else np.sqrt(rng.chisquare(prompts - 1, size) / (prompts - 1))
        maxima.append(contrasts(rng.standard_normal(size), se).max(axis=1))
    return float(np.quantile(np.concatenate(maxima), 1.0 - alpha))


def onset_index(gold, se, proxy, n_total: int | None = None, prompts: int | None = None,
                alpha: float = ALPHA) -> int | None:
    """Index of the first evaluation at which a fall of gold is called (see the module docstring); None if never.

    ``gold``, ``se``, ``proxy``: one value per evaluation so far, in order; ``n_total``: the number
    of evaluations the run makes in all (default: those given), which sets c_N; ``prompts``: how many
    per-prompt scores each standard error came from (``critical_value``). A missing or
    non-positive standard error, or a NaN proxy, never supports a call.
    """
    g, s, p = (np.asarray(x, dtype=float) for x in (gold, se, proxy))
    n = min(g.size, s.size, p.size)
    if n < 2:
        return None
    g, s, p = g[:n], s[:n], p[:n]
    c = critical_value(max(n, n_total or n), alpha, prompts)
    lo, mid, hi = segments(n)
    z = contrasts(g, np.where(s > 0, s, np.nan))
    cp = _cumsum0(p)
    rose = _seg_mean(cp, mid, hi) > _seg_mean(cp, lo, mid)
    hit = np.isfinite(z) & (z > c) & rose
    return int(hi[hit].min() - 1) if hit.any() else None


def onset_indices(gold, se, proxy, n_total: int | None = None, prompts: int | None = None,
                  alpha: float = ALPHA) -> np.ndarray:
    """``onset_index`` of each row of (R, n) arrays at once (-1: no call): for simulations."""
    g = np.asarray(gold, dtype=float)
    n = g.shape[-1]
    c = critical_value(max(n, n_total or n), alpha, prompts)
    lo, mid, hi = segments(n)
    z = contrasts(g, se)
    cp = _cumsum0(np.asarray(proxy, dtype=float))
    hit = np.isfinite(z) & (z > c) & (_seg_mean(cp, mid, hi) > _seg_mean(cp, lo, mid))
    first = np.where(hit, hi[None, :] - 1, n)  # segments are sorted by end: the min is the first call
    out = first.min(axis=1)
    return np.where(out < n, out, -1)
