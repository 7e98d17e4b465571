"""A task defined by data: prompts (and optionally SFT completions) from a local JSONL, CSV or Parquet file,
or a Hugging Face ``datasets`` dataset.

    task.prompts=data/prompts.jsonl       # one record per line: {"prompt": "...", "split": "train"}
    task.prompt_column=prompt             # the column holding the prompt text
    task.split_column=split               # optional: rows whose split is task.eval_split are held out
    task.eval_fraction=0.1                # without a split column: a fixed-seed holdout of this share
    task.template="Question: {prompt}\\nAnswer:"   # what the policy sees ({prompt} is the column's text)
    task.completion_column=response       # optional: (prompt, completion) pairs for model.sft=task

Any other value of task.prompts is a dataset: a folder written by ``Dataset.save_to_disk`` /
``DatasetDict.save_to_disk`` (``datasets.load_from_disk``), or a folder of data files or a hub id
``owner/name`` (``datasets.load_dataset``; offline, with HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set or a
hub that does not answer in HUB_TIMEOUT seconds, from the local cache only). A dataset with splits (a ``DatasetDict``) holds out its task.eval_split split and
trains on its ``train`` split (every other split when it has none); without the eval split, the
training rows are held out as a file's (task.split_column or task.eval_fraction). A single ``Dataset``
is read like a file.

The data is read once, strictly: a missing file, an unreadable or empty one, a dataset that does not
load, a missing column, an empty prompt or a split column without held-out rows is refused with one
line naming task.prompts and the problem (``PromptFileError``, exit 2), before a run exists. The
holdout is a function of the rows alone (a seeded shuffle of their indices, seed 0): the same prompts
on every machine. A data task has no gold reward of its own: it comes from ``model.gold`` (or the
optimised reward).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from harness.errors import InputError
from harness.tasks.base import Task

FORMATS = (".jsonl", ".csv", ".parquet")
MAX_ROWS = 10_000_000
SAVED = ("dataset_dict.json", "state.json")  # a folder written by DatasetDict / Dataset .save_to_disk
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # owner/name on the Hugging Face hub
HUB_TIMEOUT = 5.0  # seconds the hub has to answer before a hub id is read from the local cache alone
ACCEPTED = ("a .jsonl, .csv or .parquet file, a datasets save_to_disk folder, a folder of data files "
            "or a Hugging Face dataset id owner/name")


class PromptFileError(InputError):
    """A prompt file that cannot define a task: one line naming the file (``task.prompts``) and the problem."""


@dataclass(frozen=True)
class PromptFile:
    path: str
    prompt_column: str = "prompt"
    split_column: str | None = None
    eval_split: str = "test"
    eval_fraction: float = 0.1
    template: str = "{prompt}"
    completion_column: str | None = None


def _fail(path: str, problem: str) -> PromptFileError:
    return PromptFileError(f"task.prompts '{path}': {problem}")


def _why(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def label(value: str) -> str:
    """The task's name for a task.prompts value: ``prompts:<file stem>`` for a file, ``prompts:<last part>``
    for a folder or a hub id (``owner/name`` -> ``prompts:name``). ``harness.config.task_label`` is this."""
    p = Path(value).expanduser()
    if p.exists():
        p = Path(os.path.abspath(p))  # "." and ".." by their folder's name
    return f"prompts:{p.stem if p.suffix.lower() in FORMATS else p.name}"


def digest(value: str) -> str | None:
    """A content hash of task.prompts (16 hex digits): the file's bytes, or a folder's files (relative paths
    and bytes); None for a hub id (its content is whatever the hub or the local cache holds)."""
    import hashlib

    p = Path(value).expanduser()
    files = [p] if p.is_file() else (sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [])
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        if f != p:
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def read_source(spec: PromptFile) -> tuple[list[dict], set[int] | None]:
    """task.prompts' rows and, for a dataset with a task.eval_split split, the indices of its held-out rows
    (None: ``split_prompts`` holds out by task.split_column or task.eval_fraction)."""
    value = spec.path
    p = Path(value).expanduser()
    if p.suffix.lower() in FORMATS:
        return read_rows(value), None
    if p.is_file():
        raise _fail(value, f"unknown format '{p.suffix}' (expected {ACCEPTED})")
    if not p.is_dir() and not HUB_ID.fullmatch(value):
        raise _fail(value, f"no such file or folder, nor a hub id (expected {ACCEPTED})")
    return _dataset_rows(spec, _load_dataset(value, p))


def _load_dataset(value: str, p: Path):
    """``load_from_disk`` for a save_to_disk folder, else ``load_dataset``; quietly (no progress bars or
    retry warnings). A hub id is read from the local cache alone when the hub is offline (HF_HUB_OFFLINE,
    HF_DATASETS_OFFLINE) or does not answer within HUB_TIMEOUT seconds."""
    try:
        import datasets
        from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError as e:
        raise _fail(value, f"a Hugging Face dataset needs the `datasets` package, which does not import ({_why(e)})"
                    ) from None
    offline = not p.is_dir() and _offline(datasets)
    unreachable = not p.is_dir() and not offline and not _hub_answers(datasets.config.HF_ENDPOINT)
    bars_off = are_progress_bars_disabled()
    loggers = [logging.getLogger(name) for name in ("datasets", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    disable_progress_bars()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _forced_offline(datasets, offline or unreachable):
            warnings.simplefilter("ignore")
            if p.is_dir() and any((p / f).is_file() for f in SAVED):
                return datasets.load_from_disk(str(p))
            return datasets.load_dataset(str(p) if p.is_dir() else value)
    except Exception as e:  # no data files, a hub id neither cached nor on the hub, a broken Arrow file
        why = (f"the hub {datasets.config.HF_ENDPOINT} does not answer and it is not in the local cache"
               if unreachable and isinstance(e, ConnectionError) else _why(e))
        raise _fail(value, f"cannot load as a Hugging Face dataset ({why})") from None
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if not bars_off:
            enable_progress_bars()


def _offline(datasets) -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, as ``datasets`` read them at import or as they are now."""
    now = os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))
    return bool(datasets.config.HF_HUB_OFFLINE) or now.strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_answers(endpoint: str) -> bool:
    """One HEAD request to the hub, no retries: a machine without a network finds out in HUB_TIMEOUT seconds."""
    try:
        from huggingface_hub.utils import get_session

        get_session().head(endpoint, timeout=HUB_TIMEOUT)
        return True
    except Exception:
        return False


