"""Where calibrated thresholds miss their target: on the calibration tokens themselves,
on other text of the calibration split, and on the held-out split.

Reads a finished study (default: the quickstart in ./data), applies each sparsify job's
plan to its model and counts the zeros on 16,384 tokens of each kind; prints the worst
|achieved - max(target, natural)| per variant (site and layer) and appends the rows to
benchmarks/results/sparsity_shift.parquet.

    python benchmarks/sparsity_shift.py --root data/quickstart --variants llama_tiny.teal.s50 llama_tiny.cats.s70
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
import yaml
from provenance import RESULTS, provenance

from actsparse.data import TokenData, batch_at
from actsparse.methods.sparsity.mechanism import SparsityPlan
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models import load_model
from actsparse.perplexity import windows

N_TOKENS = 16384


def worst_error(model, adapter, plan: SparsityPlan, batches) -> tuple[float, str, int]:
    handle = apply(model, adapter, plan)
    try:
        with torch.no_grad():
            for x in batches:
                model(input_ids=x, use_cache=False)
        a = handle.achieved()
    finally:
        handle.remove()
    err = (a.achieved - a[["target", "natural"]].max(axis=1)).abs()
    worst = a.loc[err.idxmax()]
    return 100 * float(err.max()), str(worst.site), int(worst.layer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data/quickstart")
    p.add_argument("--variants", nargs="+", help="sparsify variants (default: every one)")
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(args.root)
    rows = []
    for sp in sorted(root.glob("sparsify/*-*")):
        variant = sp.name.rsplit("-", 1)[0]
        if sp.name.endswith(".partial") or (args.variants and variant not in args.variants):
            continue
        spec = yaml.safe_load((sp / "config.yaml").read_text())
        model, adapter = load_model(spec["inputs"]["model"])
        plan = SparsityPlan.load(sp)
        data_dir = next(root.glob("data/*-*"))
        data = TokenData(data_dir)
        ctx = int(model.config.max_position_embeddings)
        train = torch.from_numpy(data.tokens("train"))
        method = spec["config"]["method"]
        seq = method.get("calib_seq_len") or spec["config"].get("window") or ctx
        n_cal = method.get("calib_tokens", N_TOKENS) // (8 * seq)
        kinds = {
            # the exact batches sequential calibration used
            "calibration tokens": [
                batch_at(train, b, 8, seq, spec["config"]["seed"]) for b in range(max(1, n_cal))
            ],
            "other train text": list(
                windows(data.tokens("train")[len(train) // 2 :], ctx, N_TOKENS).split(8)
            ),
            "held-out split": list(windows(data.tokens("test"), ctx, N_TOKENS).split(8)),
        }
        for kind, batches in kinds.items():
            pts, site, layer = worst_error(model, adapter, plan, batches)
            rows.append(
                {
                    "variant": variant,
                    "tokens": kind,
                    "worst_err_pts": pts,
                    "site": site,
                    "layer": layer,
                    **provenance(),
                }
            )
            print(f"{variant:30s} {kind:20s} {pts:6.2f} pts  ({site}, layer {layer})", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "sparsity_shift.parquet"
    old = pd.read_parquet(out) if out.exists() else pd.DataFrame()
    pd.concat([old, pd.DataFrame(rows)], ignore_index=True).to_parquet(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
