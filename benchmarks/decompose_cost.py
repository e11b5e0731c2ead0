"""Time and peak memory of low-rank decomposition on this machine's CPU.

Two measurements, each in a fresh process (peak RSS from the kernel, wait4):
- `matrix`: one Llama-7B-shaped FFN matrix, W 11008 x 4096 at R = 0.2, with a 4096 x 4096
  calibration covariance (from 8192 correlated random tokens), per method, float64;
- `study`: the decompose stage itself on a finished study's model and calibration (default
  the quickstart's Llama), per method at R = 0.2: the whole model, layer by layer.
Prints a table and appends to benchmarks/results/decompose_cost.parquet.

    python benchmarks/decompose_cost.py [--root data/quickstart] [--skip-matrix]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from provenance import RESULTS, provenance

# entry -> its method config (svdllm_eigh: svdllm with the eigendecomposition square root)
METHODS = {
    "svd": {"method": "svd"},
    "asvd": {"method": "asvd"},
    "svdllm": {"method": "svdllm"},
    "svdllm_eigh": {"method": "svdllm", "whitening": "eigh"},
    "nsvd": {"method": "nsvd"},
}

MATRIX_CHILD = """
import json, sys, time, torch
from actsparse.methods.lowrank import LOWRANK
from actsparse.methods.lowrank.base import LayerStats
from actsparse.methods.lowrank.linalg import rank_for_ratio
name, extra, m, n, t = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:6])
g = torch.Generator().manual_seed(0)
W = torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5
X = torch.randn(t, n, generator=g, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)
G = X.T @ X / t
stats = LayerStats(G, X.abs().mean(0), t)
del X
registered = extra.pop("method", name)
method = LOWRANK.get(registered)()
cfg = method.parse({"method": registered, **extra}, "bench")
k = rank_for_ratio(m, n, 0.2)
t0 = time.perf_counter()
A, B, _ = method.factorize(cfg, W, stats, k, "bench", {})
print(json.dumps({"seconds": time.perf_counter() - t0, "rank": k}))
"""


def run_child(cmd: list[str]) -> tuple[dict, float, float]:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{err[-3000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), usage.ru_maxrss / 1024, wall


STUDY_CHILD = """
import json, resource, sys, time
from actsparse.models import load_model
from actsparse.stages.decompose import CalibrationReader, DecomposeJob, decompose_model
model_dir, calib, name, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
model, adapter = load_model(model_dir)
method = extra.pop("method", name)
t0 = time.perf_counter()
table = decompose_model(model, adapter, DecomposeJob(entry=name, method={"method": method, **extra}, ratio=0.2), CalibrationReader(calib))
print(json.dumps({"seconds": time.perf_counter() - t0, "linears": len(table)}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data/quickstart", help="a finished study")
    p.add_argument("--model", default="llama_tiny")
    p.add_argument("--skip-matrix", action="store_true")
    p.add_argument("--shape", default="11008,4096,8192", help="m,n,tokens of the matrix test")
    args = p.parse_args()
    rows = []

    def measure(what: str, child: str, *argv: str, name: str, rank: float = float("nan")) -> None:
        """One method in a fresh process: its JSON line, peak RSS and wall time, as a row."""
        res, rss, wall = run_child([sys.executable, "-c", child, *argv])
        rows.append(
            dict(what=what, method=name, seconds=res["seconds"], wall_s=wall,
                 peak_rss_mb=rss, rank=res.get("rank", rank))
        )  # fmt: skip
        print(rows[-1], file=sys.stderr)

    if not args.skip_matrix:
        m, n, t = args.shape.split(",")
        for name, method in METHODS.items():
            measure(f"matrix {m}x{n}", MATRIX_CHILD, name, json.dumps(method), m, n, t, name=name)
    root = Path(args.root)
    done = lambda stage: sorted(  # noqa: E731
        d for d in (root / stage).glob(f"{args.model}-*") if not d.name.endswith(".partial")
    )
    cal, train = done("calibrate"), done("train")
    if cal and train:
        model = str(train[-1] / "model")
        for name, method in METHODS.items():
            measure(f"{root.name} {args.model}", STUDY_CHILD, model, str(cal[-1]), name,
                    json.dumps(method), name=name)  # fmt: skip
    else:
        print(f"no finished study at {root}: the study rows are skipped", file=sys.stderr)
    frame = pd.DataFrame(rows).assign(**provenance())
    print(
        frame.drop(columns=["machine", "date"]).to_string(
            index=False, float_format=lambda v: f"{v:.2f}"
        )
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "decompose_cost.parquet"
    if path.exists():
        frame = pd.concat([pd.read_parquet(path), frame], ignore_index=True)
    frame.to_parquet(path, index=False)


if __name__ == "__main__":
    main()
