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
    """One line on stderr (``error: ...``) and the exit to raise: 2 bad input, 1 the work failed, 130 interrupted."""
    typer.echo(f"error: {one_line(message)}", err=True)
    return typer.Exit(code)


def one_line(message: object) -> str:
    """A message as one line: its lines joined, runs of whitespace made one space, URLs redacted."""
    from harness.urls import redact_text

    return " ".join(redact_text(message).split())


def shown(value: object) -> str:
    """A path, key or value for a message: quoted, or its repr() when it holds an invisible character."""
    text = str(value)
    return f"'{text}'" if text.isprintable() and text == text.strip() else repr(text)


# ---- checks of paths and URLs, made before any work -------------------------------------------------


def check_input_file(path: Path, option: str) -> None:
    """A file to read: it exists, is not a folder, is readable."""
    try:
        if not path.exists():
            raise fail(f"{option} {shown(path)}: no such file")
        if path.is_dir():
            raise fail(f"{option} {shown(path)}: is a folder, expected a file")
        if not os.access(path, os.R_OK):
            raise fail(f"{option} {shown(path)}: not readable")
    except OSError as e:  # a name too long, a loop of links
        raise fail(f"{option} {shown(path)}: {e.strerror or e}") from None


def check_output(path: Path, option: str, folder: bool) -> None:
    """A folder (``folder``) or a file to write: not the other kind; when missing, creatable (the nearest
    existing ancestor is a writable folder). Nothing is created."""
    try:
        if path.is_symlink() and not path.exists():
            raise fail(f"{option} {shown(path)}: a broken symbolic link")
        if path.exists():
            if folder and not path.is_dir():
                raise fail(f"{option} {shown(path)}: is a file, expected a folder")
            if not folder and path.is_dir():
                raise fail(f"{option} {shown(path)}: is a folder, expected a file")
            if not os.access(path, os.W_OK):
                raise fail(f"{option} {shown(path)}: not writable")
            return
        ancestor = path.absolute().parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise fail(f"{option} {shown(path)}: cannot be created, {shown(ancestor)} is a file")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise fail(f"{option} {shown(path)}: cannot be created, {shown(ancestor)} is not writable")
    except OSError as e:
        raise fail(f"{option} {shown(path)}: {e.strerror or e}") from None


def check_tracking_uri(uri: str) -> None:
    """--tracking-uri: a scheme MLflow has a store for, its driver installed (harness.tracking)."""
    from harness.tracking import check_tracking_uri as check

    try:
        check(uri)
    except ValueError as e:
        raise fail(f"--tracking-uri {shown(uri)}: {e}") from None


def check_experiment(name: str) -> None:
    """--experiment: one safe folder name (it names the experiment's artifact and report folders)."""
    from harness.urls import UnsafeName, safe_name

    try:
        safe_name(name, "--experiment")
    except UnsafeName as e:
        raise fail(str(e)) from None


def check_storage(storage: str) -> None:
    """--storage: an RDB URL whose SQLAlchemy driver is installed, or a journal file that can be written."""
    from harness.sweep.study import _with_driver, is_rdb
    from harness.tracking import check_database_url

    if is_rdb(storage):
        try:
            check_database_url(_with_driver(storage))  # the URL Optuna is handed
        except ValueError as e:
            raise fail(f"--storage {shown(storage)}: {e}") from None
        return
    path = Path(storage)
    check_output(path, "--storage", folder=False)
    if path.is_file() and path.stat().st_size:  # an existing journal: JSON lines
        import json

        try:
            with path.open("rb") as f:
                json.loads(f.readline(1 << 20))
        except (OSError, ValueError):
            raise fail(f"--storage {shown(path)}: not an Optuna journal file (its first line is not JSON)") from None


