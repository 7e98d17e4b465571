"""The over-optimisation onset flag: the pure detector by hand, and the Recorder logging it once."""

from __future__ import annotations

import pytest

import harness.evaluate
from harness.config import build_config
from harness.evaluate import overopt_onset
from harness.recording import Recorder
from harness.tracking import Store


def test_onset_by_hand():
    gold = [0.1, 0.5, 0.7, 0.6, 0.5, 0.4]
    assert overopt_onset(gold, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]) == 4  # 0.7 > 0.6 > 0.5, proxy rising
    # the proxy dipped at 4: no onset until gold has fallen twice more with the proxy rising again
    assert overopt_onset([*gold, 0.3], [0.0, 1.0, 2.0, 3.0, 2.5, 2.6, 2.7]) == 6
    assert overopt_onset(gold, [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]) is None  # proxy falling too: not over-optimisation
    assert overopt_onset([0.1, 0.2, 0.3, 0.25, 0.3], list(range(5))) is None  # one fall only
    assert overopt_onset([0.5, 0.5, 0.4, 0.3], list(range(4))) == 3  # a plateau is not a fall


def test_the_recorder_logs_the_onset_once_with_its_kl(tmp_path, monkeypatch):
    script = iter([(0.1, 0.0, 0.0), (0.6, 1.0, 2.0), (0.5, 2.0, 4.0), (0.4, 3.0, 6.0), (0.3, 4.0, 8.0)])

    def scripted(*args, **kwargs):  # the evaluation's numbers, scripted; everything else is real
        g, p, kl = next(script)
        return {"eval/gold": g, "eval/proxy": p, "eval/kl": kl, "eval/length": 5.0}, []

    monkeypatch.setattr(harness.evaluate, "evaluate", scripted)
    cfg = build_config(None, {"train.iterations": 4, "eval.every": 1})
    store = Store(tmp_path / "runs")
    logger = store.start_run("t", run_name="r", tags={}, params={})
    models = type("M", (), {"provenance": {}, "policy": None, "ref": None, "tokenizer": None, "task": None})()
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
