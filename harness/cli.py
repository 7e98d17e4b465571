"""The command line: a thin typer app. Parsing here; work in the modules it calls."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from harness.errors import EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, InputError, describe
from harness.schema import IMPLEMENTATIONS

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


def fail(message: str, code: int = EXIT_INPUT) -> typer.Exit:
    """One line on stderr (``error: ...``) and the exit to raise (``harness.errors``): EXIT_INPUT bad input,
    EXIT_FAILED the work failed, EXIT_INTERRUPTED interrupted."""
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


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (``timeout``, ``kill``, a batch scheduler) stops a run as Ctrl-C does: KeyboardInterrupt, so
    the run is marked KILLED, a half-built warm start is removed and the exit code is 130. A rank of a run
    over several processes is sent SIGTERM by its launcher when another rank failed: the run is FAILED.
    Raised again until the run's cleanup begins (``harness.interrupts``: one dropped by a GC callback)."""
    from harness import dist
    from harness.interrupts import stopping

    if dist.launched().parallel:
        def make() -> BaseException:
            return dist.Stopped("stopped by the launcher: another rank failed, or the launch was stopped")
    else:
        make = KeyboardInterrupt
    with stopping(make):
        yield


# ---- checks of paths and URLs, made before any work -------------------------------------------------


def check_input_file(path: Path, option: str) -> None:
    """A file to read: it exists, is not a folder, is readable."""
    try:
        if not path.exists():
            raise fail(f"{option} {shown(path)}: no such file")
        if path.is_dir():
            raise fail(f"{option} {shown(path)}: is a folder, expected a file")
        if not path.is_file():  # a FIFO (opening it would wait for a writer), a device, a socket
            raise fail(f"{option} {shown(path)}: not a regular file")
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


def check_tracking_uri(uri: str, contact: bool = True) -> None:
    """--tracking-uri: a scheme MLflow has a store for, its driver installed (harness.tracking); an MLflow
    server (http, https) must answer now (``contact``; a dry run contacts nothing): before any run exists."""
    from harness.tracking import check_tracking_uri as check
    from harness.urls import redact

    try:
        check(uri)
    except ValueError as e:
        raise fail(f"--tracking-uri {shown(redact(uri))}: {e}") from None
    if contact and uri.startswith(("http://", "https://")):
        from harness.sweep.faults import http_problem

        if problem := http_problem(uri):
            raise fail(f"--tracking-uri: {problem}")


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
    from harness.urls import malformed_scheme, redact

    if is_rdb(storage):
        try:
            check_database_url(_with_driver(storage))  # the URL Optuna is handed
        except ValueError as e:
            raise fail(f"--storage {shown(redact(storage))}: {e}") from None
        return
    if bad := malformed_scheme(storage):  # 'postgresql:/u:pw@h/db': neither a URL nor meant as a path
        raise fail(f"--storage: looks like a URL with a malformed scheme ('{bad}:' must be followed by '//'); "
                   f"a journal file whose name has ':' in its first part: write it as ./{bad}:...")
    path = Path(storage)
    check_output(path, "--storage", folder=False)
    from harness.sweep.faults import NotAJournal, check_journal

    try:  # an existing file is written only when its records say it is an Optuna journal
        check_journal(str(path))
    except NotAJournal as e:
        raise fail(f"--storage {shown(path)}: {e}") from None


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

    if task and action != "build":
        raise fail(f"--task: only `tasks build` takes it (`tasks {action}` covers every task)")
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

    found = [d for d in describe() if not grep or grep in d.key]
    if not found:
        raise fail(f"config GREP {shown(grep)}: no config key contains it (`ppo-harness config` lists them all)")
    for d in found:
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
    impl: Annotated[str | None, typer.Option(help=f"{' | '.join(IMPLEMENTATIONS)} (same as --set impl=...).")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "ppo-harness",
    runs_dir: RunsDir = Path("runs"),
    tracking_uri: TrackingUri = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    resume: Annotated[str | None, typer.Option(
        "--resume", help="Continue the run RUN_ID from its newest checkpoint (train.checkpoint_every), in the same "
        "MLflow run; its config is the checkpoint's. A run over N processes continues with --nproc-per-node N "
        "(the world size it was written at), on the machine that holds its checkpoint.")] = None,
    nproc_per_node: Annotated[int | None, typer.Option(
        "--nproc-per-node", help="One run over N processes on this machine (torch's elastic launcher, as "
        "torchrun): each samples B / N of the batch, gradients summed; one process per GPU. impl=custom.")] = None,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Machines of a run over several (with "
                                        "--nproc-per-node and --rdzv-endpoint); run the same command on each.")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", help="This machine's index, 0 .. nnodes - 1 (0 holds "
                                           "rank 0, which logs to MLflow).")] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option(
        "--rdzv-endpoint", help="HOST:PORT of machine 0, where the machines of a run meet (--nnodes > 1).")] = None,
) -> None:
    """Train one configuration and log it as one MLflow run.

    With --impl trl, trl-grpo or trl-rloo, the keys the user does not set take that trainer's default
    profile (printed at start, tagged impl.profile); a value the trainer cannot express is refused."""
    from harness.config import ConfigError
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
    launch = _launch_options(nproc_per_node, nnodes, node_rank, rdzv_endpoint)
    if resume is not None:
        if config is not None or overrides:
            raise fail("--resume: the run's config is its checkpoint's; --config, --set, --task, --seed and --impl "
                       "cannot be given with it")
        return _resume(resume, runs_dir, tracking_uri, quiet, launch)
    profile: dict = {}
    try:
        cfg, profile = _config_with_profile(config, overrides)
        task = validate_model_keys(cfg)  # once, before the store exists; execute is handed the result
    except (ConfigError, ModelError) as e:
        raise fail(str(e)) from None
    from harness.impls import check_expressible

    try:
        check_expressible(cfg)
    except ImportError:
        raise fail(f"impl '{cfg.impl}': the TRL baseline is not available in this installation") from None
    except ValueError as e:
        raise fail(str(e)) from None
    if launch is not None:
        _check_launch(cfg, launch.size, launch.nproc)
    if profile:
        from harness.profiles import as_overrides

        typer.echo(f"impl {cfg.impl}: its default profile sets {' '.join(as_overrides(profile))}", err=True)
    if launch is not None:
        return _launch(cfg, launch, experiment, runs_dir, tracking_uri, quiet)
    _train_here(cfg, profile, task, experiment, runs_dir, tracking_uri, quiet)


