"""harness/run.py: the implementation registry and the MLflow run's life (FINISHED / FAILED / KILLED)."""

from __future__ import annotations

import ast
import inspect
import sys
import types
from pathlib import Path

import pytest

import harness.run as R
from harness.config import build_config
from harness.impls import Implementation
from harness.schema import Tag
from harness.tracking import Store
from tests.conftest import TINY


def test_every_impl_resolves_lazily_to_a_train_with_the_registry_signature():
    from typing import get_args

    from harness.config import RunConfig
    from harness.schema import IMPLEMENTATIONS

    # one list of names: the schema's (with the labels), the registry's targets, the values config's impl allows
    assert tuple(R.IMPLEMENTATIONS) == tuple(IMPLEMENTATIONS) == get_args(RunConfig.model_fields["impl"].annotation)
    for impl in R.IMPLEMENTATIONS:
        fn = R.resolve(impl)
        assert fn.__name__ == "train"
        assert list(inspect.signature(fn).parameters) == ["cfg", "models", "rec"]
    from baselines import trl_ppo
    from harness.ppo import loop

    assert R.resolve("custom") is loop.train and R.resolve("trl") is trl_ppo.train
    with pytest.raises(ValueError, match="unknown impl 'jax'"):
        R.resolve("jax")


def test_run_py_imports_no_implementation():
    tree = ast.parse(Path(R.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not [n for n in names if n.startswith(("baselines", "harness.ppo.loop"))], names


@pytest.fixture
def fake_impl(monkeypatch):
    """impl=custom pointed at a module of this test: it records one metric, or raises what it is told."""
    mod = types.ModuleType("fake_impl")
    mod.raise_ = None

    def train(cfg, models, rec):
        rec.log(0, {"eval/gold": 0.5})
        if mod.raise_ is not None:
            raise mod.raise_

    mod.train = train
    monkeypatch.setitem(sys.modules, "fake_impl", mod)
    monkeypatch.setitem(R.IMPLEMENTATIONS._entries, "custom", Implementation("custom", "fake_impl:train"))
    return mod


@pytest.mark.parametrize("raise_, status, reason", [
    (None, "FINISHED", None),
    (RuntimeError("loss/policy became nan at iteration 3\nmore"), "FAILED", "RuntimeError: loss/policy became nan at iteration 3"),
    (KeyboardInterrupt(), "KILLED", "interrupted"),
])
def test_execute_owns_the_runs_status(tmp_path, fake_impl, raise_, status, reason):
    fake_impl.raise_ = raise_
    store = Store(tmp_path / "runs")
    cfg = build_config(None, {"seed": 4})
    if raise_ is None:
        result = R.execute(cfg, store, experiment="t", progress=False)
        run_id = result.run_id
    else:
        with pytest.raises(type(raise_)):
            R.execute(cfg, store, experiment="t", progress=False)
        (run_id,) = [r.info.run_id for r in store.find_runs("t")]
    run = store.get_run(run_id)
    assert run.info.status == status and run.data.metrics["eval/gold"] == 0.5
    assert run.data.tags[Tag.IMPL] == "custom" and run.data.tags[Tag.SEED] == "4"
    assert run.data.tags[Tag.WORLD_SIZE] == "1"  # one process
    assert run.data.tags.get(Tag.FAILURE) == reason
    artifacts = {a.path for a in store.client.list_artifacts(run_id)}
    assert "config.yaml" in artifacts and (("error.txt" in artifacts) == (status == "FAILED"))


@pytest.mark.parametrize("resume", [False, True])
def test_a_sigterm_while_the_run_opens_marks_it_killed(tmp_path, fake_impl, monkeypatch, resume):
    """SIGTERM (``train``'s handler: KeyboardInterrupt) arriving while the run is being opened, RUNNING
    already (its params or tags being written): the run ends KILLED, not left RUNNING, and no training starts."""
    import os
    import signal

    from harness.cli import sigterm_as_interrupt
    from harness.tracking import RunLogger

    store = Store(tmp_path / "runs")
    cfg = build_config(None, {"seed": 4})
    run_id = store.start_run("t").run_id if resume else None
    real = RunLogger.set_tags if resume else RunLogger.log_params

    def write_then_sigterm(self, *args):
        real(self, *args)
        assert store.run_summary(self.run_id)["status"] == "RUNNING"
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(RunLogger, "set_tags" if resume else "log_params", write_then_sigterm)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        R.execute(cfg, store, experiment="t", progress=False, resume=run_id)
    (run,) = store.find_runs("t")
    run = store.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and "eval/gold" not in run.data.metrics
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_train_validates_the_model_keys_once(tmp_path, monkeypatch):
    """``ppo-harness train``: the CLI checks the model keys before the store exists and hands the result on;
    neither ``execute`` nor ``load_models`` checks them again."""
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.warmstart import load

    calls = []
    real = load.validate_model_keys

    def counted(cfg):
        calls.append(cfg.seed)
        return real(cfg)

    monkeypatch.setattr(load, "validate_model_keys", counted)
    sets = [a for k, v in {**TINY, "train.iterations": 1}.items() for a in ("--set", f"{k}={v}")]
    out = CliRunner().invoke(app, ["train", *sets, "--seed", "3", "-q", "--runs-dir", str(tmp_path / "runs")])
    assert out.exit_code == 0, out.output
    assert calls == [3]
