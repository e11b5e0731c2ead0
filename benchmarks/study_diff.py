"""Do two runs of one study hold the same tables, timing aside? (A refactor's check: the
smoke study before and after must agree on every number but the times.)

Compares the study tables (`summary.parquet`) row by row on every column but
`mlflow_run_id` (config hashes included), with the metrics of the process (time, peak
memory) left out, and every CSV of the two reports with those columns left out; prints a table of what differs and appends a row
to benchmarks/results/study_diff.parquet.

    python benchmarks/study_diff.py ../study-before/data/smoke ../study-after/data/smoke
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd
from provenance import append_rows, provenance

# metrics and report columns that measure the process (time, memory), not the model
TIMING = re.compile(r"(^|_)(wall_time_s|decompose_s|fit_s|label_s|tokens_per_s|decode_ms|"
                    r"decode_ms_dense|decode_speedup|peak_rss_mb)$|_s$")  # fmt: skip
KEY = ["stage", "method", "variant", "level", "model", "corpus", "split", "metric"]


def study_rows(root: Path) -> pd.DataFrame:
    s = pd.read_parquet(root / "summary.parquet")
    s = s[~s.metric.map(lambda m: bool(TIMING.search(m)))].drop(columns=["mlflow_run_id"])
    return s.sort_values(KEY, na_position="first").reset_index(drop=True)


def table_diff(a: pd.DataFrame, b: pd.DataFrame) -> int:
    """Rows of `a` and `b` that differ (an outer join on the key, values compared exactly)."""
    m = a.merge(b, on=KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    other = m["_merge"] != "both"
    values = (m.value_a != m.value_b) & ~(m.value_a.isna() & m.value_b.isna())
    hashes = m.config_hash_a != m.config_hash_b
    return int((other | values | hashes).sum())


def csv_diff(a: Path, b: Path) -> int:
    fa, fb = pd.read_csv(a), pd.read_csv(b)
    cols = [c for c in fa.columns if not TIMING.search(c)]
    if list(fa.columns) != list(fb.columns) or len(fa) != len(fb):
        return max(len(fa), len(fb))
    fa, fb = fa[cols], fb[cols]
    same = (fa == fb) | (fa.isna() & fb.isna())
    return int((~same.all(axis=1)).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path, help="a study folder, e.g. ../study-before/data/smoke")
    p.add_argument("after", type=Path)
    args = p.parse_args()
    rows = []
    a, b = study_rows(args.before), study_rows(args.after)
    rows.append(("summary.parquet", len(a), len(b), table_diff(a, b)))
    for csv in sorted((args.before / "report").glob("*.csv")):
        other = args.after / "report" / csv.name
        n = len(pd.read_csv(csv))
        diff = csv_diff(csv, other) if other.is_file() else n
        rows.append(
            (f"report/{csv.name}", n, len(pd.read_csv(other)) if other.is_file() else 0, diff)
        )
    frame = pd.DataFrame(rows, columns=["table", "rows_before", "rows_after", "rows_differing"])
    print(frame.to_string(index=False))
    total = int(frame.rows_differing.sum())
    print(f"\n{'identical' if total == 0 else f'{total} rows differ'} (timing aside)")
    row = pd.DataFrame([{"benchmark": "study_diff", "before": str(args.before),
                         "after": str(args.after), "tables": len(frame),
                         "rows_differing": total, **provenance()}])  # fmt: skip
    append_rows(row, "study_diff")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
