"""Re-run a study's finished evaluate jobs at the current code, in place, without
re-running anything upstream: after a change to what evaluate measures (the decode
timing, say), the folders at the current config hashes get new metrics while their
sparsify, decompose and calibrate inputs stay as they are. Snakemake's `--forcerun
evaluate` would instead re-run every upstream job whose code changed.

Runs `python -m actsparse.stages.evaluate` on each planned evaluate job whose folder
exists, `--cores` at a time with the stage's configured threads, as `snakemake -c2` does
(a folder is replaced only when its job finishes); then prints the decode speedups.

    python benchmarks/reevaluate.py smollm2 --workdir ../study-smollm2
    python benchmarks/reevaluate.py smollm2 --workdir ../study-smollm2 --only smollm2.teal.s50

With overrides (a config change that gives evaluate jobs new hashes, such as
`evaluate.tasks`), `--new` runs the planned evaluate jobs that have no folder yet, their
inputs taken as they are:

    python benchmarks/reevaluate.py smollm2 --workdir ../study-smollm2 --new \
        --only smollm2.dense smollm2.teal.s50 --overrides 'evaluate.task_paths=[../tasks-commonsense]'
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from actsparse.config import compose_study
from actsparse.plan import StudyPlan
from actsparse.results import leaderboard
from actsparse.stages.summary import collect


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--workdir", required=True, type=Path, help="the study's working folder")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--only", nargs="+", help="variants to re-run (e.g. smollm2.teal.s50)")
    p.add_argument(
        "--new",
        action="store_true",
        help="run the planned evaluate jobs that have no folder (their inputs must)",
    )
    p.add_argument("--overrides", nargs="+", default=[], help="Hydra overrides of the study config")
    args = p.parse_args()
    plan = StudyPlan(compose_study([f"experiment={args.experiment}", *args.overrides]))
    threads = plan.cfg.resources.evaluate.threads
    jobs = [
        j for j in plan.jobs()
        if Path(j.out_dir).parent.name == "evaluate"
        and (args.workdir / j.out_dir).is_dir() != args.new
        and (not args.new or all((args.workdir / i).exists() for i in j.inputs.values()))
        and (not args.only or Path(j.out_dir).name.rsplit("-", 1)[0] in args.only)
    ]  # fmt: skip
    print(f"{len(jobs)} {'new' if args.new else 'finished'} evaluate jobs to run", flush=True)

    def run(job) -> int:
        start = time.time()
        log = args.workdir / job.out_dir.replace("/evaluate/", "/logs/evaluate/")
        with open(f"{log}.rerun.log", "w") as f:
            cmd = [sys.executable, "-m", "actsparse.stages.evaluate", "--spec", job.json,
                   "--threads", str(threads)]  # fmt: skip
            rc = subprocess.run(
                cmd, cwd=args.workdir, stdout=f, stderr=subprocess.STDOUT
            ).returncode
        print(f"{job.out_dir} rc={rc} {time.time() - start:.0f} s", flush=True)
        return rc

    with ThreadPoolExecutor(args.cores) as pool:
        failed = sum(rc != 0 for rc in pool.map(run, jobs))
    board = leaderboard(collect([args.workdir / j.out_dir for j in jobs]))
    board = board[board.method != "unigram"]
    print(board.pivot_table(index="method", columns="level", values="decode_speedup").round(2))
    if failed:
        raise SystemExit(
            f"{failed} jobs failed (their logs: <workdir>/<root>/logs/evaluate/*.rerun.log)"
        )


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