@contextmanager
def _forced_offline(datasets, on: bool):
    """``datasets`` and ``huggingface_hub`` in offline mode (the local cache only) for the duration, when ``on``."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _dataset_rows(spec: PromptFile, ds) -> tuple[list[dict], set[int] | None]:
    """A Dataset's rows as a file's; a DatasetDict's training splits, then its eval split (held out)."""
    import datasets

    value = spec.path
    if not isinstance(ds, datasets.DatasetDict):
        return _records(value, [ds]), None
    if spec.eval_split not in ds:  # the training rows get the fixed-seed holdout (or task.split_column's)
        return _records(value, [ds["train"]] if "train" in ds else list(ds.values())), None
    if spec.split_column:
        raise _fail(value, f"has a '{spec.eval_split}' split and task.split_column '{spec.split_column}' is set: "
                    "hold out one way (drop task.split_column, or set task.eval_split to a split it lacks)")
    train = [ds["train"]] if "train" in ds else [d for n, d in ds.items() if n != spec.eval_split]
    rows = _records(value, [*train, ds[spec.eval_split]])
    n_train = sum(d.num_rows for d in train)
    return rows, set(range(n_train, len(rows)))


def _records(value: str, parts) -> list[dict]:
    total = sum(d.num_rows for d in parts)
    if total > MAX_ROWS:  # refused before the rows are materialised
        raise _fail(value, f"{total} rows, more than {MAX_ROWS}")
    return [row for d in parts for row in d.to_list()]


