"""Shared fixtures. Tests never touch the network (HF_HUB_OFFLINE) and write only to tmp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests choose their own stores
os.environ.pop("SLURM_JOB_ID", None)
# Triton kernels run on CPU tensors under Triton's interpreter when there is no GPU; the
# variable must be set before `triton` is first imported
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared corpora are expected beside the repository at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def hub_on_but_unreachable(monkeypatch):
    """The hub not switched off but at an address that refuses every connection: what
    plans here reached no network. The presets that list lm-evaluation-harness's hub tasks
    plan as on a cluster (with the hub off they are refused, as they could not run)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")


@pytest.fixture(scope="session")
def smoke_outputs(tmp_path_factory):
    """Data (both corpora), a trained micro Llama and micro OPT of the smoke study, run in-process once."""
    from helpers import smoke_plan

    from actsparse.stages import data, train
    from actsparse.stages.job import run_job

    tmp = tmp_path_factory.mktemp("smoke")
    plan = smoke_plan(tmp)
    run_job(plan.data("stdlib"), data.DataJob, data.run)
    for _, variant in plan.eval_data_variants:  # the out-of-distribution corpus
        run_job(plan.data(variant), data.DataJob, data.run)
    for m in plan.trained_models:
        run_job(plan.train(m), train.TrainJob, train.run, resumable=True)
    return plan
