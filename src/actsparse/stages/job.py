"""What every stage job does around its `run()`: read the spec, stage the outputs, track.

A stage module defines a typed config dataclass for its slice and
`run(cfg, inputs, out) -> StageResult`, and ends with `main(...)` under `__main__`:

    python -m actsparse.stages.train data/quickstart/train/llama_tiny-1a2b3c4d/config.yaml
    python -m actsparse.stages.train --spec '<the JSON Snakemake passes>'
    python -m actsparse.stages.evaluate <job>/config.yaml --out /tmp/again   # a rerun beside

The job writes into `<out>.partial/`, records `config.yaml` (the spec: the canonical
record) and `mlflow_run_id` there, writes `metrics.parquet` (schema `tables.METRICS`), and
renames the folder to `<out>/` only when everything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from actsparse.faults import kill_point
from actsparse.io import commit_dir, partial_dir, write_text
from actsparse.schema.job import JobSpec, SpecError
from actsparse.tables import METRICS, write_table
from actsparse.tracking import JobRun, job_params, metric_key

log = logging.getLogger("actsparse")
C = TypeVar("C")


@dataclass
class Metric:
    metric: str
    value: float
    method: str = "dense"
    level: float | None = None
    model: str = ""
    corpus: str = ""
    split: str = ""


@dataclass
class StageResult:
    metrics: list[Metric] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)  # extra files to log to MLflow


def load_spec(arg: str) -> JobSpec:
    """A spec from a config.yaml path or a JSON string."""
    text = arg.strip()
    if text.startswith("{"):
        raw, where = json.loads(text), "job spec"
    else:
        path = Path(arg)
        if not path.is_file():
            raise SystemExit(f"error: job spec not found: {path}")
        raw, where = yaml.safe_load(path.read_text()), f"job spec {path}"
    try:
        return JobSpec.from_dict(raw, where)
    except SpecError as e:
        raise SystemExit(f"error: {e}") from None


def typed(cls: type[C], config: dict[str, Any], where: str) -> C:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), config))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise SystemExit(
            f"error: bad config in {where} at {getattr(e, 'full_key', '')!r}: {e}"
        ) from None


def run_job(
    spec: JobSpec,
    cfg_cls: type[C],
    run: Callable[[C, dict[str, str], Path], StageResult],
    resumable: bool = False,
) -> Path:
    """Run one stage job from its spec; return the finished output folder."""
    out = Path(spec.output)
    cfg = typed(cfg_cls, spec.config, f"the {spec.stage} job spec")
    staging = partial_dir(out)
    if staging.exists() and not resumable:
        shutil.rmtree(staging)  # a killed earlier attempt: start over
    staging.mkdir(parents=True, exist_ok=True)
    write_text(staging / "config.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))

    tracker = JobRun(spec.study, spec.stage, spec.variant, spec.hash, spec.output_root)
    run_id = tracker.start(job_params(spec))
    write_text(staging / "mlflow_run_id", run_id + "\n")

    t0 = time.perf_counter()
    try:
        result = run(cfg, dict(spec.inputs), staging)
    except BaseException:
        tracker.fail()
        raise
    wall = time.perf_counter() - t0
    level = spec.config.get("level")
    result.metrics.append(Metric("wall_time_s", wall, method=spec.method, level=level))
    if not any(m.metric == "peak_rss_mb" for m in result.metrics):  # the job's memory
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        result.metrics.append(Metric("peak_rss_mb", rss, method=spec.method, level=level))

    rows = [
        {
            "stage": spec.stage,
            "method": m.method,
            "variant": spec.variant,
            "level": m.level,
            "model": m.model or spec.model,
            "corpus": m.corpus,
            "split": m.split,
            "metric": m.metric,
            "value": float(m.value),
            "config_hash": spec.hash,
            "mlflow_run_id": run_id,
        }
        for m in result.metrics
    ]
    write_table(pd.DataFrame(rows, columns=METRICS.names), staging / "metrics.parquet", METRICS)
    tracker.finish(
        {metric_key(m.metric, m.method, m.split, m.corpus): m.value for m in result.metrics},
        [staging / "metrics.parquet", staging / "config.yaml", *result.artifacts],
    )
    kill_point("job.before_commit")
    commit_dir(staging, out)
    log.info("%s/%s done in %.1fs -> %s", spec.stage, spec.variant, wall, out)
    return out


def rerun_elsewhere(spec: JobSpec, out: str) -> JobSpec:
    """The spec of a rerun into the new folder `out`, tracked apart from the study's runs
    (the study's folders and MLflow experiment stay as they were)."""
    if Path(out).exists():  # a finished job's folder would be replaced
        raise SystemExit(f"error: --out {out} exists; give a new folder")
    return dataclasses.replace(spec, output=str(out), study=f"{spec.study}-rerun")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(f"terminated by signal {signum}")


def main(
    stage: str,
    cfg_cls: type[C],
    run: Callable[[C, dict[str, str], Path], StageResult],
    resumable: bool = False,
    argv: list[str] | None = None,
) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m actsparse.stages.{stage}", description=f"Run one {stage} job."
    )
    parser.add_argument("config", nargs="?", help="a job's config.yaml (e.g. from an earlier run)")
    parser.add_argument("--spec", help="the job spec as JSON (what Snakemake passes)")
    parser.add_argument(
        "--out",
        help="write into this new folder instead of the job's own, and track the run in the "
        "MLflow experiment '<study>-rerun' (a finished job rerun beside the study)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("ACTSPARSE_THREADS", "0")),
        help="torch CPU threads (0: torch's default)",
    )
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.spec):
        parser.error("give either a config.yaml path or --spec JSON")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    spec = load_spec(args.spec or args.config)
    if spec.stage != stage:
        parser.error(f"spec is for stage {spec.stage!r}, not {stage!r}")
    if args.out:
        spec = rerun_elsewhere(spec, args.out)
    # SLURM's scancel and time limits send SIGTERM: unwind (marking the MLflow run FAILED
    # and leaving only the .partial folder) instead of dying mid-write
    signal.signal(signal.SIGTERM, _terminate)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    run_job(spec, cfg_cls, run, resumable=resumable)
