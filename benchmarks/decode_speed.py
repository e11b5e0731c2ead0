"""End-to-end decode speed of a real model with TEAL sparsity, on this machine's CPU: the
sparse variant against the dense model, step by step in turn in one process, through each
decode path this harness has had, so each change is measured on its own.

Paths (`kernels.decode`): `torch` (the rule in its wrapper, the `embedding_bag` GEMV: the
path before the compiled ops), `kernel` (the rule in its wrapper, the compiled GEMV on its
zeros), `fused` (the rule inside the compiled op); each with the model's `forward` (`hf`)
and with the flat step (`flat`, Llama family). The dense model is timed through the same
step (`hf` or `flat`), so every speedup is against a dense step with the same glue.

TEAL's rules: every block linear's input thresholded at its dense calibration quantile for
the level (`calibration: dense`, as TEAL's paper), from a calibrate job's histograms. With
no calibration (`--random`: a model of the checkpoint's shape with random weights, for a
GPU machine that cannot fetch weights) Q-Sparse's top-K at the level stands in: the same
bytes skipped, a rule of the same cost. The achieved sparsity is counted on the prompt; the
bound is what the bytes allow: dense bytes over the bytes read at that sparsity.

    python benchmarks/decode_speed.py ../study-smollm2/data/smollm2/import_gguf/*/model \\
        --calibration ../study-smollm2/data/smollm2/calibrate/smollm2-* --levels 0.5 0.9
    python benchmarks/decode_speed.py ../study-smollm2/data/smollm2/import_gguf/*/model \\
        --predicted --levels 0.5 0.9                          # Deja Vu's FFN masks
    python benchmarks/decode_speed.py benchmarks/configs/smollm2-135m --random --device cuda \\
        --dtypes bfloat16 --paths fused                       # a GPU machine (gpu_checks.sh)
"""

from __future__ import annotations

import argparse
import datetime as dt
import math

import pandas as pd
import torch
from provenance import append_rows, provenance

from actsparse.kernels import native
from actsparse.kernels.decode import PATHS, decode_latency
from actsparse.methods.sparsity.base import CalibrationStats
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models.adapters import LINEAR_SITES, linear_shape
from actsparse.models.loader import load_model


def teal_plan(model, adapter, stats: CalibrationStats | None, level: float) -> SparsityPlan:
    """TEAL at `level` on every block linear; top-K where there are no statistics."""

    def rule(layer: int, site: str, module: str) -> Rule:
        if stats is None:
            return Rule("topk", level)
        return Rule("threshold", level, stats.threshold(layer, site, level))

    placed = placed_for_sites(model, adapter, list(LINEAR_SITES), rule)
    return SparsityPlan("teal" if stats else "topk", "bench", level, placed)


def predicted_ffn(model, adapter, level: float, rank: int = 64):
    """Deja Vu's FFN sparsity as it runs at decode: each down projection reads a neuron
    mask that a rank-64 predictor computes from the FFN's input, installed as the
    predictors stage's jobs install theirs (`apply_predicted`). The predictors are random:
    this measures what the chosen neurons cost, not how well they are chosen."""
    from pathlib import Path

    from torch import nn

    from actsparse.methods.predictors.apply import PredictorSet, apply_predicted
    from actsparse.methods.predictors.labels import layer_widths

    torch.manual_seed(0)
    p = next(model.parameters())
    modules = [
        nn.Sequential(nn.Linear(d, rank, bias=False), nn.Linear(rank, units, bias=False)).to(p)
        for d, units in layer_widths(model, adapter, "mlp")
    ]
    meta = {"method": "dejavu", "entry": "bench", "target": "mlp"}
    return apply_predicted(model, adapter, PredictorSet(Path("."), meta, modules), level)


