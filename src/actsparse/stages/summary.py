"""Summary: gather every job's `metrics.parquet` into the study table.

`<root>/summary.parquet` is long format (schema `tables.METRICS`: one row per job and
metric). Each job writes its own table and this gathering job concatenates them, so no two
jobs ever append to one file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from actsparse.tables import METRICS, read_table, write_table


def gather(job_dirs: list[str | Path], out: str | Path) -> pd.DataFrame:
    table = collect(job_dirs)
    write_table(table, out, METRICS)
    return table


def collect(job_dirs: list[str | Path]) -> pd.DataFrame:
    """The jobs' `metrics.parquet` tables as one, in the study table's order."""
    frames = [read_table(Path(d) / "metrics.parquet", METRICS) for d in job_dirs]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRICS.names)
    order = {"data": 0, "train": 1, "calibrate": 2, "evaluate": 3}
    table = table.sort_values(
        ["stage", "variant", "method", "metric", "split"],
        key=lambda c: c.map(order) if c.name == "stage" else c,
        kind="stable",
    )
    return table.reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m actsparse.stages.summary", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", required=True, help="the study table to write (summary.parquet)")
    p.add_argument("job_dirs", nargs="*", help="finished job folders, each holding metrics.parquet")
    args = p.parse_args(argv)
    table = gather(args.job_dirs, args.out)
    print(f"wrote {args.out}: {len(table)} rows from {len(args.job_dirs)} jobs", file=sys.stderr)


if __name__ == "__main__":
    main()