def read_rows(path: str) -> list[dict]:
    """The file's records as dicts (JSONL: one object per line; CSV: a header row; Parquet: via pandas)."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in FORMATS:
        raise _fail(path, f"unknown format '{p.suffix}' (expected {ACCEPTED})")
    if not p.is_file():
        raise _fail(path, "no such file" if not p.exists() else "not a file")
    try:
        if p.suffix.lower() == ".parquet":
            import pandas as pd

            return pd.read_parquet(p).to_dict("records")
        with open(p, encoding="utf-8", newline="") as f:
            if p.suffix.lower() == ".csv":
                return list(csv.DictReader(f))
            return [_json_row(path, i, line) for i, line in enumerate(f, 1) if line.strip()]
    except PromptFileError:
        raise
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text") from None
    except Exception as e:  # unreadable, a truncated Parquet file, a CSV with a broken quote
        raise _fail(path, f"cannot read ({type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''})") from None


def _json_row(path: str, n: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except ValueError:
        raise _fail(path, f"line {n} is not JSON") from None
    if not isinstance(row, dict):
        raise _fail(path, f"line {n} is not a JSON object")
    return row


def _text(path: str, row: dict, column: str, n: int) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"row {n}: column '{column}' is {'missing' if value is None else 'empty or not text'}")
    return value.strip()


def split_prompts(spec: PromptFile, rows: Sequence[dict], held: set[int] | None = None
                  ) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(train prompts, held-out prompts, SFT pairs of train rows), templated. ``held``: the held-out rows'
    indices when the data names them (a dataset's eval split), else task.split_column / task.eval_fraction."""
    path = spec.path
    if not rows:
        raise _fail(path, "holds no rows")
    if len(rows) > MAX_ROWS:
        raise _fail(path, f"{len(rows)} rows, more than {MAX_ROWS}")
    keys = (("task.prompt_column", spec.prompt_column), ("task.split_column", spec.split_column),
            ("task.completion_column", spec.completion_column))
    missing = [(k, c) for k, c in keys if c and c not in rows[0]]
    if missing:
        raise _fail(path, f"{missing[0][0]} '{missing[0][1]}': no such column (columns: {', '.join(map(str, rows[0]))})")
    for n, row in enumerate(rows, 1):  # a JSON-lines file's rows need not share their keys
        if absent := [(k, c) for k, c in keys if c and c not in row]:
            raise _fail(path, f"{absent[0][0]} '{absent[0][1]}': row {n} has no such column")
    prompts = [spec.template.replace("{prompt}", _text(path, r, spec.prompt_column, i)) for i, r in enumerate(rows, 1)]
    held = _held_out(spec, rows) if held is None else held
    train = [p for i, p in enumerate(prompts) if i not in held]
    evals = [p for i, p in enumerate(prompts) if i in held]
    if spec.split_column and not evals:  # the split column holds no row equal to task.eval_split
        raise _fail(path, f"task.eval_split '{spec.eval_split}': no row of task.split_column '{spec.split_column}' "
                    "holds it, so nothing is held out")
    if not train or not evals:
        raise _fail(path, f"{len(train)} training and {len(evals)} held-out prompts: both must be non-empty")
    corpus = []
    if spec.completion_column:
        corpus = [(prompts[i], _text(path, r, spec.completion_column, i + 1)) for i, r in enumerate(rows) if i not in held]
    return train, evals, corpus


def _held_out(spec: PromptFile, rows: Sequence[dict]) -> set[int]:
    if spec.split_column:
        return {i for i, r in enumerate(rows) if str(r.get(spec.split_column)) == spec.eval_split}
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    k = max(1, round(spec.eval_fraction * len(rows))) if len(rows) > 1 else 0
    return set(order[:k])


def data_task(spec: PromptFile, response_length: int,
              gold: Callable[[Sequence[str], Sequence[str], Sequence[bool]], list[float]] | None = None) -> Task:
    """The data's task; ``gold`` scores (prompts, completions, ended) in batches (``model.gold``)."""
    train, evals, corpus = split_prompts(spec, *read_source(spec))
    task = Task(
        name=label(spec.path),  # harness.config.task_label
        description=f"prompts from {spec.path}",
        train_prompts=tuple(train),
        eval_prompts=tuple(evals),
        sft_corpus=tuple(corpus),
        gold_fn=_no_gold,
        response_length=response_length,
        gold_range=(float("-inf"), float("inf")),
    )
    return with_gold(task, gold) if gold is not None else task


def with_gold(task: Task, gold: Callable[[Sequence[str], Sequence[str], Sequence[bool]], list[float]]) -> Task:
    """``task`` with its gold reward replaced by a batch function (``model.gold``)."""
    return replace(task, batch_gold=gold)


def _no_gold(prompt: str, completion: str, ended: bool) -> float:
    raise RuntimeError("this task has no gold reward of its own; it is set from model.gold")