def random_model(folder: str, dtype: str, device: str):
    """A model of the checkpoint's shape (its config.json) with random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from actsparse.models import adapter_for
    from actsparse.models.loader import DTYPES

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype]).to(device).eval()
    return model, adapter_for(config.model_type)


def bytes_bound(model, adapter, skipped: float) -> float:
    """The step's dense weight reads over its reads with `skipped` parameters not read:
    the most a step can gain by reading less (embeddings' one row aside)."""
    block = sum(
        math.prod(linear_shape(m))
        for layer in range(len(adapter.layers(model)))
        for linears in adapter.site_linears(model, layer).values()
        for _, m in linears
    )
    head = model.lm_head.weight.numel()
    return (block + head) / (block + head - skipped)


@torch.no_grad()
def achieved(model, adapter, handle, context: int) -> tuple[float, float]:
    """(the fraction of the wrapped linears' weights the rules skip, the parameters not
    read) on a random prompt; a predicted FFN skips its gate and up rows with its down's."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, int(model.config.vocab_size), (1, context), generator=gen)
    model(input_ids=ids.to(next(model.parameters()).device))
    a = handle.achieved()
    size = a["module"].map(lambda m: math.prod(linear_shape(model.get_submodule(m))))
    skipped = float((a["achieved"] * size).sum())
    fraction = skipped / float(size.sum())
    if (a["rule"] == "predicted").all():
        skipped *= 3  # gate and up: as many parameters as the down projection
    return fraction, skipped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a save_pretrained folder (an import_gguf job's model/)")
    p.add_argument("--calibration", help="a calibrate job's folder (TEAL's thresholds)")
    p.add_argument("--random", action="store_true", help="random weights of the model's shape")
    p.add_argument(
        "--predicted", action="store_true",
        help="Deja Vu's FFN neuron masks (rank-64 random predictors) instead of TEAL",
    )  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.9])
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--steps", nargs="+", default=["hf", "flat"], choices=["hf", "flat"])
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args()

    print(f"compiled CPU ops: {native.describe() if native.load() else native.why_unavailable()}")
    stats = CalibrationStats(args.calibration) if args.calibration else None
    rows = []
    for dtype in args.dtypes:
        if args.random:
            model, adapter = random_model(args.model, dtype, args.device)
        else:
            model, adapter = load_model(args.model, dtype, device=args.device)
        for level in args.levels:
            if args.predicted:
                handle = predicted_ffn(model, adapter, level)
            else:
                handle = apply(model, adapter, teal_plan(model, adapter, stats, level))
            got, skipped = achieved(model, adapter, handle, args.context)
            for step in args.steps:
                for path in args.paths:
                    t = decode_latency(
                        model, handle, context=args.context, reps=args.reps, path=path,
                        flat=step == "flat",
                    )  # fmt: skip
                    rows.append(dict(
                        model=args.model, weights="random" if args.random else "checkpoint",
                        sparsity="predicted FFN" if args.predicted else handle.plan.method,
                        device=args.device,
                        dtype=dtype, level=level, achieved=got, step=step, path=path,
                        ms=1e3 * t.seconds, dense_ms=1e3 * t.dense_seconds, speedup=t.speedup,
                        bound=bytes_bound(model, adapter, skipped), threads=torch.get_num_threads(),
                        compiled=native.load(), reps=args.reps, context=args.context,
                        **provenance(),
                    ))  # fmt: skip
                    r = rows[-1]
                    print(
                        f"{dtype:9s} s={level:.2f} (got {got:.3f}) {step:4s} {path:6s} "
                        f"{r['ms']:7.2f} ms  dense {r['dense_ms']:7.2f} ms  "
                        f"{r['speedup']:5.2f}x  (bound {r['bound']:.2f}x)",
                        flush=True,
                    )
            handle.remove()
    table = pd.DataFrame(rows)
    print()
    print(table[["dtype", "level", "achieved", "step", "path", "ms", "dense_ms", "speedup", "bound"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))  # fmt: skip
    print(f"\n{dt.datetime.now():%Y-%m-%d %H:%M}, {torch.get_num_threads()} threads")
    append_rows(table, "decode_speed")


if __name__ == "__main__":
    main()
