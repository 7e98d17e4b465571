"""MLflow, and only here: stores, experiments, runs, metrics, artifacts, searches.

Default store: SQLite at ``runs/mlflow.db`` with artifacts under ``runs/artifacts``;
any MLflow tracking server via ``tracking_uri``.
"""

from __future__ import annotations

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
import mlflow  # noqa: E402
from mlflow.entities import RunStatus  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from harness.locks import locked  # noqa: E402

for _name in ("mlflow", "alembic", "sqlalchemy"):
    logging.getLogger(_name).setLevel(logging.WARNING)

DEFAULT_RUNS_DIR = Path("runs")
DEFAULT_EXPERIMENT = "ppo-harness"


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

    def _connect(self) -> MlflowClient:
        """A client; a new SQLite file is created and migrated under a file lock, because
        two processes migrating the same fresh database at once fail."""
        if self.artifact_root is None:
            return MlflowClient(tracking_uri=self.uri)
        with locked(self.runs_dir / ".mlflow.lock"):
            client = MlflowClient(tracking_uri=self.uri)
            client.search_experiments(max_results=1)  # forces schema creation / migration
        return client

    def __repr__(self) -> str:
        return f"Store({self.uri})"

    @property
    def where(self) -> str:
        """Human-readable location for CLI messages."""
        return str(self.runs_dir / "mlflow.db") if self.artifact_root else self.uri

    # ---- experiments ------------------------------------------------------------------------
    def experiment_id(self, name: str = DEFAULT_EXPERIMENT, create: bool = True) -> str | None:
        """Get or create an experiment; safe when several processes race to create it."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        try:
            # "custom_model_development" opens the experiment in the UI's training-runs view
            return self.client.create_experiment(
                name,
                artifact_location=self._artifact_location(name),
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        except Exception:  # another process created it first
            for _ in range(20):
                exp = self.client.get_experiment_by_name(name)
                if exp is not None:
                    return exp.experiment_id
                time.sleep(0.1)
            raise

    def _artifact_location(self, name: str) -> str | None:
        if self.artifact_root is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return f"{self.artifact_root}/{safe}"

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
