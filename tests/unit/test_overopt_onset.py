"""The over-optimisation onset: the segment scan by hand, its false-alarm rate and power by simulation,
and the Recorder logging it once with eval/gold_se."""

from __future__ import annotations

import math

import numpy as np
import pytest

import harness.evaluate
from harness import onset as O
from harness.config import build_config
from harness.evaluate import overopt_onset
from harness.recording import Recorder, n_evaluations
from harness.tracking import Store


def test_segment_contrast_by_hand():
    lo, mid, hi = O.segments(3)  # lengths 1..2: ([0],[1]), ([1],[2]), ([0,1],[2]), ([0],[1,2])
    keys = zip(lo.tolist(), mid.tolist(), hi.tolist(), strict=True)
    got = dict(zip(keys, O.contrasts([0.0, 1.0, 0.4], [0.1, 0.1, 0.2]).tolist(), strict=True))
    assert set(got) == {(0, 1, 2), (1, 2, 3), (0, 2, 3), (0, 1, 3)}
    assert got[1, 2, 3] == pytest.approx(0.6 / math.sqrt(0.01 + 0.04))
    assert got[0, 2, 3] == pytest.approx((0.5 - 0.4) / math.sqrt((0.01 + 0.01) / 4 + 0.04))
    assert got[0, 1, 3] == pytest.approx((0.0 - 0.7) / math.sqrt(0.01 + (0.01 + 0.04) / 4))
    assert list(hi) == sorted(hi)  # sorted by end: the first call is the smallest end


def test_onset_by_hand():
    gold, proxy = [0.2, 0.5, 0.8, 0.8, 0.3, 0.2], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    c = O.critical_value(6)
    assert 2.0 < c < 3.5
    assert overopt_onset(gold, [0.02] * 6, proxy) == 4  # 0.8 -> 0.3 at 25 standard errors
    assert overopt_onset(gold, [0.02] * 6, proxy[::-1]) is None  # the proxy fell too: not over-optimisation
    assert overopt_onset(gold, [0.5] * 6, proxy) is None  # within the noise: no call
    assert overopt_onset(gold, [float("nan")] * 6, proxy) is None  # no standard error: no call
    # the old rule (two falls in a row) fired here; a 0.03 wobble at se 0.06 is noise
    assert overopt_onset([0.5, 0.53, 0.5, 0.47], [0.06] * 4, [0, 1, 2, 3]) is None
    # the threshold is the one for the whole run: more evaluations to come, a higher bar
    assert O.critical_value(21) > O.critical_value(6)
    z = (0.8 - 0.3) / math.sqrt(0.0004 / 2 + 0.0004)
    assert O.onset_index(gold[:5], [0.02] * 5, proxy[:5], n_total=21) == (4 if z > O.critical_value(21) else None)


NULLS = ("plateau", "rising", "saturating")
NOISE = ((0.061, 64), (0.081, 32))  # eval/gold sd of one fixed policy at 64 / 32 evaluation prompts


def mean_curve(kind: str, n: int, fall: float = 0.1) -> np.ndarray:
    """Gold means over n evaluations: nulls without a fall, and a saturating rise that peaks at 60% then falls."""
    t = np.linspace(0.0, 10.0, n)
    if kind == "plateau":
        return np.full(n, 0.5)
    if kind == "rising":
        return 0.05 * t
    sat = 0.8 * (1 - np.exp(-t / 2))
    if kind == "saturating":
        return sat
    k = int(0.6 * (n - 1))
    return np.where(t < t[k], sat, sat[k] - fall * (t - t[k]) / (t[-1] - t[k]))


def alarm_rate(kind: str, n: int, sd: float, prompts: int, draws: int, rng, fall: float = 0.1) -> float:
    """Share of simulated runs with an onset call: gold = mean + N(0, sd), se estimated from ``prompts`` scores."""
    gold = mean_curve(kind, n, fall) + sd * rng.standard_normal((draws, n))
    se = sd * np.sqrt(rng.chisquare(prompts - 1, (draws, n)) / (prompts - 1))
    proxy = np.tile(np.arange(n, dtype=float), (draws, 1))  # the proxy keeps rising
    return float((O.onset_indices(gold, se, proxy, prompts=prompts) >= 0).mean())


@pytest.mark.parametrize("n", [5, 9, 21])
def test_false_alarms_at_most_five_percent_on_curves_without_a_fall(n):
    """<= 5% false alarms (up to Monte Carlo error: the rate's 99% lower bound must be <= 5%) on plateau,
    rising and saturating gold at the measured noise levels; the power on a 0.3 fall is printed and
    must beat the false alarms. python -m tests.unit.test_overopt_onset prints the full table."""
    rng = np.random.default_rng(n)
    draws = 3000
    for sd, prompts in NOISE:
        for kind in NULLS:
            p = alarm_rate(kind, n, sd, prompts, draws, rng)
            assert p - 2.33 * math.sqrt(0.05 * 0.95 / draws) <= 0.05, (kind, n, sd, p)
        power = alarm_rate("peak", n, sd, prompts, draws, rng, fall=0.3)
        print(f"n={n} sd={sd}: power on a 0.3 fall {power:.2f}")
        assert power > 0.1


