"""MLflow runs are real and read back with the MLflow client."""

import pytest
from mlflow.tracking import MlflowClient

from actsparse.tracking import JobRun, default_tracking_uri, git_commit


def _run(tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    r = JobRun("study_x", "train", "llama_micro", "deadbeef", tmp_path)
    run_id = r.start({"train": {"lr": 0.001, "steps": 3}, "seed": 0})
    (tmp_path / "a.txt").write_text("artifact")
    r.finish({"loss": 1.5}, [tmp_path / "a.txt"])
    return run_id


def test_default_store_is_local_sqlite_under_the_output_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    run_id = _run(tmp_path)
    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(default_tracking_uri(tmp_path))
    run = client.get_run(run_id)
    tags = run.data.tags
    assert (
        tags["stage"] == "train"
        and tags["variant"] == "llama_micro"
        and tags["config_hash"] == "deadbeef"
    )
    assert tags["git_commit"] == git_commit() and tags["slurm_job_id"] == "4242"
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.metrics["loss"] == 1.5
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "study_x"
    assert [a.path for a in client.list_artifacts(run_id)] == ["a.txt"]
    assert (tmp_path / "mlartifacts").is_dir()


def test_honours_mlflow_tracking_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = _run(tmp_path / "out")
    assert not (tmp_path / "out" / "mlflow.db").exists()
    assert MlflowClient(uri).get_run(run_id).data.tags["stage"] == "train"


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "sqlite:////proc/no/such/dir/mlflow.db"])
def test_a_store_that_is_down_warns_once_and_loses_nothing(tmp_path, monkeypatch, uri):
    import time

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    r = JobRun("s", "train", "v", "h", tmp_path)
    t = time.perf_counter()
    with pytest.warns(UserWarning, match="MLflow tracking failed") as caught:
        assert r.start({"a": 1}) == ""
        r.finish({"m": 1.0}, [])
        r.fail()
    assert len(caught) == 1
    assert time.perf_counter() - t < 60  # bounded retries: a dead server costs seconds


def test_a_store_failing_mid_job_is_completed_by_relog(tmp_path, monkeypatch):
    """The store works when the job starts and fails before it ends; relog finishes the run."""
    import shutil

    import pandas as pd
    import yaml

    from actsparse.tables import METRICS, write_table
    from actsparse.tracking import relog_job

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = tmp_path / "smoke" / "train" / "llama_micro-deadbeef"
    job.mkdir(parents=True)
    from actsparse.schema.job import JobSpec

    spec = JobSpec(
        study="s", stage="train", variant="llama_micro", model="llama_micro", method="dense",
        hash="deadbeef", output=str(job), output_root=str(tmp_path), inputs={},
        config={"train": {"lr": 0.1}},
    )  # fmt: skip
    (job / "config.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    r = JobRun("s", "train", "llama_micro", "deadbeef", tmp_path)
    run_id = r.start({"config": spec.config, "inputs": {}})
    (job / "mlflow_run_id").write_text(run_id)
    row = dict(
        stage="train",
        method="dense",
        variant="llama_micro",
        level=None,
        model="llama_micro",
        corpus="",
        split="valid",
        metric="final_valid_loss",
        value=2.5,
        config_hash="deadbeef",
        mlflow_run_id=run_id,
    )
    write_table(pd.DataFrame([row]), job / "metrics.parquet", METRICS)
    db = tmp_path / "mlflow.db"
    shutil.copy(db, tmp_path / "saved.db")
    db.write_bytes(b"this is not a database" * 100)  # the store breaks mid-job
    with pytest.warns(UserWarning, match="MLflow tracking failed"):
        r.finish({"final_valid_loss.valid": 2.5}, [])
    shutil.copy(tmp_path / "saved.db", db)  # the store is back
    client = MlflowClient(default_tracking_uri(tmp_path))
    assert client.get_run(run_id).info.status == "RUNNING"
    assert relog_job(job, tmp_path) == (run_id, "completed run")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"final_valid_loss.valid": 2.5}
    assert relog_job(job, tmp_path) == (run_id, "already recorded")
