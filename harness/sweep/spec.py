"""The ablation spec: YAML in ``ablations/`` -> a validated, hashed ``AblationSpec``.

Everything a sweep would ever refuse is refused here, before a study, a run or a file
exists: each problem is one ``SpecError`` naming the spec key (``grid.kl.coef``,
``search.ppo.lr.low``, ``grid.zip[0]`` ...) and what is wrong with it.

    name: quick                       # experiment name; the study is <name>-<hash8>
    base: {train.iterations: 10}      # RunConfig overrides shared by every run (dotted or nested)
    grid:                             # sampler grid: cartesian product of the axes ...
      kl.coef: [0.0, 0.2]
      zip:                            # ... where each zip group moves together (equal lengths)
        - advantage.level:    [token, sequence]
          advantage.baseline: [rloo,  group_norm]
    seeds: [0, 1, 2]                  # every cell (or sampled configuration) runs every seed
    sampler: grid                     # grid | tpe | random
    n_trials: 20                      # tpe / random: configurations to sample
    search:                           # tpe / random: ranges ({low, high, log?, step?}) or {choices: [...]}
      ppo.clip_eps: {low: 0.05, high: 0.4}
    objective: {metric: eval/gold, direction: maximize}   # the final value of the metric
    prune: {n_startup_trials: 4, n_warmup_steps: 0}       # tpe / random: MedianPruner on eval steps

Also the one rendering of a cell for people (``cell_label``, ``slot_label``, ``fmt_value``),
used by every message, log line, table and display of the sweep.

The file is read by ``harness.yamlio`` (UTF-8, no duplicate keys, no aliases, bounded size);
values are typed strictly (no ``true`` or ``"2"`` for an int, no inf or nan); the grid's size is
checked before a cell is enumerated; a cell with a TRL impl (``trl``, ``trl-grpo``, ``trl-rloo``) is
checked against what that TRL trainer can express (its baseline module's ``check_expressible``, named
in ``harness.impls`` and imported only then).

Nothing here imports torch, Optuna or MLflow at import time (only a spec with a TRL impl pulls
torch, through the TRL baseline's check).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import (
    RENAMED,
    ConfigError,
    RunConfig,
    SpeltTwice,
    build_config,
    check_value,
    did_you_mean,
    field_kind,
    flat_items,
    known_keys,
)
from harness.errors import InputError
from harness.impls import check_expressible
from harness.impls import get as get_impl
from harness.schema import METRICS
from harness.urls import NAME as _NAME  # the one rule for names that become folders
from harness.yamlio import YAMLInputError, read_yaml, show_key

# The fixed metric schema (harness/schema.py): an objective must name one of these.
METRIC_KEYS = frozenset(METRICS)
SAMPLERS = ("grid", "tpe", "random")
TOP_KEYS = ("name", "description", "base", "grid", "seeds", "sampler", "n_trials", "search", "objective", "prune")
_MAX_RUNS = 100_000  # a typo like 10 axes x 10 values should be refused, not enqueued


class SpecError(InputError):
    """One problem with a spec: ``key`` is the spec key (dotted, with [i] for list items)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# ---- the validated spec ------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    metric: str = "eval/gold"
    direction: str = "maximize"


@dataclass(frozen=True)
class Prune:
    n_startup_trials: int = 4  # trials that finish before any is pruned
    n_warmup_steps: int = 0  # iterations before a trial may be pruned


@dataclass(frozen=True)
class SearchParam:
    """One ``search`` entry: a numeric range or a list of choices."""

    key: str
    kind: str  # "int" | "float" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """The value of this key for an Optuna trial (fixed when the trial was enqueued)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{{{', '.join(map(str, self.choices))}}}"
        extra = " log" if self.log else (f" step {self.step}" if self.step else "")
        return f"[{self.low}, {self.high}]{extra}"


@dataclass(frozen=True)
class Cell:
    """One configuration of the swept axes; ``id`` is stable (a hash of the values)."""

    id: str
    values: dict[str, Any] = field(hash=False)


