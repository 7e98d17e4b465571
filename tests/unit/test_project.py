"""The project's own promises: README commands, CI entry point, layout."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


CPU_TORCH = "2.13.0"  # installed before the project by the README's commands, CI and nox: the CPU build


def test_torch_is_a_range_that_holds_the_cpu_build():
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [Requirement(d).specifier for d in deps if Requirement(d).name == "torch"]
    assert not any(s.operator in ("==", "===") for s in spec), "a range, so that a GPU machine keeps its own torch"
    assert CPU_TORCH in spec and "2.11.0" in spec and "2.14.1" in spec, spec  # the versions the tests ran on


def test_readme_opens_with_the_two_commands():
    main_job, tests = _readme_commands()[:2]
    assert "ppo-harness sweep ablations/quick.yaml" in main_job and "ppo-harness report" in main_job
    assert tests.rstrip().endswith("pytest -q")
    # torch first: with torch already installed, the editable install keeps it instead of
    # taking the newest release in the range (a CUDA build of several GB)
    for command, editable in ((main_job, "pip install -q -e ."), (tests, "pip install -q -e '.[test]'")):
        steps = [s.strip() for s in command.split("&&")]
        assert f"pip install -q torch=={CPU_TORCH}" in steps and editable in steps, command
        assert steps.index(f"pip install -q torch=={CPU_TORCH}") < steps.index(editable), command


def test_nox_installs_the_cpu_torch_before_the_project():
    nox = (ROOT / "noxfile.py").read_text()
    for session in ("def tests(", "def demo("):
        body = nox.split(session, 1)[1].split("\n@nox.session", 1)[0]
        assert "CPU_TORCH" in body and body.index("CPU_TORCH") < body.index('"-e"'), session
    assert f'CPU_TORCH = "torch=={CPU_TORCH}"' in nox


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci.splitlines()
    assert '"$rc" -eq 5' in ci  # "no tests collected" fails CI


def test_layout():
    for d in ("harness", "ablations", "baselines", "reports", "tests"):
        assert (ROOT / d).is_dir(), d
    assert (ROOT / "pyproject.toml").is_file() and (ROOT / "noxfile.py").is_file()


def test_every_key_the_custom_core_logs_is_in_the_schema():
    from harness.config import build_config
    from harness.lm.rollout import make_score_fn
    from harness.ppo.loop import init_state, ppo_iteration
    from harness.schema import METRICS
    from harness.warmstart.load import load_models
    from tests.conftest import TINY

    cfg = build_config(None, {**TINY, "probe.every": 1, "ppo.target_kl": 1.0})
    m = load_models(cfg)
    logged = set(ppo_iteration(cfg, m, init_state(cfg, m), make_score_fn(m.reward, m.task.gold)))
    assert logged <= set(METRICS), logged - set(METRICS)
    assert "grad/snr" not in METRICS


def _layout_block() -> list[tuple[int, str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("### Layout", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    return [(len(line) - len(line.lstrip()), line.split()[0]) for line in block.splitlines() if line.strip()]


def test_the_readme_layout_lists_every_module_once():
    listed, stack = [], []
    for indent, name in _layout_block():
        depth = indent // 2
        stack[depth:] = [name]
        listed.append("".join(stack))
    modules = {str(p.relative_to(ROOT)) for pkg in ("harness", "baselines", "reports") for p in (ROOT / pkg).rglob("*.py")
               if "shipped" not in p.parts and p.name != "__init__.py"}
    packages = {str(p.parent.relative_to(ROOT)) + "/" for pkg in ("harness", "reports") for p in (ROOT / pkg).rglob("__init__.py")
                if p.parent.name not in ("harness", "reports")}
    py = {x for x in listed if x.endswith(".py") and x.split("/")[0] in ("harness", "baselines", "reports")}
    assert len(py) == len([x for x in listed if x in py]), "a module is listed twice"
    assert py == modules, f"missing: {sorted(modules - py)}, stale: {sorted(py - modules)}"
    assert packages <= set(listed), sorted(packages - set(listed))
