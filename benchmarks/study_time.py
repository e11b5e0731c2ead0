"""Wall time and peak memory of a whole study, as `/usr/bin/time -v snakemake -c2` reports,
and how busy the cores were: `core_use` = the jobs' summed wall time / (wall x cores).

Beside it, one of the study's own jobs (its first dense evaluation) is rerun alone into a
scratch folder: `job_equivalents` = the study's wall / that job's, the figure that holds on
a slower or busier machine (the smoke's budget: 50, i.e. 5 minutes at 6 s a job; the
workflow test checks it the same way). A table per stage gives the jobs' mean wall and CPU
seconds (Snakemake's `benchmark:` files): at micro sizes nearly all of it is each process
importing torch, transformers and MLflow.

Runs the study in a fresh working directory (nothing cached), prints the tables and appends
a row to benchmarks/results/study_time.parquet.

    python benchmarks/study_time.py quickstart     # or smoke
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from provenance import RESULTS, provenance

REPO = Path(__file__).resolve().parents[1]


def time_one_job(wd: Path, experiment: str, env: dict[str, str]) -> float:
    """Wall seconds of the study's first dense evaluation rerun alone beside it (`--out`,
    tracked in the experiment '<study>-rerun'; the median of three)."""
    job = sorted((wd / "data" / experiment / "evaluate").glob("*.dense-*"))[0]
    times = []
    for i in range(3):
        cmd = [sys.executable, "-m", "actsparse.stages.evaluate", str(job / "config.yaml"),
               "--out", str(wd / "timing" / f"{job.name}.{i}"), "--threads", "1"]  # fmt: skip
        t = time.perf_counter()
        subprocess.run(cmd, cwd=wd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", nargs="?", default="quickstart")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    args = p.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs GNU time: apt-get install time")
    wd = (
        Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix=f"study-{args.experiment}-"))
    )
    wd.mkdir(parents=True, exist_ok=True)
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(wd),
        f"-c{args.cores}",
        "--config",
        f"experiment={args.experiment}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"study failed:\n{r.stderr[-4000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", r.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    wall_s = sum(x * 60**i for i, x in enumerate(reversed(parts)))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    summary = pd.read_parquet(wd / "data" / args.experiment / "summary.parquet")
    ev = summary[(summary.stage == "evaluate") & (summary.metric == "perplexity")]
    # every job's own wall and CPU time (Snakemake's `benchmark:` files): how busy the cores were
    bench = wd / "data" / args.experiment / "benchmarks"
    jobs = pd.DataFrame(
        [
            {"stage": f.relative_to(bench).parts[0], **pd.read_csv(f, sep="\t").iloc[-1]}
            for f in bench.rglob("*.tsv")
        ]
    )
    job_s = jobs.s.tolist()
    one_job = time_one_job(wd, args.experiment, env)
    row = {
        "benchmark": "study_time",
        "experiment": args.experiment,
        "cores": args.cores,
        "wall_s": wall_s,
        "jobs": len(job_s),
        "job_s": float(sum(job_s)),
        "core_use": float(sum(job_s)) / (wall_s * args.cores),
        "one_job_s": one_job,
        "job_equivalents": wall_s / one_job,
        "peak_rss_mib": rss_kb / 1024,
        **provenance(),
    }
    print(pd.DataFrame([row]).to_string(index=False))
    print()
    per_stage = jobs.groupby("stage").agg(
        jobs=("s", "size"), wall_s=("s", "mean"), cpu_s=("cpu_time", "mean")
    )
    print(per_stage.round(2).to_string())
    print()
    dense = ev[ev.method.isin(["dense", "unigram"])]  # other variants: see the report
    print(
        dense.pivot_table(index=["model", "corpus"], columns="method", values="value").to_string()
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "study_time.parquet"
    old = pd.read_parquet(out) if out.exists() else pd.DataFrame()
    pd.concat([old, pd.DataFrame([row])], ignore_index=True).to_parquet(out, index=False)
    print(f"\nwrote {out}")
    if not args.keep:
        shutil.rmtree(wd)


if __name__ == "__main__":
    main()
