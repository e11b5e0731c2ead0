"""How long `snakemake -n` takes to plan each experiment preset (target: < 10 s each).

    python benchmarks/plan_time.py [experiment ...]

Prints a table and writes benchmarks/results/plan_time.parquet. Note: with the SLURM
executor plugin installed and SLURM's commands present but its controller down, every
`snakemake` start waits ~10 s while the plugin probes sacct/squeue.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from provenance import RESULTS, provenance

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    experiments = sys.argv[1:] or sorted(
        p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")
    )
    rows = []
    with tempfile.TemporaryDirectory() as wd:
        for exp in experiments:
            t = time.perf_counter()
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "snakemake",
                    "-s",
                    str(REPO / "Snakefile"),
                    "-d",
                    wd,
                    "-n",
                    "--config",
                    f"experiment={exp}",
                ],
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t
            if r.returncode != 0:
                raise SystemExit(f"{exp}: dry run failed\n{r.stderr[-2000:]}")
            total = re.search(r"^total\s+(\d+)$", r.stdout + r.stderr, re.M)
            rows.append(
                {
                    "benchmark": "plan_time",
                    "experiment": exp,
                    "jobs": int(total.group(1)) if total else 0,
                    "wall_s": wall,
                    "target_s": 10.0,
                    "ok": wall < 10.0,
                    **provenance(),
                }
            )
    table = pd.DataFrame(rows)
    print(table[["experiment", "jobs", "wall_s", "ok"]].to_string(index=False))
    RESULTS.mkdir(exist_ok=True)
    table.to_parquet(RESULTS / "plan_time.parquet", index=False)
    print(f"\nwrote {RESULTS / 'plan_time.parquet'}")


if __name__ == "__main__":
    main()
