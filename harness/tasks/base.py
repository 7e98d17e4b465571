"""The task contract and its registry (a decorator; duplicates are an error)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    """An offline RLHF task: prompts, a gold reward and an SFT corpus.

    Text is whitespace-separated words; the harness tokenizer is word-level over
    ``vocabulary``. ``gold_fn(prompt, completion, ended)`` scores a completion: the text has
    EOS stripped, and ``ended`` says whether the response emitted EOS within its budget. Each
    task documents what an unfinished response scores (the built-ins: the worst gold, as the
    proxy RM's preference labels and PPO's missing-EOS penalty treat it).
    """

    name: str
    description: str
    train_prompts: tuple[str, ...]
    eval_prompts: tuple[str, ...]
    sft_corpus: tuple[tuple[str, str], ...]  # (prompt, completion) pairs for the warm start
    gold_fn: Callable[[str, str, bool], float]
    response_length: int  # default generation budget, in tokens (EOS included)
    gold_range: tuple[float, float]  # (worst, best) attainable gold
    vocabulary: tuple[str, ...] = field(default=())

    def gold(self, prompts: Sequence[str], completions: Sequence[str], ended: Sequence[bool]) -> list[float]:
        """Gold reward of each completion; ``ended[i]``: completion i emitted EOS."""
        return [
            float(self.gold_fn(p, c, bool(e))) for p, c, e in zip(prompts, completions, ended, strict=True)
        ]

    def words(self) -> list[str]:
        """Every word the task can produce or show, in a stable order."""
        seen: dict[str, None] = dict.fromkeys(self.vocabulary)
        for p in self.train_prompts + self.eval_prompts:
            seen.update(dict.fromkeys(p.split()))
        for p, c in self.sft_corpus:
            seen.update(dict.fromkeys(p.split()))
            seen.update(dict.fromkeys(c.split()))
        return list(seen)


TaskFactory = Callable[[], Task]
_REGISTRY: dict[str, tuple[str, TaskFactory]] = {}
_CACHE: dict[str, Task] = {}


def register(name: str, description: str) -> Callable[[TaskFactory], TaskFactory]:
    def deco(fn: TaskFactory) -> TaskFactory:
        if name in _REGISTRY:
            raise ValueError(f"task '{name}' is registered twice")
        _REGISTRY[name] = (description, fn)
        return fn

    return deco


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        raise KeyError(f"task.name '{name}': unknown task (known: {', '.join(sorted(_REGISTRY))})")
    if name not in _CACHE:
        _CACHE[name] = _REGISTRY[name][1]()
    return _CACHE[name]


def list_tasks() -> dict[str, str]:
    return {n: d for n, (d, _) in sorted(_REGISTRY.items())}
