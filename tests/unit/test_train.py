"""The train stage learns, writes what it promises, and resumes a killed run exactly."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from transformers import AutoModelForCausalLM

from actsparse.io import partial_dir
from actsparse.tables import LOSS_CURVE, read_table


def test_outputs_and_learning(smoke_outputs):
    for model in smoke_outputs.trained_models:
        out = smoke_outputs.train(model).out_dir
        curve = read_table(f"{out}/loss_curve.parquet", LOSS_CURVE)
        assert list(curve.step) == list(range(1, 31))
        assert curve.train_loss.iloc[-5:].mean() < curve.train_loss.iloc[:5].mean() - 0.3
        assert curve.valid_loss.notna().sum() == 3
        assert (curve.lr.iloc[5:].diff().dropna() <= 1e-12).all()  # cosine decay after warmup
        m = AutoModelForCausalLM.from_pretrained(f"{out}/model")
        assert m.config.model_type == ("llama" if model.startswith("llama") else "opt")
        assert not os.path.exists(f"{out}/ckpt")


def _train_cmd(spec_json: str) -> list[str]:
    return [sys.executable, "-m", "actsparse.stages.train", "--spec", spec_json, "--threads", "1"]


def test_killed_run_resumes_from_its_checkpoint_with_the_same_loss_curve(tmp_path):
    from helpers import smoke_plan

    from actsparse.stages import data
    from actsparse.stages.job import run_job

    overrides = ("train.steps=120", "train.ckpt_interval=20", "train.eval_interval=40")
    runs = {}
    for name in ("straight", "killed"):
        plan = smoke_plan(tmp_path / name, *overrides)
        run_job(plan.data("stdlib").spec, data.DataJob, data.run)
        runs[name] = plan.train("llama_micro")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(_train_cmd(runs["straight"].spec_json), check=True, env=env, capture_output=True)

    job = runs["killed"]
    ckpt = partial_dir(job.out_dir) / "ckpt" / "state.pt"
    proc = subprocess.Popen(
        _train_cmd(job.spec_json), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if not ckpt.exists():
        pytest.fail("the run finished or failed before writing a checkpoint")
    assert not os.path.exists(job.out_dir), "a killed job must not leave a complete-looking output"

    result = subprocess.run(_train_cmd(job.spec_json), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from checkpoint at step" in result.stderr
    a = read_table(f"{runs['straight'].out_dir}/loss_curve.parquet", LOSS_CURVE).drop(
        columns="elapsed_s"
    )
    b = read_table(f"{job.out_dir}/loss_curve.parquet", LOSS_CURVE).drop(columns="elapsed_s")
    pd.testing.assert_frame_equal(a, b)  # exactly the same curve, not merely close


def test_sigterm_unwinds_marks_the_run_failed_and_leaves_no_output(tmp_path):
    """What SLURM's scancel or a time limit does to a job."""
    from helpers import smoke_plan
    from mlflow.tracking import MlflowClient

    from actsparse.stages import data
    from actsparse.stages.job import run_job

    plan = smoke_plan(tmp_path, "train.steps=5000", "train.ckpt_interval=20")
    run_job(plan.data("stdlib").spec, data.DataJob, data.run)
    job = plan.train("llama_micro")
    ckpt = partial_dir(job.out_dir) / "ckpt" / "state.pt"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.Popen(
        _train_cmd(job.spec_json),
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "terminated by signal 15" in err
    assert not os.path.exists(job.out_dir)
    run_id = (partial_dir(job.out_dir) / "mlflow_run_id").read_text().strip()
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
