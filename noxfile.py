"""nox sessions: tests, lint, demo (the quick ablation + report)."""

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]

# Installed before the project, so that pip keeps it instead of taking the newest torch in
# pyproject's range (on Linux a CUDA build of several GB); the same as the README's commands.
CPU_TORCH = "torch==2.13.0"


@nox.session
def tests(session: nox.Session) -> None:
    """The full test suite (unit + smoke)."""
    session.install(CPU_TORCH)
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the project."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "harness", "baselines", "reports", "tests", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: the quick ablation on 2 workers, then its report."""
    session.install(CPU_TORCH)
    session.install("-e", ".")
    session.run("ppo-harness", "sweep", "ablations/quick.yaml", "--workers", "2")
    session.run("ppo-harness", "report", "ablations/quick.yaml")
