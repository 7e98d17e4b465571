"""harness/recording.py: the driver both implementations share (evaluate when due, log, show, report),
the samples table's iterations and Markdown, by hand with a scripted evaluation."""

from __future__ import annotations

import pytest

import harness.evaluate
from harness.config import build_config
from harness.recording import Recorder, RunResult, eval_due, sample_iterations, samples_markdown


class FakeLogger:
    """What a Recorder writes, in order."""

    run_id = "r1"

    def __init__(self):
        self.events: list[tuple] = []

    def log_metrics(self, metrics, step):
        self.events.append(("log", step, dict(metrics)))

    def set_tags(self, tags):
        self.events.append(("tags", dict(tags)))

    def log_table(self, frame, name):
        self.events.append(("table", name, len(frame)))

    def log_text(self, text, name):
        self.events.append(("text", name, text))


class FakeBar:
    def __init__(self, events):
        self.events = events

    def update(self, it, metrics, seconds=None):
        self.events.append(("bar", it, sorted(metrics)))


MODELS = type("M", (), {"provenance": {"artifacts.sft": "shipped"}, "policy": None, "ref": None, "reward": None, "tokenizer": None,
                        "task": None, "device": "cpu"})()


@pytest.fixture
def scripted(monkeypatch):
    """Every evaluation returns its call number as eval/gold (proxy falling: no over-optimisation onset)."""
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(kwargs)
        n = len(calls)
        rows = [{"prompt": f"p{n}", "completion": "c", "proxy": 0.5, "gold": 1.0}] * 20
        return {"eval/gold": float(n), "eval/proxy": -float(n), "eval/kl": 0.1 * n, "eval/length": 3.0}, rows

    monkeypatch.setattr(harness.evaluate, "evaluate", evaluate)
    return calls


def test_sample_iterations_and_eval_due_by_hand():
    assert sample_iterations(5, 2) == {0, 4, 5}  # evaluations 0, 2, 4, 5: the first, [4 // 2] and the last
    assert sample_iterations(10, 1) == {0, 5, 10}
    assert sample_iterations(3, 10) == {0, 3}  # evaluations 0 and 3 only
    cfg = build_config(None, {"train.iterations": 5, "eval.every": 2})
    assert [it for it in range(1, 6) if eval_due(cfg, it)] == [2, 4, 5]


def test_samples_markdown_by_hand():
    md = samples_markdown([{"iteration": 3, "prompt": "a b", "completion": "c", "proxy": 0.12345, "gold": 1.0}])
    assert md == "| iteration | prompt | completion | proxy | gold |\n|---|---|---|---|---|\n| 3 | a b | c | 0.123 | 1.000 |\n"


def test_begin_and_step_evaluate_when_due_log_then_report(scripted):
    cfg = build_config(None, {"train.iterations": 5, "eval.every": 2, "eval.prompts": 7})
    logger = FakeLogger()
    reported = []
    rec = Recorder(cfg, logger, MODELS, None, 4, bar=FakeBar(logger.events),
                   on_eval=lambda it, em: logger.events.append(("on_eval", it, dict(em))))
    rec.begin()
    for it in range(1, 6):
        out = rec.step(it, {"objective/kl": float(it), "episodes": 8.0 * it}, seconds=0.1)
        reported.append(sorted(out))
    assert scripted[0]["n_prompts"] == 7 and scripted[0]["response_length"] == 4
    kinds = [(e[0], e[1]) if e[0] != "tags" else ("tags",) for e in logger.events]
    assert kinds == [("tags",), ("log", 0), ("bar", 0), ("on_eval", 0),
                     ("log", 1), ("bar", 1),
                     ("log", 2), ("bar", 2), ("on_eval", 2),
                     ("log", 3), ("bar", 3),
                     ("log", 4), ("bar", 4), ("on_eval", 4),
                     ("log", 5), ("bar", 5), ("on_eval", 5)]
    logs = {e[1]: e[2] for e in logger.events if e[0] == "log"}
    assert logs[0] == {"eval/gold": 1.0, "eval/proxy": -1.0, "eval/kl": 0.1, "eval/length": 3.0, "episodes": 0.0}
    assert logs[1] == {"objective/kl": 1.0, "episodes": 8.0}  # not due: no evaluation
    assert logs[4]["eval/gold"] == 3.0 and logs[4]["objective/kl"] == 4.0  # the 3rd evaluation, after iteration 4
    on_eval = [e for e in logger.events if e[0] == "on_eval"]
    assert all(set(e[2]) == {"eval/gold", "eval/proxy", "eval/kl", "eval/length"} for e in on_eval)  # eval/* only

    result = rec.result()
    assert isinstance(result, RunResult) and result.run_id == "r1"
    assert result.history["eval/gold"] == [(0, 1.0), (2, 2.0), (4, 3.0), (5, 4.0)]
    assert result.final == {"eval/gold": 4.0, "eval/proxy": -4.0, "eval/kl": pytest.approx(0.4), "eval/length": 3.0,
                            "episodes": 40.0, "objective/kl": 5.0}
    table = [e for e in logger.events if e[0] == "table"]
    assert table == [("table", "samples.parquet", 3 * 16)]  # 16 rows at iterations 0, 4 and 5


def test_on_eval_may_stop_the_run_after_the_metrics_are_logged(scripted):
    """A pruned sweep trial raises in on_eval: that iteration's metrics are in the run already."""
    cfg = build_config(None, {"train.iterations": 3, "eval.every": 1})
    logger = FakeLogger()

    def prune(it, em):
        if it == 2:
            raise RuntimeError("pruned")

    rec = Recorder(cfg, logger, MODELS, None, 4, on_eval=prune)
    rec.begin()
    rec.step(1, {"episodes": 8.0})
    with pytest.raises(RuntimeError, match="pruned"):
        rec.step(2, {"episodes": 16.0})
    assert [e[1] for e in logger.events if e[0] == "log"] == [0, 1, 2]