def _train_here(cfg, profile: dict, task, experiment: str, runs_dir: Path, tracking_uri: str | None,
                quiet: bool) -> None:
    """The run in this process: one process, or one rank of torchrun's (rank 0 alone opens the store)."""
    from harness import dist
    from harness.launch import resumed_run
    from harness.profiles import as_overrides
    from harness.run import execute
    from harness.schema import Tag
    from harness.tracking import Store

    world = dist.launched()
    if world.parallel:  # a rank of torchrun's: every rank refuses a launch the config cannot have, the same way
        _check_launch(cfg, world.size, int(os.environ.get("LOCAL_WORLD_SIZE", world.size)))
    store = Store(runs_dir, tracking_uri) if world.main else None
    tags = {Tag.IMPL_PROFILE: " ".join(as_overrides(profile))} if profile else None
    resume = resumed_run() if world.main else None  # train --resume ... --nproc-per-node: rank 0 reopens the run
    _train_and_report(lambda: execute(cfg, store, experiment=experiment, tags=tags, task=task, resume=resume,
                                      progress=not quiet and sys.stderr.isatty()), store, experiment)


def _launch_options(nproc: int | None, nnodes: int, node_rank: int, endpoint: str | None):
    """``--nproc-per-node`` and its companions, checked; None when the run is one process (or torchrun's)."""
    from harness import dist
    from harness.launch import Launch, LaunchError, check_options

    if nproc is None:
        for option, value, default in (("--nnodes", nnodes, 1), ("--node-rank", node_rank, 0),
                                       ("--rdzv-endpoint", endpoint, None)):
            if value != default:
                raise fail(f"{option}: only with --nproc-per-node")
        return None
    if dist.launched().parallel:
        raise fail("--nproc-per-node: this process is a rank of a launch already (torchrun); leave it out")
    launch = Launch(nproc, nnodes, node_rank, endpoint)
    try:
        check_options(launch)
    except LaunchError as e:
        raise fail(str(e)) from None
    return launch


