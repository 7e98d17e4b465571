"""Tasks from other packages through the real entry-point mechanism: a distribution on sys.path (a
``*.dist-info`` folder with ``entry_points.txt``, as pip installs one) registering ``ppo_harness.tasks``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import TINY

PLUGIN = '''
from harness.tasks import Task

WORDS = ("red", "green", "blue", "one", "two")


def gold(prompt, completion, ended=True):
    # 1 when the completion repeats the prompt's colour, else 0; no EOS scores 0
    return float(ended and completion.split()[:1] == prompt.split()[-1:])


def make_echo():
    prompts = [f"say {w}" for w in WORDS]
    return Task(name="echo", description="repeat the last word of the prompt", train_prompts=tuple(prompts),
                eval_prompts=tuple(prompts[:2]), sft_corpus=tuple((p, p.split()[-1]) for p in prompts * 20),
                gold_fn=gold, response_length=3, gold_range=(0.0, 1.0), vocabulary=("say", *WORDS))


def make_misnamed():
    return Task(name="other", description="", train_prompts=("a",), eval_prompts=("a",),
                sft_corpus=(("a", "b"),), gold_fn=gold, response_length=2, gold_range=(0.0, 1.0))


not_a_task = 42
'''

ENTRY_POINTS = """
[ppo_harness.tasks]
echo = echo_tasks:make_echo
sort = echo_tasks:make_echo
missing = no_such_module:make
misnamed = echo_tasks:make_misnamed
number = echo_tasks:not_a_task
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    (root / "echo_tasks.py").write_text(PLUGIN)
    info = root / "echo_tasks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-tasks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    return root


def _cli(plugin_path: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_tasks_lists_the_plugin_with_its_source_and_says_why_others_were_left_out(plugin_path, tmp_path):
    out = _cli(plugin_path, tmp_path, "tasks")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert set(rows) == {"echo", "length", "sentiment", "sort"}
    assert "plugin echo-tasks (echo_tasks:make_echo)" in rows["echo"] and "repeat the last word" in rows["echo"]
    assert "built-in" in rows["sort"]  # the clash did not replace the built-in
    warnings = out.stderr.splitlines()
    assert len(warnings) == 4, out.stderr
    why = {w.split("'")[1]: w for w in warnings}
    assert "taken by the built-in task" in why["sort"]
    assert "ModuleNotFoundError" in why["missing"]
    assert "named 'misnamed' but its Task is named 'other'" in why["misnamed"]
    assert "gave int, neither a harness.tasks.Task nor a function" in why["number"]


def test_a_plugin_task_trains_and_its_name_is_on_the_mlflow_run(plugin_path, tmp_path):
    sets = [a for k, v in {**TINY, "task.response_length": 3, "train.iterations": 1}.items()
            for a in ("--set", f"{k}={v}")]
    out = _cli(plugin_path, tmp_path, "train", "--set", "task.name=echo", *sets, "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stdout + out.stderr
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["task.name"] == "echo"
    assert "eval/gold" in runs[0].data.metrics


def test_an_unknown_task_is_one_line_naming_the_key(plugin_path, tmp_path):
    out = _cli(plugin_path, tmp_path, "train", "--set", "task.name=missing", "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "task.name" in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists()
