"""The command line: a thin typer app. Parsing here; work in the modules it calls."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="ppo-harness: PPO for RLHF - custom core, TRL reference, Optuna ablations, MLflow, reports.",
)

RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Local store: MLflow SQLite db, artifacts, Optuna journals.")]
TrackingUri = Annotated[
    str | None, typer.Option("--tracking-uri", help="An MLflow tracking server (e.g. http://host:5000) instead of --runs-dir.")
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """One line on stderr and a non-zero exit."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def tasks(
    action: Annotated[
        str, typer.Argument(help="list (the built-in tasks) | verify (the shipped artifacts) | build (rebuild them).")
    ] = "list",
    task: Annotated[list[str] | None, typer.Option("--task", "-t", help="build: only this task (repeatable).")] = None,
) -> None:
    """List the built-in tasks, verify the shipped task artifacts against their manifest, or rebuild them."""
    from harness.tasks import list_tasks
    from harness.warmstart import artifacts

    if action == "list":
        m = artifacts.read_manifest() or {}
        shipped = m.get("artifacts", {})
        for name, desc in list_tasks().items():
            mark = f"[artifacts v{m.get('version')}]" if f"{name}/sft" in shipped else "[built locally]"
            typer.echo(f"{name:<10} {mark:<16} {desc}")
        return
    if action == "verify":
        results = artifacts.verify_all()
        for name, state in results:
            typer.echo(f"{name:<16} {state}")
        if any(state != "ok" for _, state in results):
            raise typer.Exit(1)
        return
    if action == "build":
        from harness.warmstart.build import build_shipped

        unknown = [t for t in task or [] if t not in list_tasks()]
        if unknown:
            raise fail(f"--task '{unknown[0]}': unknown task (known: {', '.join(list_tasks())})")
        import sys

        def live(msg: str) -> None:  # one live line on stderr
            sys.stderr.write("\r" + msg[:100].ljust(100))
            sys.stderr.flush()

        path = build_shipped(task or None, progress=live)
        sys.stderr.write("\n")
        typer.echo(f"wrote {path}")
        return
    raise fail(f"tasks ACTION '{action}': expected list, verify or build")


@app.command("config")
def config_keys(
    grep: Annotated[str | None, typer.Argument(help="Show only keys containing this text (e.g. kl. or clip).")] = None,
) -> None:
    """Every dotted config key with its type, default and meaning (what --set and ablation specs take)."""
    from harness.config import describe

    for d in describe():
        if grep and grep not in d.key:
            continue
        default = "null" if d.default is None else d.default
        typer.echo(f"{d.key:<26} {d.type:<40} default {default}")
        typer.echo(f"    {d.description}")


