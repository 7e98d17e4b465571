"""A task defined by data (task.prompts): JSONL, CSV and Parquet files read strictly; held-out prompts from a
split column or a fixed-seed holdout; a run on a file (and on a save_to_disk dataset) with an own model and a
reward function; bad files and datasets refused with one line naming task.prompts and nothing created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.tasks.data import PromptFile, PromptFileError, data_task, read_rows, split_prompts
from tests.conftest import TINY

ROWS = [{"prompt": f"review {i} :", "split": "test" if i % 4 == 0 else "train", "response": "good film"}
        for i in range(12)]


def _write(path: Path, rows=ROWS) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_each_format_gives_the_same_rows(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="Parquet needs pyarrow")
    rows = read_rows(str(_write(tmp_path / f"p{suffix}")))
    assert [{k: str(v) for k, v in r.items()} for r in rows] == [{k: str(v) for k, v in r.items()} for r in ROWS]


def test_the_split_column_holds_out_its_rows_and_the_template_is_applied(tmp_path):
    path = str(_write(tmp_path / "p.jsonl"))
    spec = PromptFile(path, split_column="split", template="Q: {prompt} A:", completion_column="response")
    train, evals, corpus = split_prompts(spec, read_rows(path))
    assert evals == [f"Q: review {i} : A:" for i in (0, 4, 8)]  # rows 0, 4 and 8 are split=test, by hand
    assert len(train) == 9 and corpus[0] == ("Q: review 1 : A:", "good film")


def test_without_a_split_the_holdout_is_a_fixed_share_the_same_every_time(tmp_path):
    path = str(_write(tmp_path / "p.jsonl"))
    a = split_prompts(PromptFile(path, eval_fraction=0.25), read_rows(path))
    b = split_prompts(PromptFile(path, eval_fraction=0.25), read_rows(path))
    assert a == b and len(a[1]) == 3 and len(a[0]) == 9  # round(0.25 * 12) held out
    assert not set(a[0]) & set(a[1])
    task = data_task(PromptFile(path), 16, gold=lambda p, c, e: [1.0] * len(c))
    assert task.name == "prompts:p" and task.gold(["x"], ["y"], [True]) == [1.0]


@pytest.mark.parametrize(("content", "name", "says"), [
    (None, "absent.jsonl", "no such file"),
    ("", "empty.jsonl", "holds no rows"),
    ('{"text": "hi"}\n', "nocol.jsonl", "task.prompt_column 'prompt': no such column (columns: text)"),
    ('{"prompt": "hi"}\nnot json\n', "broken.jsonl", "line 2 is not JSON"),
    ('{"prompt": ""}\n{"prompt": "a"}\n', "blank.jsonl", "row 1: column 'prompt' is empty or not text"),
    (b"\xff\xfe prompt\n", "latin.csv", "not UTF-8 text"),
    ("prompt\na\n", "prompts.txt", "unknown format '.txt'"),
    ('{"prompt": "only one"}\n', "one.jsonl", "0 held-out prompts"),
])
def test_a_bad_file_is_one_line_naming_the_file(tmp_path, content, name, says):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(PromptFileError) as e:
        split_prompts(PromptFile(str(path)), read_rows(str(path)))
    assert str(e.value).startswith(f"task.prompts '{path}':") and says in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("options", "says"), [
    ({"split_column": "part"}, "task.split_column 'part': no such column (columns: prompt, split, response)"),
    ({"completion_column": "answer"}, "task.completion_column 'answer': no such column"),
    ({"split_column": "split", "eval_split": "dev"}, "task.eval_split 'dev': no row of task.split_column 'split'"),
])
def test_a_column_key_naming_nothing_is_named(tmp_path, options, says):
    """The line names the key that named the missing column (not only the file and the column)."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "split": "train", "response": "x"}\n{"prompt": "b", "split": "test", "response": "y"}\n')
    with pytest.raises(PromptFileError) as e:
        split_prompts(PromptFile(str(path), **options), read_rows(str(path)))
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_column_missing_from_a_later_row_is_named(tmp_path):
    """JSON lines need not share their keys: a split column absent from row 3 is named with its row, not taken
    for a training row."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "split": "train"}\n{"prompt": "b", "split": "test"}\n{"prompt": "c"}\n')
    with pytest.raises(PromptFileError) as e:
        split_prompts(PromptFile(str(path), split_column="split"), read_rows(str(path)))
    assert "task.split_column 'split': row 3 has no such column" in str(e.value), str(e.value)


REWARD = "def words(prompts, completions):\n    return [float(len(c.split())) for c in completions]\n"


def _cli(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "file_rewards.py").write_text(REWARD)
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args, "--runs-dir", str(tmp_path / "runs")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def _sets(extra: dict) -> list[str]:
    return [a for k, v in {**TINY, "train.iterations": 1, **extra}.items() for a in ("--set", f"{k}={v}")]


@pytest.mark.parametrize("impl", ["custom", "trl"])
def test_a_run_on_a_prompt_file_with_an_own_model_and_a_reward_function(tmp_path, impl):
    from tests.smoke.test_own_models import make_model

    words = sorted({w for r in ROWS for w in r["prompt"].split()} | {"good", "film", "bad"})
    policy = make_model(tmp_path / "policy", "llama", words)
    path = _write(tmp_path / "reviews.jsonl")
    out = _cli(tmp_path, "train", *_sets({"model.policy": policy, "task.prompts": path, "task.split_column": "split",
                                          "model.reward": "file_rewards:words", "task.response_length": 4,
                                          "train.missing_eos_penalty": "null", "impl": impl}))
    assert out.returncode == 0, out.stdout + out.stderr
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FINISHED" and run.data.tags["task"] == "prompts:reviews"
    assert run.data.tags["impl"] == impl and run.data.tags["device"].split()[0] in ("cpu", "cuda:0")
    # named and tagged after the data and its hash, never after task.name (sentiment), which it does not read
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert run.data.tags["task.data"] == str(path) and run.data.tags["task.data_sha256"] == sha
    assert run.info.run_name == f"reviews.{sha[:8]}-{impl}-token-s0"
    assert run.data.tags["gold.source"] == "optimised reward (no independent gold)"
    weights = sorted(Path(policy).rglob("*.safetensors"))
    assert weights and run.data.tags["model.policy_sha256"] == hashlib.sha256(
        "".join(hashlib.sha256(w.read_bytes()).hexdigest() for w in weights).encode()).hexdigest()[:16]
    # model.value_init=reward is the default, but a reward function is no model to start from: say what was done
    assert run.data.params["model.value_init"] == "reward"
    assert run.data.tags["value.init"] == "policy (model.reward is a function: no reward model)"
    # no model.gold: the held-out measure is the optimised function, so eval/gold == eval/proxy
    assert run.data.metrics["eval/gold"] == pytest.approx(run.data.metrics["eval/proxy"])
    assert 0 <= run.data.metrics["eval/gold"] <= 4  # words in a 4-token response


def test_a_bad_file_through_train_exits_2_and_creates_nothing(tmp_path):
    (tmp_path / "nocol.jsonl").write_text('{"text": "hi"}\n')
    out = _cli(tmp_path, "train", *_sets({"task.prompts": tmp_path / "nocol.jsonl", "model.reward": "file_rewards:words"}))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "task.prompts" in lines[0], out.stderr
    assert "task.prompt_column 'prompt': no such column" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_file_task_needs_a_gold_reward(tmp_path):
    _write(tmp_path / "p.jsonl")
    out = _cli(tmp_path, "train", *_sets({"task.prompts": tmp_path / "p.jsonl"}))  # model.reward=learned
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "model.gold" in out.stderr, out.stderr


def _offline_hf(tmp_path: Path) -> dict:
    """The CLI's environment for a dataset: no network, Hugging Face caches inside tmp_path."""
    home = tmp_path / "hf"
    return {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(home),
            "HF_DATASETS_CACHE": str(home / "datasets")}


