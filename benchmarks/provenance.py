"""Where and when a benchmark row was measured (every results row carries these)."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def provenance() -> dict[str, str]:
    return {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "date": dt.date.today().isoformat(),
    }


def append_rows(table, name: str) -> Path:
    """Append `table` (a DataFrame) to benchmarks/results/<name>.parquet; print and return it."""
    import pandas as pd

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.parquet"
    if out.is_file():
        table = pd.concat([pd.read_parquet(out), table], ignore_index=True)
    table.to_parquet(out, index=False)
    print(f"\nwrote {out}")
    return out
