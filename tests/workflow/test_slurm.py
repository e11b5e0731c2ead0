"""The smoke study on a real single-node SLURM cluster through the executor plugin, started
with `snakemake --profile slurm` as the product card says.

The cluster (munge, slurmctld, slurmd, slurmdbd + MariaDB so `sacct` works) is started by
`tests/workflow/slurm/slurm_up.sh`, which needs root and Debian's packages; on a machine
without either the test is skipped, except in CI (`CI` set), where it must run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from smk import SMOKE_SUBSET, SMOKE_SUBSET_JOBS, copy_workflow, overrides_arg

from actsparse.tables import METRICS, read_table

pytestmark = pytest.mark.workflow
HERE = Path(__file__).parent / "slurm"
SLURM_BUDGET_S = 900  # the plugin can hang: never wait longer than this


def _sinfo_idle() -> bool:
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "idle" in out or "mixed" in out


@pytest.fixture(scope="module")
def slurm_cluster():
    if _sinfo_idle():
        yield
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        if os.environ.get("CI"):
            pytest.fail("CI must run the SLURM test: it needs root and apt-get")
        pytest.skip("starting a local SLURM needs root and apt-get")
    up = subprocess.run(
        ["bash", str(HERE / "slurm_up.sh")],
        env={**os.environ, "WITH_DBD": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert up.returncode == 0 and _sinfo_idle(), (up.stdout + up.stderr)[-3000:]
    yield
    subprocess.run(["bash", str(HERE / "slurm_down.sh")], capture_output=True, timeout=60)


def test_smoke_study_runs_through_sbatch(slurm_cluster, tmp_path, repo):
    wd = copy_workflow(repo, tmp_path / "wd")
    # the one documented step that makes `--profile slurm` resolve: link the shipped profile
    # into Snakemake's user profile folder (here a private XDG_CONFIG_HOME)
    config_home = tmp_path / "xdg"
    (config_home / "snakemake").mkdir(parents=True)
    (config_home / "snakemake" / "slurm").symlink_to(repo / "workflow" / "profiles" / "slurm")
    uri = f"sqlite:///{wd / 'mlflow.db'}"
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home), "MLFLOW_TRACKING_URI": uri}
    cmd = [
        "timeout",
        "-k",
        "10",
        str(SLURM_BUDGET_S),
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "slurm",
        "--default-resources",
        "slurm_partition=debug",
        # a fresh cluster answers in seconds: poll it every few (the plugin waits 40 s
        # before the first check, which suits a busy cluster and not a 14-job test)
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--seconds-between-status-checks",
        "2",
        "--config",
        "experiment=smoke",
        # sparsify, decompose, predictors and evaluate jobs go through sbatch too; the
        # whole sweep and the scaling grid (train jobs like the two here) run locally in
        # the other tests
        overrides_arg(SMOKE_SUBSET),
    ]
    r = subprocess.run(
        cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=SLURM_BUDGET_S + 60
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    assert "Using profile slurm" in r.stdout + r.stderr

    root = wd / "data" / "smoke"
    read_table(root / "summary.parquet", METRICS)
    jobs = sorted(p for p in root.glob("*/*-*") if p.is_dir())
    assert len(jobs) == SMOKE_SUBSET_JOBS
    assert {p.parent.name for p in jobs} >= {"decompose", "sparsify", "predictors"}
    client = MlflowClient(uri)
    slurm_ids = set()
    for job in jobs:
        run = client.get_run((job / "mlflow_run_id").read_text().strip())
        assert run.data.tags["stage"] == job.parent.name
        slurm_ids.add(run.data.tags["slurm_job_id"])  # KeyError: the job did not go through sbatch
    assert len(slurm_ids) == SMOKE_SUBSET_JOBS
    accounted = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(sorted(slurm_ids))],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    assert {line.split("|")[0] for line in accounted} == slurm_ids
    assert all(line.endswith("|COMPLETED") for line in accounted)