def _launch(cfg, launch, experiment: str, runs_dir: Path, tracking_uri: str | None, quiet: bool,
            resume: str | None = None) -> None:
    """``train --nproc-per-node``: the ranks of a launch checked against the config and this machine; ``resume``:
    the run they continue."""
    from harness.launch import RanksFailed, run

    try:
        with sigterm_as_interrupt():
            run(cfg, launch, experiment=experiment, runs_dir=runs_dir, tracking_uri=tracking_uri, quiet=quiet,
                resume=resume)
    except KeyboardInterrupt:
        raise fail("interrupted; the ranks were stopped and the run is marked KILLED", EXIT_INTERRUPTED) from None
    except RanksFailed as e:
        raise fail(f"run failed: {e}", EXIT_FAILED) from None


def _check_launch(cfg, size: int, local: int) -> None:
    """``launch.check`` against this machine's devices: one line and exit 2 when the run cannot have it."""
    from harness.devices import resolve
    from harness.launch import LaunchError, check

    device = resolve(cfg.train.device)
    try:
        check(cfg, size, local, device.type, _cuda_count() if device.type == "cuda" else 0, checkpoints=True)
    except LaunchError as e:
        raise fail(str(e)) from None


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def _config_with_profile(config: Path | None, overrides: list[str]):
    """The run's config, the keys the user left unset taking ``cfg.impl``'s default profile; (cfg, keys applied)."""
    from harness.config import load_config
    from harness.profiles import applied, as_overrides, user_keys
    from harness.yamlio import read_yaml

    cfg = load_config(config, overrides)
    data = read_yaml(config) if config is not None else None
    profile = applied(cfg.impl, user_keys(data if isinstance(data, dict) else None, overrides))
    if profile:
        cfg = load_config(config, as_overrides(profile) + overrides)
    return cfg, profile


def _resume(run_id: str, runs_dir: Path, tracking_uri: str | None, quiet: bool, launch=None) -> None:
    """``train --resume RUN_ID [--nproc-per-node N]``: the run's newest checkpoint and the run itself, checked (the
    world size it was written at among them); then continued, here or over the launch's ranks."""
    from harness import checkpoint, dist
    from harness.config import ConfigError, load_config
    from harness.run import execute
    from harness.tracking import Store
    from harness.urls import UnsafeName, safe_name

    if dist.launched().parallel:  # every rank would read the runs dir; the launcher's rank 0 alone reads it
        raise fail("--resume: this process is a rank of torchrun's; continue a run over N processes with "
                   "ppo-harness train --resume RUN_ID --nproc-per-node N")
    if launch is not None and launch.nnodes > 1:
        raise fail(f"--nnodes: run {shown(run_id)} continues on the one machine that holds its checkpoint")
    try:
        safe_name(run_id, "--resume")
    except UnsafeName as e:
        raise fail(str(e)) from None
    path = checkpoint.latest(checkpoint.run_folder(runs_dir, run_id))
    if path is None:
        raise fail(f"--resume {shown(run_id)}: no checkpoint under {shown(checkpoint.run_folder(runs_dir, run_id))} "
                   "(the run needs train.checkpoint_every > 0)")
    store = Store(runs_dir, tracking_uri)
    summary = store.run_summary(run_id)
    if summary is None:
        raise fail(f"--resume {shown(run_id)}: no such run in {store.where}")
    if summary["status"] == "FINISHED":
        raise fail(f"--resume {shown(run_id)}: the run is FINISHED already")
    _check_resume_world(run_id, path, launch)
    try:
        cfg = load_config(path / "config.yaml")
    except ConfigError as e:
        raise fail(f"--resume {shown(run_id)}: {e}") from None
    if launch is not None:
        _check_launch(cfg, launch.size, launch.nproc)
    typer.echo(f"resuming run {run_id} after iteration {int(path.name.split('-')[-1])}", err=True)
    experiment = summary["experiment"]
    if launch is not None:
        return _launch(cfg, launch, experiment, runs_dir, tracking_uri, quiet, resume=run_id)
    _train_and_report(lambda: execute(cfg, store, experiment=experiment, resume=run_id,
                                      progress=not quiet and sys.stderr.isatty()), store, experiment)


def _check_resume_world(run_id: str, path: Path, launch) -> None:
    """A checkpoint continues at the world size it was written at (each rank's sampling is its own): one line
    naming --nproc-per-node otherwise."""
    from harness import checkpoint

    written, size = checkpoint.world_size(path), 1 if launch is None else launch.size
    if written != size:
        hint = f"--nproc-per-node {written}" if written > 1 else "no --nproc-per-node"
        raise fail(f"--nproc-per-node: run {shown(run_id)}'s checkpoint was written by {written} process(es), not "
                   f"{size}; resume it with {hint}")


