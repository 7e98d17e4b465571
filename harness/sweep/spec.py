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

Nothing here imports torch, Optuna or MLflow.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.config import ConfigError, RunConfig, build_config, flatten, known_keys
from harness.schema import METRICS

# The fixed metric schema (harness/schema.py): an objective must name one of these.
METRIC_KEYS = frozenset(METRICS)
SAMPLERS = ("grid", "tpe", "random")
TOP_KEYS = ("name", "description", "base", "grid", "seeds", "sampler", "n_trials", "search", "objective", "prune")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_RUNS = 100_000  # a typo like 10 axes x 10 values should be refused, not enqueued


class SpecError(ValueError):
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

    def axis_values(self, key: str) -> list[Any]:
        """Distinct values of a grid axis, in cell order (the choices Optuna records)."""
        out: list[Any] = []
        for c in self.cells:
            if c.values[key] not in out:
                out.append(c.values[key])
        return out


# ---- labels: how people see a cell ----------------------------------------------------------------


def fmt_value(v: Any) -> str:
    """An axis value for people: ``null``, a float to 4 significant digits, anything else as ``str``."""
    return "null" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def cell_label(values: dict[str, Any]) -> str:
    """The one rendering of a cell: ``kl.coef=0.2 advantage.level=token`` (the axes in spec order)."""
    return " ".join(f"{k}={fmt_value(v)}" for k, v in values.items())


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
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(yaml)"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(where, f"not valid YAML: {problem}") from None
    return parse_spec(data, p)


def parse_spec(data: Any, path: str | Path = "<spec>") -> AblationSpec:
    if not isinstance(data, dict):
        raise SpecError("(top level)", "expected a mapping with name, base, grid, seeds ...")
    for k in data:
        if k not in TOP_KEYS:
            raise SpecError(str(k), f"unknown key{_did_you_mean(str(k), TOP_KEYS)} (expected {', '.join(TOP_KEYS)})")

    name = data.get("name")
    if name is None:
        raise SpecError("name", "missing (a sweep needs a name: it names the study and the MLflow experiment)")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError("name", f"expected letters, digits, '-', '_' or '.' (at most 64), got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SpecError("description", f"expected a string, got {_type(description)}")

    sampler = data.get("sampler", "grid")
    if sampler not in SAMPLERS:
        raise SpecError("sampler", f"expected one of {', '.join(SAMPLERS)}, got {sampler!r}")

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
        axes, cells = _parse_grid(data["grid"], base, seeds[0])
    else:
        if "grid" in data:
            raise SpecError("grid", f"not used by sampler {sampler}: put the ranges under search")
        n_trials = data.get("n_trials")
        if n_trials is None:
            raise SpecError("n_trials", f"missing (sampler {sampler} needs the number of configurations)")
        if not _is_int(n_trials) or n_trials < 1:
            raise SpecError("n_trials", f"expected a positive integer, got {n_trials!r}")
        search = _parse_search(data.get("search"), base, seeds[0])
        axes = tuple(s.key for s in search)

    n_runs = (len(cells) if sampler == "grid" else n_trials) * len(seeds)
    if n_runs > _MAX_RUNS:
        raise SpecError("grid" if sampler == "grid" else "n_trials", f"{n_runs} runs is more than {_MAX_RUNS}")

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
    )


# ---- sections ---------------------------------------------------------------------------------


