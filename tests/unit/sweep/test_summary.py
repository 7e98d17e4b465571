"""The sweep summary's best cell says when it compares cells at different sample budgets."""

from harness.sweep.spec import parse_spec
from harness.sweep.summary import budget_note, summary_markdown
from tests.conftest import TINY
from tests.unit.sweep.specs import spec

BASE = {k: v for k, v in TINY.items() if k not in ("rollout.batch_size", "train.iterations")}


def _cells(s):
    return {f"c{i}": dict(c.values) for i, c in enumerate(s.cells)}


def test_unequal_budgets_are_said_matched_ones_are_not():
    unequal = parse_spec(spec(base={**BASE, "train.iterations": 2}, grid={"rollout.batch_size": [8, 16]}))  # equal iterations: 2x the episodes
    note = budget_note(unequal, _cells(unequal))
    assert "sample budgets differ, 16 to 32 episodes" in note  # TINY: 2 iterations
    rows = [{"cell": cid, **v, "seeds_done": 2, "seeds": 2, "mean": 0.5, "std": 0.1, "min": 0.4, "max": 0.6,
             "failed_attempts": 0} for cid, v in _cells(unequal).items()]  # fmt: skip
    assert "Note: final values; the cells' sample budgets differ" in summary_markdown(unequal, rows)
    matched = parse_spec(spec(base=BASE, grid={"zip": [{"rollout.batch_size": [8, 16], "train.iterations": [4, 2]}]}))
    assert budget_note(matched, _cells(matched)) == ""
    assert budget_note(parse_spec(spec()), _cells(parse_spec(spec()))) == ""
