"""Train-predictors stage: one predictor method for one model.

1. Collect labels (`methods/predictors/labels.py`): `n_tokens` of the training split (in
   random windows) and `eval_tokens` of the valid split (held out, contiguous windows),
   streamed to `labels/` one batch at a time.
2. Per layer, train the predictor at its rank (and at each rank of `ranks_curve`, for the
   recall-vs-cost curve), or build it from the model's own weights (Spark).
3. Score every layer on the held-out tokens (`methods/predictors/base.py` defines the
   scores) and sum the counts over layers for the overall figures.

Writes `predictors.json` (method, entry, target, rank, widths, cost), `weights/layer_XXX
.safetensors` (trained predictors), `predictor_metrics.parquet` (long: layer, rank,
level, metric, value; layer -1 is every layer). The report method `hotcold` writes
`neuron_frequency.parquet` and `hotcold.parquet` instead. Labels are deleted at the end
unless `keep_labels`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from actsparse.data import TokenData, batch_at
from actsparse.io import load_tensors, save_tensors, write_text
from actsparse.methods.predictors import PREDICTORS
from actsparse.methods.predictors.apply import META, weights_path
from actsparse.methods.predictors.base import Counts, block_flops, score
from actsparse.methods.predictors.labels import LabelSet, collect, label_spec
from actsparse.methods.registry import MethodEntry
from actsparse.methods.sparsity.base import CalibrationStats, context_len
from actsparse.models import LoadCfg, default_device, load_model_as
from actsparse.stages.job import Metric, StageResult, main
from actsparse.tables import HOTCOLD, NEURON_FREQUENCY, PREDICTOR_METRICS, write_table

log = logging.getLogger("actsparse.predictors")


@dataclass
class PredictorsJob:
    entry: str = "predictor"
    method: dict[str, Any] = field(default_factory=dict)
    levels: list[float] = field(default_factory=lambda: [0.5])  # where top-K is scored
    window: int | None = None  # evaluate.seq_len (null: the model's context)
    load: LoadCfg = field(default_factory=LoadCfg)
    seed: int = 0


def collect_labels(cfg: PredictorsJob, mcfg, target: str, model, adapter, inputs, folder: Path):
    data = TokenData(inputs["data"])
    seq_len = context_len(model, mcfg.seq_len or cfg.window or 10**9)
    stats = CalibrationStats(inputs["calibration"]) if "calibration" in inputs else None
    spec = label_spec(mcfg, target, adapter, stats, len(adapter.layers(model)))
    train = torch.from_numpy(data.tokens("train"))
    n_windows = max(1, mcfg.n_tokens // seq_len)
    train_w = torch.cat(
        [batch_at(train, b, 1, seq_len, cfg.seed) for b in range(n_windows)]
    )  # random windows: a pure function of the seed
    held = data.tokens("valid")
    n_held = min(len(held) // seq_len, max(1, mcfg.eval_tokens // seq_len))
    if n_held < 1:
        raise ValueError(
            f"{data.dir}: the valid split has {len(held)} tokens, fewer than one window of "
            f"{seq_len}: no held-out tokens to score predictors on"
        )
    held_w = torch.from_numpy(np.ascontiguousarray(held[: n_held * seq_len])).view(n_held, -1)
    collect(model, adapter, train_w, spec, folder, "train", mcfg.batch_size)
    collect(model, adapter, held_w, spec, folder, "heldout", mcfg.batch_size, magnitudes=True)
    labels = LabelSet(folder)
    labels.check(model, adapter)
    return labels, spec


def run(cfg: PredictorsJob, inputs: dict[str, str], out: Path) -> StageResult:
    dev = default_device()
    who = f"predictor {cfg.entry!r}"
    entry = MethodEntry.for_job(
        PREDICTORS, cfg.entry, cfg.method, f"predictors.methods.{cfg.entry}"
    )
    method, mcfg = entry.method_instance(), entry.cfg
    model, adapter = load_model_as(inputs["model"], cfg.load, device=dev)
    method.check(mcfg, model, adapter, who)
    target = method.target
    t0 = time.perf_counter()
    labels, spec = collect_labels(cfg, mcfg, target, model, adapter, inputs, out / "labels")
    label_s = time.perf_counter() - t0
    kw: dict[str, Any] = dict(method=cfg.entry)
    metrics = [
        Metric("label_tokens", labels.n_tokens("train"), **kw),
        Metric("heldout_tokens", labels.n_tokens("heldout"), **kw),
        Metric("label_s", label_s, **kw),
    ]
    artifacts: list[Path] = []
    n_layers = labels.n_layers

    if not method.evaluated:  # a report (hot/cold neurons)
        neurons, summary = method.tables(labels)
        write_table(neurons, out / "neuron_frequency.parquet", NEURON_FREQUENCY)
        write_table(summary, out / "hotcold.parquet", HOTCOLD)
        artifacts += [out / "neuron_frequency.parquet", out / "hotcold.parquet"]
        for col in [c for c in summary if c != "layer"]:
            metrics.append(Metric(col, float(summary[col].mean()), **kw))
        log.info("hot/cold neurons:\n%s", summary.to_string(index=False))
    else:
        rows: list[dict[str, Any]] = []
        flops_total = {r: 0 for r in method.ranks(mcfg)}
        block_total = 0
        overall = {r: Counts(hits={}, matched={}, kept={}) for r in method.ranks(mcfg)}
        saved_rank = method.ranks(mcfg)[0]
        t1 = time.perf_counter()
        for layer in tqdm(range(n_layers), desc="predictors", unit="layer"):
            block = block_flops(model, adapter, layer, target)
            block_total += block
            for rank in method.ranks(mcfg):
                pred, info = method.fit(
                    mcfg, model, adapter, labels, layer, rank, cfg.seed, dev, who
                )
                pred.eval()
                counts = score(pred, labels, "heldout", layer, cfg.levels, dev)
                overall[rank].add(counts)
                flops_total[rank] += pred.flops()
                r = int(getattr(pred, "r", rank or 0))
                rows += counts.rows(layer, r)
                rows.append(dict(layer=layer, rank=r, level=None, metric="flops_pct",
                                 value=100 * pred.flops() / block))  # fmt: skip
                rows += [
                    dict(layer=layer, rank=r, level=None, metric=k, value=float(v))
                    for k, v in info.items()
                ]
                if rank == saved_rank and method.has_weights:
                    save_tensors(weights_path(out, layer), pred.state_dict())
                if rank == saved_rank:
                    saved_r = r
        fit_s = time.perf_counter() - t1
        for rank in method.ranks(mcfg):
            r = saved_r if rank == saved_rank else int(rank)
            rows += overall[rank].rows(-1, r)
            rows.append(dict(layer=-1, rank=r, level=None, metric="flops_pct",
                             value=100 * flops_total[rank] / block_total))  # fmt: skip
        frame = pd.DataFrame(rows, columns=PREDICTOR_METRICS.names)
        write_table(frame, out / "predictor_metrics.parquet", PREDICTOR_METRICS)
        artifacts.append(out / "predictor_metrics.parquet")
        meta = {
            "method": mcfg.method,
            "entry": cfg.entry,
            "target": target,
            "rank": mcfg.rank,
            "r": saved_r,
            "label_rule": spec.rule,
            "label_level": spec.level,
            "widths": [list(w) for w in labels.widths],
            "flops_per_token": flops_total[saved_rank],
            "block_flops_per_token": block_total,
        }
        write_text(out / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        own = frame[(frame.layer == -1) & (frame["rank"] == saved_r)]
        for r_ in own.itertuples():
            metrics.append(
                Metric(r_.metric, r_.value, method=cfg.entry,
                       level=None if pd.isna(r_.level) else float(r_.level))
            )  # fmt: skip
        metrics += [
            Metric("predictor_rank", saved_r, **kw),
            Metric("predictor_params", sum(int(p) for p in _params(out, n_layers, method)), **kw),
            Metric("fit_s", fit_s, **kw),
        ]
        log.info("%s: overall (rank %d)\n%s", cfg.entry, saved_r, own.to_string(index=False))
    if not mcfg.keep_labels:
        shutil.rmtree(out / "labels")
    return StageResult(metrics, artifacts)


def _params(out: Path, n_layers: int, method) -> list[int]:
    """Parameters the predictor adds per layer (0 when it reuses the model's weights)."""
    if not method.has_weights:
        return [0]
    return [
        sum(t.numel() for t in load_tensors(weights_path(out, layer)).values())
        for layer in range(n_layers)
    ]


if __name__ == "__main__":
    main("predictors", PredictorsJob, run)
