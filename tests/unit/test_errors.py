"""harness/errors.py: one vocabulary for bad input; every refusal class speaks it, the CLI maps it by class."""

from __future__ import annotations

import importlib

import pytest

from harness.errors import EXIT_INPUT, InputError, describe, first_line

# every class the house raises for bad input (a config key, an option, a path, a spec, a model, a run id)
REFUSALS = [
    ("harness.config", "ConfigError"), ("harness.config", "SpeltTwice"), ("harness.devices", "DeviceError"),
    ("harness.yamlio", "YAMLInputError"), ("harness.export", "ExportError"), ("harness.urls", "UnsafeName"),
    ("harness.tasks.data", "PromptFileError"), ("harness.models.types", "ModelError"),
    ("harness.warmstart.artifacts", "ArtifactError"), ("harness.sweep.spec", "SpecError"),
    ("harness.sweep.study", "SweepRefused"), ("harness.sweep.faults", "NotAJournal"),
    ("harness.sweep.coordinator", "SweepInputError"), ("harness.bench.run", "BenchInputError"),
    ("reports.collect", "ReportError"), ("baselines.trl_ppo", "NotExpressible"),
    ("baselines.trl_common", "TrainerNotExpressible"),
]


@pytest.mark.parametrize("module, name", REFUSALS)
def test_every_refusal_is_an_input_error(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, InputError) and issubclass(cls, ValueError) and cls.exit_code == EXIT_INPUT


def test_key_and_problem_make_the_line():
    e = InputError(key="ppo.lr", problem="expected > 0")
    assert str(e) == "ppo.lr: expected > 0" and e.key == "ppo.lr" and e.problem == "expected > 0"
    assert InputError("as given").key is None


def test_first_line_and_describe():
    assert first_line("\n  a   b \nsecond") == "a b" and first_line("") == ""
    assert describe(RuntimeError("nan at 3\nmore")) == "RuntimeError: nan at 3"
    assert describe(KeyError()) == "KeyError"


def test_the_cli_maps_a_new_input_error_by_class(capsys, monkeypatch):
    """A refusal class the CLI has never heard of still ends as one line and exit 2 (no table of names)."""
    from harness import cli
    from harness.sweep import coordinator

    class Fresh(InputError):
        pass

    def refuse(*a, **k):
        raise Fresh("--fresh 'x': refused")

    monkeypatch.setattr(coordinator, "run_sweep", refuse)
    monkeypatch.setattr(cli, "check_input_file", lambda *a, **k: None)
    monkeypatch.setattr(cli, "check_output", lambda *a, **k: None)
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "spec.yaml"])
    assert e.value.code == 2 and capsys.readouterr().err == "error: --fresh 'x': refused\n"
