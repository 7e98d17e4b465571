"""A task defined by data: prompts (and optionally SFT completions) from a local JSONL, CSV or Parquet file.

    task.prompts=data/prompts.jsonl       # one record per line: {"prompt": "...", "split": "train"}
    task.prompt_column=prompt             # the column holding the prompt text
    task.split_column=split               # optional: rows whose split is task.eval_split are held out
    task.eval_fraction=0.1                # without a split column: a fixed-seed holdout of this share
    task.template="Question: {prompt}\\nAnswer:"   # what the policy sees ({prompt} is the column's text)
    task.completion_column=response       # optional: (prompt, completion) pairs for model.sft=task

The file is read once, strictly: a missing file, an unreadable or empty one, a missing column, an
empty prompt or a split column without held-out rows is refused with one line naming the file and
the problem (``PromptFileError``, exit 2), before a run exists. The holdout is a function of the
file's rows alone (a seeded shuffle of their indices, seed 0): the same prompts on every machine.
A data task has no gold reward of its own: it comes from ``model.gold`` (or the optimised reward).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.tasks.base import Task

FORMATS = (".jsonl", ".csv", ".parquet")
MAX_ROWS = 10_000_000


class PromptFileError(ValueError):
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


def read_rows(path: str) -> list[dict]:
    """The file's records as dicts (JSONL: one object per line; CSV: a header row; Parquet: via pandas)."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in FORMATS:
        raise _fail(path, f"unknown format '{p.suffix}' (expected {', '.join(FORMATS)})")
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


def split_prompts(spec: PromptFile, rows: Sequence[dict]) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(train prompts, held-out prompts, SFT pairs of train rows), templated."""
    path = spec.path
    if not rows:
        raise _fail(path, "holds no rows")
    if len(rows) > MAX_ROWS:
        raise _fail(path, f"{len(rows)} rows, more than {MAX_ROWS}")
    missing = [c for c in (spec.prompt_column, spec.split_column, spec.completion_column) if c and c not in rows[0]]
    if missing:
        raise _fail(path, f"no column '{missing[0]}' (columns: {', '.join(map(str, rows[0]))})")
    prompts = [spec.template.replace("{prompt}", _text(path, r, spec.prompt_column, i)) for i, r in enumerate(rows, 1)]
    held = _held_out(spec, rows)
    train = [p for i, p in enumerate(prompts) if i not in held]
    evals = [p for i, p in enumerate(prompts) if i in held]
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
    """The file's task; ``gold`` scores (prompts, completions, ended) in batches (``model.gold``)."""
    train, evals, corpus = split_prompts(spec, read_rows(spec.path))
    task = Task(
        name=f"prompts:{Path(spec.path).stem}",  # as harness.config.task_label
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
