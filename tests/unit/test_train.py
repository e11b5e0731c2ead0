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


@pytest.mark.parametrize("which", ["study model", "1.58-bit top-K grid point"])
def test_killed_run_resumes_from_its_checkpoint_with_the_same_loss_curve(tmp_path, which):
    from helpers import smoke_plan

    from actsparse.stages import data
    from actsparse.stages.job import run_job

    keys = ("steps=120", "ckpt_interval=20", "eval_interval=40")
    group = "train" if which == "study model" else "scaling.train"
    runs = {}
    for name in ("straight", "killed"):
        plan = smoke_plan(tmp_path / name, *(f"{group}.{k}" for k in keys))
        run_job(plan.data("stdlib"), data.DataJob, data.run)
        runs[name] = (
            plan.train("llama_micro")
            if which == "study model"
            else plan.grid_train("w16", "b1.58", "ternary", 0.4)
        )
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(_train_cmd(runs["straight"].json), check=True, env=env, capture_output=True)

    job = runs["killed"]
    ckpt = partial_dir(job.out_dir) / "ckpt" / "state.pt"
    proc = subprocess.Popen(
        _train_cmd(job.json), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if not ckpt.exists():
        pytest.fail("the run finished or failed before writing a checkpoint")
    assert not os.path.exists(job.out_dir), "a killed job must not leave a complete-looking output"

    result = subprocess.run(_train_cmd(job.json), env=env, capture_output=True, text=True)
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
    run_job(plan.data("stdlib"), data.DataJob, data.run)
    job = plan.train("llama_micro")
    ckpt = partial_dir(job.out_dir) / "ckpt" / "state.pt"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.Popen(
        _train_cmd(job.json),
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


def test_a_sparse_grid_point_records_its_operators_and_saves_a_plain_model(tmp_path):
    import json

    from helpers import smoke_plan

    from actsparse.stages import data, train
    from actsparse.stages.job import run_job
    from actsparse.tables import ACHIEVED_SPARSITY, METRICS

    plan = smoke_plan(tmp_path, "scaling.train.steps=4", "scaling.train.eval_interval=2")
    run_job(plan.data("stdlib"), data.DataJob, data.run)
    job = plan.grid_train("w16", "fp", "", 0.4)
    out = run_job(job, train.TrainJob, train.run, resumable=True)
    sparse = json.loads((out / "sparse_training.json").read_text())
    assert sparse["operator"] == "topk" and sparse["level"] == 0.4
    achieved = read_table(out / "achieved_sparsity.parquet", ACHIEVED_SPARSITY)
    assert len(achieved) == 7  # one layer: q, k, v, o, gate, up, down
    # top-K keeps exactly k = int(0.6 * 16) = 9 of 16 (or 19 of 32 at down_proj) per token;
    # down_proj's input also has the squared ReLU's own zeros
    assert (achieved.achieved >= achieved.target - 1e-12).all()
    m = read_table(out / "metrics.parquet", METRICS).set_index("metric")
    assert m.loc["train_sparsity", "value"] == 0.4 and m.loc["final_valid_loss", "method"] == "topk"
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.hidden_act == "relu2"
    assert not any("inner" in k for k in model.state_dict())  # plain weights, no wrappers
    n_linear = sum(p.numel() for n, p in model.named_parameters() if "proj" in n and "layers" in n)
    assert m.loc["n_linear_params", "value"] == n_linear
