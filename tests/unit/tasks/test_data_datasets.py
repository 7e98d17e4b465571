"""task.prompts as a Hugging Face ``datasets`` dataset (harness/tasks/data.py): a save_to_disk DatasetDict and a
folder of data files read through ``datasets`` itself (real datasets built in tmp_path, offline, with a private
cache); a DatasetDict's splits become the holdout, one without the eval split gets the fixed-seed holdout; a
folder without data or a dataset without the prompt column is one line naming task.prompts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness.tasks.data import PromptFile, PromptFileError, data_task, label, read_source, split_prompts

datasets = pytest.importorskip("datasets")

TRAIN = [{"prompt": f"train review {i} :", "response": "good film"} for i in range(10)]
TEST = [{"prompt": f"test review {i} :", "response": "bad film"} for i in range(3)]


@pytest.fixture(autouse=True)
def offline_hf(tmp_path, monkeypatch):
    """No network, and every cache ``datasets`` writes inside tmp_path (also when it was imported earlier)."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    return home


def _saved_dict(folder: Path, splits: dict[str, list[dict]]) -> str:
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(folder))
    return str(folder)


def _split(spec: PromptFile):
    return split_prompts(spec, *read_source(spec))


def test_a_saved_dataset_dict_trains_on_train_and_holds_out_test(tmp_path):
    path = _saved_dict(tmp_path / "reviews", {"train": TRAIN, "test": TEST, "validation": TEST[:1]})
    assert (tmp_path / "reviews" / "dataset_dict.json").is_file()  # what save_to_disk writes: load_from_disk
    train, evals, corpus = _split(PromptFile(path, template="Q: {prompt} A:", completion_column="response"))
    assert train == [f"Q: train review {i} : A:" for i in range(10)]  # the train split only, not validation
    assert evals == [f"Q: test review {i} : A:" for i in range(3)]
    assert corpus == [(t, "good film") for t in train]  # SFT pairs from the training rows alone
    # eval_split names the held-out split; without a train split every other split trains
    train, evals, _ = _split(PromptFile(_saved_dict(tmp_path / "two", {"a": TRAIN[:4], "b": TEST}), eval_split="a"))
    assert evals == [r["prompt"] for r in TRAIN[:4]] and train == [r["prompt"] for r in TEST]


def test_a_folder_of_data_files_is_loaded_by_load_dataset_with_its_splits(tmp_path, offline_hf):
    folder = tmp_path / "jsonl_reviews"
    folder.mkdir()
    for name, rows in (("train", TRAIN), ("test", TEST)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, evals, _ = _split(PromptFile(str(folder), template="{prompt} >"))
    assert train == [f"train review {i} : >" for i in range(10)]
    assert evals == [f"test review {i} : >" for i in range(3)]
    assert (offline_hf / "datasets").is_dir()  # load_dataset prepared it in the private cache, nowhere else
    task = data_task(PromptFile(str(folder)), 16, gold=lambda p, c, e: [0.0] * len(c))
    assert task.name == "prompts:jsonl_reviews" == label(str(folder) + "/")
    assert task.eval_prompts == tuple(r["prompt"] for r in TEST)


def test_a_dataset_dict_without_the_eval_split_gets_the_fixed_seed_holdout(tmp_path):
    path = _saved_dict(tmp_path / "trainonly", {"train": TRAIN, "validation": TEST})
    a = _split(PromptFile(path, eval_fraction=0.3))
    b = _split(PromptFile(path, eval_fraction=0.3))
    assert a == b and len(a[1]) == 3 and len(a[0]) == 7  # round(0.3 * 10) of the train split held out
    assert set(a[0]) | set(a[1]) == {r["prompt"] for r in TRAIN}  # the validation split is not read
    # the same rows in a file get the same holdout: the rule is a function of the rows alone
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    assert _split(PromptFile(str(tmp_path / "train.jsonl"), eval_fraction=0.3)) == a


def test_a_single_saved_dataset_is_read_like_a_file(tmp_path):
    rows = [{**r, "split": "test" if i % 5 == 0 else "train"} for i, r in enumerate(TRAIN)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    train, evals, _ = _split(PromptFile(str(tmp_path / "one"), split_column="split"))
    assert evals == ["train review 0 :", "train review 5 :"] and len(train) == 8


def test_the_label_names_the_dataset(tmp_path):
    assert label("owner/name") == "prompts:name" and label("owner/name.v2") == "prompts:name.v2"
    assert label("data/reviews.jsonl") == "prompts:reviews" and label(str(tmp_path / "saved")) == "prompts:saved"


def _refusal(spec: PromptFile) -> str:
    with pytest.raises(PromptFileError) as e:
        _split(spec)
    msg = str(e.value)
    assert msg.startswith(f"task.prompts '{spec.path}': ") and "\n" not in msg, msg
    return msg


def test_refusals_are_one_line_naming_task_prompts(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("no data here\n")
    msg = _refusal(PromptFile(str(tmp_path / "empty")))
    assert "cannot load as a Hugging Face dataset (" in msg and "DataFilesNotFoundError" in msg
    saved = _saved_dict(tmp_path / "text_col", {"train": [{"text": "hi"}] * 3, "test": [{"text": "yo"}]})
    assert "task.prompt_column 'prompt': no such column (columns: text)" in _refusal(PromptFile(saved))
    assert "0 training and 1 held-out" in _refusal(PromptFile(_saved_dict(tmp_path / "t", {"test": TEST[:1]})))
    both = _refusal(PromptFile(_saved_dict(tmp_path / "s", {"train": TRAIN, "test": TEST}), split_column="response"))
    assert "has a 'test' split and task.split_column 'response' is set" in both
    # offline, a hub id not in the (empty) cache fails at once (no retries); neither a path nor a hub id names
    # the accepted forms
    start = time.monotonic()
    assert "cannot load as a Hugging Face dataset (ConnectionError: " in _refusal(PromptFile("nobody-here/no-such"))
    assert time.monotonic() - start < 5
    assert "nor a hub id (expected a .jsonl, .csv or .parquet file" in _refusal(PromptFile(str(tmp_path / "absent")))
    (tmp_path / "p.txt").write_text("prompt\n")
    assert "unknown format '.txt'" in _refusal(PromptFile(str(tmp_path / "p.txt")))
