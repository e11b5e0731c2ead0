"""Calibration peak memory at N and 4N tokens: it must not grow with the token count.

Runs the calibrate stage CLI (a fresh process each time) on the quickstart's Llama
architecture and data, at N and at 4N calibration tokens, and reads each process's peak
RSS from the kernel (wait4). Prints a table and writes Parquet.

    python benchmarks/calibrate_memory.py [--tokens 65536] [--model llama_tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from provenance import RESULTS, provenance

from actsparse.config import compose_study
from actsparse.plan import StudyPlan
from actsparse.stages import data as data_stage
from actsparse.stages.job import run_job
from actsparse.tables import METRICS, read_table


def peak_rss_of(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"calibrate failed: {proc.stderr.read().decode()[-3000:]}")
    return usage.ru_maxrss / 1024, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tokens", type=int, default=65536, help="N (the quickstart's calibrate.n_tokens)"
    )
    p.add_argument("--model", default="llama_tiny")
    p.add_argument("--experiment", default="quickstart")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        plan = StudyPlan(
            compose_study(
                [
                    f"experiment={args.experiment}",
                    f"study.output_root={tmp}",
                    "data.max_chars.train=1000000",
                ]
            )
        )
        data_dir = run_job(
            plan.data(plan.data_variant(args.model)), data_stage.DataJob, data_stage.run
        )
        # a randomly initialised model of the study's architecture: memory does not depend on training
        from transformers import AutoTokenizer

        from actsparse.models.tiny import build_tiny

        tok = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
        model = build_tiny(
            plan.cfg.models[args.model], len(tok), tok.eos_token_id, tok.eos_token_id
        )
        model_dir = Path(tmp) / "model"
        model.save_pretrained(model_dir)
        rows = []
        for n in (args.tokens, 4 * args.tokens):
            job = StudyPlan(
                compose_study(
                    [
                        f"experiment={args.experiment}",
                        f"study.output_root={tmp}",
                        f"calibrate.n_tokens={n}",
                    ]
                )
            ).calibrate(args.model)
            spec = {**job, "inputs": {"model": str(model_dir), "data": str(data_dir)}}
            rss, wall = peak_rss_of(
                [
                    sys.executable,
                    "-m",
                    "actsparse.stages.calibrate",
                    "--spec",
                    json.dumps(spec),
                    "--threads",
                    "2",
                ]
            )
            metrics = read_table(Path(job.out_dir) / "metrics.parquet", METRICS).set_index(
                "metric"
            )["value"]
            rows.append(
                {
                    "benchmark": "calibrate_memory",
                    "model": args.model,
                    "experiment": args.experiment,
                    "tokens": int(metrics["calibration_tokens"]),
                    "peak_rss_mib": rss,
                    "job_peak_rss_mib": float(metrics["peak_rss_mb"]),
                    "wall_s": wall,
                    "device": "cpu",
                    "dtype": "float32",
                    **provenance(),
                }
            )
    table = pd.DataFrame(rows)
    table["ratio_to_N"] = table.peak_rss_mib / table.peak_rss_mib.iloc[0]
    print(table[["model", "tokens", "peak_rss_mib", "ratio_to_N", "wall_s"]].to_string(index=False))
    ratio = table.ratio_to_N.iloc[-1]
    print(
        f"\npeak RSS at 4N / N = {ratio:.3f} (target <= 1.1): {'OK' if ratio <= 1.1 else 'MISSED'}"
    )
    RESULTS.mkdir(exist_ok=True)
    table.to_parquet(RESULTS / "calibrate_memory.parquet", index=False)
    print(f"wrote {RESULTS / 'calibrate_memory.parquet'}")


if __name__ == "__main__":
    main()
