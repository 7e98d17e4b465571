"""model.reward=package.module:function: a Python function of the text is the optimised reward, on the custom
core and on TRL's PPOTrainer; a broken one is refused with one line before anything exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY

REWARDS = '''
def half(prompts, completions):
    return [0.5 for _ in completions]

def too_few(prompts, completions):
    return [0.0]

def raises(prompts, completions):
    raise RuntimeError("reward server unreachable")

def not_numbers(prompts, completions):
    return ["high" for _ in completions]

def a_string(prompts, completions):
    return "11"  # two characters for two completions: once read as the scores 1 and 1

def huge(prompts, completions):
    return [10**400 for _ in completions]

def sleeps(prompts, completions):
    import time
    time.sleep(60)

NOT_CALLABLE = 3
'''


@pytest.fixture(scope="module")
def rewards_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rewards")
    (root / "my_rewards.py").write_text(REWARDS)
    (root / "exits_at_import.py").write_text("import sys\nsys.exit(0)\ndef fn(p, c):\n    return [0.0] * len(c)\n")
    return root


def _train(rewards_path: Path, tmp_path: Path, reward: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(rewards_path), os.environ.get("PYTHONPATH", "")]),
           "PPO_HARNESS_REWARD_TIMEOUT_S": "2"}
    sets = [a for k, v in {**TINY, "model.reward": reward, "train.missing_eos_penalty": "null"}.items()
            for a in ("--set", f"{k}={v}")]
    return subprocess.run([sys.executable, "-m", "harness.cli", "train", *sets, *extra,
                           "--runs-dir", str(tmp_path / "runs")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)


def _history(tmp_path: Path, key: str) -> list[float]:
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["model.reward"] == "my_rewards:half"
    assert "eval/gold" in runs[0].data.metrics  # the task's gold reward still measures the policy
    return [m.value for m in client.get_metric_history(runs[0].info.run_id, key)]


# what each TRL group trainer needs on top of TINY to be expressible
GROUP = {
    "trl-grpo": {"advantage.level": "sequence", "advantage.baseline": "group_norm", "advantage.whiten": "false",
                 "kl.placement": "loss", "kl.estimator": "k3", "kl.coef": 0.05},
    "trl-rloo": {"advantage.level": "sequence", "advantage.baseline": "rloo", "loss.agg": "seq-mean-token-sum",
                 "ppo.minibatches": 1},
}


@pytest.mark.parametrize("impl", ["custom", "trl", "trl-grpo", "trl-rloo"])
def test_the_function_is_the_optimised_reward(rewards_path, tmp_path, impl):
    extra = [a for k, v in GROUP.get(impl, {}).items() for a in ("--set", f"{k}={v}")]
    out = _train(rewards_path, tmp_path, "my_rewards:half", "--set", f"impl={impl}", *extra)
    assert out.returncode == 0, out.stdout + out.stderr
    scores = _history(tmp_path, "objective/scores")
    assert len(scores) == TINY["train.iterations"]
    assert scores == pytest.approx([0.5] * len(scores), abs=1e-7)  # every completion scored 0.5 by the function
    # the evaluation scores its samples with the same function: eval/proxy is the reward the run optimised
    proxy = _history(tmp_path, "eval/proxy")
    assert proxy and proxy == pytest.approx([0.5] * len(proxy), abs=1e-7)


@pytest.mark.parametrize(("reward", "says"), [
    ("my_rewards:too_few", "returned 1 scores for 2 completions"),
    ("my_rewards:raises", "raised RuntimeError: reward server unreachable"),
    ("my_rewards:not_numbers", "returned a str ('high') among the scores, expected real numbers"),
    ("my_rewards:a_string", "returned str, expected a list of 2 numbers"),
    ("my_rewards:huge", "a number too large for a float"),
    ("my_rewards:sleeps", "took longer than 2s for a batch of 2"),
    ("exits_at_import:fn", "importing 'exits_at_import' failed (SystemExit: 0)"),
    ("my_rewards:NOT_CALLABLE", "int is not callable"),
    ("my_rewards:absent", "module 'my_rewards' has no attribute 'absent'"),
    ("no_such_pkg.rewards:fn", "cannot import module 'no_such_pkg'"),
])
def test_a_broken_function_is_one_line_and_nothing_is_created(rewards_path, tmp_path, reward, says):
    out = _train(rewards_path, tmp_path, reward)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.reward" in lines[0] and says in lines[0], out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_broken_gold_function_is_refused_before_the_run(rewards_path, tmp_path):
    out = _train(rewards_path, tmp_path, "gold", "--set", "model.gold=my_rewards:raises")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.gold 'my_rewards:raises': raised RuntimeError" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_model_gold_replaces_the_tasks_gold_as_the_held_out_measure(rewards_path, tmp_path):
    out = _train(rewards_path, tmp_path, "gold", "--set", "model.gold=my_rewards:half")
    assert out.returncode == 0, out.stdout + out.stderr
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.data.params["model.gold"] == "my_rewards:half"
    gold = [m.value for m in client.get_metric_history(run.info.run_id, "eval/gold")]
    assert gold and gold == pytest.approx([0.5] * len(gold), abs=1e-7)  # the function, not the task's VADER gold
    # model.reward=gold optimises that same function: every score is 0.5 too
    scores = [m.value for m in client.get_metric_history(run.info.run_id, "objective/scores")]
    assert scores == pytest.approx([0.5] * len(scores), abs=1e-7)