def test_the_recorder_logs_the_onset_once_with_its_kl(tmp_path, monkeypatch):
    # gold falls 0.6 -> 0.5 -> 0.4 at se 0.04: 1.8 standard errors at 2 (no call), 3.5 at 3 (the call)
    script = iter([(0.1, 0.0, 0.0), (0.6, 1.0, 2.0), (0.5, 2.0, 4.0), (0.4, 3.0, 6.0), (0.3, 4.0, 8.0)])

    def scripted(*args, **kwargs):  # the evaluation's numbers, scripted; everything else is real
        g, p, kl = next(script)
        return {"eval/gold": g, "eval/gold_se": 0.04, "eval/proxy": p, "eval/kl": kl, "eval/length": 5.0}, []

    monkeypatch.setattr(harness.evaluate, "evaluate", scripted)
    cfg = build_config(None, {"train.iterations": 4, "eval.every": 1})
    assert n_evaluations(cfg) == 5 and n_evaluations(build_config(None, {"train.iterations": 10, "eval.every": 4})) == 4
    store = Store(tmp_path / "runs")
    logger = store.start_run("t", run_name="r", tags={}, params={})
    models = type("M", (), {"provenance": {}, "policy": None, "ref": None, "reward": None, "tokenizer": None, "task": None})()
    rec = Recorder(cfg, logger, models, None, 5)
    logged = []
    for it in range(5):
        em = rec.evaluate(it)
        rec.log(it, em)
        logged.append(em)
    logger.end("FINISHED")
    assert [("eval/overopt_onset_kl" in e) for e in logged] == [False, False, False, True, False]
    assert logged[3]["eval/overopt_onset_kl"] == pytest.approx(6.0)
    run = store.get_run(logger.run_id)
    assert run.data.tags["overopt.onset_iteration"] == "3" and float(run.data.tags["overopt.onset_kl"]) == 6.0
    assert store.metric_history(logger.run_id, "eval/overopt_onset_kl") == [(3, 6.0)]


def test_the_evaluation_logs_the_standard_error_of_gold_over_its_prompts():
    """eval/gold_se = sd / sqrt(n) of the per-prompt gold scores, recomputed from the samples it returns."""
    from harness.lm.rollout import make_score_fn
    from harness.warmstart.load import load_models
    from tests.conftest import TINY

    cfg = build_config(None, {**TINY, "eval.prompts": 12})
    m = load_models(cfg)
    em, rows = harness.evaluate.evaluate(m.policy, m.ref, m.tokenizer, m.task, make_score_fn(m.reward, m.task.gold),
                                         n_prompts=12, response_length=6, temperature=1.0, missing_eos_penalty=None)
    gold = np.array([r["gold"] for r in rows])
    assert gold.size == 12 and em["eval/gold"] == pytest.approx(gold.mean())
    assert em["eval/gold_se"] == pytest.approx(gold.std(ddof=1) / math.sqrt(12), rel=1e-6)


def old_rule_rate(kind: str, n: int, sd: float, draws: int, rng, fall: float = 0.1) -> float:
    """The rule this test replaced (gold fell twice in a row while the proxy rose), for comparison."""
    g = mean_curve(kind, n, fall) + sd * rng.standard_normal((draws, n))
    falls = (g[:, :-2] > g[:, 1:-1]) & (g[:, 1:-1] > g[:, 2:])  # the proxy rises every evaluation here
    return float(falls.any(axis=1).mean())


def onset_table(draws: int = 4000, seed: int = 2026) -> str:
    """The full false-alarm and power table (Markdown): python -m tests.unit.test_overopt_onset."""
    rng = np.random.default_rng(seed)
    out = ["| noise sd (prompts) | evaluations | plateau | rising | saturating | peak, fall 0.1 | fall 0.2 | fall 0.3 "
           "| old rule: plateau / fall 0.1 |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for sd, prompts in NOISE:
        for n in (5, 9, 13, 21):
            row = [alarm_rate(k, n, sd, prompts, draws, rng) for k in NULLS]
            row += [alarm_rate("peak", n, sd, prompts, draws, rng, fall=f) for f in (0.1, 0.2, 0.3)]
            old = (old_rule_rate("plateau", n, sd, draws, rng), old_rule_rate("peak", n, sd, draws, rng))
            out.append(f"| {sd} ({prompts}) | {n} | " + " | ".join(f"{x:.3f}" for x in row)
                       + f" | {old[0]:.2f} / {old[1]:.2f} |")  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    print(onset_table())
