"""Input-sparse GEMV for decoding (TEAL style): `y = x @ W^T` that skips the weight rows of
`W^T` whose input is zero, so a step at sparsity `s` reads `(1 - s)` of the weight bytes.

The weight is stored transposed, `weight_t = W^T` of shape (in, out), so each skipped
input is one contiguous row not read (`transpose_for_sparse` makes it once per model).

Batch > 1: a weight row is read when *any* row of the batch needs it (the union mask), and
every row multiplies its own inputs, so the result is exact for any batch; the saving
shrinks as the rows' patterns differ (Block Q-Sparse's shared pattern keeps it).

Paths: the Triton kernel on CUDA (and on CPU under Triton's interpreter, for the tests);
on CPU the compiled op of `native` (`torch.ops.actsparse.sparse_linear` with rule `none`),
or, where it cannot be built, `embedding_bag` (sum of the kept rows scaled by their
inputs), which reads only the kept rows too. `reference` is the float64 definition both are tested
against. Zero inputs are skipped, not multiplied: a skipped row holding inf/NaN does not
reach the output (dense would give NaN); a NaN *input* is never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import native
from .checks import KernelInputError, check_dim, check_float, check_same
from .runtime import next_pow2, sm_count, triton_runs_on

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the embedding_bag path
    triton = None

OP = "input_sparse_gemv"


def reference(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """The definition, in float64: `x @ weight_t` (zero inputs contribute nothing)."""
    return x.double() @ weight_t.double()


def transpose_for_sparse(weight: torch.Tensor) -> torch.Tensor:
    """A Linear's weight (out, in) as the kernel's contiguous (in, out) layout."""
    return weight.detach().t().contiguous()


@dataclass(frozen=True)
class GemvConfig:
    """Tile sizes: BLOCK_B batch rows x BLOCK_K inputs x BLOCK_N outputs per step, the
    input dim split over SPLIT_K programs (partial sums added atomically in float32)."""

    block_b: int
    block_k: int
    block_n: int
    split_k: int
    num_warps: int = 4


def pick_config(b: int, k: int, n: int, device: torch.device) -> GemvConfig:
    """Enough programs to fill the GPU: about 4 per SM, splitting the input dim when the
    output alone gives too few (11008 -> 4096 has 32 blocks of 128 outputs)."""
    block_b = min(next_pow2(b), 16)
    block_n = min(128, next_pow2(n))
    block_k = max(16, 64 // block_b)
    n_blocks = -(-n // block_n)
    split = max(1, min(-(-4 * sm_count(device) // n_blocks), k // (4 * block_k)))
    return GemvConfig(block_b, block_k, block_n, split)


if triton is not None:

    @triton.jit
    def _input_sparse_gemv_kernel(
        x_ptr,  # (B, K): the inputs, zeros skipped
        w_ptr,  # (rows, N) contiguous: W^T, or the rows picked by idx
        idx_ptr,  # (K,) int32: the weight row of each input (HAS_IDX)
        out_ptr,  # (B, N): float32 when SPLIT_K > 1 (atomic partial sums)
        B,
        K,
        N,
        stride_xb,
        stride_wk,
        HAS_IDX: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        pid_b = tl.program_id(2)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        b_ok = offs_b < B
        n_ok = offs_n < N
        k_span = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
        k_lo = pid_k * k_span
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_lo, k_lo + k_span, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            x = tl.load(
                x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :],
                mask=b_ok[:, None] & k_ok[None, :],
                other=0.0,
            ).to(tl.float32)  # (BLOCK_B, BLOCK_K)
            # the union over the batch: a row is read if any input in its column is nonzero
            live = k_ok & (tl.sum((x != 0.0).to(tl.int32), axis=0) > 0)  # (BLOCK_K,)
            if HAS_IDX:
                rows = tl.load(idx_ptr + offs_k, mask=k_ok, other=0).to(tl.int64)
            else:
                rows = offs_k.to(tl.int64)
            w = tl.load(
                w_ptr + rows[:, None] * stride_wk + offs_n[None, :],
                mask=live[:, None] & n_ok[None, :],
                other=0.0,
            ).to(tl.float32)  # (BLOCK_K, BLOCK_N): skipped rows are never read
            acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
        out = out_ptr + offs_b[:, None] * N + offs_n[None, :]
        ok = b_ok[:, None] & n_ok[None, :]
        if SPLIT_K == 1:
            tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=ok)
        else:
            tl.atomic_add(out, acc, mask=ok)


def launch(
    x: torch.Tensor,
    w: torch.Tensor,
    idx: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    config: GemvConfig | None = None,
) -> torch.Tensor:
    """The Triton kernel on checked 2-d inputs: `x` (B, K), `w` (rows, N); without `idx`
    rows = K, with it input k multiplies row `idx[k]`."""
    if triton is None:
        raise KernelInputError(f"{OP}: Triton is not installed (pip install 'triton==3.7.1')")
    b, k = x.shape
    n = w.shape[1]
    cfg = config or pick_config(b, k, n, x.device)
    out_dtype = out_dtype or x.dtype
    if cfg.split_k == 1:
        out = torch.empty(b, n, dtype=out_dtype, device=x.device)
    else:
        out = torch.zeros(b, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, cfg.block_n), cfg.split_k, triton.cdiv(b, cfg.block_b))
    _input_sparse_gemv_kernel[grid](
        x,
        w,
        idx if idx is not None else x,  # unread without HAS_IDX
        out,
        b,
        k,
        n,
        x.stride(0),
        w.stride(0),
        HAS_IDX=idx is not None,
        BLOCK_B=cfg.block_b,
        BLOCK_K=cfg.block_k,
        BLOCK_N=cfg.block_n,
        SPLIT_K=cfg.split_k,
        num_warps=cfg.num_warps,
    )
    return out if out.dtype == out_dtype else out.to(out_dtype)


def cpu_path(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """The compiled op (`native`, rule `none`) where it is built and takes the dtype; else
    the PyTorch path."""
    if idx is None and native.takes(x):
        return torch.ops.actsparse.sparse_linear(x, w, None, 0, 0.0, None)
    return torch_path(x, w, idx)


def torch_path(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """`embedding_bag`: each output row is the sum of the kept weight rows scaled by their
    inputs; only kept rows are read. A single row is split into one bag per thread (the
    bags run in parallel), then the partial rows are added."""
    b, k = x.shape
    rows, cols = (x != 0).nonzero(as_tuple=True)  # row-major: grouped by batch row
    weights = x[rows, cols]
    if idx is not None:
        cols = idx[cols].long()
    if b == 1:
        n_bags = max(1, min(torch.get_num_threads(), cols.numel()))
        offsets = torch.div(torch.arange(n_bags) * cols.numel(), n_bags, rounding_mode="floor")
    else:
        offsets = torch.zeros(b, dtype=torch.long)
        offsets[1:] = torch.bincount(rows, minlength=b).cumsum(0)[:-1]
    y = F.embedding_bag(cols, w, offsets, mode="sum", per_sample_weights=weights.to(w.dtype))
    return y.sum(0, keepdim=True, dtype=torch.float32).to(w.dtype) if b == 1 else y


@torch.library.custom_op("actsparse::input_sparse_gemv", mutates_args=())
def _op(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    return cpu_path(x, weight_t)


@_op.register_kernel("cuda")
def _op_cuda(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    return launch(x, weight_t)


@_op.register_fake
def _op_fake(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight_t.shape[1])


def check(x: torch.Tensor, weight_t: torch.Tensor) -> None:
    check_float(OP, "x", x, (1, 2))
    check_float(OP, "weight_t", weight_t, 2)
    check_same(OP, x=x, weight_t=weight_t)
    check_dim(OP, "x", x.shape[-1], weight_t.shape[0], "inputs (last dim); weight_t (in, out) rows")
    if weight_t.stride(1) != 1:
        raise KernelInputError(
            f"{OP}: `weight_t` must be contiguous (in, out); make it once with "
            "transpose_for_sparse(linear.weight)"
        )
    if x.device.type not in ("cpu", "cuda"):
        raise KernelInputError(f"{OP}: device {x.device} is not supported (cpu, cuda)")
    if x.device.type == "cuda" and not triton_runs_on(x.device):
        raise KernelInputError(f"{OP}: CUDA tensors need Triton (pip install 'triton==3.7.1')")


def input_sparse_gemv(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """`x @ weight_t` reading only the rows of `weight_t` whose input is nonzero.

    x: (K,) or (B, K); weight_t: (K, N) contiguous, same dtype (float16, bfloat16, float32)
    and device. Returns (N,) or (B, N) in x's dtype. A `torch.library` op
    (`torch.ops.actsparse.input_sparse_gemv`), so `torch.compile` traces through it.
    """
    check(x, weight_t)
    y = torch.ops.actsparse.input_sparse_gemv(x.reshape(-1, x.shape[-1]).contiguous(), weight_t)
    return y.reshape(*x.shape[:-1], weight_t.shape[1])
