"""Faults survived through the real DAG: jobs killed with SIGKILL mid-write, the tracking
store down for a whole study, reruns that finish identically, re-logging afterwards, and
determinism (same seed: same tables; another seed: other tables)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from smk import SMOKE_SUBSET, SMOKE_SUBSET_JOBS, copy_workflow, overrides_arg, snakemake

from actsparse.io import load_tensors
from actsparse.tables import METRICS, read_table

pytestmark = pytest.mark.workflow

TIMING_METRICS = {
    "wall_time_s", "tokens_per_s", "peak_rss_mb", "peak_gpu_mem_mb", "decompose_s", "label_s", "fit_s",
    "decode_ms", "decode_ms_dense", "decode_speedup",
}  # fmt: skip
TIMING_COLUMNS = {"elapsed_s", "seconds"}
DEAD_STORE = "http://127.0.0.1:9"  # nothing listens there: every MLflow call fails
KILL_POINTS = [
    "data.after_shards",
    "train.after_checkpoint",
    "calibrate.after_layer",
    "job.before_commit",
]


def study_files(root: Path) -> dict[str, Path]:
    """Every result file of a study, keyed by its path inside the study."""
    skip_dirs = {
        "logs",
        "benchmarks",
        "report",
    }  # the report is a view of the summary (with timings)
    skip_names = {"mlflow_run_id", "metrics.parquet", "summary.parquet", "loss_curve.png"}
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file()
        and not skip_dirs & set(p.relative_to(root).parts)
        and p.name not in skip_names
    }


def comparable_summary(root: Path) -> pd.DataFrame:
    t = read_table(root / "summary.parquet", METRICS)
    t = t[~t.metric.isin(TIMING_METRICS)].drop(columns="mlflow_run_id")
    return t.sort_values(["stage", "variant", "method", "metric", "split"]).reset_index(drop=True)


def assert_same_results(full: Path, part: Path) -> None:
    """Every result of the study in `part` (a subset of the smoke study's jobs, with the same
    hashes) is the same as in the full smoke study in `full`, file by file."""
    b = comparable_summary(part)
    a = comparable_summary(full)
    a = a[a.config_hash.isin(set(b.config_hash))].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    fa, fb = study_files(full), study_files(part)
    assert fb and fb.keys() <= fa.keys(), sorted(fb.keys() - fa.keys())
    for key, pb in fb.items():
        pa = fa[key]
        if pa.suffix == ".parquet":
            da, db = pd.read_parquet(pa), pd.read_parquet(pb)
            drop = [c for c in TIMING_COLUMNS if c in da]
            pd.testing.assert_frame_equal(da.drop(columns=drop), db.drop(columns=drop), obj=key)
        elif pa.suffix == ".safetensors":
            ta, tb = load_tensors(pa), load_tensors(pb)
            assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta), key
        else:
            assert pa.read_bytes() == pb.read_bytes(), key


def job_folders(root: Path) -> list[Path]:
    """`<stage>/<variant>-<hash>`, and the scaling grid's `scaling/train/<variant>-<hash>`."""
    return sorted(p for p in [*root.glob("*/*-*"), *root.glob("scaling/train/*-*")] if p.is_dir())


def assert_nothing_incomplete_looks_complete(root: Path) -> None:
    for job in job_folders(root):
        if job.name.endswith(".partial"):
            continue
        for name in ("config.yaml", "metrics.parquet", "mlflow_run_id"):
            assert (job / name).is_file(), f"{job} looks complete but lacks {name}"
        read_table(job / "metrics.parquet", METRICS)


def test_the_subset_keeps_the_full_studys_hashes():
    """What lets the faulted subset's outputs compare file by file with the full study."""
    from helpers import smoke_plan

    full = {(j.stage, j.variant): j.hash for j in smoke_plan(Path("data")).jobs()}
    part = {(j.stage, j.variant): j.hash for j in smoke_plan(Path("data"), *SMOKE_SUBSET).jobs()}
    assert len(part) == SMOKE_SUBSET_JOBS
    assert {k: full.get(k) for k in part} == part