def _parse_base(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError("base", f"expected a mapping of config keys to values, got {_type(raw)}")
    out: dict[str, Any] = {}
    for key, value in _flat_items(raw):
        where = f"base.{key}"
        _check_key(key, where)
        if isinstance(value, list | dict):
            raise SpecError(where, f"expected a single value, got a {_type(value)} (sweep values go under grid)")
        out[key] = value
    return out


def _parse_seeds(raw: Any) -> tuple[int, ...]:
    if raw is None:
        raise SpecError("seeds", "missing (a list of integers, e.g. [0, 1, 2])")
    if not isinstance(raw, list) or not raw:
        raise SpecError("seeds", f"expected a non-empty list of integers, got {raw!r}")
    for i, s in enumerate(raw):
        if not _is_int(s):
            raise SpecError(f"seeds[{i}]", f"expected an integer, got {s!r}")
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
            raise SpecError(f"objective.{k}", "unknown key (expected metric, direction)")
    metric = raw.get("metric", Objective.metric)
    if metric not in METRIC_KEYS:
        raise SpecError(
            "objective.metric", f"unknown metric {metric!r}{_did_you_mean(str(metric), METRIC_KEYS)}"
        )
    direction = raw.get("direction", Objective.direction)
    if direction not in ("maximize", "minimize"):
        raise SpecError("objective.direction", f"expected maximize or minimize, got {direction!r}")
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
        raise SpecError("prune", f"expected true or a mapping {{n_startup_trials, n_warmup_steps}}, got {raw!r}")
    out = {}
    for k, v in raw.items():
        if k not in ("n_startup_trials", "n_warmup_steps"):
            raise SpecError(f"prune.{k}", "unknown key (expected n_startup_trials, n_warmup_steps)")
        if not _is_int(v) or v < 0:
            raise SpecError(f"prune.{k}", f"expected a non-negative integer, got {v!r}")
        out[k] = v
    return Prune(**out)


def _parse_grid(raw: Any, base: dict[str, Any], seed: int) -> tuple[tuple[str, ...], tuple[Cell, ...]]:
    if not isinstance(raw, dict):
        raise SpecError("grid", f"expected a mapping of config keys to lists of values, got {_type(raw)}")
    zips = raw.get("zip")
    plain = {k: v for k, v in raw.items() if k != "zip"}
    where_of: dict[str, str] = {}
    groups: list[list[tuple[str, list[Any]]]] = []  # each group: [(key, values)] moving together

    for key, values in _flat_items(plain):
        where = f"grid.{key}"
        _check_axis(key, values, where, base, where_of)
        where_of[key] = where
        groups.append([(key, values)])

    if zips is not None:
        zip_list = [zips] if isinstance(zips, dict) else zips
        if not isinstance(zip_list, list) or not zip_list:
            raise SpecError("grid.zip", "expected a list of groups (each a mapping of keys to equal-length lists)")
        for gi, group in enumerate(zip_list):
            gwhere = f"grid.zip[{gi}]"
            if not isinstance(group, dict) or not group:
                raise SpecError(gwhere, "expected a mapping of config keys to equal-length lists")
            items = list(_flat_items(group))
            for key, values in items:
                where = f"{gwhere}.{key}"
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

    if not groups:
        raise SpecError("grid", "no axes (add at least one config key with a list of values)")

    axes = tuple(k for g in groups for k, _ in g)
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    # cartesian product over groups; within a group the i-th values go together
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
    return axes, tuple(cells)


def _parse_search(raw: Any, base: dict[str, Any], seed: int) -> tuple[SearchParam, ...]:
    if raw is None:
        raise SpecError("search", "missing (tpe / random sample from search ranges)")
    if not isinstance(raw, dict) or not raw:
        raise SpecError("search", "expected a mapping of config keys to {low, high} or {choices}")
    out = []
    for key, rng in _flat_search_items(raw):
        where = f"search.{key}"
        _check_key(key, where)
        if key in base:
            raise SpecError(where, "also set in base: a key is either fixed or searched")
        if not isinstance(rng, dict):
            raise SpecError(where, f"expected {{low, high}} or {{choices: [...]}}, got {rng!r}")
        for k in rng:
            if k not in ("low", "high", "log", "step", "choices"):
                raise SpecError(f"{where}.{k}", "unknown key (expected low, high, log, step or choices)")
        if "choices" in rng:
            extra = [k for k in rng if k != "choices"]
            if extra:
                raise SpecError(f"{where}.{extra[0]}", "not allowed with choices")
            choices = rng["choices"]
            _check_values(choices, f"{where}.choices")
            param = SearchParam(key, "categorical", choices=tuple(choices))
            probes = list(choices)
        else:
            param = _parse_range(key, rng, where)
            probes = [param.low, param.high]
        for v in probes:
            _check_config(base, {key: v}, seed, lambda k, w=where, key=key: w if k == key else _base_where(k, base))
        out.append(param)
    return tuple(out)


def _parse_range(key: str, rng: dict[str, Any], where: str) -> SearchParam:
    kind = _field_kind(key)
    if kind not in ("int", "float"):
        raise SpecError(where, f"a range needs a numeric key ({key} is not a number): use choices")
    for k in ("low", "high"):
        if k not in rng:
            raise SpecError(where, f"missing {k}")
        v = rng[k]
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise SpecError(f"{where}.{k}", f"expected a number, got {v!r}")
        if kind == "int" and not _is_int(v):
            raise SpecError(f"{where}.{k}", f"{key} is an integer, got {v!r}")
    low, high = rng["low"], rng["high"]
    if not low < high:
        raise SpecError(where, f"low ({low}) must be below high ({high})")
    log = rng.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{where}.log", f"expected true or false, got {log!r}")
    if log and low <= 0:
        raise SpecError(f"{where}.low", f"a log range needs low > 0, got {low}")
    step = rng.get("step")
    if step is not None:
        if log:
            raise SpecError(f"{where}.step", "not allowed with log: true")
        if not isinstance(step, int | float) or isinstance(step, bool) or step <= 0:
            raise SpecError(f"{where}.step", f"expected a positive number, got {step!r}")
        if kind == "int" and not _is_int(step):
            raise SpecError(f"{where}.step", f"{key} is an integer, got {step!r}")
    if kind == "float":
        low, high = float(low), float(high)
    return SearchParam(key, kind, low=low, high=high, log=log, step=step)


# ---- checks -----------------------------------------------------------------------------------


def _check_key(key: str, where: str) -> None:
    if key == "seed":
        raise SpecError(where, "the seed is its own axis: list it under the top-level seeds")
    if key not in known_keys():
        raise SpecError(where, f"unknown config key{_did_you_mean(key, known_keys())}")


def _check_axis(key: str, values: Any, where: str, base: dict, where_of: dict, unique: bool = True) -> None:
    _check_key(key, where)
    if key in base:
        raise SpecError(where, "also set in base: a key is either fixed or swept")
    if key in where_of:
        raise SpecError(where, f"already swept at {where_of[key]}")
    _check_values(values, where, unique=unique)


def _check_values(values: Any, where: str, unique: bool = True) -> None:
    if not isinstance(values, list):
        raise SpecError(where, f"expected a list of values, got {values!r}")
    if not values:
        raise SpecError(where, "empty list (an axis needs at least one value)")
    for i, v in enumerate(values):
        if isinstance(v, list | dict):
            raise SpecError(f"{where}[{i}]", f"expected a single value, got a {_type(v)}")
    if unique:
        dup = _first_duplicate([json.dumps(v) for v in values])
        if dup is not None:
            raise SpecError(where, f"value {json.loads(dup)!r} is listed twice")


def _check_config(base: dict, values: dict, seed: int, where_of, cell: dict | None = None) -> RunConfig:
    """Build one run's config; a refusal names the spec key that set the offending value."""
    try:
        return build_config(None, {**base, **values, "seed": seed})
    except ConfigError as e:
        m = re.match(r"config key '([^']+)': (.*)$", str(e))
        key, problem = (m.group(1), m.group(2)) if m else ("", str(e))
        where = where_of(key) if key else None
        if where is None:
            where = key or "base"
        if cell:
            problem += f" (in cell {cell_label(cell)})"
        raise SpecError(where, problem) from None


def _base_where(key: str, base: dict) -> str | None:
    return f"base.{key}" if key in base else None


# ---- small helpers ----------------------------------------------------------------------------


def _flat_items(d: dict) -> list[tuple[str, Any]]:
    """Nested sections and dotted keys alike -> [(dotted key, value)] (lists are values)."""
    return list(flatten({str(k): v for k, v in d.items()}).items())


def _flat_search_items(d: dict) -> list[tuple[str, Any]]:
    """Like _flat_items, but a mapping holding low/high/choices is a leaf, not a section."""
    out: list[tuple[str, Any]] = []

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v and not (set(v) & {"low", "high", "choices", "log", "step"}):
                walk(v, key + ".")
            else:
                out.append((key, v))

    walk(d, "")
    return out


def _field_kind(key: str) -> str:
    """'int' | 'float' | 'bool' | 'str' | 'choice' for a dotted RunConfig key."""
    model: Any = RunConfig
    parts = key.split(".")
    for p in parts[:-1]:
        model = model.model_fields[p].annotation
    ann = model.model_fields[parts[-1]].annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
        ann = args[0] if len(args) == 1 else ann
    if typing.get_origin(ann) is typing.Literal:
        return "choice"
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(ann, "value")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""