def _train_and_report(run, store, experiment: str) -> None:
    """Run ``run()`` (an ``execute`` call) and print its run id, store and final evaluation; exit codes."""
    try:
        with sigterm_as_interrupt():
            result = run()
    except KeyboardInterrupt:
        raise fail("interrupted; the run is marked KILLED", EXIT_INTERRUPTED) from None
    except Exception as e:  # the run is already marked FAILED with the reason
        raise fail(f"run failed: {describe(e)}", EXIT_FAILED) from None
    if result.run_id is None:  # a rank other than 0 of a run over several processes: rank 0 reports
        return
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
        help="CUDA devices, e.g. 0,1,2,3: worker k runs on devices[k % n] (CUDA_VISIBLE_DEVICES; cuda:0 inside it); "
        "with --procs-per-run N on the group devices[k*N:(k+1)*N].")] = None,
    procs_per_run: Annotated[int, typer.Option(
        "--procs-per-run", help="Each trial one run over N processes (the worker and N - 1 more, as train "
        "--nproc-per-node N): gloo on the CPU, one CUDA device per process. impl=custom.")] = 1,
) -> None:
    """Run an ablation grid (cells x seeds) with Optuna; rerun the same command to resume."""
    from harness.sweep.coordinator import run_sweep

    check_input_file(spec, "SPEC")
    check_output(runs_dir, "--runs-dir", folder=True)
    if storage:
        check_storage(storage)
    if tracking_uri:
        check_tracking_uri(tracking_uri, contact=not dry_run)
    from harness.devices import DeviceError, check_devices, check_groups, parse_devices

    try:
        pinned = parse_devices(devices)
        check_groups(pinned, procs_per_run, workers)
        if not dry_run:
            check_devices(pinned)
    except DeviceError as e:
        raise fail(str(e)) from None
    from harness.sweep.study import SweepEnd

    end = run_sweep(spec, workers=workers, storage=storage, tracking_uri=tracking_uri, runs_dir=runs_dir,
                    dry_run=dry_run, new=new, devices=pinned,
                    procs_per_run=procs_per_run)  # bad input: an InputError, one line from main()
    raise typer.Exit({SweepEnd.DONE: EXIT_OK, SweepEnd.INCOMPLETE: EXIT_FAILED,
                      SweepEnd.INTERRUPTED: EXIT_INTERRUPTED}[end])


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
    try:  # bad input: a ReportError (an InputError), one line from main()
        md = make_report(spec, experiment=experiment, parent_run=parent_run, out=out, style=style,
                         runs_dir=runs_dir, tracking_uri=tracking_uri)
    except OSError as e:  # the work itself: a full disk, a folder that vanished
        raise fail(f"report failed: {e}", EXIT_FAILED) from None
    typer.echo(f"report: {md}")
    typer.echo(f"html:   {md.with_suffix('.html')}")


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="The MLflow run id whose policy to export.")],
    dest: Annotated[Path, typer.Argument(help="The folder to write (save_pretrained, tokenizer, README.md model card).")],
    runs_dir: RunsDir = Path("runs"),
    tracking_uri: TrackingUri = None,
) -> None:
    """Save a run's trained policy as a Hugging Face model folder (AutoModelForCausalLM.from_pretrained loads it):
    the policy saved at its end (train.save_policy), else the one of its newest checkpoint."""
    from harness.export import ExportError, export_run
    from harness.tracking import Store
    from harness.urls import UnsafeName, safe_name

    try:
        safe_name(run_id, "RUN_ID")
    except UnsafeName as e:
        raise fail(str(e)) from None
    if not tracking_uri and not (runs_dir / "mlflow.db").is_file():
        raise fail(f"--runs-dir {shown(runs_dir)}: no runs stored there")
    check_output(dest, "DEST", folder=True)
    if dest.exists() and any(dest.iterdir()):
        raise fail(f"DEST {shown(dest)}: not empty")
    if tracking_uri:
        check_tracking_uri(tracking_uri)
    try:
        out = export_run(Store(runs_dir, tracking_uri), run_id, dest)
    except ExportError as e:
        raise fail(str(e)) from None
    typer.echo(f"saved    {out}")


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
    try:  # a bad option: a BenchInputError (an InputError), one line from main()
        run_bench(size=size, vs=vs, iterations=iterations, warmup=warmup, repeats=repeats, threads=threads,
                  variant=variant, json=json_out)
    except (RuntimeError, OSError) as e:  # a child failed, the JSON could not be written
        raise fail(str(e), EXIT_FAILED) from None


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
                                      f"({', '.join(IMPLEMENTATIONS)}); the others are set against the first.")]
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
        with sigterm_as_interrupt():
            result = run_compare(task, seed_list, overrides, store, experiment=experiment, out=folder,
                                 progress=not quiet and sys.stderr.isatty(), echo=typer.echo, impls=impls)
    except KeyboardInterrupt:
        raise fail("interrupted; the current run is marked KILLED", EXIT_INTERRUPTED) from None
    except Exception as e:  # a run failed; it is marked FAILED with the reason
        raise fail(f"run failed: {describe(e)}", EXIT_FAILED) from None
    typer.echo("")
    typer.echo(result.markdown(), nl=False)
    typer.echo(f"saved    {folder / 'compare.md'}, {folder / 'compare.csv'}, {folder / 'runs.csv'}")