@pytest.fixture(scope="module")
def faulted(tmp_path_factory, repo) -> Path:
    """The smoke study's subset (`SMOKE_SUBSET`: a job of every stage) with the tracking
    store down throughout and a job SIGKILLed at each kill point in turn; then one clean
    rerun."""
    wd = copy_workflow(repo, tmp_path_factory.mktemp("faulted"))
    root = wd / "data" / "smoke"
    for point in KILL_POINTS:
        r = snakemake(
            wd,
            "--config",
            "experiment=smoke",
            overrides_arg(SMOKE_SUBSET),
            tracking=DEAD_STORE,
            env={"ACTSPARSE_KILL_AT": point},
        )
        assert r.returncode != 0, f"nothing was killed at {point}"
        assert_nothing_incomplete_looks_complete(root)
        partial = list(root.rglob("*.partial"))
        assert partial, f"the job killed at {point} left no .partial folder"
    r = snakemake(
        wd, "--config", "experiment=smoke", overrides_arg(SMOKE_SUBSET), tracking=DEAD_STORE
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert len(job_folders(root)) == SMOKE_SUBSET_JOBS
    return wd


def test_killed_jobs_rerun_to_identical_results(smoke_run, faulted):
    clean, _ = smoke_run
    root = faulted / "data" / "smoke"
    assert not list(root.rglob("*.partial"))
    assert_same_results(clean / "data" / "smoke", root)
    resumed = [
        p
        for p in (root / "logs" / "train").glob("*.log")
        if "resuming from checkpoint" in p.read_text()
    ]
    assert resumed, "the killed training run did not resume from its checkpoint"


def test_a_dead_tracking_store_costs_one_warning_per_job(faulted):
    root = faulted / "data" / "smoke"
    for job in job_folders(root):
        assert (job / "mlflow_run_id").read_text().strip() == ""
        log = root / "logs" / job.parent.relative_to(root) / f"{job.name}.log"
        assert log.read_text().count("MLflow tracking failed") == 1, log


def relog(wd: Path, uri: str) -> subprocess.CompletedProcess:
    """`actsparse relog -e smoke <overrides>`, the documented command, against the store at
    `uri`."""
    return subprocess.run(
        [sys.executable, "-m", "actsparse.cli", "relog", "-e", "smoke", *SMOKE_SUBSET],
        cwd=wd,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_relog_rebuilds_the_tracking_store_from_the_files(faulted):
    uri = f"sqlite:///{faulted / 'relogged.db'}"
    r = relog(faulted, uri)
    assert r.returncode == 0, r.stderr[-3000:]
    root = faulted / "data" / "smoke"
    client = MlflowClient(uri)
    summary = read_table(root / "summary.parquet", METRICS)
    for job in job_folders(root):
        run_id = (job / "mlflow_run_id").read_text().strip()
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["relogged"] == "true"
        assert run.data.tags["stage"] == job.parent.name
        metrics = read_table(job / "metrics.parquet", METRICS)
        assert set(metrics.mlflow_run_id) == {run_id}
        assert len(run.data.metrics) == len(metrics)
        assert set(summary[summary.config_hash == job.name.rsplit("-", 1)[1]].mlflow_run_id) == {
            run_id
        }
    assert relog(faulted, uri).stdout.count("already recorded") == len(job_folders(root))


def test_another_seed_gives_other_tables(smoke_run, tmp_path, repo):
    """`study.seed=1` retrains: other losses and dense perplexities (only the jobs that
    show it run: data, train and the dense evaluations)."""
    from helpers import smoke_plan

    clean, _ = smoke_run
    wd = copy_workflow(repo, tmp_path / "seed1")
    plans = {seed: smoke_plan(Path("data"), f"study.seed={seed}") for seed in (0, 1)}
    jobs = {
        seed: [plan.train(m) for m in plan.trained_models]
        + [plan.evaluate(m) for m in plan.trained_models]
        for seed, plan in plans.items()
    }
    targets = [job.out_dir for job in jobs[1]]  # relative: data/smoke/<stage>/<variant>-<hash>
    r = snakemake(wd, *targets, "--config", "experiment=smoke", "overrides=[study.seed=1]")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]

    def metrics(root: Path, seed: int) -> pd.DataFrame:
        frames = [read_table(root / job.out_dir / "metrics.parquet", METRICS) for job in jobs[seed]]
        t = pd.concat(frames, ignore_index=True)
        t = t[t.metric.isin(["final_train_loss", "perplexity"]) & (t.method == "dense")]
        return t.sort_values(["stage", "variant", "metric", "corpus"]).reset_index(drop=True)

    a, b = metrics(clean, 0), metrics(wd, 1)
    assert len(a) == len(b) == 2 + 2 * 2  # two losses; two perplexities (code, prose) each
    assert (a.value.values != b.value.values).all()
