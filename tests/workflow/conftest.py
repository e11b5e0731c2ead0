"""Workflow-tier fixtures: the smoke study run once through Snakemake, shared by modules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from smk import copy_workflow, snakemake


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, repo) -> tuple[Path, float]:
    """The smoke study, run once through Snakemake: (working directory, wall seconds)."""
    wd = copy_workflow(repo, tmp_path_factory.mktemp("smoke_run"))
    t = time.perf_counter()
    r = snakemake(wd, "--config", "experiment=smoke")
    wall = time.perf_counter() - t
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return wd, wall
