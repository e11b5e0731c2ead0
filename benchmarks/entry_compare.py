"""Sparsity or low-rank entries of one preset side by side on one model, without running
the whole preset: the dense evaluation and each entry's evaluations at its levels (or
ratios), run through Snakemake as targets (their upstream jobs come with them), then one
table of perplexity, its increase over dense on the same tokens, KL to dense, effective
sparsity and the decompose job's time.

The job folders are the ones the plan names; a second run reuses them. Prints the table
and appends it to benchmarks/results/entry_compare.parquet.

    python benchmarks/entry_compare.py smollm2 --model smollm2 --entries teal wina topk \\
        --workdir ../study-smollm2
    python benchmarks/entry_compare.py smollm2 --model smollm2 \\
        --entries svdllm svdllm_update svdllm_v2 --workdir ../study-smollm2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from provenance import append_rows, provenance

from actsparse.config import compose_study
from actsparse.plan import StudyPlan
from actsparse.tables import METRICS, read_table

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["perplexity", "kl_div", "hidden_cosine", "effective_sparsity", "flops_ratio"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--model", required=True)
    p.add_argument(
        "--entries", nargs="+", required=True, help="sparsify.methods or decompose.methods entries"
    )
    p.add_argument("--workdir", required=True, type=Path, help="the study's working folder")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--no-run", action="store_true", help="read finished jobs only")
    args = p.parse_args()
    plan = StudyPlan(compose_study([f"experiment={args.experiment}"]))
    sparse = [v for v in plan.sparse_variants if v[0] == args.model and v[1] in args.entries]
    lowrank = [v for v in plan.decomposed_variants if v[0] == args.model and v[1] in args.entries]
    variants = sparse + lowrank
    missing = set(args.entries) - {e for _, e, _ in variants}
    if missing:
        raise SystemExit(f"no {sorted(missing)} variants of {args.model!r} in {args.experiment}")
    jobs = (
        [plan.evaluate(args.model)]
        + [plan.evaluate_sparse(*v) for v in sparse]
        + [plan.evaluate_decomposed(*v) for v in lowrank]
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.no_run:
        # the targets before --config, which takes every value after it
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
               "-d", str(args.workdir), f"-c{args.cores}", "--keep-going",
               *[j.out_dir for j in jobs],
               "--config", f"experiment={args.experiment}"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        if subprocess.run(cmd, env=env).returncode != 0:
            print("some jobs failed (their logs: <workdir>/<root>/logs/); the rest follow")
    corpus = plan.cfg.data.name
    rows = []
    for job, (_, entry, level) in zip(jobs, [(args.model, "dense", 0.0), *variants], strict=True):
        if not (args.workdir / job.out_dir / "metrics.parquet").is_file():
            print(f"missing: {job.out_dir} (failed or not run)")
            continue
        m = read_table(args.workdir / job.out_dir / "metrics.parquet", METRICS)
        # the variant's own rows on the study corpus (not the unigram baseline beside them)
        m = m[m.corpus.fillna("").isin([corpus, ""]) & (m.method != "unigram")]
        m = m.set_index("metric").value
        row = {"entry": entry, "level": level, **{c: m.get(c) for c in COLUMNS}}
        if (args.model, entry, level) in lowrank:  # what the decomposition cost
            d = (
                read_table(
                    args.workdir
                    / plan.decompose(args.model, entry, level).out_dir
                    / "metrics.parquet",
                    METRICS,
                )
                .set_index("metric")
                .value
            )
            row |= {"decompose_s": d["decompose_s"], "peak_rss_mb": d["peak_rss_mb"]}
        rows.append(row)
    table = pd.DataFrame(rows)
    dense = table.perplexity.iloc[0]
    table.insert(3, "ppl_increase_%", 100 * (table.perplexity / dense - 1))
    table = table.sort_values(["level", "entry"]).reset_index(drop=True)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    meta = {"experiment": args.experiment, "model": args.model, **provenance()}
    append_rows(table.assign(**meta), "entry_compare")


if __name__ == "__main__":
    main()
