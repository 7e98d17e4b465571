"""harness.models.reward_fn.check_scores and the wrapper around a user's function: only a sequence of finite
real numbers of the batch's length is a score list; sys.exit in user code is that code failing; a call
that outlasts the bound is stopped. In-process and fast (tests/smoke/test_reward_fn.py runs the CLI)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch

from harness.models import reward_fn
from harness.models.reward_fn import check_scores, load_reward_fn
from harness.models.types import ModelError


@pytest.mark.parametrize("out, want", [
    ([1, 2.5], [1.0, 2.5]), ((0, -1), [0.0, -1.0]), (np.array([0.5, 1.5]), [0.5, 1.5]),
    (torch.tensor([0.25, 0.75]), [0.25, 0.75]), ([np.float32(1.0), torch.tensor(2.0)], [1.0, 2.0]),
    ([True, False], [1.0, 0.0]),
])  # fmt: skip
def test_sequences_of_reals_are_scores(out, want):
    assert check_scores("m:f", out, 2) == want


@pytest.mark.parametrize("out, says", [
    ("11", "returned str, expected a list of 2 numbers"),  # once: two scores, 1.0 and 1.0
    ({"a": 1, "b": 2}, "returned dict"),  # once: its keys
    ({1.0, 2.0}, "returned set"),
    (b"12", "returned bytes"),
    (["1", "2"], "returned a str ('1') among the scores"),
    ([10**400, 1], "too large for a float"),
    ([1.0, float("nan")], "non-finite score (nan)"),
    ([1.0], "returned 1 scores for 2 completions"),
    (3.0, "returned float"),
    (np.array([[1.0, 2.0]]), "returned ndarray"),
    ((x for x in [1.0, 2.0]), "returned generator"),
])  # fmt: skip
def test_anything_else_is_refused_naming_what_it_was(out, says):
    with pytest.raises(ModelError, match="model.reward 'm:f': ") as e:
        check_scores("m:f", out, 2)
    assert says in str(e.value) and "\n" not in str(e.value)


def _module(monkeypatch, tmp_path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)


def test_sys_exit_in_user_code_is_that_codes_failure(monkeypatch, tmp_path):
    _module(monkeypatch, tmp_path, "exit_at_import", "import sys\nsys.exit(0)\n")
    with pytest.raises(ModelError, match=r"importing 'exit_at_import' failed \(SystemExit: 0\)"):
        load_reward_fn("exit_at_import:fn")
    _module(monkeypatch, tmp_path, "exit_in_call", "import sys\ndef fn(p, c):\n    sys.exit(3)\n")
    fn = load_reward_fn("exit_in_call:fn", key="model.gold")
    with pytest.raises(ModelError, match=r"model.gold 'exit_in_call:fn': raised SystemExit: 3"):
        fn(["a"], ["b"])


def test_a_call_past_the_bound_is_stopped(monkeypatch, tmp_path):
    _module(monkeypatch, tmp_path, "slow_reward", "import time\ndef fn(p, c):\n    time.sleep(30)\n")
    monkeypatch.setattr(reward_fn, "TIMEOUT_S", 0.3)
    fn = load_reward_fn("slow_reward:fn")
    t0 = time.monotonic()
    with pytest.raises(ModelError, match=r"took longer than 0.3s for a batch of 1"):
        fn(["a"], ["b"])
    assert time.monotonic() - t0 < 10
    _module(monkeypatch, tmp_path, "quick_reward", "def fn(p, c):\n    return [1.0] * len(c)\n")
    assert load_reward_fn("quick_reward:fn")(["a", "b"], ["c", "d"]) == [1.0, 1.0]
    time.sleep(0.5)  # the alarm was cancelled: nothing fires after a call that finished in time
