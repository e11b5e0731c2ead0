"""The real-model code path (a checkpoint's own tokenizer, no training, a local
save_pretrained folder as the model) on a tiny local checkpoint."""

import math

from actsparse.config import compose_study
from actsparse.plan import StudyPlan
from actsparse.stages import calibrate, data, evaluate, predictors, sparsify
from actsparse.stages.job import run_job
from actsparse.tables import METRICS, read_table


def _onto_local() -> list[str]:
    """Overrides moving every entry the smoke preset restricts to its models onto `local`."""
    smoke = compose_study(["experiment=smoke"])
    return [
        f"{section}.methods.{name}.models=[local]"
        for section in ("sparsify", "decompose", "predictors")
        for name, entry in getattr(smoke, section).methods.items()
        if entry.get("models") is not None
    ]


def test_pretrained_local_checkpoint_with_its_own_tokenizer(smoke_outputs, tmp_path):
    checkpoint = smoke_outputs.train("llama_micro").out_dir + "/model"  # has its tokenizer
    plan = StudyPlan(
        compose_study(
            [
                "experiment=smoke",
                f"study.output_root={tmp_path}",
                "~models.llama_micro",
                "~models.opt_micro",
                "~models.llama_micro_svdllm",
                *_onto_local(),
                "+models.local.source=pretrained",
                f"+models.local.path={checkpoint}",
                "evaluate.seq_len=64",
                "data.tokenizer.kind=model",
                "~scaling.sizes",  # the grid trains models from scratch (a BPE of its own)
            ]
        )
    )
    assert plan.trained_models == [] and plan.data_variants == ["stdlib.local"]
    data_dir = run_job(plan.data("stdlib.local"), data.DataJob, data.run)
    assert plan.eval_data_variants == [("pydoc", "pydoc.local")]  # the checkpoint's tokenizer too
    run_job(plan.data("pydoc.local"), data.DataJob, data.run)
    cal = run_job(plan.calibrate("local"), calibrate.CalibrateJob, calibrate.run)
    ev = run_job(plan.evaluate("local"), evaluate.EvaluateJob, evaluate.run)
    # the checkpoint's tokenizer re-tokenizes the same corpus to the same ids as the study's BPE
    import numpy as np

    from actsparse.data import TokenData

    same = TokenData(smoke_outputs.data("stdlib").out_dir)
    np.testing.assert_array_equal(TokenData(data_dir).tokens("test"), same.tokens("test"))
    assert (cal / "gram" / "layer_001.safetensors").is_file()
    m = read_table(ev / "metrics.parquet", METRICS)
    ppl = m[
        (m.metric == "perplexity") & (m.method == "dense") & (m.corpus == "stdlib")
    ].value.item()
    assert math.isfinite(ppl) and ppl > 1
    # a sparsified variant of the checkpoint (the gate site: checked on the loaded family)
    sp = run_job(plan.sparsify("local", "cats", 0.5), sparsify.SparsifyJob, sparsify.run)
    ev = run_job(plan.evaluate_sparse("local", "cats", 0.5), evaluate.EvaluateJob, evaluate.run)
    m = read_table(ev / "metrics.parquet", METRICS).set_index("metric")
    assert abs(m.loc["sparsity.gate", "value"] - 0.5) < 0.05
    assert (sp / "allocation.parquet").is_file()
    # predictors for the checkpoint (labels from its own tokenizer's tokens), then its
    # predicted masks beside the oracle
    pr = run_job(plan.predictors("local", "dejavu_mlp"), predictors.PredictorsJob, predictors.run)
    assert len(list((pr / "weights").glob("layer_*.safetensors"))) == 2
    ev = run_job(
        plan.evaluate_predicted("local", "dejavu_mlp", 0.5), evaluate.EvaluateJob, evaluate.run
    )
    m = read_table(ev / "metrics.parquet", METRICS).set_index("metric").value
    assert math.isfinite(m["oracle_gap_pct"]) and m["predictor_flops_per_token"] > 0
