"""Report: the study as pictures and one leaderboard, in `<root>/report/index.html`.

Built from files only: the study table and the job folders the plan names
(`StudyPlan.report_inputs`, passed by the report rule), never from a listing of the study
folder, where an earlier config's folders stay under their old hashes. Rebuild it with
`snakemake -c1 --forcerun report --config experiment=NAME`. Plots are PNG files beside
the page. Sections appear as their stages land: now the training curves, the
perplexity of every dense model next to the unigram baseline, the natural activation
sparsity per layer found by calibration, and the sparsity sweep: perplexity against
sparsity (one line per method), the largest level each method reaches within +1% and +5%
perplexity (and within 1 point of dense zero-shot accuracy), and how far achieved sparsity
landed from its target; zero-shot accuracy vs sparsity per task (where the study ran
tasks: `evaluate.tasks`); the low-rank sweep
(perplexity vs ratio, per corpus); predictors (recall vs cost over rank, predicted masks
vs the oracle, hot and cold neurons); the claims table (each paper's claim beside what the
study measured, `--claims`). The plots and tables are also logged as one MLflow run
(stage `report`).
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from actsparse import plots
from actsparse.io import commit_dir, partial_dir, write_text
from actsparse.results import (
    claims,
    leaderboard,
    lowrank_sweep,
    predicted_sweep,
    predictor_scores,
    sparsity_frontier,
    sparsity_sweep,
    task_scores,
)
from actsparse.tables import METRICS, SCALING_COMPARE, SCALING_FIT, read_table


@dataclass(frozen=True)
class JobFolders:
    """The job folders the report reads beside the study table: the ones the plan names
    (`StudyPlan.report_inputs`), never found by listing the study folder, where the
    folders of an earlier config stay under their old hashes."""

    train: list[Path]  # the study's trained models: loss curves
    calibrate: list[Path]  # natural sparsity per layer
    predictors: list[Path]  # recall vs cost, hot and cold neurons
    scaling_fit: Path | None  # None: the study has no scaling grid

    @classmethod
    def of(cls, folders: dict[str, list[str]]) -> JobFolders:
        """From the plan's lists of paths; sorted, so plots draw in the same order however
        the caller listed them."""
        fit = folders["scaling_fit"]
        if len(fit) > 1:
            raise ValueError(f"a study has one scaling fit, got {fit}")
        return cls(
            train=sorted(Path(d) for d in folders["train"]),
            calibrate=sorted(Path(d) for d in folders["calibrate"]),
            predictors=sorted(Path(d) for d in folders["predictors"]),
            scaling_fit=Path(fit[0]) if fit else None,
        )


def _html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)


def scaling_section(fit_dir: Path | None, out: Path) -> tuple[list[tuple[str, str]], str]:
    """The scaling-law fit's plots (copied) and tables: the fitted constants and S* with
    their intervals per precision, and every sparse point against dense. `fit_dir`: the
    planned fit's folder (None: the study has no scaling grid)."""
    if fit_dir is None:
        return [], ""
    figures = []
    for title, name in (
        ("Scaling law: loss vs N per sparsity, fitted", "scaling_loss_vs_n.png"),
        ("Scaling law: loss vs sparsity at a fixed active budget, with S*", "scaling_optimum.png"),
    ):
        if (fit_dir / name).is_file():
            shutil.copyfile(fit_dir / name, out / name)
            figures.append((title, name))
    law = read_table(fit_dir / "scaling_fit.parquet", SCALING_FIT)
    compare = read_table(fit_dir / "scaling_compare.parquet", SCALING_COMPARE)
    law.to_csv(out / "scaling_fit.csv", index=False)
    compare.to_csv(out / "scaling_compare.csv", index=False)
    html_tables = (
        "\n<h2>Scaling law per precision: L(N, S) = E + (B + C exp(beta / (1 - S))) N^-alpha; "
        "S* (closed form and numerical), N/N_a = 1/(1 - S*); lo/hi: bootstrap interval</h2>\n"
        + _html(law)
        + "\n<h2>Sparse training against dense at the same size and precision</h2>\n"
        + _html(compare)
    )
    return figures, html_tables


