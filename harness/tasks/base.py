"""The task contract and its registry: the built-ins (a decorator; duplicates are an error) and the tasks
other packages register through the entry-point group ``ppo_harness.tasks``.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."ppo_harness.tasks"]
    my_task = "my_package.tasks:make_my_task"      # a Task, or a function of no arguments returning one

Plugins are looked up once per process, the first time a task is listed or asked for; a plugin that
fails to load, clashes with a registered name or is not a Task is left out and its problem kept
(``plugin_problems``, shown by ``ppo-harness tasks``): one broken package does not break the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

from harness.registry import Registry, suggest


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
    # a gold reward scored in batches (model.gold: a reward model or a function), in place of gold_fn
    batch_gold: Callable[[Sequence[str], Sequence[str], Sequence[bool]], list[float]] | None = None

    def gold(self, prompts: Sequence[str], completions: Sequence[str], ended: Sequence[bool]) -> list[float]:
        """Gold reward of each completion; ``ended[i]``: completion i emitted EOS."""
        if self.batch_gold is not None:
            return [float(x) for x in self.batch_gold(list(prompts), list(completions), list(ended))]
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
ENTRY_POINT_GROUP = "ppo_harness.tasks"
BUILT_IN = "built-in"



@dataclass(frozen=True)
class TaskEntry:
    """One registered task: what it is, the factory that builds it, where it comes from."""

    description: str
    factory: TaskFactory
    source: str  # "built-in" | "plugin <distribution> (<module:object>)"


TASKS: Registry[TaskEntry] = Registry("task")  # built-ins at import, plugins on first look-up
_CACHE: dict[str, Task] = {}
_PROBLEMS: dict[str, str] = {}  # entry-point name -> why it was left out
_PLUGINS_LOOKED_UP = [False]


def register(name: str, description: str, source: str = BUILT_IN) -> Callable[[TaskFactory], TaskFactory]:
    def deco(fn: TaskFactory) -> TaskFactory:
        TASKS.add(name, TaskEntry(description, fn, source))  # a second registration: ValueError
        return fn

    return deco


def _plugin(ep: metadata.EntryPoint) -> tuple[Task, str]:
    """(the entry point's task, where it comes from); ValueError saying what is wrong with it."""
    dist = getattr(ep, "dist", None)
    source = f"plugin {dist.name if dist is not None else '?'} ({ep.value})"
    if ep.name in TASKS:
        raise ValueError(f"{source}: the name '{ep.name}' is taken by the {TASKS[ep.name].source} task")
    try:
        obj = ep.load()
        task = obj() if callable(obj) and not isinstance(obj, Task) else obj
    except Exception as e:  # a third party's import or factory failed: keep the reason, leave it out
        raise ValueError(f"{source}: {type(e).__name__}: {e}".splitlines()[0]) from None
    if not isinstance(task, Task):
        raise ValueError(f"{source}: gave {type(task).__name__}, neither a harness.tasks.Task nor a function returning one")
    if task.name != ep.name:
        raise ValueError(f"{source}: the entry point is named '{ep.name}' but its Task is named '{task.name}'")
    return task, source


def load_plugins() -> None:
    """Register the tasks of the ``ppo_harness.tasks`` entry points (once per process)."""
    if _PLUGINS_LOOKED_UP[0]:
        return
    _PLUGINS_LOOKED_UP[0] = True
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            task, source = _plugin(ep)
        except ValueError as e:
            _PROBLEMS[ep.name] = str(e)
            continue
        register(ep.name, task.description, source)(lambda t=task: t)
        _CACHE[ep.name] = task


def get_task(name: str) -> Task:
    load_plugins()
    if name not in TASKS:
        raise KeyError(f"task.name '{name}': unknown task (known: {', '.join(sorted(TASKS))})"
                       f"{suggest(name, TASKS.names())}")
    if name not in _CACHE:
        _CACHE[name] = TASKS[name].factory()
    return _CACHE[name]


def list_tasks() -> dict[str, str]:
    """Every task, built-in and plugin: name -> description."""
    load_plugins()
    return {n: e.description for n, e in sorted(TASKS.items())}


def builtin_tasks() -> dict[str, str]:
    """The tasks that ship with the harness (and its artifacts): name -> description."""
    return {n: e.description for n, e in sorted(TASKS.items()) if e.source == BUILT_IN}


def task_source(name: str) -> str:
    """'built-in', or 'plugin <distribution> (<module:object>)'."""
    load_plugins()
    return TASKS[name].source


def plugin_problems() -> dict[str, str]:
    """Entry points of ``ppo_harness.tasks`` that were left out: name -> why."""
    load_plugins()
    return dict(_PROBLEMS)