@app.command()
def tasks(
    action: Annotated[
        str, typer.Argument(help="list (built-in and plugin tasks) | verify (the shipped artifacts) | build (rebuild them).")
    ] = "list",
    task: Annotated[list[str] | None, typer.Option("--task", "-t", help="build: only this task (repeatable).")] = None,
) -> None:
    """List the tasks (built-in, and plugins registered through the ``ppo_harness.tasks`` entry points) with
    their source, verify the shipped task artifacts against their manifest, or rebuild them."""
    from harness.tasks import builtin_tasks, list_tasks, plugin_problems, task_source
    from harness.warmstart import artifacts

    if action == "list":
        m = artifacts.read_manifest() or {}
        shipped = m.get("artifacts", {})
        for name, desc in list_tasks().items():
            mark = f"[artifacts v{m.get('version')}]" if f"{name}/sft" in shipped else "[built locally]"
            typer.echo(f"{name:<10} {mark:<16} {task_source(name):<10} {desc}")
        for name, why in plugin_problems().items():
            typer.echo(f"warning: task plugin '{name}' left out: {why}", err=True)
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

        unknown = [t for t in task or [] if t not in builtin_tasks()]
        if unknown:  # the shipped artifacts are the built-in tasks'; a plugin task's models are built on first use
            raise fail(f"--task '{unknown[0]}': not a built-in task (built-in: {', '.join(builtin_tasks())})")
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
    if config is not None:
        check_input_file(config, "--config")
    if tracking_uri:
        check_tracking_uri(tracking_uri)
    else:
        check_output(runs_dir, "--runs-dir", folder=True)
    check_experiment(experiment)
    try:
        cfg = load_config(config, overrides)
        validate_model_keys(cfg)
    except (ConfigError, ModelError) as e:
        raise fail(str(e)) from None
    from harness.impls import check_expressible

    try:
        check_expressible(cfg)
    except ImportError:
        raise fail(f"impl '{cfg.impl}': the TRL baseline is not available in this installation") from None
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
    devices: Annotated[str | None, typer.Option(
        help="CUDA devices, e.g. 0,1,2,3: worker k runs on devices[k % n] (CUDA_VISIBLE_DEVICES; cuda:0 inside it).")] = None,
) -> None:
    """Run an ablation grid (cells x seeds) with Optuna; rerun the same command to resume."""
    from harness.sweep.coordinator import run_sweep

    check_input_file(spec, "SPEC")
    check_output(runs_dir, "--runs-dir", folder=True)
    if storage:
        check_storage(storage)
    if tracking_uri:
        check_tracking_uri(tracking_uri)
    from harness.devices import DeviceError, check_devices, parse_devices

    try:
        pinned = parse_devices(devices)
        if not dry_run:
            check_devices(pinned)
    except DeviceError as e:
        raise fail(str(e)) from None
    code = run_sweep(spec, workers=workers, storage=storage, tracking_uri=tracking_uri, runs_dir=runs_dir,
                     dry_run=dry_run, new=new, devices=pinned)
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

    if spec is not None:
        check_input_file(spec, "SPEC")
    if experiment is not None:
        check_experiment(experiment)
    if out is not None:
        check_output(out, "--out", folder=True)
    if tracking_uri:
        check_tracking_uri(tracking_uri)
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

    if json_out is not None:
        check_output(json_out, "--json", folder=False)
    raise typer.Exit(run_bench(size=size, vs=vs, iterations=iterations, warmup=warmup, repeats=repeats,
                               threads=threads, variant=variant, json=json_out))


