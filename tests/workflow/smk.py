"""Snakemake as a user runs it, for the workflow tier (importable as `smk`)."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The smoke's budget: 5 minutes on this project's 2-core machine, where one of its jobs, rerun
# alone, takes ~6 s (a process that imports torch, transformers and MLflow: ~5 s before its
# half second of work). The test holds it in units of such a job, timed beside it, since
# machines of the same kind ran the same smoke in 278 and 390 s as their load varied;
# benchmarks/study_time.py reports both figures.
SMOKE_BUDGET_JOBS = 50  # 300 s at 6 s a job

# The smoke study cut to one job of each kind that the runs beside the full one need: both
# models trained and calibrated, one sparsified (top-K 50% on the Llama), one decomposed
# (SVD-LLM at R = 0.3) and one predictors job (Deja Vu heads on the OPT), each evaluated,
# and no scaling grid: 14 jobs. Every job keeps the hash it has in the full smoke study
# (an entry's slice is all that enters it), so its outputs compare file by file.
SMOKE_SUBSET = [
    "sparsify.levels=[]",
    "sparsify.methods.topk.levels=[0.5]",
    "sparsify.methods.topk.models=[llama_micro]",
    "~models.llama_micro_svdllm",
    "decompose.ratios=[]",
    "decompose.methods.svdllm.ratios=[0.3]",
    "predictors.methods.dejavu_mlp.models=[]",
    "predictors.methods.spark.models=[]",
    "predictors.methods.hotcold.models=[]",
    "predictors.methods.dejavu_heads.levels=[0.5]",  # (its default is sparsify.levels)
    "~scaling.sizes",
]
SMOKE_SUBSET_JOBS = 14


def time_one_job(wd: Path, job: Path, tracking: str, repeats: int = 3) -> float:
    """Seconds one finished job takes when rerun alone beside the study (`--out`; the median
    of `repeats`): the study's per-job cost on this machine now, tracking included."""
    stage = job.parent.name
    times = []
    for i in range(repeats):
        cmd = [sys.executable, "-m", f"actsparse.stages.{stage}", str(job / "config.yaml"),
               "--out", str(wd / "timing" / f"{job.name}.{i}"), "--threads", "1"]  # fmt: skip
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=300)
        times.append(time.perf_counter() - t)
        assert r.returncode == 0, r.stderr[-3000:]
    return statistics.median(times)


def overrides_arg(overrides: list[str]) -> str:
    """Hydra overrides as the one `--config` value Snakemake takes: `overrides=[a,b]`."""
    return f"overrides=[{','.join(overrides)}]"


def copy_workflow(repo: Path, wd: Path) -> Path:
    wd.mkdir(parents=True, exist_ok=True)
    shutil.copy(repo / "Snakefile", wd / "Snakefile")
    shutil.copytree(repo / "conf", wd / "conf")
    shutil.copytree(repo / "workflow", wd / "workflow")
    return wd


def snakemake(
    wd: Path,
    *args: str,
    timeout: int = 600,
    env: dict[str, str] | None = None,
    tracking: str | None = None,
) -> subprocess.CompletedProcess:
    """`snakemake -c2 ARGS` in `wd`; MLflow goes to `wd/tracking/mlflow.db` unless `tracking`."""
    (wd / "tracking").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking or f"sqlite:///{wd / 'tracking' / 'mlflow.db'}",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-c2", *args],
        cwd=wd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def planned(result: subprocess.CompletedProcess) -> dict[str, int]:
    """rule -> job count from a dry run's 'Job stats' table ({} when nothing is to be done)."""
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    if "Nothing to be done" in text:
        return {}
    block = text.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            break
        counts[m.group(1)] = int(m.group(2))
    return counts
