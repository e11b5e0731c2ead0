"""Workflow tier: the smoke study really runs through Snakemake, and reruns are exact.

Runs `snakemake` as a user would, in a temporary working directory holding a copy of the
workflow (Snakefile, conf/, workflow/) so tests can edit the config like a user.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from smk import SMOKE_BUDGET_S, copy_workflow, planned, snakemake

from actsparse.tables import (
    CHANNEL_STATS,
    DATA_MANIFEST,
    HISTOGRAMS,
    LINEARS,
    LOSS_CURVE,
    METRICS,
    read_table,
)

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, repo) -> Path:
    return copy_workflow(repo, tmp_path_factory.mktemp("workflow"))


def test_bad_config_stops_before_any_job(workdir):
    for config, message in (
        ("experiment=nope", "unknown experiment 'nope'"),
        ("overrides=[train.lr=-1]", "train.lr: must be in (0, 1)"),
        ("train={nope: 3}", "unknown config key 'train.nope'"),
    ):
        r = snakemake(workdir, "--config", config)
        assert r.returncode != 0
        assert message in r.stdout + r.stderr
        assert "Traceback" not in r.stderr
    assert not (workdir / "data").exists()


def test_smoke_runs_within_budget(smoke_run):
    _, wall = smoke_run
    assert wall < SMOKE_BUDGET_S


def test_every_output_validates_against_its_schema(smoke_run):
    wd, _ = smoke_run
    root = wd / "data" / "smoke"
    summary = read_table(root / "summary.parquet", METRICS)
    jobs = sorted(p for p in root.glob("*/*-*") if p.is_dir())
    assert [p.parent.name for p in jobs].count("evaluate") == 2
    assert len(jobs) == 7 and not list(root.glob("*/*.partial"))
    for job in jobs:
        assert (job / "config.yaml").is_file()
        run_id = (job / "mlflow_run_id").read_text().strip()
        metrics = read_table(job / "metrics.parquet", METRICS)
        assert set(metrics.mlflow_run_id) == {run_id} and run_id
        assert set(metrics.config_hash) == {job.name.rsplit("-", 1)[1]}
    data = next(root.glob("data/stdlib-*"))
    manifest = read_table(data / "manifest.parquet", DATA_MANIFEST)
    assert set(manifest.split) == {"train", "valid", "test"}
    for train in root.glob("train/*-*"):
        assert len(read_table(train / "loss_curve.parquet", LOSS_CURVE)) == 30
        assert (train / "model" / "model.safetensors").is_file()
    for cal in root.glob("calibrate/*-*"):
        assert len(list((cal / "gram").glob("layer_*.safetensors"))) == 2
        read_table(cal / "channel_stats", CHANNEL_STATS)
        read_table(cal / "histograms", HISTOGRAMS)
        read_table(cal / "linears.parquet", LINEARS)
    ev = summary[summary.stage == "evaluate"]
    ppl = ev[ev.metric == "perplexity"].set_index(["variant", "method"])["value"]
    assert set(ppl.index) == {
        (v, m) for v in ("llama_micro.dense", "opt_micro.dense") for m in ("dense", "unigram")
    }
    assert (ppl > 1).all()
    assert set(summary.stage) == {"data", "train", "calibrate", "evaluate"}
    assert (root / "benchmarks" / "train").is_dir() and (root / "logs" / "train").is_dir()


def test_every_job_is_an_mlflow_run(smoke_run):
    wd, _ = smoke_run
    client = MlflowClient(f"sqlite:///{wd / 'tracking' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    by_id = {r.info.run_id: r for r in runs}
    root = wd / "data" / "smoke"
    for job in (p for p in root.glob("*/*-*") if p.is_dir()):
        run = by_id[(job / "mlflow_run_id").read_text().strip()]
        assert run.info.status == "FINISHED"
        assert run.data.tags["stage"] == job.parent.name
        variant, config_hash = job.name.rsplit("-", 1)
        assert run.data.tags["variant"] == variant and run.data.tags["config_hash"] == config_hash
        assert run.data.tags["git_commit"]
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(
        ["data", "train", "train", "calibrate", "calibrate", "evaluate", "evaluate"]
    )


def _edit(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))
    return text


def test_reruns_follow_config_changes(smoke_run):
    wd, _ = smoke_run
    assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {}

    evaluate = wd / "conf" / "evaluate" / "default.yaml"
    original = _edit(evaluate, "batch_size: 8", "batch_size: 5")
    try:
        assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {
            "evaluate": 2,
            "summary": 1,
            "all": 1,
        }
    finally:
        evaluate.write_text(original)

    train = wd / "conf" / "train" / "default.yaml"
    original = _edit(train, "grad_clip: 1.0", "grad_clip: 0.5")
    try:
        assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {
            "train": 2,
            "calibrate": 2,
            "evaluate": 2,
            "summary": 1,
            "all": 1,
        }
    finally:
        train.write_text(original)
    assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {}


def test_real_model_preset_plans_without_downloading(workdir):
    counts = planned(snakemake(workdir, "-n", "--config", "experiment=llama2_7b"))
    assert counts == {"data": 1, "calibrate": 1, "evaluate": 1, "summary": 1, "all": 1}
