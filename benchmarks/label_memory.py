"""Predictor label collection streams to disk: peak memory does not grow with the tokens.

Runs the predictors stage's `collect` (MLP labels of a random Llama) in a fresh process per
token count and reads its peak RSS from the kernel, next to the bytes the labels take on
disk. If the labels were held in memory, the peak would grow by about those bytes; written
one batch at a time to memory-mapped files, it stays flat. Prints a table and appends to
benchmarks/results/label_memory.parquet.

    python benchmarks/label_memory.py [--width 512 --ffn 1408 --depth 4 --tokens 16384 131072]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from provenance import RESULTS, provenance

CHILD = """
import resource, sys, torch
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM
from actsparse.methods.predictors.labels import LabelSpec, collect
from actsparse.models.adapters import adapter_for
width, ffn, depth, tokens = map(int, sys.argv[1:5])
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=width, intermediate_size=ffn,
    num_hidden_layers=depth, num_attention_heads=8, max_position_embeddings=256)).eval()
windows = torch.randint(0, 1024, (tokens // 256, 256))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
collect(model, adapter_for("llama"), windows, LabelSpec("mlp", "topk", 0.5), Path(sys.argv[5]),
        "heldout", 8, magnitudes=True)
print(before / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--ffn", type=int, default=1408)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--tokens", type=int, nargs="+", default=[16384, 131072])
    args = p.parse_args()
    rows = []
    for tokens in args.tokens:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.width), str(args.ffn), str(args.depth),
                 str(tokens), tmp],
                check=True, capture_output=True, text=True,
            ).stdout.split()  # fmt: skip
            disk = sum(f.stat().st_size for f in Path(tmp).rglob("*.npy")) / 2**20
        before, peak = float(out[-2]), float(out[-1])
        rows.append(dict(benchmark="label_memory", tokens=tokens, width=args.width,
                         ffn=args.ffn, depth=args.depth, labels_on_disk_mib=round(disk, 1),
                         rss_before_mib=round(before, 1), peak_rss_mib=round(peak, 1),
                         growth_mib=round(peak - before, 1), **provenance()))  # fmt: skip
    frame = pd.DataFrame(rows)
    print(frame.drop(columns=["benchmark"]).to_string(index=False))
    out = RESULTS / "label_memory.parquet"
    if out.exists():
        frame = pd.concat([pd.read_parquet(out), frame], ignore_index=True)
    frame.to_parquet(out, index=False)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
