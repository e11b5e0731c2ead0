"""The sparsify and evaluate stages in-process on the smoke study's micro models: a plan is
written, applied and measured; statistics from another model are refused."""

import json
from dataclasses import replace

import pytest

from actsparse.stages import calibrate, evaluate, sparsify
from actsparse.stages.job import run_job
from actsparse.tables import ACHIEVED_SPARSITY, ALLOCATION, METRICS, read_table


@pytest.fixture(scope="module")
def calibrated(smoke_outputs):
    plan = smoke_outputs
    for m in plan.base_models:  # the decomposed model is not made here
        run_job(plan.calibrate(m), calibrate.CalibrateJob, calibrate.run)
    return plan


def test_a_teal_plan_is_written_applied_and_measured(calibrated):
    plan = calibrated
    sp = run_job(plan.sparsify("llama_micro", "teal", 0.5), sparsify.SparsifyJob, sparsify.run)
    allocation = read_table(sp / "allocation.parquet", ALLOCATION)
    assert set(allocation.site) == {"attn_in", "o_proj_in", "ffn_in", "ffn_intermediate"}
    assert (allocation.level == 0.5).all() and (allocation.threshold > 0).all()
    assert len(allocation) == 2 * 7  # two blocks of q, k, v, o, gate, up, down
    meta = json.loads((sp / "sparsity.json").read_text())
    assert (meta["method"], meta["entry"], meta["level"]) == ("teal", "teal", 0.5)

    ev = run_job(
        plan.evaluate_sparse("llama_micro", "teal", 0.5), evaluate.EvaluateJob, evaluate.run
    )
    achieved = read_table(ev / "achieved_sparsity.parquet", ACHIEVED_SPARSITY)
    assert set(achieved.module) == set(allocation.module)
    assert (achieved.total > 0).all()
    # calibrated on the train split, counted on the test split; the smoke's calibration is
    # tiny (2048 tokens), so the tolerance here is loose; the quickstart's is +/-1 point
    assert (achieved.achieved - 0.5).abs().max() < 0.1
    m = read_table(ev / "metrics.parquet", METRICS)
    m = m[m.corpus.fillna("").isin(["stdlib", ""])].set_index("metric")  # the study's corpus
    assert m.loc["flops_ratio", "value"] < 0.8 and m.loc["effective_sparsity", "value"] > 0.4
    assert m.loc["kl_div", "value"] > 0 and m.loc["hidden_cosine", "value"] < 1
    assert (m[m.method == "teal"].level == 0.5).all()


def test_statistics_calibrated_on_another_model_are_refused(calibrated):
    plan = calibrated
    job = plan.sparsify("llama_micro", "teal", 0.5)
    spec = replace(
        job,
        inputs={**job.inputs, "calibration": plan.calibrate("opt_micro").out_dir},
        output=job.output + "-other",
    )
    with pytest.raises(
        ValueError,
        match=r"sparsity method 'teal' \(teal\): layer 0 site 'ffn_intermediate'.*width 64.*width 128 \(shape mismatch",
    ):
        run_job(spec, sparsify.SparsifyJob, sparsify.run)