def cell_id(values: dict[str, Any]) -> str:
    """A stable id for a set of axis values (order-independent, same across sweeps)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class AblationSpec:
    path: Path
    name: str
    description: str
    base: dict[str, Any]  # flat dotted overrides
    axes: tuple[str, ...]  # swept dotted keys (grid axes + zip keys, or search keys)
    cells: tuple[Cell, ...]  # grid only; empty for tpe / random
    seeds: tuple[int, ...]
    sampler: str
    n_trials: int | None
    search: tuple[SearchParam, ...]
    objective: Objective
    prune: Prune | None
    hash: str  # of the normalised content: comments, layout and key order do not count
    fixed_hash: str = ""  # of what every run shares (all but the cells, seeds and n_trials): growth keeps it

    @property
    def study_name(self) -> str:
        return f"{self.name}-{self.hash[:8]}"

    @property
    def n_configs(self) -> int:
        return len(self.cells) if self.sampler == "grid" else int(self.n_trials or 0)

    @property
    def n_runs(self) -> int:
        return self.n_configs * len(self.seeds)

    def overrides(self, values: dict[str, Any], seed: int, threads: int | None = None) -> dict[str, Any]:
        """Dotted overrides of one (cell, seed) run; ``threads`` only where the spec leaves it unset."""
        out = {**self.base, **values, "seed": seed}
        if threads is not None and "train.threads" not in out:
            out["train.threads"] = threads
        return out

    def config(self, values: dict[str, Any], seed: int, threads: int | None = None) -> RunConfig:
        return build_config(None, self.overrides(values, seed, threads))

    def cell_for(self, values: dict[str, Any]) -> Cell:
        return Cell(cell_id(values), dict(values))

    @property
    def varying_axes(self) -> tuple[str, ...]:
        """The grid axes with more than one value (all search keys): what tells runs apart."""
        if self.sampler != "grid":
            return self.axes
        return tuple(k for k in self.axes if len(self.axis_values(k)) > 1) or self.axes

    def axis_values(self, key: str) -> list[Any]:
        """Distinct values of a grid axis, in cell order (the choices Optuna records)."""
        out: list[Any] = []
        for c in self.cells:
            if c.values[key] not in out:
                out.append(c.values[key])
        return out


# ---- growth: a spec that only adds seeds, cells or levels to an earlier one -------------------------


def spec_shape(spec: AblationSpec) -> dict[str, Any]:
    """What a study records of its spec so that a later spec can be checked as a growth of it."""
    return {
        "hash": spec.hash,
        "fixed": spec.fixed_hash,
        "cells": [c.id for c in spec.cells],
        "seeds": list(spec.seeds),
        "n_trials": spec.n_trials,
    }


def growth_problem(old: dict[str, Any], spec: AblationSpec) -> str | None:
    """None when ``spec`` only adds seeds, cells (levels of an axis) or sampled configurations to the
    spec recorded as ``old`` (``spec_shape``); else what it changes, in words."""
    if old.get("fixed") != spec.fixed_hash:
        return "its shared settings changed (base, axes, sampler, search, objective or prune: every cell's settings)"
    gone = [c for c in old.get("cells", []) if c not in {c.id for c in spec.cells}]
    if gone:
        return f"{len(gone)} cell(s) of the old spec are gone or changed (e.g. cell {gone[0]})"
    lost = [s for s in old.get("seeds", []) if s not in spec.seeds]
    if lost:
        return f"seed(s) {lost} were dropped"
    if spec.n_trials is not None and spec.n_trials < int(old.get("n_trials") or 0):
        return f"n_trials went down ({old['n_trials']} -> {spec.n_trials})"
    return None


# ---- labels: how people see a cell ----------------------------------------------------------------


def fmt_value(v: Any) -> str:
    """An axis value for people: ``null``, a float to 4 significant digits, anything else as ``str``."""
    return "null" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def cell_label(values: dict[str, Any]) -> str:
    """The one rendering of a cell: ``kl.coef=0.2 advantage.level=token`` (the axes in spec order)."""
    return " ".join(f"{k}={fmt_value(v)}" for k, v in values.items())


# short names of common axes in run names; any other key goes by its last part without '_'
_SHORT = {
    "ppo.clip_eps": "clip", "kl.coef": "kl", "rollout.batch_size": "b", "rollout.group_size": "g",
    "ppo.lr": "lr", "ppo.epochs": "ep", "ppo.minibatches": "mb", "train.iterations": "it",
    "kl.estimator": "", "advantage.level": "", "advantage.baseline": "", "impl": "", "loss.agg": "",
}


def short_part(key: str, value: Any) -> str:
    """One axis in a run name: ``clip0.3``, ``kl0``, ``b32``; a text value alone (``token``)."""
    prefix = _SHORT.get(key)
    if prefix is None:
        prefix = "" if isinstance(value, str) else key.rsplit(".", 1)[-1].replace("_", "")[:8]
    if isinstance(value, bool):
        return prefix if value else f"no{prefix}"
    text = fmt_value(value).replace("/", "_").replace(" ", "")
    if isinstance(value, str) and "/" in value:  # a model or path: its last part
        text = value.rstrip("/").rsplit("/", 1)[-1][:24]
    return f"{prefix}{text}"


def run_name(values: dict[str, Any], seed: int, axes: tuple[str, ...] | None = None) -> str:
    """A child run's short name: its values of the swept axes (``axes``, default all) and the seed,
    e.g. ``clip0.3-kl0-token-b32-s1`` (``slot_label`` is the long, unambiguous form, also tagged)."""
    parts = [short_part(k, v) for k, v in values.items() if axes is None or k in axes]
    return "-".join([*(p for p in parts if p), f"s{seed}"])[:120]


def slot_label(values: dict[str, Any], seed: int) -> str:
    """A (cell, seed): the cell label and ``seed=N`` (worker logs, MLflow run names, the live display)."""
    return f"{cell_label(values)} seed={seed}"


# ---- loading ----------------------------------------------------------------------------------


def load_spec(path: str | Path) -> AblationSpec:
    """Read and validate a spec file; raises ``SpecError`` (``key: problem``) on the first problem."""
    p = Path(path)
    if not p.is_file():
        raise SpecError("(file)", "no such file")
    try:
        data = read_yaml(p)
    except YAMLInputError as e:  # not YAML, a duplicate key, an alias ...: at its line, else the file's
        raise SpecError(f"line {e.line}" if e.line else ("(yaml)" if e.yaml_error else "(file)"), e.problem) from None
    return parse_spec(data, p)


def parse_spec(data: Any, path: str | Path = "<spec>") -> AblationSpec:
    if not isinstance(data, dict):
        raise SpecError("(top level)", "expected a mapping with name, base, grid, seeds ...")
    for k in data:
        if k not in TOP_KEYS:
            raise SpecError(_show(k), f"unknown key{_did_you_mean(str(k), TOP_KEYS)} (expected {', '.join(TOP_KEYS)})")

    name = data.get("name")
    if name is None:
        raise SpecError("name", "missing (a sweep needs a name: it names the study and the MLflow experiment)")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError("name", f"expected letters, digits, '-', '_' or '.' (at most 64), got {_repr(name)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SpecError("description", f"expected a string, got {_type(description)}")

    sampler = data.get("sampler", "grid")
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise SpecError("sampler", f"expected one of {', '.join(SAMPLERS)}, got {_repr(sampler)}")

    base = _parse_base(data.get("base"))
    seeds = _parse_seeds(data.get("seeds"))
    objective = _parse_objective(data.get("objective"))
    prune = _parse_prune(data.get("prune"), sampler, objective)
    _check_config(base, {}, seeds[0], lambda k: f"base.{k}" if k in base else None)

    cells: tuple[Cell, ...] = ()
    search: tuple[SearchParam, ...] = ()
    n_trials: int | None = None
    if sampler == "grid":
        for k in ("n_trials", "search"):
            if k in data:
                raise SpecError(k, "only for sampler tpe or random (a grid runs every cell)")
        if "grid" not in data:
            raise SpecError("grid", "missing (sampler grid needs grid axes)")
        axes, cells = _parse_grid(data["grid"], base, seeds)
    else:
        if "grid" in data:
            raise SpecError("grid", f"not used by sampler {sampler}: put the ranges under search")
        n_trials = data.get("n_trials")
        if n_trials is None:
            raise SpecError("n_trials", f"missing (sampler {sampler} needs the number of configurations)")
        if not _is_int(n_trials) or n_trials < 1:
            raise SpecError("n_trials", f"expected a positive integer, got {_repr(n_trials)}")
        if n_trials * len(seeds) > _MAX_RUNS:
            raise SpecError("n_trials", f"{n_trials * len(seeds)} runs is more than {_MAX_RUNS}")
        search = _parse_search(data.get("search"), base, seeds[0])
        axes = tuple(s.key for s in search)

    normal = {
        "name": name,
        "base": base,
        "grid": [c.values for c in cells],
        "seeds": list(seeds),
        "sampler": sampler,
        "n_trials": n_trials,
        "search": [s.__dict__ for s in search],
        "objective": objective.__dict__,
        "prune": prune.__dict__ if prune else None,
    }
    digest = hashlib.sha256(json.dumps(normal, sort_keys=True, default=list).encode()).hexdigest()
    fixed = {k: v for k, v in normal.items() if k not in ("grid", "seeds", "n_trials")}
    fixed["axes"] = sorted(axes)
    fixed_digest = hashlib.sha256(json.dumps(fixed, sort_keys=True, default=list).encode()).hexdigest()
    return AblationSpec(
        path=Path(path),
        name=name,
        description=description,
        base=base,
        axes=axes,
        cells=cells,
        seeds=seeds,
        sampler=sampler,
        n_trials=n_trials,
        search=search,
        objective=objective,
        prune=prune,
        hash=digest,
        fixed_hash=fixed_digest,
    )


# ---- sections ---------------------------------------------------------------------------------


def _parse_base(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError("base", f"expected a mapping of config keys to values, got {_type(raw)}")
    out: dict[str, Any] = {}
    for key, value in _flat_items(raw, "base"):
        where = f"base.{_show(key)}"
        _check_key(key, where)
        if isinstance(value, list | dict):
            raise SpecError(where, f"expected a single value, got a {_type(value)} (sweep values go under grid)")
        _check_value(key, value, where)
        out[key] = value
    return out


def _parse_seeds(raw: Any) -> tuple[int, ...]:
    if raw is None:
        raise SpecError("seeds", "missing (a list of integers, e.g. [0, 1, 2])")
    if not isinstance(raw, list) or not raw:
        raise SpecError("seeds", f"expected a non-empty list of integers, got {_repr(raw)}")
    for i, s in enumerate(raw):
        if not _is_int(s):
            raise SpecError(f"seeds[{i}]", f"expected an integer, got {_repr(s)}")
        _check_value("seed", s, f"seeds[{i}]")  # 0 <= seed < 2**32, as the config's seed
    dup = _first_duplicate(raw)
    if dup is not None:
        raise SpecError("seeds", f"seed {dup} is listed twice")
    return tuple(raw)


def _parse_objective(raw: Any) -> Objective:
    if raw is None:
        return Objective()
    if not isinstance(raw, dict):
        raise SpecError("objective", f"expected a mapping {{metric, direction}}, got {_type(raw)}")
    for k in raw:
        if k not in ("metric", "direction"):
            raise SpecError(f"objective.{_show(k)}", "unknown key (expected metric, direction)")
    metric = raw.get("metric", Objective.metric)
    if not isinstance(metric, str):
        raise SpecError("objective.metric", f"expected a metric name (a string), got a {_type(metric)}")
    if metric not in METRIC_KEYS:
        raise SpecError("objective.metric", f"unknown metric {_repr(metric)}{_did_you_mean(metric, METRIC_KEYS)}")
    direction = raw.get("direction", Objective.direction)
    if not isinstance(direction, str) or direction not in ("maximize", "minimize"):
        raise SpecError("objective.direction", f"expected maximize or minimize, got {_repr(direction)}")
    return Objective(metric, direction)


def _parse_prune(raw: Any, sampler: str, objective: Objective) -> Prune | None:
    if raw is None or raw is False:
        return None
    if sampler == "grid":
        raise SpecError("prune", "only for sampler tpe or random (a grid runs every cell to the end)")
    if not objective.metric.startswith("eval/"):
        raise SpecError("prune", f"needs an eval/ objective (reported at each evaluation), got {objective.metric}")
    if raw is True:
        return Prune()
    if not isinstance(raw, dict):
        raise SpecError("prune", f"expected true or a mapping {{n_startup_trials, n_warmup_steps}}, got {_repr(raw)}")
    out = {}
    for k, v in raw.items():
        if k not in ("n_startup_trials", "n_warmup_steps"):
            raise SpecError(f"prune.{_show(k)}", "unknown key (expected n_startup_trials, n_warmup_steps)")
        if not _is_int(v) or v < 0:
            raise SpecError(f"prune.{k}", f"expected a non-negative integer, got {_repr(v)}")
        out[k] = v
    return Prune(**out)


Group = list[tuple[str, list[Any]]]  # keys moving together: [(key, values)], equal lengths


def _parse_grid(raw: Any, base: dict[str, Any], seeds: tuple[int, ...]) -> tuple[tuple[str, ...], tuple[Cell, ...]]:
    if not isinstance(raw, dict):
        raise SpecError("grid", f"expected a mapping of config keys to lists of values, got {_type(raw)}")
    where_of: dict[str, str] = {}
    groups: list[Group] = []
    for key, values in _flat_items({k: v for k, v in raw.items() if k != "zip"}, "grid"):
        where = f"grid.{_show(key)}"
        _check_axis(key, values, where, base, where_of)
        where_of[key] = where
        groups.append([(key, values)])
    if raw.get("zip") is not None:
        groups += _parse_zips(raw["zip"], base, where_of)
    if not groups:
        raise SpecError("grid", "no axes (add at least one config key with a list of values)")

    # the size first: a typo like 10 axes x 10 values is refused before one cell is built
    n_cells = math.prod(len(g[0][1]) for g in groups)
    if n_cells * len(seeds) > _MAX_RUNS:
        raise SpecError(
            "grid", f"{n_cells} cells x {len(seeds)} seeds = {n_cells * len(seeds)} runs is more than {_MAX_RUNS}"
        )
    axes = tuple(k for g in groups for k, _ in g)
    return axes, _enumerate_cells(groups, base, seeds[0], where_of)


def _parse_zips(zips: Any, base: dict[str, Any], where_of: dict[str, str]) -> list[Group]:
    zip_list = [zips] if isinstance(zips, dict) else zips
    if not isinstance(zip_list, list) or not zip_list:
        raise SpecError("grid.zip", "expected a list of groups (each a mapping of keys to equal-length lists)")
    groups: list[Group] = []
    for gi, group in enumerate(zip_list):
        gwhere = f"grid.zip[{gi}]"
        if not isinstance(group, dict) or not group:
            raise SpecError(gwhere, "expected a mapping of config keys to equal-length lists")
        items = _flat_items(group, gwhere)
        for key, values in items:
            where = f"{gwhere}.{_show(key)}"
            _check_axis(key, values, where, base, where_of, unique=False)
            where_of[key] = where
        lengths = {k: len(v) for k, v in items}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise SpecError(gwhere, f"lists of unequal length ({shown}): a zip group moves together")
        rows = list(zip(*(v for _, v in items), strict=True))
        dup = _first_duplicate([json.dumps(r) for r in rows])
        if dup is not None:
            raise SpecError(gwhere, f"row {json.loads(dup)} is listed twice")
        groups.append(items)
    return groups


def _enumerate_cells(groups: list[Group], base: dict[str, Any], seed: int, where_of: dict[str, str]) -> tuple[Cell, ...]:
    """Every cell (the cartesian product over groups; within a group the i-th values go together),
    each built and checked as a run's config (TRL impl cells against that trainer's refusals too)."""
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for choice in itertools.product(*(range(len(g[0][1])) for g in groups)):
        values = {k: v[i] for g, i in zip(groups, choice, strict=True) for k, v in g}
        n = len(cells)
        cfg = _check_config(base, values, seed, lambda k: where_of.get(k) or _base_where(k, base), cell=values)
        digest = cfg.model_copy(update={"seed": 0}).hash()
        if digest in seen:
            other = cells[seen[digest]]
            raise SpecError(
                "grid", f"duplicate cells: {cell_label(other.values)} and {cell_label(values)} are the same config"
            )
        seen[digest] = n
        cells.append(Cell(cell_id(values), values))
    return tuple(cells)


def _parse_search(raw: Any, base: dict[str, Any], seed: int) -> tuple[SearchParam, ...]:
    if raw is None:
        raise SpecError("search", "missing (tpe / random sample from search ranges)")
    if not isinstance(raw, dict) or not raw:
        raise SpecError("search", "expected a mapping of config keys to {low, high} or {choices}")
    out = []
    for key, rng in _flat_items(raw, "search", leaf=lambda v: bool(set(v) & _RANGE_KEYS)):
        where = f"search.{_show(key)}"
        _check_key(key, where)
        if key in base:
            raise SpecError(where, "also set in base: a key is either fixed or searched")
        if not isinstance(rng, dict):
            raise SpecError(where, f"expected {{low, high}} or {{choices: [...]}}, got {_repr(rng)}")
        for k in rng:
            if k not in _RANGE_KEYS:
                raise SpecError(f"{where}.{_show(k)}", "unknown key (expected low, high, log, step or choices)")
        if "choices" in rng:
            extra = [k for k in rng if k != "choices"]
            if extra:
                raise SpecError(f"{where}.{extra[0]}", "not allowed with choices")
            choices = rng["choices"]
            _check_values(choices, f"{where}.choices", key)
            param = SearchParam(key, "categorical", choices=tuple(choices))
            probes = list(choices)
        else:
            param = _parse_range(key, rng, where)
            probes = [param.low, param.high]
        for v in probes:
            _check_config(base, {key: v}, seed, lambda k, w=where, key=key: w if k == key else _base_where(k, base))
        out.append(param)
    return tuple(out)


_RANGE_KEYS = frozenset(("low", "high", "log", "step", "choices"))


def _parse_range(key: str, rng: dict[str, Any], where: str) -> SearchParam:
    kind = field_kind(key)
    if kind not in ("int", "float"):
        raise SpecError(where, f"a range needs a numeric key ({key} is not a number): use choices")
    for k in ("low", "high"):
        if k not in rng:
            raise SpecError(where, f"missing {k}")
        v = rng[k]
        if not _is_number(v):
            raise SpecError(f"{where}.{k}", f"expected a finite number, got {_repr(v)}")
        if kind == "int" and not _is_int(v):
            raise SpecError(f"{where}.{k}", f"{key} is an integer, got {_repr(v)}")
    low, high = rng["low"], rng["high"]
    if not low < high:
        raise SpecError(where, f"low ({low}) must be below high ({high})")
    log = rng.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{where}.log", f"expected true or false, got {_repr(log)}")
    if log and low <= 0:
        raise SpecError(f"{where}.low", f"a log range needs low > 0, got {low}")
    step = rng.get("step")
    if step is not None:
        if log:
            raise SpecError(f"{where}.step", "not allowed with log: true")
        if not _is_number(step) or step <= 0:
            raise SpecError(f"{where}.step", f"expected a positive finite number, got {_repr(step)}")
        if kind == "int" and not _is_int(step):
            raise SpecError(f"{where}.step", f"{key} is an integer, got {_repr(step)}")
    if kind == "float":
        low, high = float(low), float(high)
    return SearchParam(key, kind, low=low, high=high, log=log, step=step)


# ---- checks -----------------------------------------------------------------------------------


def _check_key(key: str, where: str) -> None:
    if key == "seed":
        raise SpecError(where, "the seed is its own axis: list it under the top-level seeds")
    if key in RENAMED:
        raise SpecError(where, f"config key {key}: {RENAMED[key]}")
    if key not in known_keys():
        raise SpecError(where, f"unknown config key{_did_you_mean(key, known_keys())}")


def _check_axis(key: str, values: Any, where: str, base: dict, where_of: dict, unique: bool = True) -> None:
    _check_key(key, where)
    if key in base:
        raise SpecError(where, "also set in base: a key is either fixed or swept")
    if key in where_of:
        raise SpecError(where, f"already swept at {where_of[key]}")
    _check_values(values, where, key, unique=unique)


def _check_values(values: Any, where: str, key: str, unique: bool = True) -> None:
    """A list of single values, each valid for ``key`` on its own (type, range, choices)."""
    if not isinstance(values, list):
        raise SpecError(where, f"expected a list of values, got {_repr(values)}")
    if not values:
        raise SpecError(where, "empty list (an axis needs at least one value)")
    for i, v in enumerate(values):
        if isinstance(v, list | dict):
            raise SpecError(f"{where}[{i}]", f"expected a single value, got a {_type(v)}")
        _check_value(key, v, where)
    if unique:
        dup = _first_duplicate([json.dumps(v) for v in values])
        if dup is not None:
            raise SpecError(where, f"value {json.loads(dup)!r} is listed twice")


def _check_value(key: str, value: Any, where: str) -> None:
    try:
        check_value(key, value)
    except ConfigError as e:
        raise SpecError(where, e.problem or str(e)) from None


def _check_config(base: dict, values: dict, seed: int, where_of, cell: dict | None = None) -> RunConfig:
    """Build one run's config (and, for a TRL impl, check its trainer can express it); a refusal names the
    spec key that set the offending value, and the cell."""
    try:
        cfg = build_config(None, {**base, **values, "seed": seed})
        if get_impl(cfg.impl).check is not None:
            _check_trl(cfg)
        return cfg
    except ConfigError as e:
        key, problem = e.key or "", e.problem or str(e)
        where = where_of(key) if key else None
        if where is None:
            where = key or "base"
        if cell:
            problem += f" (in cell {cell_label(cell)})"
        raise SpecError(where, problem) from None


def _check_trl(cfg: RunConfig) -> None:
    """The TRL trainer's own refusals (``harness.impls.check_expressible``), as a ConfigError naming the key
    it cannot express."""
    try:
        check_expressible(cfg)
    except ImportError:
        why = f"{cfg.impl}: the TRL baseline is not available in this installation"
        raise ConfigError(f"config key 'impl': {why}", "impl", why) from None
    except ValueError as e:
        key = getattr(e, "key", None) or "impl"
        m = re.match(r"config key '[^']+': (.*)$", str(e))
        raise ConfigError(str(e), key, m.group(1) if m else str(e)) from None


def _base_where(key: str, base: dict) -> str | None:
    return f"base.{key}" if key in base else None


# ---- small helpers ----------------------------------------------------------------------------


def _flat_items(d: dict, where: str, leaf=None) -> list[tuple[str, Any]]:
    """Nested sections and dotted keys alike -> [(dotted key, value)]; one spelling per key."""
    try:
        return flat_items(d, leaf)
    except SpeltTwice as e:
        raise SpecError(f"{where}.{_show(e.key)}", e.problem) from None


def _show(key: Any) -> str:
    """A key in a spec path: bare when plain, ``ascii()`` when it holds odd or invisible characters."""
    return show_key(key, quote=False)


def _repr(v: Any, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _first_duplicate(items: list) -> Any:
    seen = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None


def _type(v: Any) -> str:
    return {list: "list", dict: "mapping", str: "string", bool: "boolean"}.get(type(v), type(v).__name__)


def _did_you_mean(word: str, options) -> str:
    return did_you_mean(word, options, quote="")
