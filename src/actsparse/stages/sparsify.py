"""Sparsify stage: build one method's sparsity plan for one model at one level.

Reads the model, (for calibrated methods) the calibrate job's histograms and (for a
method that searches its allocation once for all levels) the allocate job's; writes
`allocation.parquet` (one rule per wrapped module: site, rule, target level, threshold)
and `sparsity.json` (method, entry, level, which weight rows the method lets a kernel
skip). The evaluate stage applies the plan to the same model and measures it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from actsparse.methods.registry import MethodEntry
from actsparse.methods.sparsity import SPARSITY
from actsparse.methods.sparsity.base import build_context, read_allocation
from actsparse.models import LoadCfg, default_device, load_model_as
from actsparse.stages.job import Metric, StageResult, main

log = logging.getLogger("actsparse.sparsify")


@dataclass
class SparsifyJob:
    entry: str = "method"
    method: dict[str, Any] = field(default_factory=dict)
    level: float = 0.5
    window: int | None = None  # evaluate.seq_len: calibrate on windows of that length
    load: LoadCfg = field(default_factory=LoadCfg)
    seed: int = 0


def build_plan(cfg: SparsifyJob, inputs: dict[str, str], model, adapter, dev: torch.device):
    """(the registered method, its plan for the job's model and level)."""
    entry = MethodEntry.for_job(SPARSITY, cfg.entry, cfg.method, f"sparsify.methods.{cfg.entry}")
    method, mcfg = entry.method_instance(), entry.cfg
    ctx = build_context(method, inputs, model, adapter, dev, cfg.seed, cfg.window)
    if "allocation" in inputs:  # the entry's allocation search, made once for every level
        ctx.allocation = read_allocation(inputs["allocation"], cfg.level)
    return method, method.plan(mcfg, cfg.level, ctx, cfg.entry)


def run(cfg: SparsifyJob, inputs: dict[str, str], out: Path) -> StageResult:
    dev = default_device()
    model, adapter = load_model_as(inputs["model"], cfg.load, device=dev)
    method, plan = build_plan(cfg, inputs, model, adapter, dev)
    plan.save(out)
    frame = pd.DataFrame(
        [(p.site, p.rule.level, p.rule.threshold) for p in plan.placed],
        columns=["site", "level", "threshold"],
    )
    kw = dict(method=cfg.entry, level=cfg.level)
    metrics = [Metric("rules", len(plan.placed), **kw)]
    for site, g in frame.groupby("site", sort=True):
        metrics.append(Metric(f"allocated_level.{site}", float(g.level.mean()), **kw))
        if g.threshold.notna().any():
            metrics.append(Metric(f"threshold_mean.{site}", float(g.threshold.mean()), **kw))
    for name, value in method.plan_metrics(plan).items():
        metrics.append(Metric(name, value, **kw))
        log.info("%s: %s %.4g", cfg.entry, name, value)
    log.info(
        "%s: %d rules, effective allocation %s",
        cfg.entry,
        len(plan.placed),
        np.round(frame.level.mean(), 4),
    )
    return StageResult(metrics, [out / "allocation.parquet", out / "sparsity.json"])


if __name__ == "__main__":
    main("sparsify", SparsifyJob, run)
