# Config and path helpers only: compose + validate the study, then plan its jobs.
import shlex
import sys
from pathlib import Path

from actsparse.config import ConfigError, compose_study, snakemake_config_to_overrides
from actsparse.plan import StudyPlan

try:
    STUDY = compose_study(
        snakemake_config_to_overrides(config), conf_dir=Path(workflow.basedir) / "conf"
    )
except ConfigError as err:
    raise WorkflowError(f"actsparse: {err}") from None

PLAN = StudyPlan(STUDY)
ROOT = PLAN.root
PY = shlex.quote(sys.executable)  # the interpreter running Snakemake has actsparse installed


wildcard_constraints:
    variant=r"[A-Za-z0-9_.]+",
    hash=r"[0-9a-f]{8}",


def job_of(stage, wildcards, folder=None):
    """The planned job for a rule's wildcards; refuses an output that the config does not
    plan, or plans in another folder (a grid point under train/, a study model under
    scaling/train/). `folder`: the rule's output folder under ROOT (default: the stage)."""
    job = PLAN.job(stage, wildcards.variant)
    out = f"{ROOT}/{folder or stage}/{wildcards.variant}-{wildcards.hash}"
    if job.hash != wildcards.hash:
        raise WorkflowError(
            f"{out} is not planned by the current config (its slice hashes to {job.hash})"
        )
    if job.out_dir != out:
        raise WorkflowError(f"{out} is not planned by the current config (see {job.out_dir})")
    return job


def spec_of(stage, folder=None):
    return lambda wildcards: job_of(stage, wildcards, folder).json


def inputs_of(stage, folder=None):
    return lambda wildcards: PLAN.upstream_dirs(job_of(stage, wildcards, folder))


# The shell command of a stage job, formatted when the job runs: the rule's `params.stage`
# names the stage module (a rule made in a loop cannot name it in its shell command, which
# Snakemake evaluates after the loop), and the spec reaches the shell quoted (`:q`).
STAGE_CMD = f"{PY} -m actsparse.stages.{{params.stage}} --spec {{params.spec:q}} --threads {{threads}} > {{log:q}} 2>&1"


def log_of(stage):
    return f"{ROOT}/logs/{stage}/{{variant}}-{{hash}}.log"


def benchmark_of(stage):
    return f"{ROOT}/benchmarks/{stage}/{{variant}}-{{hash}}.tsv"


def where_results_are():
    """What a finished study prints: where its table and its MLflow runs are."""
    from actsparse.tracking import tracking_uri

    experiment = config.get("experiment", "quickstart")
    uri = tracking_uri(STUDY.study.output_root)
    return "\n".join([
        f"actsparse: study '{STUDY.study.name}' is complete.",
        f"  report       {ROOT}/report/index.html",
        f"  study table  {PLAN.summary_path}   (actsparse show -e {experiment})",
        f"  job outputs  {ROOT}/<stage>/<variant>-<hash>/",
        f"  MLflow runs  {uri}, experiment '{STUDY.study.name}'   (actsparse ui)",
    ])


# The order in which ready jobs take free cores (Snakemake's `priority`, highest first):
# the stages that unlock the most work go first, and long jobs before the short ones that
# fill in around them. Without it, Snakemake may run a dozen evaluate jobs while the
# calibrate job that half the study needs waits (the quickstart's cores were 8% idle;
# 3% with priorities and 1-thread jobs, docs/architecture.md). The scaling grid's train
# jobs need only the data, so they fill the gaps; its fit goes as soon as they are done.
PRIORITY = {
    "import_gguf": 105,
    "data": 100,
    "eval_data": 95,
    "train": 90,
    "calibrate": 80,
    "scaling": 75,
    "allocate": 72,
    "predictors": 70,
    "decompose": 60,
    "sparsify": 50,
    "train_grid": 45,
    "evaluate": 40,
}


def resource(stage, key):
    """A rule's cluster request from the study config (`resources.<stage>.<key>`)."""
    return getattr(getattr(STUDY.resources, stage), key)
