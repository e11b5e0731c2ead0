"""Sparse kernels against the dense ones, measured side by side in one run.

- `gemv`: the input-sparse GEMV (TEAL) at Llama-7B FFN shapes, 4096 -> 11008 (gate/up) and
  11008 -> 4096 (down), against `F.linear` (cuBLAS on a GPU, oneDNN/MKL on CPU) at the
  same batch; the speedup as a fraction of the bandwidth limit `1 / (1 - s)`;
- `ffn`: the neuron-sparse SwiGLU FFN (Deja Vu/CATS), d 4096, d_ff 11008, against the
  dense FFN (three `F.linear`); its limit is `1 / (1 - s)` too (weights read);
- `stat_topk`: Spark's fused statistical top-k against `torch.topk` (values and indices)
  and against the top-K operator the sparsify stage uses (`topk` + scatter), d = 11008;
- `linear` (CPU): the compiled input-sparse linear with its rule fused
  (`torch.ops.actsparse.sparse_linear`: TEAL's threshold, Q-Sparse's top-K) against
  `F.linear`, at SmolLM2-135M's shapes (576 x 576, 576 x 1536, 1536 x 576) and Llama-7B's
  FFN shapes. Weights come from memory and the code from cache, as in a decode step: each
  call takes the next of enough copies of the weight to fill 512 MiB (no cache flush, which
  would also evict the interpreter and the dispatcher and time them cold).

Caches are flushed before every call, calls are interleaved (see
`actsparse.kernels.timing`). Batch > 1 rows share one sparsity pattern (Block Q-Sparse's
shared mask); `--pattern independent` gives each row its own (the kernels read the union).
Prints a table and appends to benchmarks/results/kernel_speed.parquet.

    python benchmarks/kernel_speed.py                      # every kernel, this machine
    python benchmarks/kernel_speed.py --kernels gemv --dtypes bfloat16 --batch 1 8
"""

from __future__ import annotations

import argparse
import platform
import sys

import pandas as pd
import torch
import torch.nn.functional as F
from provenance import RESULTS, provenance

from actsparse.kernels import (
    fused_stat_topk,
    input_sparse_gemv,
    native,
    neuron_sparse_ffn,
    transpose_for_sparse,
)
from actsparse.kernels.timing import interleaved
from actsparse.methods.sparsity import ops

SHAPES = [(4096, 11008), (11008, 4096)]  # (in, out): Llama-7B gate/up, down


def masks(b: int, n: int, level: float, shared: bool, count: int, gen) -> list[torch.Tensor]:
    """`count` random keep-masks (b, n) at `level`: a fresh pattern per call, so the kept
    rows differ from call to call as from token to token."""
    out = []
    for _ in range(count):
        rows = 1 if shared else b
        keep = torch.zeros(rows, n, dtype=torch.bool)
        for r in range(rows):
            keep[r, torch.randperm(n, generator=gen)[: n - int(level * n)]] = True
        out.append(keep.expand(b, n) if shared else keep)
    return out


def cycle(items):
    state = {"i": -1}

    def nxt():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return nxt


def row(
    kernel, shape, dtype, b, level, achieved, dense_s, sparse_s, baseline, device, path, pattern
):
    speedup = dense_s / sparse_s
    limit = 1.0 / (1.0 - achieved) if achieved < 1 else float("inf")
    return dict(
        kernel=kernel, shape=shape, dtype=str(dtype).removeprefix("torch."), batch=b, pattern=pattern,
        level=level, achieved=achieved, dense_us=dense_s * 1e6, sparse_us=sparse_s * 1e6,
        speedup=speedup, limit=limit, of_limit=speedup / limit, baseline=baseline,
        device=device, path=path,
    )  # fmt: skip