@app.command()
def train(
    task: Annotated[str | None, typer.Option(help="Task name (see `ppo-harness tasks`); same as --set task.name=...")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="A RunConfig YAML file.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config key: dotted.key=value (YAML scalar). Repeatable. "
                                         "`ppo-harness config` lists every key with its type, default and meaning."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same as --set seed=N).")] = None,
    impl: Annotated[str | None, typer.Option(help="custom | trl (same as --set impl=...).")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "ppo-harness",
    runs_dir: RunsDir = Path("runs"),
    tracking_uri: TrackingUri = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Train one configuration and log it as one MLflow run."""
    from harness.config import ConfigError, load_config
    from harness.models.types import ModelError
    from harness.warmstart.load import validate_model_keys

    overrides = list(set_ or [])
    for key, value in (("task.name", task), ("seed", seed), ("impl", impl)):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        cfg = load_config(config, overrides)
        validate_model_keys(cfg)
    except (ConfigError, ModelError) as e:
        raise fail(str(e)) from None
    if cfg.impl == "trl":
        try:
            from baselines.trl_ppo import check_expressible
        except ImportError:
            raise fail("impl 'trl': the TRL baseline is not available in this installation") from None
        try:
            check_expressible(cfg)
        except ValueError as e:
            raise fail(str(e)) from None
    from harness.run import execute
    from harness.tracking import Store

    store = Store(runs_dir, tracking_uri)
    try:
        result = execute(cfg, store, experiment=experiment, progress=not quiet and sys.stderr.isatty())
    except KeyboardInterrupt:
        raise fail("interrupted; the run is marked KILLED", 130) from None
    except Exception as e:  # the run is already marked FAILED with the reason
        raise fail(f"run failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", 1) from None
    typer.echo(f"run id   {result.run_id}")
    typer.echo(f"stored   {store.where} (experiment '{experiment}')")
    for key in ("eval/gold", "eval/proxy", "eval/kl", "eval/length", "objective/entropy"):
        if key in result.final:
            typer.echo(f"{key:<17} {result.final[key]:+.4f}")


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="An ablation spec (YAML), e.g. ablations/quick.yaml.")],
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (e.g. postgresql://user@host/db); default: a journal file under --runs-dir.")
    ] = None,
    runs_dir: RunsDir = Path("runs"),
    tracking_uri: TrackingUri = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate, print the cells and the storage, run nothing.")] = False,
    new: Annotated[bool, typer.Option("--new", help="Start a fresh study when the spec changed under the same name.")] = False,
) -> None:
    """Run an ablation grid (cells x seeds) with Optuna; rerun the same command to resume."""
    from harness.sweep.coordinator import run_sweep

    code = run_sweep(spec, workers=workers, storage=storage, tracking_uri=tracking_uri, runs_dir=runs_dir,
                     dry_run=dry_run, new=new)
    raise typer.Exit(code)


@app.command()
def report(
    spec: Annotated[Path | None, typer.Argument(help="The ablation spec whose sweep to report.")] = None,
    experiment: Annotated[str | None, typer.Option(help="Report an MLflow experiment by name instead.")] = None,
    parent_run: Annotated[str | None, typer.Option("--parent-run", help="Report the sweep under this parent run id.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default reports/out/<name>).")] = None,
    style: Annotated[str, typer.Option(help="Figure style: default | icml | neurips | iclr.")] = "default",
    runs_dir: RunsDir = Path("runs"),
    tracking_uri: TrackingUri = None,
) -> None:
    """Figures, tables and report.md/.html from a sweep's MLflow runs."""
    from reports.report import make_report

    code = make_report(spec, experiment=experiment, parent_run=parent_run, out=out, style=style,
                       runs_dir=runs_dir, tracking_uri=tracking_uri)
    raise typer.Exit(code)


@app.command()
def bench(
    size: Annotated[str, typer.Option(help="Workload: S (2 layers, 64 wide) or M (4 layers, 256 wide).")] = "S",
    vs: Annotated[str | None, typer.Option("--vs", help="Also run a reference on the identical workload: trl.")] = None,
    iterations: Annotated[int, typer.Option(help="Timed PPO iterations per implementation.")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up iterations.")] = 1,
    repeats: Annotated[int, typer.Option(help="Fresh runs per implementation, interleaved; the median is reported.")] = 1,
    variant: Annotated[str, typer.Option(help="equal (equal math, the default) or a math-changing switch, "
                                         "reported apart: shared-trunk, bf16, shared-trunk+bf16.")] = "equal",
    threads: Annotated[int, typer.Option(help="torch threads per implementation (default 2, not all cores; "
                                         "match the cores per worker).")] = 2,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number to this JSON file.")] = None,
) -> None:
    """Benchmark the custom core (and TRL with --vs trl): iterations/s, tokens/s, time split, RSS, GFLOP/s."""
    from harness.bench.run import run_bench

    raise typer.Exit(run_bench(size=size, vs=vs, iterations=iterations, warmup=warmup, repeats=repeats,
                               threads=threads, variant=variant, json=json_out))


@app.command()
def ui(
    runs_dir: RunsDir = Path("runs"),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Start the MLflow UI on the project's store (loopback only) and print the URL."""
    from harness.tracking import Store

    store = Store(runs_dir)
    typer.echo(f"MLflow UI for {store.where}: http://127.0.0.1:{port}  (Ctrl-C to stop)")
    os.execvp(
        sys.executable,
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store.uri,
         "--default-artifact-root", store.artifact_root or "", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
    )


@app.command()
def compare(
    task: Annotated[str, typer.Option(help="Task name (see `ppo-harness tasks`).")] = "sentiment",
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1, each trained by both implementations.")] = 5,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a config key for both: dotted.key=value. Repeatable.")
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "compare",
    out: Annotated[Path | None, typer.Option(help="Folder for compare.md / compare.csv / runs.csv "
                                                  "(default <runs-dir>/compare/<task>-<time>).")] = None,
    runs_dir: RunsDir = Path("runs"),
    tracking_uri: TrackingUri = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Custom core vs TRL's PPOTrainer at equal settings over N seeds: a side-by-side table with 95% CIs."""
    import time

    from harness.compare import check_comparable, comparable_config
    from harness.compare import compare as run_compare
    from harness.config import ConfigError, parse_override
    from harness.models.types import ModelError
    from harness.warmstart.load import validate_model_keys

    try:
        overrides = dict(parse_override(o) for o in set_ or [])
        seed_list = check_comparable(task, seeds, overrides)
        validate_model_keys(comparable_config(task, overrides, seed_list[0], "custom"))
    except (ConfigError, ModelError, ValueError) as e:
        raise fail(str(e)) from None
    from harness.tracking import Store

    store = Store(runs_dir, tracking_uri)
    folder = out or runs_dir / "compare" / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = run_compare(task, seed_list, overrides, store, experiment=experiment, out=folder,
                             progress=not quiet and sys.stderr.isatty(), echo=typer.echo)
    except KeyboardInterrupt:
        raise fail("interrupted; the current run is marked KILLED", 130) from None
    except Exception as e:  # a run failed; it is marked FAILED with the reason
        raise fail(f"run failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", 1) from None
    typer.echo("")
    typer.echo(result.markdown(), nl=False)
    typer.echo(f"saved    {folder / 'compare.md'}, {folder / 'compare.csv'}, {folder / 'runs.csv'}")


def main(argv: list[str] | None = None) -> None:
    """The ``ppo-harness`` entry point: a usage error is one line naming the option, exit 2."""
    try:  # typer >= 0.20 parses with its own copy of click
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover
        from click import exceptions as click_errors

    try:
        code = app(args=argv, prog_name="ppo-harness", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as e:  # a bare command group: its help, as typer shows it
        typer.echo(e.ctx.get_help() if e.ctx else "", err=True)
        code = 2
    except click_errors.UsageError as e:  # unknown option, bad value, missing argument
        where = f"{e.ctx.command_path}: " if e.ctx else ""
        message = " ".join(e.format_message().split())
        typer.echo(f"error: {where}{message} (see --help)", err=True)
        code = 2
    except typer.Abort:  # Ctrl-C at a prompt
        code = 130
    sys.exit(code or 0)


if __name__ == "__main__":  # pragma: no cover
    main()
