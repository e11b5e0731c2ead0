"""Allocate stage: one sparsity entry's allocation search on one model, for all its levels.

For a method whose per-module levels come from a search that serves every level at once
(TEAL's greedy walk: the walk to the highest level passes the lower ones), the study runs
the search here once, and each level's sparsify job reads its part. Reads the model, the
calibrate job's histograms and the calibration corpus; writes `allocations.parquet`
(target level, module, level).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from actsparse.methods.registry import MethodEntry
from actsparse.methods.sparsity import SPARSITY
from actsparse.methods.sparsity.base import build_context
from actsparse.models import LoadCfg, default_device, load_model_as
from actsparse.stages.job import Metric, StageResult, main
from actsparse.tables import ALLOCATIONS, write_table

log = logging.getLogger("actsparse.allocate")


@dataclass
class AllocateJob:
    entry: str = "method"
    method: dict[str, Any] = field(default_factory=dict)
    levels: list[float] = field(default_factory=list)
    window: int | None = None  # evaluate.seq_len (as the sparsify jobs that read this)
    load: LoadCfg = field(default_factory=LoadCfg)
    seed: int = 0


def run(cfg: AllocateJob, inputs: dict[str, str], out: Path) -> StageResult:
    where = f"sparsify.methods.{cfg.entry}"
    entry = MethodEntry.for_job(SPARSITY, cfg.entry, cfg.method, where)
    method, mcfg = entry.method_instance(), entry.cfg
    if not method.searches_allocation(mcfg):
        raise ValueError(f"{where}: {mcfg.method} with these keys searches no allocation")
    dev = default_device()
    model, adapter = load_model_as(inputs["model"], cfg.load, device=dev)
    ctx = build_context(method, inputs, model, adapter, dev, cfg.seed, cfg.window)
    found = method.search_allocations(mcfg, list(cfg.levels), ctx)
    rows = [(t, m, lv) for t, levels in sorted(found.items()) for m, lv in levels.items()]
    write_table(
        pd.DataFrame(rows, columns=["target", "module", "level"]),
        out / "allocations.parquet",
        ALLOCATIONS,
    )
    metrics = []
    for target, levels in sorted(found.items()):
        kw = dict(method=cfg.entry, level=target)
        metrics += [
            Metric("modules", len(levels), **kw),
            Metric("max_module_level", max(levels.values(), default=0.0), **kw),
        ]
        log.info("%s at %g: %d modules, levels up to %.3f", cfg.entry, target, len(levels),
                 max(levels.values(), default=0.0))  # fmt: skip
    return StageResult(metrics, [out / "allocations.parquet"])


if __name__ == "__main__":
    main("allocate", AllocateJob, run)