def bench_gemv(args, device, dtype, gen, rows):
    for k, n in SHAPES:
        w = torch.randn(n, k, generator=gen).to(dtype).to(device) / k**0.5
        wt = transpose_for_sparse(w)
        for b in args.batch:
            for level in args.levels:
                ms = masks(b, k, level, args.pattern == "shared", args.patterns, gen)
                xs = [(torch.randn(b, k, generator=gen) * m).to(dtype).to(device) for m in ms]
                achieved = float(sum((x == 0).all(0).float().mean() for x in xs) / len(xs))
                nx_d, nx_s = cycle(xs), cycle(xs)
                t = interleaved(
                    {"dense": lambda nx=nx_d, w=w: F.linear(nx(), w),
                     "sparse": lambda nx=nx_s, wt=wt: input_sparse_gemv(nx(), wt)},
                    device, reps=args.reps,
                )  # fmt: skip
                rows.append(row("input_sparse_gemv", f"{k}x{n}", dtype, b, level, achieved,
                                t["dense"], t["sparse"], "F.linear", device, path_of(device), args.pattern))  # fmt: skip
                print(rows[-1], file=sys.stderr)
        del w, wt


def bench_ffn(args, device, dtype, gen, rows):
    d, d_ff = 4096, 11008
    w_gate, w_up = (
        torch.randn(d_ff, d, generator=gen).to(dtype).to(device) / d**0.5 for _ in range(2)
    )
    w_down = torch.randn(d, d_ff, generator=gen).to(dtype).to(device) / d_ff**0.5
    w_down_t = transpose_for_sparse(w_down)

    def dense(x):
        return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)

    for b in args.batch:
        for level in args.levels:
            ms = [
                m.to(device)
                for m in masks(b, d_ff, level, args.pattern == "shared", args.patterns, gen)
            ]
            x = torch.randn(b, d, generator=gen).to(dtype).to(device)
            achieved = float(sum((~m.any(0)).float().mean() for m in ms) / len(ms))
            nm = cycle(ms)
            t = interleaved(
                {"dense": lambda x=x: dense(x),
                 "sparse": lambda x=x, nm=nm: neuron_sparse_ffn(x, w_gate, w_up, w_down_t, act="silu", mask=nm())},
                device, reps=args.reps,
            )  # fmt: skip
            rows.append(row("neuron_sparse_ffn", f"{d}x{d_ff}", dtype, b, level, achieved,
                            t["dense"], t["sparse"], "dense FFN", device, path_of(device), args.pattern))  # fmt: skip
            print(rows[-1], file=sys.stderr)


def bench_stat_topk(args, device, dtype, gen, rows):
    d = 11008
    for b in args.batch:
        for level in args.stat_levels:
            x = torch.randn(b, d, generator=gen).to(dtype).to(device)
            k = ops.keep_count(d, level)
            t = interleaved(
                {"stat": lambda x=x, s=level: fused_stat_topk(x, s),
                 "topk": lambda x=x, k=k: torch.topk(x, k, dim=-1),
                 "topk_op": lambda x=x, s=level: ops.topk(x, s)},
                device, reps=args.reps, flush=False,  # an activation row lives in cache
            )  # fmt: skip
            achieved = float((fused_stat_topk(x, level) == 0).float().mean())
            for base, name in (("topk", "torch.topk"), ("topk_op", "topk + scatter")):
                r = row("fused_stat_topk", f"{d}", dtype, b, level, achieved, t[base], t["stat"],
                        name, device, path_of(device), "rows")  # fmt: skip
                r["limit"] = r["of_limit"] = float("nan")  # not a bandwidth question
                rows.append(r)
                print(rows[-1], file=sys.stderr)


LINEAR_SHAPES = [(576, 576), (576, 1536), (1536, 576), (4096, 11008), (11008, 4096)]
POOL_BYTES = 512 << 20  # weight copies cycled per shape: larger than what caches hold