@app.command()
def ui(
    runs_dir: RunsDir = Path("runs"),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
    experiment: Annotated[str | None, typer.Option(help="Experiment whose runs the printed URL opens "
                                                   "(default: the one updated last).")] = None,
) -> None:
    """Start the MLflow UI on the project's store (loopback only) and print the URL of the training-runs
    view of an experiment (--experiment, default the one updated last)."""
    from harness.tracking import Store

    check_output(runs_dir, "--runs-dir", folder=True)
    store = Store(runs_dir)
    try:
        url = store.runs_view(f"http://127.0.0.1:{port}", experiment)
    except KeyError:
        typer.echo(f"error: --experiment: no experiment '{experiment}' in {store.where}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"MLflow UI for {store.where}: {url}  (Ctrl-C to stop)")
    os.execvp(
        sys.executable,
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store.uri,
         "--default-artifact-root", store.artifact_root or "", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
    )


@app.command()
def compare(
    task: Annotated[str, typer.Option(help="Task name (see `ppo-harness tasks`).")] = "sentiment",
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1, each trained by every implementation.")] = 5,
    impl: Annotated[str, typer.Option("--impl", help="Implementations to compare, a comma list of at least two "
                                      "(custom, trl, trl-grpo, trl-rloo); the others are set against the first.")]
    = "custom,trl",
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
    """Implementations (default: custom core vs TRL's PPOTrainer) at equal settings over N seeds: a table with 95% CIs."""
    import time

    from harness.compare import check_comparable, comparable_config, parse_impls
    from harness.compare import compare as run_compare
    from harness.config import ConfigError, parse_override
    from harness.models.types import ModelError
    from harness.warmstart.load import validate_model_keys

    if tracking_uri:
        check_tracking_uri(tracking_uri)
    if not tracking_uri or out is None:  # the store, or the default output folder, lives there
        check_output(runs_dir, "--runs-dir", folder=True)
    if out is not None:
        check_output(out, "--out", folder=True)
    check_experiment(experiment)
    try:
        impls = parse_impls(impl)
        overrides = dict(parse_override(o) for o in set_ or [])
        seed_list = check_comparable(task, seeds, overrides, impls)
        validate_model_keys(comparable_config(task, overrides, seed_list[0], impls[0]))
    except (ConfigError, ModelError, ValueError) as e:
        raise fail(str(e)) from None
    except ImportError as e:
        raise fail(f"compare: a TRL baseline is not available in this installation ({e.name or e})") from None
    from harness.tracking import Store

    store = Store(runs_dir, tracking_uri)
    folder = out or runs_dir / "compare" / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = run_compare(task, seed_list, overrides, store, experiment=experiment, out=folder,
                             progress=not quiet and sys.stderr.isatty(), echo=typer.echo, impls=impls)
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
        typer.echo(f"error: {where}{one_line(e.format_message())} (see --help)", err=True)
        code = 2
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C at a prompt, or outside a command
        typer.echo("error: interrupted", err=True)
        code = 130
    except Exception as e:
        if not isinstance(e, input_errors()):
            raise  # a bug: the traceback, exit 1
        typer.echo(f"error: {one_line(e)}", err=True)  # bad input a command did not catch itself
        code = 2
    if code == 130:
        from harness.sweep.faults import forget_handled_interrupt

        forget_handled_interrupt()
    sys.exit(code or 0)


# the exceptions that mean bad input (each a ValueError with a one-line message naming the key or path)
INPUT_ERRORS = (
    ("harness.config", "ConfigError"), ("harness.config", "SpeltTwice"), ("harness.sweep.spec", "SpecError"),
    ("harness.sweep.study", "SweepRefused"), ("harness.models.types", "ModelError"),
    ("harness.warmstart.artifacts", "ArtifactError"), ("reports.collect", "ReportError"),
    ("baselines.trl_ppo", "NotExpressible"), ("harness.urls", "UnsafeName"), ("harness.tasks.data", "PromptFileError"),
)


def input_errors() -> tuple[type[BaseException], ...]:
    """The bad-input exception classes of the modules already imported (one never imported cannot have
    raised), and every exception class ``harness.yamlio`` (the strict YAML reader) defines."""
    found = [getattr(sys.modules[m], name, None) for m, name in INPUT_ERRORS if m in sys.modules]
    yamlio = sys.modules.get("harness.yamlio")
    if yamlio is not None:
        found += [v for k, v in vars(yamlio).items() if isinstance(v, type) and issubclass(v, Exception)
                  and v.__module__ == yamlio.__name__ and not k.startswith("_")]
    return tuple(c for c in found if isinstance(c, type))


if __name__ == "__main__":  # pragma: no cover
    main()
