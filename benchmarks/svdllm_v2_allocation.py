"""What SVD-LLM V2's allocation does on a study's model: every target linear's truncation
loss at the model-wide ratio and the ratio `1 / ln L` gives it, per type of linear
(spread of the losses, range of the ratios, how many hit `max_ratio`). Reads the model and
its calibrate job from a study's working folder (run the study, or entry_compare, first).
Prints a table and appends it to benchmarks/results/svdllm_v2_allocation.parquet.

    python benchmarks/svdllm_v2_allocation.py smollm2 --model smollm2 --ratios 0.2 0.4 \\
        --workdir ../study-smollm2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from provenance import append_rows, provenance

from actsparse.config import compose_study
from actsparse.methods.lowrank.base import TruncationLoss
from actsparse.methods.lowrank.linalg import rank_for_ratio
from actsparse.models import load_model_as
from actsparse.models.loader import LoadCfg
from actsparse.plan import StudyPlan
from actsparse.stages.decompose import CalibrationReader, _target_linears


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--model", required=True)
    p.add_argument("--ratios", nargs="+", type=float, default=[0.2])
    p.add_argument("--workdir", required=True, type=Path)
    args = p.parse_args()
    plan = StudyPlan(compose_study([f"experiment={args.experiment}"]))
    entry = next(e for e in plan.decompose_entries.values() if e.method == "svdllm_v2")
    load = plan.calibrate(args.model).config["load"]
    model, adapter = load_model_as(
        args.workdir / plan.model_path(args.model), LoadCfg(**load), device=torch.device("cpu")
    )
    calib = CalibrationReader(args.workdir / plan.calibrate(args.model).out_dir)
    method, cfg = entry.method_instance(), entry.cfg
    rows = []
    for ratio in args.ratios:
        losses = []
        for layer in range(len(adapter.layers(model))):
            stats = calib.layer(layer, cfg.sites())
            for site, name, _, W, where, cache in _target_linears(
                model, adapter, layer, stats, calib, "svdllm_v2"
            ):
                k = rank_for_ratio(*W.shape, ratio, where)
                loss = method.truncation_loss(cfg, W, stats[site], k, where, cache)
                losses.append(TruncationLoss(name, name.rsplit(".", 1)[-1], W.numel(), loss))
        ratios = method.allocate(cfg, losses, ratio)
        frame = pd.DataFrame(
            [(x.kind, x.loss, ratios[x.linear]) for x in losses], columns=["kind", "loss", "r"]
        )
        for kind, g in frame.groupby("kind", sort=False):
            rows.append({
                "ratio": ratio, "kind": kind, "linears": len(g),
                "loss_min": g.loss.min(), "loss_median": g.loss.median(), "loss_max": g.loss.max(),
                "r_min": g.r.min(), "r_max": g.r.max(), "capped": int((g.r >= cfg.max_ratio - 1e-12).sum()),
            })  # fmt: skip
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    meta = {"experiment": args.experiment, "model": args.model, **provenance()}
    append_rows(table.assign(**meta), "svdllm_v2_allocation")


if __name__ == "__main__":
    main()