def build(
    root: Path, out: Path, folders: JobFolders, context: dict[str, Any] | None = None
) -> Path:
    """The report of the study at `root`, from its table and the job `folders` the plan
    names (`StudyPlan.report_inputs`), written to `out`."""
    summary = read_table(root / "summary.parquet", METRICS)
    staging = partial_dir(out)
    staging.mkdir(parents=True, exist_ok=True)
    board = leaderboard(summary)
    sweep = sparsity_sweep(summary)
    lowrank = lowrank_sweep(summary)
    predictors = predictor_scores(summary)
    predicted = predicted_sweep(summary)
    scores = task_scores(summary)
    figures = [
        ("Training", plots.plot_loss_curves(folders.train, staging)),
        (
            "Perplexity",
            plots.plot_perplexity(board[board.method.isin(["dense", "unigram"])], staging),
        ),
        ("Natural activation sparsity", plots.plot_natural_sparsity(folders.calibrate, staging)),
        ("Sparsity vs perplexity", plots.plot_sparsity_sweep(sweep, staging)),
        ("Zero-shot accuracy vs sparsity", plots.plot_task_accuracy(scores, staging)),
        ("Low-rank decomposition vs perplexity", plots.plot_lowrank_sweep(lowrank, staging)),
        ("Predictors: recall vs cost", plots.plot_predictor_cost(folders.predictors, staging)),
        ("Predicted masks vs the oracle", plots.plot_predicted_vs_oracle(predicted, staging)),
        ("Hot and cold neurons", plots.plot_hotcold(folders.predictors, staging)),
        ("Quality vs measured decode speed", plots.plot_quality_vs_speed(board, staging)),
    ]
    scaling_figures, scaling_tables = scaling_section(folders.scaling_fit, staging)
    figures += scaling_figures
    board.to_csv(staging / "leaderboard.csv", index=False)
    table = _html(board)
    tables = ""
    if not sweep.empty:
        frontier = sparsity_frontier(sweep, scores)
        sweep.to_csv(staging / "sparsity_sweep.csv", index=False)
        frontier.to_csv(staging / "sparsity_frontier.csv", index=False)
        tables = (
            "<h2>Sparsity: the largest level within a perplexity budget</h2>\n"
            + _html(frontier)
            + "\n<h2>Sparsity sweep (err_pts: |achieved - target| over every wrapped module; "
            "worst_err_pts: in the worst site and layer; on the evaluation tokens)</h2>\n"
            + _html(sweep)
        )
    if not scores.empty:
        scores.to_csv(staging / "task_scores.csv", index=False)
        tables += (
            "\n<h2>Zero-shot tasks (lm-evaluation-harness; accuracy: acc_norm where the "
            "harness reports it, else acc; vs_dense_pts: against the same model's dense "
            "score, in points; seconds: the task's time in its evaluate job)</h2>\n" + _html(scores)
        )
    if not lowrank.empty:
        lowrank.to_csv(staging / "lowrank_sweep.csv", index=False)
        tables += (
            "\n<h2>Low-rank sweep (ratio_removed: fraction of the target linears' parameters "
            "removed; perplexity on each corpus against the undecomposed model)</h2>\n"
            + _html(lowrank)
        )
    if not predictors.empty:
        predictors.to_csv(staging / "predictors.csv", index=False)
        tables += (
            "\n<h2>Predictors on held-out tokens (recall_at_k@s: recall of the top-K kept at "
            "level s; matching_rate@s: share of that top-K the oracle keeps too)</h2>\n"
            + _html(predictors)
        )
    if not predicted.empty:
        predicted.to_csv(staging / "predicted_vs_oracle.csv", index=False)
        tables += (
            "\n<h2>Predicted masks vs the oracle (oracle_gap_pct: perplexity with predicted "
            "masks over the oracle's at the same level, in %)</h2>\n" + _html(predicted)
        )
    sections = "\n".join(
        f'<h2>{html.escape(title)}</h2>\n<img src="{name}" alt="{html.escape(title)}">'
        for title, name in figures
        if name
    )
    if context is not None:
        # the claims read the fit that the scaling section shows: the one the report was given
        claim_rows = claims(summary, {**context, "scaling_fit": folders.scaling_fit})
        claim_rows.to_csv(staging / "claims.csv", index=False)
        tables += (
            "\n<h2>Claims: each paper's claim beside what this study measured "
            "(docs/claims.md: definitions and tolerances)</h2>\n" + _html(claim_rows)
        )
    sections += "\n" + tables + scaling_tables
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>actsparse study {html.escape(root.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}}</style>
</head><body>
<h1>Study <code>{html.escape(root.name)}</code></h1>
<p>Every number comes from <code>{html.escape(str(root / "summary.parquet"))}</code>
({len(summary)} rows from {summary.config_hash.nunique()} jobs).</p>
<h2>Leaderboard</h2>
{table}
{sections}
</body></html>
"""
    write_text(staging / "index.html", page)
    commit_dir(staging, out)
    _track(root, out, summary, [name for _, name in figures if name])
    return out / "index.html"


def _track(root: Path, out: Path, summary: pd.DataFrame, plots: list[str]) -> None:
    """The report's plots and tables as one MLflow run (stage 'report') of the study."""
    # imported here: the plan loads torch (through the method registries) and tracking
    # loads mlflow, which the report's tables and plots do not need
    from actsparse.plan import config_hash
    from actsparse.tracking import JobRun

    h = config_hash(sorted(summary.config_hash.unique()))
    run = JobRun(root.name, "report", "report", h, root.parent)
    run.start({"jobs": summary.config_hash.nunique()})
    files = [out / p for p in plots] + [p for p in out.glob("*.csv")] + [out / "index.html"]
    run.finish({}, files)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m actsparse.stages.report", description=__doc__.splitlines()[0]
    )
    p.add_argument("--root", required=True, help="the study folder, e.g. data/quickstart")
    p.add_argument("--out", help="the report folder (default: <root>/report)")
    p.add_argument("--claims", help="the plan's claims context as JSON (adds the claims table)")
    # the job folders to read (StudyPlan.report_inputs); required, even when empty, so a
    # report is never built from a guess at which folders belong to the study
    for role in ("train", "calibrate", "predictors", "scaling-fit"):
        p.add_argument(f"--{role}", nargs="*", required=True, metavar="DIR",
                       help=f"the planned {role} job folders")  # fmt: skip
    args = p.parse_args(argv)
    root = Path(args.root)
    context = json.loads(args.claims) if args.claims else None
    folders = JobFolders.of(
        {role: getattr(args, role) for role in ("train", "calibrate", "predictors", "scaling_fit")}
    )
    page = build(root, Path(args.out) if args.out else root / "report", folders, context)
    print(f"wrote {page}", file=sys.stderr)


if __name__ == "__main__":
    main()
