"""MLflow, and only here: stores, experiments, runs, metrics, artifacts, searches.

Default store: SQLite at ``runs/mlflow.db`` with artifacts under ``runs/artifacts``;
any MLflow tracking server via ``tracking_uri``.

Credentials never leave this module in the clear: ``Store.where`` / ``repr`` show the tracking URI
redacted (``harness.urls.redact``), and every exception raised by an MLflow call made through
``Store.client`` has the URLs in its message redacted (MLflow's own messages quote the request URL,
credentials included). ``redact``, ``redact_text``, ``safe_name`` and ``inside`` are re-exported for
``reports/``, which imports nothing else from the harness but this module and the schema.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# MLflow prints "View run ... at <tracking URI>/#/..." for server stores, the URI's credentials included
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
import mlflow  # noqa: E402
from mlflow.entities import RunStatus  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from harness.errors import first_line
from harness.locks import locked  # noqa: E402
from harness.urls import UnsafeName, inside, redact, redact_text, safe_name  # noqa: E402

__all__ = ["DEFAULT_EXPERIMENT", "DEFAULT_RUNS_DIR", "RunLogger", "Store", "UnsafeName", "git_commit", "inside",
           "package_versions", "redact", "redact_text", "safe_name", "scrubbed"]

for _name in ("mlflow", "alembic", "sqlalchemy"):
    logging.getLogger(_name).setLevel(logging.WARNING)

DEFAULT_RUNS_DIR = Path("runs")
DEFAULT_EXPERIMENT = "ppo-harness"


EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"  # the UI's training-runs view
SHARE_PARAM = "viewStateShareKey"  # the UI's URL parameter naming a shared view (an experiment tag)
# the metric columns `ppo-harness ui` shows in the runs table (when logged), before the swept axes
VIEW_METRICS = ("sweep/best", "eval/gold", "eval/proxy", "eval/kl", "episodes", "sweep/done", "sweep/failed")


class Store:
    """Where runs live: a tracking URI plus the artifact root for new experiments."""

    def __init__(self, runs_dir: str | Path = DEFAULT_RUNS_DIR, tracking_uri: str | None = None):
        self.runs_dir = Path(runs_dir).resolve()
        if tracking_uri:
            self.uri = tracking_uri
            self.artifact_root: str | None = None  # the server decides
        else:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.uri = f"sqlite:///{self.runs_dir / 'mlflow.db'}"
            self.artifact_root = (self.runs_dir / "artifacts").as_uri()
        self.client = self._connect()

    def _connect(self) -> _Client:
        """A client; a new SQLite file is created and migrated under a file lock, because
        two processes migrating the same fresh database at once fail."""
        if self.artifact_root is None:
            return _Client(MlflowClient(tracking_uri=self.uri))
        with locked(self.runs_dir / ".mlflow.lock"):
            client = _Client(MlflowClient(tracking_uri=self.uri))
            client.search_experiments(max_results=1)  # forces schema creation / migration
        return client

    def __repr__(self) -> str:
        return f"Store({self.where})"

    @property
    def where(self) -> str:
        """Human-readable location for messages, files and tags: the tracking URI with its credentials masked."""
        return str(self.runs_dir / "mlflow.db") if self.artifact_root else redact(self.uri)

    # ---- experiments ------------------------------------------------------------------------
    def experiment_id(self, name: str = DEFAULT_EXPERIMENT, create: bool = True) -> str | None:
        """Get or create an experiment; safe when several processes race to create it."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        location = self._artifact_location(name)  # UnsafeName before anything is created
        try:
            # "custom_model_development" opens the experiment in the UI's training-runs view
            return self.client.create_experiment(
                name,
                artifact_location=location,
                tags={EXPERIMENT_KIND: TRAINING_KIND},
            )
        except Exception:  # another process created it first
            for _ in range(20):
                exp = self.client.get_experiment_by_name(name)
                if exp is not None:
                    return exp.experiment_id
                time.sleep(0.1)
            raise

    def runs_view(self, base: str, name: str | None = None) -> str:
        """The UI address of an experiment's training-runs view (``name``, default the experiment updated
        last; the bare ``base`` for an empty store), newest runs first. Experiments made without the
        training kind tag (older stores) get it, so the UI opens them as training runs, not GenAI
        evaluations. KeyError for an unknown ``name``."""
        exps = self.client.search_experiments(order_by=["last_update_time DESC"])
        for e in exps:
            if e.tags.get(EXPERIMENT_KIND) is None:
                self.client.set_experiment_tag(e.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)
        if name is not None:
            chosen = next((e for e in exps if e.name == name), None)
            if chosen is None:
                raise KeyError(name)
        else:
            with_runs = [e for e in exps if self.client.search_runs([e.experiment_id], max_results=1)]
            chosen = with_runs[0] if with_runs else None
        view = "?workflowType=machine_learning"  # the UI's "Model training" side, not its GenAI default
        if chosen is None:
            return f"{base}/#/{view}"
        key = self._share_view(chosen.experiment_id)
        return f"{base}/#/experiments/{chosen.experiment_id}/runs{view}&{SHARE_PARAM}={key}"

    def _share_view(self, experiment_id: str) -> str:
        """An MLflow UI shared view of an experiment (an experiment tag the UI reads for ``?viewStateShareKey=``):
        the key metric columns and the swept axes shown, sweeps sorted by their best cell (``sweep/best``),
        charts against ``episodes``. Returns its key."""
        import hashlib

        runs = self.client.search_runs([experiment_id], max_results=1000)
        metrics = {k for r in runs for k in r.data.metrics}
        axes: list[str] = []
        for r in runs:
            try:
                axes += [a for a in json.loads(r.data.tags.get("sweep.axes", "[]")) if a not in axes]
            except ValueError:
                pass
        columns = [f"metrics.`{k}`" for k in VIEW_METRICS if k in metrics] + [f"params.`{a}`" for a in axes]
        state = {
            "selectedColumns": columns,
            "orderByKey": "metrics.`sweep/best`" if "sweep/best" in metrics else "attributes.start_time",
            "orderByAsc": False,
            "globalLineChartConfig": {"xAxisKey": "metric", "selectedXAxisMetricKey": "episodes", "lineSmoothness": 0},
        }
        text = json.dumps(state, sort_keys=True)
        key = "ppo-harness-" + hashlib.sha256(text.encode()).hexdigest()[:12]
        self.client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{key}", text)
        return key


    def _artifact_location(self, name: str) -> str | None:
        """``<artifact root>/<name>`` for a local store; the name must be one safe path component."""
        if self.artifact_root is None:
            return None
        inside(self.runs_dir / "artifacts", safe_name(name, "experiment"))  # UnsafeName for '..', 'a/b', ...
        return f"{self.artifact_root}/{name}"

    # ---- runs --------------------------------------------------------------------------------
    def start_run(
        self,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tags: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> RunLogger:
        exp_id = self.experiment_id(experiment)
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        logger = RunLogger(self, run.info.run_id)
        if params:
            logger.log_params(params)
        return logger

    def run_logger(self, run_id: str) -> RunLogger:
        return RunLogger(self, run_id)

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def search_runs(self, experiments: list[str] | None = None, filter_string: str = "", max_results: int = 50000):
        """Runs as a pandas frame (params.*, metrics.* = last values, tags.*)."""
        names = experiments or [DEFAULT_EXPERIMENT]
        ids = [e for e in (self.experiment_id(n, create=False) for n in names) if e is not None]
        if not ids:
            import pandas as pd

            return pd.DataFrame()
        with scrubbed():
            mlflow.set_tracking_uri(self.uri)
            return mlflow.search_runs(
                experiment_ids=ids, filter_string=filter_string, max_results=max_results, output_format="pandas"
            )

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def runs_with_status(self, experiment: str, status: str) -> list[str]:
        exp_id = self.experiment_id(experiment, create=False)
        if exp_id is None:
            return []
        runs = self.client.search_runs([exp_id], filter_string=f"attributes.status = '{status}'", max_results=50000)
        return [r.info.run_id for r in runs]

    # ---- sweep support (harness/sweep/): reopen a resumed parent, drop a duplicate parent ------------
    def set_run_status(self, run_id: str, status: str) -> None:
        """Set a run's status without ending it (a resumed sweep's parent goes back to RUNNING)."""
        self.client.update_run(run_id, status=status)

    def delete_run(self, run_id: str) -> None:
        """Soft-delete a run (a parent created by a coordinator that lost the creation race)."""
        self.client.delete_run(run_id)

    def find_runs(self, experiment: str, filter_string: str = "") -> list[Any]:
        """Runs (mlflow.entities.Run: .info.run_id/.status/.start_time, .data.tags) matching a filter."""
        exp_id = self.experiment_id(experiment, create=False)
        if exp_id is None:
            return []
        return list(self.client.search_runs([exp_id], filter_string=filter_string, max_results=50000))

    # ---- lookups for reports/ (added with the report issue) ---------------------------------
    def run_summary(self, run_id: str) -> dict[str, Any] | None:
        """{run_id, experiment, status, tags} of one run; None when the store has no such run."""
        try:
            run = self.client.get_run(run_id)
        except Exception:  # MlflowException: not found / malformed id
            return None
        exp = self.client.get_experiment(run.info.experiment_id)
        return {
            "run_id": run.info.run_id,
            "experiment": exp.name if exp is not None else None,
            "status": run.info.status,
            "tags": dict(run.data.tags),
        }


@contextmanager
def scrubbed() -> Iterator[None]:
    """Re-raise any exception of the block with the URLs in its message (and its causes') redacted."""
    try:
        yield
    except Exception as e:
        _scrub(e)
        raise


def _scrub(e: BaseException) -> None:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen and len(seen) < 20:
        seen.add(id(cur))
        try:
            args = tuple(redact_text(a) if isinstance(a, str) else a for a in cur.args)
            if args != cur.args:
                cur.args = args
            if isinstance(getattr(cur, "message", None), str):
                cur.message = redact_text(cur.message)  # MlflowException keeps its text here too
        except Exception:  # an exception type with read-only attributes: leave it
            pass
        cur = cur.__cause__ or cur.__context__


class _Client:
    """An ``MlflowClient`` whose calls raise their exceptions with every URL in the message redacted."""

    def __init__(self, client: MlflowClient):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            with scrubbed():
                return attr(*args, **kwargs)

        return call


class RunLogger:
    """One MLflow run, written through the client (no global active-run state)."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id
        self.client = store.client

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, d: dict[str, Any], artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(d, indent=2, default=str), artifact_file)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_folder(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Every file under ``folder`` as artifacts under ``artifact_path``."""
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_table(self, frame, artifact_file: str) -> None:
        """A pandas frame as a Parquet artifact (dense data stays out of the metric store)."""
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / Path(artifact_file).name
            frame.to_parquet(path, index=False)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)

    def log_figure(self, fig, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, fig, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        assert status in RunStatus.all_status() or status in ("FINISHED", "FAILED", "KILLED")
        self.client.set_terminated(self.run_id, status=status)

    @contextmanager
    def guard(self) -> Iterator[RunLogger]:
        """End FINISHED on success, KILLED on Ctrl-C / SIGTERM, FAILED on an exception."""
        try:
            yield self
        except KeyboardInterrupt:
            self.end("KILLED")
            raise
        except BaseException:
            self.end("FAILED")
            raise
        else:
            self.end("FINISHED")


class NullLogger:
    """A run's logger on the ranks other than 0 of a run over several processes: every call does nothing
    (rank 0 alone talks to MLflow)."""

    run_id = None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def _param_str(v: Any) -> str:
    s = "null" if v is None else str(v)
    return s[:6000]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "trl", "mlflow", "optuna", "ppo-harness"):
        try:
            out[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def check_tracking_uri(uri: str) -> None:
    """Refuse, before anything is contacted or created, a tracking URI MLflow has no store for.

    Accepted are the schemes of MLflow's own store registries (tracking and model registry: file,
    a local path, sqlite, postgresql, mysql, mssql, http, https, databricks ...), a database URL
    only when its SQLAlchemy driver is installed, a sqlite file only in an existing folder.
    Raises ValueError (one line, the problem only: the caller names its option).
    """
    from urllib.parse import urlparse

    from mlflow.tracking._model_registry.utils import _get_store_registry
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    from mlflow.utils.uri import get_uri_scheme

    from harness.urls import malformed_scheme

    if uri not in ("databricks", "databricks-uc", "uc") and (bad := malformed_scheme(uri)):
        raise ValueError(f"a malformed URL: '{bad}:' must be followed by '//' (e.g. {bad}://user@host/db)")
    try:
        scheme = uri if uri in ("databricks", "databricks-uc", "uc") else get_uri_scheme(uri)
    except Exception as e:  # MlflowException: an unsupported database type
        raise ValueError(f"not a tracking URI MLflow accepts ({first_line(e)[:160]})") from None
    known = set(_tracking_store_registry._registry) & set(_get_store_registry()._registry)
    if scheme not in known:
        shown = ", ".join(sorted(s for s in known if s))
        raise ValueError(f"unsupported scheme '{scheme}' (MLflow accepts {shown}, or a local path)")
    if scheme in ("http", "https") and not urlparse(uri).netloc:
        raise ValueError("no host in the URL (e.g. http://host:5000)")
    if scheme in ("http", "https"):
        try:
            port = urlparse(uri).port
        except ValueError:  # not a number, or beyond 65535
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("the port is not a number in 1-65535 (a '/', '?', '#' or '@' in a password must be "
                             "percent-encoded: %2F, %3F, %23, %40)")
    if scheme in ("sqlite", "postgresql", "mysql", "mssql"):
        check_database_url(uri)
    if scheme in ("", "file"):  # a file store: a folder
        from mlflow.utils.file_utils import local_file_uri_to_path

        folder = Path(local_file_uri_to_path(uri) if scheme == "file" else uri).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"'{folder}' is a file, not the folder of a file store")


