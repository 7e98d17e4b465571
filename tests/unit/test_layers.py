"""The import graph: every import points down, no circles, one file one idea.

Every ``import`` and ``from ... import`` in ``harness/``, ``baselines/`` and ``reports/`` is read
from the source (function-level imports included: a lazy import is still a dependency). A module
may import modules of a lower layer, and modules of its own group (the same row entry) when that
makes no circle. The layers are the ones docs/design.md draws.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("harness", "baselines", "reports")

# bottom to top; an entry is a module or a package prefix (a group)
LAYERS: list[list[str]] = [
    ["harness.errors"],  # the error vocabulary: below everything that refuses input
    ["harness.registry"],  # the one registry style, below every registry
    ["harness.schema", "harness.onset", "harness.tasks", "harness.fast", "harness.locks", "harness.urls", "harness.algos.masked",
     "harness.algos.kl_control", "harness.algos.schedules", "harness.algos.scaler", "harness.yamlio",
     "harness.devices", "harness.algos.registry", "harness.dist", "harness.shard"],
    ["harness.algos.kl_estimators", "harness.algos.aggregations", "harness.algos.ratio_levels"],  # option registries of the math
    ["harness.algos.math"],
    ["harness.impls", "harness.algos.losses", "harness.algos.estimators", "harness.algos.offpolicy", "harness.algos.dapo"],
    ["harness.config", "harness.tracking", "harness.progress"],
    ["harness.lm", "harness.models", "reports", "harness.profiles", "harness.ppo.accumulate"],
    ["harness.warmstart", "harness.evaluate", "harness.ppo.variance", "harness.ppo.update", "harness.ppo.rollouts",
     "harness.checkpoint"],
    ["harness.recording", "harness.export", "harness.launch"],
    ["harness.ppo.loop", "baselines"],
    ["harness.run"],
    ["harness.sweep", "harness.compare", "harness.bench"],
    ["harness.reproduce"],
    ["harness.cli"],
    ["harness.__main__"],  # python -m harness (what torchrun runs)
]
ROOTS = {"harness": -1, "harness.algos": -1, "harness.ppo": -1, "baselines": -1, "reports": -1}  # empty package __init__s
REPORTS_MAY_IMPORT = ("harness.errors", "harness.registry", "harness.schema", "harness.tracking", "harness.onset")  # reports reads MLflow, never the trainer
MAX_FUNCTION_LINES = 80
# the custom core's own machinery (the loop, the update, the probe, the rollouts, accumulation): a reference
# implementation (baselines/) shares the pure math of harness/algos/ below it, never this package
CUSTOM_CORE = "harness.ppo"


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            if "shipped" in p.parts:
                continue
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules ``name`` imports (``from a import b`` names module a.b when it exists)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # "harness.algos.math.gae" -> "harness.algos.math"
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(p, m, known) for m, p in mods.items()}


def place(module: str) -> tuple[int, str]:
    """(layer, group) of a module: the longest matching entry of LAYERS."""
    if module in ROOTS:
        return ROOTS[module], module
    best = None
    for rank, row in enumerate(LAYERS):
        for entry in row:
            if module == entry or module.startswith(entry + "."):
                if best is None or len(entry) > len(best[1]):
                    best = (rank, entry)
    if best is None:
        raise AssertionError(f"{module} is in no layer of LAYERS: add it where it belongs")
    return best


def test_every_module_has_a_layer():
    for m in graph():
        place(m)


def test_every_import_points_down():
    upward = []
    for m, deps in graph().items():
        rank, group = place(m)
        for d in deps:
            drank, dgroup = place(d)
            if dgroup != group and drank >= rank:
                upward.append(f"{m} (layer {rank}) imports {d} (layer {drank})")
    assert not upward, "\n".join(sorted(upward))


def test_no_circles():
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_reports_read_only_tracking_and_the_schema():
    bad = [f"{m} imports {d}" for m, deps in graph().items() if m.startswith("reports")
           for d in deps if d.startswith("harness") and d not in REPORTS_MAY_IMPORT]
    assert not bad, "\n".join(bad)


def test_the_references_never_import_the_custom_core():
    """baselines/ may import the pure math (harness/algos/: the KL controller and the schedules included), never
    the custom core's loop, update, probe or rollouts: a reference must stay independent of the code it is
    compared with."""
    bad = [f"{m} imports {d}" for m, deps in graph().items() if m.startswith("baselines")
           for d in deps if d == CUSTOM_CORE or d.startswith(CUSTOM_CORE + ".")]
    assert not bad, "\n".join(sorted(bad))


def test_each_folder_is_one_layer():
    """The pure math (harness/algos/) sits wholly below the loop (harness/ppo/): every algos module's layer is
    lower than every ppo module's, algos imports nothing of ppo, and the shared language-model layer
    (harness/lm/) imports the math from algos, never from the loop's package."""
    g = graph()
    algos = [m for m in g if m.startswith("harness.algos.")]
    ppo = [m for m in g if m.startswith(CUSTOM_CORE + ".")]
    assert algos and ppo
    assert max(place(m)[0] for m in algos) < min(place(m)[0] for m in ppo)
    bad = [f"{m} imports {d}" for m in g if m.startswith(("harness.algos", "harness.lm"))
           for d in g[m] if d == CUSTOM_CORE or d.startswith(CUSTOM_CORE + ".")]
    assert not bad, "\n".join(sorted(bad))


@pytest.mark.parametrize("lib, allowed", [("mlflow", ("harness.tracking",)), ("optuna", ("harness.sweep",)),
                                          ("typer", ("harness.cli",))])
def test_third_party_stays_in_its_room(lib, allowed):
    bad = []
    for m, p in modules().items():
        tree = ast.parse(p.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        if lib in names and not any(m == a or m.startswith(a + ".") for a in allowed):
            bad.append(m)
    assert not bad, f"{lib} imported outside {allowed}: {bad}"


def test_functions_stay_short():
    long = []
    for m, p in modules().items():
        if not m.startswith(("harness", "reports")):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{m}.{node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a planted upward import and a planted circle are reported."""
    pkg = tmp_path / "harness"
    (pkg / "algos").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "algos" / "__init__.py").write_text("")
    (pkg / "algos" / "math.py").write_text("def f():\n    from harness import run\n")
    (pkg / "run.py").write_text("from harness.algos import math\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGES", ("harness",))
    with pytest.raises(AssertionError, match=r"harness.algos.math .layer \d+. imports harness.run"):
        test_every_import_points_down()
    with pytest.raises(AssertionError, match="harness.algos.math -> harness.run -> harness.algos.math"):
        test_no_circles()


def test_the_checker_sees_a_reference_importing_the_custom_core(tmp_path, monkeypatch):
    """A planted ``from harness.ppo.update import ...`` in baselines/ is reported, though it points down."""
    (tmp_path / "harness" / "ppo").mkdir(parents=True)
    (tmp_path / "harness" / "algos").mkdir()
    (tmp_path / "baselines").mkdir()
    for p in ("harness/__init__.py", "harness/ppo/__init__.py", "harness/algos/__init__.py", "baselines/__init__.py",
              "harness/algos/math.py"):
        (tmp_path / p).write_text("")
    (tmp_path / "harness" / "ppo" / "update.py").write_text("from harness.algos import math\n")
    (tmp_path / "baselines" / "trl_x.py").write_text("from harness.algos import math\nfrom harness.ppo.update import f\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGES", ("harness", "baselines"))
    test_every_import_points_down()  # downward: the layer rule alone lets it through
    with pytest.raises(AssertionError, match="baselines.trl_x imports harness.ppo.update"):
        test_the_references_never_import_the_custom_core()