def test_a_run_on_a_saved_dataset_dict_holds_out_its_test_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    from tests.smoke.test_own_models import make_model

    train = [r for r in ROWS if r["split"] == "train"]
    test = [{"prompt": f"unseen {r['prompt']}", "response": r["response"]} for r in ROWS if r["split"] == "test"]
    words = sorted({w for r in train + test for w in r["prompt"].split()} | {"good", "film", "bad"})
    policy = make_model(tmp_path / "policy", "llama", words)
    saved = tmp_path / "review_ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}
                         ).save_to_disk(str(saved))
    out = _cli(tmp_path, "train", *_sets({"model.policy": policy, "task.prompts": saved, "model.reward": "file_rewards:words",
                                          "task.response_length": 4, "train.missing_eos_penalty": "null"}),
               env=_offline_hf(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FINISHED" and run.data.tags["task"] == "prompts:review_ds"
    assert 0 <= run.data.metrics["eval/gold"] <= 4
    import pandas as pd

    samples = pd.read_parquet(client.download_artifacts(run.info.run_id, "samples.parquet", str(tmp_path)))
    assert set(samples["prompt"]) <= {r["prompt"] for r in test} and len(samples)  # evaluated on the test split


def test_a_bad_dataset_through_train_exits_2_and_creates_nothing(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"text": "hi"}, {"text": "yo"}]).save_to_disk(str(tmp_path / "nocol_ds"))
    (tmp_path / "no_data").mkdir()
    for value, says in ((tmp_path / "nocol_ds", "task.prompt_column 'prompt': no such column"),
                        (tmp_path / "no_data", "cannot load as a Hugging Face dataset")):
        out = _cli(tmp_path, "train", *_sets({"task.prompts": value, "model.reward": "file_rewards:words"}),
                   env=_offline_hf(tmp_path))
        assert out.returncode == 2, out.stdout + out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and f"task.prompts '{value}'" in lines[0] and says in lines[0], out.stderr
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_own_model_warm_start_is_sized_to_the_data_shows_its_progress_under_q_and_is_cached(tmp_path):
    """model.sft=task on one's own model: 12 rows -> 9 training pairs -> max(50, ceil(3 * 9 / 64)) = 50 steps
    (not the presets' 600); under -q its progress still shows on stderr; the second run finds it cached."""
    from tests.smoke.test_own_models import make_model

    words = sorted({w for r in ROWS for w in (r["prompt"] + " " + r["response"]).split()} | {"good", "film", "bad"})
    policy = make_model(tmp_path / "policy", "llama", words)
    path = _write(tmp_path / "reviews.jsonl")
    sets = _sets({"model.policy": policy, "task.prompts": path, "task.split_column": "split", "model.sft": "task",
                  "task.completion_column": "response", "model.reward": "file_rewards:words",
                  "task.response_length": 4, "train.missing_eos_penalty": "null"})
    env = {"PPO_HARNESS_CACHE": str(tmp_path / "cache")}
    first = _cli(tmp_path, "train", "-q", *sets, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "SFT warm start: 50 steps of 64 on 9 pairs" in first.stderr, first.stderr
    assert sum(line.startswith("SFT step ") for line in first.stderr.splitlines()) == 10
    assert "SFT step 50/50" in first.stderr
    again = _cli(tmp_path, "train", "-q", *sets, env=env)
    assert again.returncode == 0 and "SFT" not in again.stderr, again.stderr  # built once, then cached


def test_prompts_too_long_for_a_preset_policy_are_refused_before_anything_is_built(tmp_path):
    """A preset policy's context and SFT grow with the longest prompt: 257 words is refused in one line naming
    task.prompts, exit 2, and nothing is created (no run, no model cache entry); 256 words pass the check."""
    long = " ".join(["word"] * 257)
    _write(tmp_path / "long.jsonl", [{"prompt": long if i == 5 else f"review {i} :"} for i in range(8)])
    cache = tmp_path / "cache"
    out = _cli(tmp_path, "train", *_sets({"task.prompts": tmp_path / "long.jsonl", "model.reward": "file_rewards:words"}),
               env={"PPO_HARNESS_CACHE": str(cache)})
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "task.prompts" in lines[0] and "257 words, more than the 256" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not cache.exists() or not any(cache.rglob("*.safetensors"))
    from harness.config import build_config
    from harness.warmstart.load import run_task

    _write(tmp_path / "ok.jsonl", [{"prompt": " ".join(["word"] * 256) if i == 5 else f"review {i} :"} for i in range(8)])
    (tmp_path / "file_rewards.py").write_text(REWARD)
    sys.path.insert(0, str(tmp_path))
    try:
        task = run_task(build_config(None, {"task.prompts": str(tmp_path / "ok.jsonl"), "model.reward": "file_rewards:words"}))
    finally:
        sys.path.remove(str(tmp_path))
    assert max(len(p.split()) for p in (*task.train_prompts, *task.eval_prompts)) == 256