def bench_linear(args, device, dtype, gen, rows):
    if device != "cpu":
        return  # the compiled op is the CPU path; a GPU runs the Triton GEMV (`gemv`)
    from actsparse.kernels import sparse_linear

    if not native.load():
        print(f"linear: no compiled ops ({native.why_unavailable()})", file=sys.stderr)
        return
    for k, n in LINEAR_SHAPES:
        size = k * n * torch.tensor([], dtype=dtype).element_size()
        copies = max(2, -(-POOL_BYTES // size))
        ws = [torch.randn(n, k, generator=gen).to(dtype) / k**0.5 for _ in range(copies)]
        wts = [transpose_for_sparse(w) for w in ws]
        for b in args.batch:
            for level in args.levels:
                x = torch.randn(b, k, generator=gen).to(dtype)
                t_thr = float(
                    torch.special.ndtri(torch.tensor(0.5 + level / 2))
                )  # |N(0,1)| quantile
                keep = float(ops.keep_count(k, level))
                # one cycle for both sparse calls: each reads a copy nothing read since
                dense, sparse = cycle(ws), cycle(wts)
                op = sparse_linear.sparse_linear
                t = interleaved(
                    {"dense": lambda x=x, nx=dense: F.linear(x, nx()),
                     "threshold": lambda x=x, nx=sparse, t=t_thr, op=op: op(x, nx(), None, "threshold", t),
                     "topk": lambda x=x, nx=sparse, k=keep, op=op: op(x, nx(), None, "topk", k)},
                    device, reps=max(args.reps, 200), flush=False,
                )  # fmt: skip
                for rule in ("threshold", "topk"):
                    kept = sparse_linear.apply_rule(
                        x, rule, t_thr if rule == "threshold" else keep, None
                    )
                    achieved = float((kept == 0).all(0).float().mean())
                    rows.append(row(f"sparse_linear ({rule})", f"{k}x{n}", dtype, b, level, achieved,
                                    t["dense"], t[rule], "F.linear", device, "cpu (compiled)", "rows"))  # fmt: skip
                    print(rows[-1], file=sys.stderr)
        del ws, wts


def path_of(device: str) -> str:
    if device == "cuda":
        return "triton"
    return "cpu (compiled)" if native.load() else "cpu (embedding_bag)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernels", nargs="+", default=["gemv", "ffn", "stat_topk", "linear"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        help="default: bfloat16 float16 on GPU, float32 bfloat16 on CPU",
    )
    p.add_argument("--levels", nargs="+", type=float, default=[0.3, 0.5, 0.7, 0.9])
    p.add_argument("--stat-levels", nargs="+", type=float, default=[0.5, 0.92])
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--pattern", choices=["shared", "independent"], default="shared")
    p.add_argument("--patterns", type=int, default=16, help="sparsity patterns cycled through")
    p.add_argument(
        "--reps", type=int, default=None, help="calls per variant (default 200 GPU, 30 CPU)"
    )
    p.add_argument("--out", default=str(RESULTS / "kernel_speed.parquet"))
    args = p.parse_args()
    gpu = args.device == "cuda"
    args.reps = args.reps or (200 if gpu else 30)
    dtypes = [
        getattr(torch, n)
        for n in (args.dtypes or (["bfloat16", "float16"] if gpu else ["float32", "bfloat16"]))
    ]
    gen = torch.Generator().manual_seed(0)
    rows: list[dict] = []
    bench = {
        "gemv": bench_gemv,
        "ffn": bench_ffn,
        "stat_topk": bench_stat_topk,
        "linear": bench_linear,
    }
    for name in args.kernels:
        for dtype in dtypes:
            bench[name](args, args.device, dtype, gen, rows)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    machine = (
        torch.cuda.get_device_name()
        if gpu
        else f"{platform.processor() or platform.machine()} {torch.get_num_threads()} threads"
    )
    frame = pd.DataFrame(rows).assign(
        **provenance(), accelerator=machine, torch=torch.__version__, triton=triton_version
    )
    show = [
        "kernel",
        "shape",
        "dtype",
        "batch",
        "level",
        "achieved",
        "baseline",
        "dense_us",
        "sparse_us",
        "speedup",
        "limit",
        "of_limit",
    ]
    print(f"{machine}; torch {torch.__version__}; triton {triton_version}; {frame['date'].iloc[0]}")
    print(frame[show].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    out = pd.io.common.stringify_path(args.out)
    RESULTS.mkdir(exist_ok=True)
    try:
        old = pd.read_parquet(out)
        frame = pd.concat([old, frame], ignore_index=True)
    except FileNotFoundError:
        pass
    frame.to_parquet(out, index=False)
    print(f"appended {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