@app.command()
def reproduce(
    claim: Annotated[str | None, typer.Argument(help="A claim (see --list); default: every claim, one after another.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds 0..N-1 instead of the spec's (a copy of it under its "
                                              "own name).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes of each claim's sweep.")] = 1,
    list_: Annotated[bool, typer.Option("--list", help="Print the claims, their papers and costs; run nothing.")] = False,
    spec: Annotated[Path | None, typer.Option(help="Check CLAIM on your own variant of its spec (the same grid "
                                              "axes; your task, models or sizes) instead of the shipped one.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder: <out>/<claim>/report.md and <out>/claims.md.")]
    = Path("reports/out/claims"),
    runs_dir: RunsDir = Path("runs"),
    tracking_uri: TrackingUri = None,
) -> None:
    """Check published findings on the shipped benchmark: run each claim's spec as a sweep, then its quantity
    with a 95% interval and a verdict (reproduced / contradicted / unresolved at this many seeds)."""
    from harness import reproduce as R

    try:
        names = [R.check_claim(claim).name] if claim is not None else None
        R.check_seeds(seeds)
        if spec is not None:
            check_input_file(spec, "--spec")
            R.check_own_spec(spec, names)
    except ValueError as e:
        raise fail(str(e)) from None
    if list_:
        typer.echo(R.listing())
        return
    if workers < 1:
        raise fail(f"--workers: expected at least 1, got {workers}")
    check_output(runs_dir, "--runs-dir", folder=True)
    check_output(out, "--out", folder=True)
    if tracking_uri:
        check_tracking_uri(tracking_uri)
    with sigterm_as_interrupt():
        code = R.reproduce(names or list(R.C.CLAIMS), seeds, workers, runs_dir, tracking_uri, out, echo=typer.echo,
                           spec=spec)
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    """The ``ppo-harness`` entry point: a usage error is one line naming the option, exit 2."""
    try:  # typer >= 0.20 parses with its own copy of click
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover
        from click import exceptions as click_errors

    # MLflow's usage telemetry writes ~/.config/mlflow/telemetry.json and sends events: off unless the user
    # turns it on (MLFLOW_DISABLE_TELEMETRY=false); workers and `mlflow ui` inherit the setting
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from harness.urls import remember_secrets

    for arg in [*(sys.argv[1:] if argv is None else argv), os.environ.get("MLFLOW_TRACKING_URI", "")]:
        remember_secrets(arg)  # a password given in any URL is masked wherever it turns up later
    try:
        code = app(args=argv, prog_name="ppo-harness", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as e:  # a bare command group: its help, as typer shows it
        typer.echo(e.ctx.get_help() if e.ctx else "", err=True)
        code = EXIT_INPUT
    except click_errors.UsageError as e:  # unknown option, bad value, missing argument
        where = f"{e.ctx.command_path}: " if e.ctx else ""
        typer.echo(f"error: {where}{one_line(e.format_message())} (see --help)", err=True)
        code = EXIT_INPUT
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C at a prompt, or outside a command
        typer.echo("error: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except InputError as e:  # bad input a command did not catch itself (any other exception is a bug: its traceback)
        typer.echo(f"error: {one_line(e)}", err=True)
        code = e.exit_code
    if code == EXIT_INTERRUPTED:
        from harness.sweep.faults import forget_handled_interrupt

        forget_handled_interrupt()
    sys.exit(code or 0)


if __name__ == "__main__":  # pragma: no cover
    main()