def check_database_url(uri: str) -> None:
    """A database URL whose SQLAlchemy dialect and driver import; a sqlite file in an existing folder.

    ValueError (one line) otherwise; nothing is contacted. Also the check of an RDB ``--storage``."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except Exception as e:  # ArgumentError (malformed), NoSuchModuleError (unknown dialect), ValueError (port)
        raise ValueError(f"not a valid database URL ({first_line(e)[:160]})") from None
    try:
        port = url.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port if port >= 0 else '?'} is out of range (1-65535)")
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise ValueError(
            f"the database driver for '{url.drivername}' is not installed ({e}); install it, "
            "or name an installed driver in the URL (e.g. postgresql+psycopg2://...)"
        ) from None
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db = Path(url.database).expanduser()
        if db.is_dir():
            raise ValueError(f"the sqlite database '{db}' is a folder")
        if not db.parent.is_dir():
            raise ValueError(f"the folder of the sqlite database '{db.parent}' does not exist")
        check_sqlite_file(db)


def check_sqlite_file(db: Path) -> None:
    """An existing sqlite path must be an SQLite database (or empty): a user's file, a symbolic link or a
    FIFO is refused (ValueError, one line) before SQLite opens it. Reads the 16-byte header only."""
    import os
    import stat

    try:
        st = os.lstat(db)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ValueError(f"the sqlite database '{db}': {e.strerror or e}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"the sqlite database '{db}' is a symbolic link; give the database file itself")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"the sqlite database '{db}' is not a regular file")
    if st.st_size:
        with open(db, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise ValueError(f"'{db}' exists and is not an SQLite database; the harness never writes to a "
                                 "file it did not create")
