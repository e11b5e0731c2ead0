"""Snakemake as a user runs it, for the workflow tier (importable as `smk`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SMOKE_BUDGET_S = 300


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
