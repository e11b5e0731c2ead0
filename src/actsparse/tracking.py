"""MLflow tracking: one run per job, experiment = study.

MLflow is a view of the files, never their source: a tracking store that is down or
failing costs a warning, not a result. With `MLFLOW_TRACKING_URI` unset the store is a
local SQLite file `<output_root>/mlflow.db` with artifacts in `<output_root>/mlartifacts/`,
shared by every study under that root (open it with `actsparse ui`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from actsparse.schema.job import JobSpec

REPO_DIR = Path(__file__).resolve().parents[2]


def default_tracking_uri(output_root: str | Path) -> str:
    return "sqlite:///" + str((Path(output_root) / "mlflow.db").resolve())


def tracking_uri(output_root: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(output_root)


@functools.cache
def git_commit() -> str:
    """The commit of the code that ran, with '-dirty' when the work tree has changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def metric_key(metric: str, method: str, split: str, corpus: str = "") -> str:
    """The MLflow metric name of a study-table row: `metric[.method][.corpus][.split]`
    (an evaluate job measures each corpus: the study's and its eval_data corpora)."""
    parts = [metric] + [p for p in (method if method != "dense" else "", corpus, split) if p]
    return "".join(ch if ch.isalnum() or ch in "._-/ " else "_" for ch in ".".join(parts))


def job_params(spec: JobSpec) -> dict[str, Any]:
    """What a job logs as MLflow params: its config slice and its inputs."""
    return {"config": spec.config, "inputs": spec.inputs}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


class JobRun:
    """An MLflow run for one job. Every call degrades to a warning if the store fails."""

    def __init__(
        self, study: str, stage: str, variant: str, config_hash: str, output_root: str | Path
    ):
        self.study, self.stage, self.variant, self.hash = study, stage, variant, config_hash
        self.uri = tracking_uri(output_root)
        if self.uri.startswith("http"):
            # a server that is down must cost seconds, not MLflow's default minutes of retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.artifact_root = (Path(output_root) / "mlartifacts").resolve()
        self.run_id = ""
        self._failed = False

    def _safely(self, what: str, fn) -> None:
        """Run `fn` under the store's lock; on any failure warn once and stop tracking."""
        if self._failed:
            return
        try:
            self._import_store()
            with self._lock():
                fn()
        except Exception as e:  # noqa: BLE001 - the store is a view; results must survive it
            self._failed = True
            warnings.warn(
                f"MLflow tracking failed while trying to {what} ({self.uri}): {e!r}. "
                "The job's outputs are unaffected; re-log later from the files.",
                stacklevel=3,
            )

    def _import_store(self) -> None:
        """Import the client and its store before taking the lock: the imports are most
        of a job's tracking time, and a job waiting on the lock would wait for them too."""
        import mlflow.tracking  # noqa: F401

        if self.uri.startswith("sqlite"):
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    def _lock(self):
        if self.uri.startswith("sqlite:///"):
            from filelock import FileLock  # concurrent jobs must not race SQLite migrations

            db = Path(self.uri[len("sqlite:///") :])
            db.parent.mkdir(parents=True, exist_ok=True)
            return FileLock(str(db) + ".lock", timeout=600)
        return contextlib.nullcontext()

    def start(self, params: dict[str, Any], tags: dict[str, str] | None = None) -> str:
        self._safely("start a run", lambda: self._start(params, tags or {}))
        return self.run_id

    def _start(self, params: dict[str, Any], extra_tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        client = self._client()
        exp_id = self._experiment_id(client)
        tags = {
            "stage": self.stage,
            "variant": self.variant,
            "config_hash": self.hash,
            "git_commit": git_commit(),
            "mlflow.runName": f"{self.stage}/{self.variant}-{self.hash}",
        }
        if os.environ.get("SLURM_JOB_ID"):
            tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        tags.update(extra_tags)
        run = client.create_run(exp_id, tags=tags, run_name=tags["mlflow.runName"])
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            client.log_batch(self.run_id, params=items[i : i + 100])

    def _experiment_id(self, client) -> str:
        from mlflow.exceptions import MlflowException

        exp = client.get_experiment_by_name(self.study)
        if exp is not None:
            return exp.experiment_id
        location = self.artifact_root.as_uri() if self.uri.startswith("sqlite") else None
        try:
            return client.create_experiment(self.study, artifact_location=location)
        except MlflowException:  # another job created it first (remote stores take no lock)
            exp = client.get_experiment_by_name(self.study)
            if exp is None:
                raise
            return exp.experiment_id

    def finish(
        self, metrics: dict[str, float], artifacts: list[Path], status: str = "FINISHED"
    ) -> None:
        if self.run_id:
            self._safely(
                "log metrics and artifacts", lambda: self._finish(metrics, artifacts, status)
            )

    def _finish(self, metrics: dict[str, float], artifacts: list[Path], status: str) -> None:
        from mlflow.entities import Metric

        client = self._client()
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            client.log_batch(self.run_id, metrics=items[i : i + 500])
        for path in artifacts:
            if Path(path).is_file():
                client.log_artifact(self.run_id, str(path))
        client.set_terminated(self.run_id, status=status)

    def fail(self) -> None:
        if self.run_id:
            self._safely(
                "mark the run failed",
                lambda: self._client().set_terminated(self.run_id, status="FAILED"),
            )

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)


def relog_job(job_dir: str | Path, output_root: str | Path) -> tuple[str, str]:
    """Record a finished job folder in the tracking store from its files.

    A job whose run is in the store and FINISHED is left alone; a run that exists but
    never finished (the store failed mid-job) gets its metrics and artifacts and is
    marked FINISHED; a job with no run gets a new one (tag `relogged: true`), and its
    `mlflow_run_id` file and `metrics.parquet` are updated to point at it.
    Returns (run id, what was done).
    """
    import yaml

    from actsparse.io import write_text
    from actsparse.tables import METRICS, read_table, write_table

    job_dir = Path(job_dir)
    spec = JobSpec.from_dict(yaml.safe_load((job_dir / "config.yaml").read_text()), str(job_dir))
    metrics = read_table(job_dir / "metrics.parquet", METRICS)
    id_file = job_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else ""
    run = JobRun(spec.study, spec.stage, spec.variant, spec.hash, output_root)
    status = None
    if run_id:
        try:
            status = run._client().get_run(run_id).info.status
        except Exception:  # noqa: BLE001 - not in this store: log anew
            status = None
    if status == "FINISHED":
        return run_id, "already recorded"
    if status is None:
        if not run.start(job_params(spec), tags={"relogged": "true"}):
            raise RuntimeError(f"could not create a run in {run.uri} for {job_dir}")
        action = "new run"
    else:
        run.run_id, action = run_id, "completed run"
    values = {
        metric_key(r.metric, r.method, r.split, r.corpus or ""): r.value
        for r in metrics.itertuples()
    }
    artifacts = [job_dir / "metrics.parquet", job_dir / "config.yaml"] + sorted(
        job_dir.glob("*.png")
    )
    run.finish(values, artifacts)
    if run._failed:
        raise RuntimeError(f"could not log {job_dir} to {run.uri}")
    if run.run_id != run_id:
        metrics["mlflow_run_id"] = run.run_id
        write_table(metrics, job_dir / "metrics.parquet", METRICS)
        write_text(id_file, run.run_id + "\n")
    return run.run_id, action
