"""What the zero-shot tasks cost and score, per task and variant, from a study's finished
evaluate jobs (their `task_s.<task>` and `task_items.<task>` rows, each task timed alone
inside its job, at the job's threads).

Prints seconds per task per variant, seconds per item, and the accuracy table beside the
dense model's; writes `benchmarks/results/task_cost.parquet` (the rows of
`actsparse.results.task_scores`). Reads only the evaluate jobs the plan names, at the
config given (the study's folders of other configs are not globbed).

    python benchmarks/task_cost.py smollm2 --workdir ../study-smollm2 \\
        --overrides 'evaluate.task_paths=[../tasks-commonsense]'
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from actsparse.config import compose_study
from actsparse.plan import StudyPlan
from actsparse.results import task_scores
from actsparse.stages.summary import collect

OUT = Path(__file__).parent / "results" / "task_cost.parquet"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--workdir", type=Path, default=Path("."), help="the study's working folder")
    p.add_argument("--overrides", nargs="+", default=[], help="Hydra overrides of the study config")
    args = p.parse_args()
    plan = StudyPlan(compose_study([f"experiment={args.experiment}", *args.overrides]))
    done = [
        args.workdir / j.out_dir for j in plan.jobs()
        if Path(j.out_dir).parent.name == "evaluate" and (args.workdir / j.out_dir / "metrics.parquet").is_file()
    ]  # fmt: skip
    scores = task_scores(collect(done))
    if scores.empty:
        raise SystemExit(
            f"no finished evaluate job of {args.experiment} ran a task (of {len(done)})"
        )
    scores["variant"] = scores.method + scores.level.map(lambda v: "" if pd.isna(v) else f"@{v:g}")
    seconds = scores.pivot_table(index="task", columns="variant", values="seconds", aggfunc="first")
    per_item = (scores.seconds / scores["items"]).groupby(scores.task).agg(["min", "median", "max"])
    accuracy = scores.pivot_table(
        index="task", columns="variant", values="accuracy", aggfunc="first"
    )
    items = scores.groupby("task")["items"].first()
    with pd.option_context("display.width", 220, "display.max_columns", 40):
        print(f"{len(done)} finished evaluate jobs; tasks timed alone, inside each job\n")
        print("seconds per task and variant:")
        print(seconds.round(1).to_string())
        print(f"\ntotal per variant (s): {seconds.sum().round(0).to_dict()}")
        print("\nseconds per item (over variants):")
        print(pd.concat([items, per_item.round(3)], axis=1).to_string())
        print("\naccuracy (acc_norm where the harness reports it, else acc), %:")
        print((100 * accuracy).round(1).to_string())
    OUT.parent.mkdir(exist_ok=True)
    scores.drop(columns="variant").to_parquet(OUT, index=False)
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
