"""harness/registry.py: the one registry style (implementations, tasks, figures, option values)."""

from __future__ import annotations

import pytest

from harness.errors import InputError
from harness.registry import Registry, UnknownName, load


def test_duplicates_are_refused_and_unknown_names_get_the_closest():
    r: Registry[int] = Registry("loss aggregation")
    r.add("token-mean", 1)
    r.add("seq-mean-token-mean", 2)
    with pytest.raises(ValueError, match="'token-mean' registered twice"):
        r.add("token-mean", 3)
    with pytest.raises(UnknownName) as e:
        r["token-maen"]
    assert isinstance(e.value, InputError)
    assert str(e.value) == ("unknown loss aggregation 'token-maen'; expected one of ('token-mean', "
                            "'seq-mean-token-mean') (did you mean token-mean?)")
    with pytest.raises(UnknownName, match=r"\)$"):  # nothing close: no suggestion
        r["zzz"]
    assert r.names() == ("token-mean", "seq-mean-token-mean") and list(r) == list(r.names()) and len(r) == 2


def test_targets_are_loaded_only_when_used():
    import subprocess
    import sys

    code = ("import sys, harness.impls; assert 'harness.ppo.loop' not in sys.modules and 'trl' not in sys.modules; "
            "from harness.registry import load; from harness.ppo import loop; "
            "assert load(harness.impls.get('custom').train) is loop.train; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    assert load("harness.errors:InputError") is InputError


def test_every_registry_speaks_the_same_style():
    """Implementations, tasks, figures and the option values are all ``harness.registry.Registry``s."""
    from harness.algos.estimators import BASELINES
    from harness.algos.losses import POLICY_LOSSES
    from harness.algos.offpolicy import CORRECTIONS
    from harness.impls import IMPLEMENTATIONS
    from harness.tasks.base import TASKS
    from reports.plots.registry import FIGURES

    for reg in (IMPLEMENTATIONS, TASKS, FIGURES, BASELINES, POLICY_LOSSES, CORRECTIONS):
        assert isinstance(reg, Registry) and len(reg) > 0
    with pytest.raises(UnknownName, match="did you mean trl-grpo"):
        IMPLEMENTATIONS["trl-grp"]
