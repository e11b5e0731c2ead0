"""Workflow-tier fixtures: the smoke study run once through Snakemake, shared by modules."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from smk import copy_workflow, snakemake


def pytest_collection_modifyitems(config, items):
    """Run the SLURM test last: once its cluster is stopped, the SLURM executor plugin
    (imported by every `snakemake` call) probes sacct/squeue at startup and waits ~10 s
    for a controller that is gone."""
    items.sort(key=lambda item: item.path.name == "test_slurm.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend, proxied artifacts)."""
    d = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = open(d / "server.log", "w")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{d / 'mlflow.db'}",
            "--artifacts-destination",
            str(d / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=d,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"MLflow server did not start: {(d / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium, installed on first use where the tests run as root."""
    path = shutil.which("chromium")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            capture_output=True,
            timeout=600,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: chromium could not be installed")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    return path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, repo, mlflow_server) -> tuple[Path, float]:
    """The smoke study, run once through Snakemake against a real MLflow server:
    (working directory, wall seconds)."""
    wd = copy_workflow(repo, tmp_path_factory.mktemp("smoke_run"))
    t = time.perf_counter()
    r = snakemake(wd, "--config", "experiment=smoke", tracking=mlflow_server)
    wall = time.perf_counter() - t
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return wd, wall
