"""Decompose's peak memory is the model plus one layer's covariances, whatever the depth.

Builds random Llama models of one width at two depths, writes a calibration folder for
each exactly as the calibrate stage does (per-layer float64 `X^T X` from random
activations, through `calibrate.write_layer`), and runs the decompose stage's
`decompose_model` (SVD-LLM, R = 0.2) in a fresh process per depth, reading its peak RSS
from the kernel. If covariances were held for all layers at once, the excess over the
model's weights would grow with depth; read layer by layer, it stays flat. (Loading a
checkpoint holds its file pages beside the weights, so the flat part is the excess over
twice the model's bytes: `excess_over_2x_model_mb`.)
Prints a table and appends to benchmarks/results/decompose_memory.parquet.

    python benchmarks/decompose_memory.py [--width 1024 --ffn 2752 --depths 2 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from provenance import RESULTS, provenance

from actsparse.activation_stats import SiteStats, log_bin_edges
from actsparse.models.adapters import adapter_for, linear_shape
from actsparse.stages.calibrate import write_layer
from actsparse.tables import LINEARS, write_table

CHILD = """
import sys
from actsparse.models import load_model
from actsparse.stages.decompose import CalibrationReader, DecomposeJob, decompose_model
model, adapter = load_model(sys.argv[1])
cfg = DecomposeJob(entry="svdllm", method={"method": "svdllm"}, ratio=0.2)
decompose_model(model, adapter, cfg, CalibrationReader(sys.argv[2]))
"""


def build(folder: Path, width: int, ffn: int, depth: int, tokens: int) -> int:
    """A random model and its calibration under `folder`; returns the model's bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1024, hidden_size=width, intermediate_size=ffn, num_hidden_layers=depth,
        num_attention_heads=8, max_position_embeddings=256,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder / "model")
    adapter = adapter_for("llama")
    edges = log_bin_edges(64, 1e-6, 1e4)
    rows = []
    for layer in range(depth):
        sites, linears = {}, {}
        for site, mods in adapter.site_linears(model, layer).items():
            n = linear_shape(mods[0][1])[0]
            s = sites[site] = SiteStats(n, edges, 1e-3)
            s.update(torch.randn(tokens, n) * torch.logspace(0, -1, n))
            linears[site] = [name for name, _ in mods]
            for name, mod in mods:
                n_in, n_out = linear_shape(mod)
                rows.append(
                    dict(layer=layer, site=site, linear=name, in_features=n_in, out_features=n_out)
                )
        write_layer(folder / "calibration", layer, sites, linears)
    write_table(pd.DataFrame(rows), folder / "calibration" / "linears.parquet", LINEARS)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--ffn", type=int, default=2752)
    p.add_argument("--depths", type=int, nargs="+", default=[2, 8])
    p.add_argument("--tokens", type=int, default=4096)
    args = p.parse_args()
    rows = []
    one_layer = 8 * (args.width**2 * 3 + args.ffn**2)  # the float64 Grams of one layer's sites
    for depth in args.depths:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            model_bytes = build(folder, args.width, args.ffn, depth, args.tokens)
            t = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(folder / "model"), str(folder / "calibration")],
                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(proc.stderr.read().decode()[-3000:])
            peak = usage.ru_maxrss / 1024
            rows.append(
                dict(
                    depth=depth,
                    width=args.width,
                    ffn=args.ffn,
                    model_mb=model_bytes / 2**20,
                    one_layer_grams_mb=one_layer / 2**20,
                    peak_rss_mb=peak,
                    excess_over_model_mb=peak - model_bytes / 2**20,
                    excess_over_2x_model_mb=peak - 2 * model_bytes / 2**20,
                    seconds=time.perf_counter() - t,
                )  # fmt: skip
            )
            print(rows[-1], file=sys.stderr)
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "decompose_memory.parquet"
    frame = frame.assign(**provenance())
    if path.exists():
        frame = pd.concat([pd.read_parquet(path), frame], ignore_index=True)
    frame.to_parquet(path, index=False)


if __name__ == "__main__":
    main()
