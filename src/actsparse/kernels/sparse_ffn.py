"""Neuron-sparse FFN (Deja Vu / CATS style): compute only the active neurons.

    h = act(x W_in[idx]^T + b_in[idx]) [* (x W_up[idx]^T)]      (B, n_active)
    y = h W_out^T[idx] + b_out                                   (B, d)

The active set `idx` comes from a predictor (indices) or a mask (an oracle, a threshold);
a (B, d_ff) mask is the union over the batch, so every row is exact on its own neurons.
Gated FFNs (Llama, Mistral: SiLU(gate) * up) pass `w_up`; plain ones (OPT: ReLU(fc1)) do
not. `w_out_t` is the down projection transposed, (d_ff, d) contiguous, so an active
neuron is one contiguous row of each of the three matrices: a step reads `n_active / d_ff`
of the FFN's weight bytes.

Triton: one kernel gathers the gate/up rows and applies the activation in its epilogue;
the down projection is the input-sparse GEMV with the rows picked by `idx` (it also skips
neurons whose `h` is exactly zero, as ReLU makes). CPU: the compiled op of `native`
(`torch.ops.actsparse.neuron_ffn`: each active neuron's gate/up rows dotted in parallel,
the activation applied, its down row added), or, where it cannot be built, the rows
gathered in cache-sized chunks for gate/up and `embedding_bag` for down. `reference` is the float64 definition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import native, sparse_gemv
from .checks import KernelInputError, active_indices, check_dim, check_float, check_same
from .runtime import next_pow2, triton_runs_on

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

OP = "neuron_sparse_ffn"
# activation name (as in Hugging Face configs) -> the kernel's code
ACTS = {"relu": 0, "silu": 1, "gelu": 2, "relu2": 3, "gelu_new": 4, "gelu_pytorch_tanh": 4}


def activation(name: str, z: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return torch.relu(z)
    if name == "silu":
        return F.silu(z)
    if name == "gelu":
        return F.gelu(z)
    if name == "relu2":
        return torch.relu(z).square()
    return F.gelu(z, approximate="tanh")


def reference(
    x: torch.Tensor,
    w_in: torch.Tensor,
    w_up: torch.Tensor | None,
    w_out_t: torch.Tensor,
    idx: torch.Tensor,
    act: str,
    b_in: torch.Tensor | None = None,
    b_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The definition, in float64, on the neurons `idx`."""
    i = idx.long()
    z = x.double() @ w_in.double()[i].T
    if b_in is not None:
        z = z + b_in.double()[i]
    h = activation(act, z)
    if w_up is not None:
        h = h * (x.double() @ w_up.double()[i].T)
    y = h @ w_out_t.double()[i]
    return y + b_out.double() if b_out is not None else y


if triton is not None:

    @triton.jit
    def _act(z, ACT: tl.constexpr):
        if ACT == 0:
            z = tl.maximum(z, 0.0)
        elif ACT == 1:
            z = z * tl.sigmoid(z)
        elif ACT == 2:
            z = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
        elif ACT == 3:
            z = tl.maximum(z, 0.0)
            z = z * z
        else:
            inner = 0.7978845608028654 * (z + 0.044715 * z * z * z)
            z = 0.5 * z * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))  # tanh via sigmoid
        return z

    @triton.jit
    def _gather_rows_act_kernel(
        x_ptr,  # (B, D)
        w_in_ptr,  # (d_ff, D) contiguous
        w_up_ptr,  # (d_ff, D) contiguous (GATED)
        b_in_ptr,  # (d_ff,) (HAS_BIAS)
        idx_ptr,  # (n_active,) int32
        h_ptr,  # (B, n_active) float32
        B,
        D,
        n_active,
        stride_xb,
        stride_w,
        ACT: tl.constexpr,
        GATED: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_I: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_i = tl.program_id(0)
        pid_b = tl.program_id(1)
        offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        i_ok = offs_i < n_active
        b_ok = offs_b < B
        rows = tl.load(idx_ptr + offs_i, mask=i_ok, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_B, BLOCK_I), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_B, BLOCK_I), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs_d < D
            x = tl.load(
                x_ptr + offs_b[:, None] * stride_xb + offs_d[None, :],
                mask=b_ok[:, None] & d_ok[None, :],
                other=0.0,
            ).to(tl.float32)  # (BLOCK_B, BLOCK_D)
            w_off = rows[:, None] * stride_w + offs_d[None, :]
            w_ok = i_ok[:, None] & d_ok[None, :]
            w = tl.load(w_in_ptr + w_off, mask=w_ok, other=0.0).to(tl.float32)  # (BLOCK_I, BLOCK_D)
            acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
            if GATED:
                u = tl.load(w_up_ptr + w_off, mask=w_ok, other=0.0).to(tl.float32)
                acc_up += tl.sum(x[:, None, :] * u[None, :, :], axis=2)
        if HAS_BIAS:
            acc += tl.load(b_in_ptr + rows, mask=i_ok, other=0.0).to(tl.float32)[None, :]
        h = _act(acc, ACT)
        if GATED:
            h = h * acc_up
        tl.store(
            h_ptr + offs_b[:, None] * n_active + offs_i[None, :],
            h,
            mask=b_ok[:, None] & i_ok[None, :],
        )


def launch(x, w_in, w_up, w_out_t, idx, act, b_in=None, b_out=None) -> torch.Tensor:
    """The Triton path on checked inputs: `x` (B, d), `idx` int32 sorted unique."""
    if triton is None:
        raise KernelInputError(f"{OP}: Triton is not installed (pip install 'triton==3.7.1')")
    b, d = x.shape
    n = idx.numel()
    if n == 0:
        y = torch.zeros(b, w_out_t.shape[1], dtype=torch.float32, device=x.device)
        return (y + b_out.float() if b_out is not None else y).to(x.dtype)
    h = torch.empty(b, n, dtype=torch.float32, device=x.device)
    block_b = min(next_pow2(b), 16)
    block_i = min(64, next_pow2(n))
    block_d = max(16, min(128 // block_b, next_pow2(d)))
    grid = (triton.cdiv(n, block_i), triton.cdiv(b, block_b))
    _gather_rows_act_kernel[grid](
        x,
        w_in,
        w_up if w_up is not None else w_in,
        b_in if b_in is not None else w_in,
        idx,
        h,
        b,
        d,
        n,
        x.stride(0),
        w_in.stride(0),
        ACT=ACTS[act],
        GATED=w_up is not None,
        HAS_BIAS=b_in is not None,
        BLOCK_B=block_b,
        BLOCK_I=block_i,
        BLOCK_D=block_d,
    )
    out_dtype = torch.float32 if b_out is not None else x.dtype
    y = sparse_gemv.launch(h, w_out_t, idx=idx, out_dtype=out_dtype)
    return (y + b_out.float()).to(x.dtype) if b_out is not None else y


# gate/up rows gathered per CPU chunk: about 1 MiB of weights, so a chunk stays in cache
_CHUNK_BYTES = 1 << 20


def cpu_path(x, w_in, w_up, w_out_t, idx, act, b_in=None, b_out=None) -> torch.Tensor:
    """The compiled op (`native`) where it is built and takes the dtype; else PyTorch."""
    if native.takes(x):
        return torch.ops.actsparse.neuron_ffn(x, w_in, w_up, w_out_t, idx, ACTS[act], b_in, b_out)
    return torch_path(x, w_in, w_up, w_out_t, idx, act, b_in, b_out)


def torch_path(x, w_in, w_up, w_out_t, idx, act, b_in=None, b_out=None) -> torch.Tensor:
    b, d = x.shape
    n = idx.numel()
    rows_per_chunk = max(1, _CHUNK_BYTES // (d * w_in.element_size()))
    z = torch.empty(b, n, dtype=x.dtype)
    u = torch.empty(b, n, dtype=x.dtype) if w_up is not None else None
    buf = torch.empty(min(rows_per_chunk, max(n, 1)), d, dtype=w_in.dtype)
    i64 = idx.long()
    for c in range(0, n, rows_per_chunk):
        rows = i64[c : c + rows_per_chunk]
        w = buf[: rows.numel()]
        torch.index_select(w_in, 0, rows, out=w)
        z[:, c : c + rows.numel()] = x @ w.T
        if u is not None:
            torch.index_select(w_up, 0, rows, out=w)
            u[:, c : c + rows.numel()] = x @ w.T
    if b_in is not None:
        z += b_in[i64]
    h = activation(act, z)
    if u is not None:
        h = h * u
    y = sparse_gemv.torch_path(h, w_out_t, idx=i64)
    return y + b_out if b_out is not None else y


@torch.library.custom_op("actsparse::neuron_sparse_ffn", mutates_args=())
def _op(
    x: torch.Tensor,
    w_in: torch.Tensor,
    w_up: torch.Tensor | None,
    w_out_t: torch.Tensor,
    idx: torch.Tensor,
    act: str,
    b_in: torch.Tensor | None,
    b_out: torch.Tensor | None,
) -> torch.Tensor:
    return cpu_path(x, w_in, w_up, w_out_t, idx, act, b_in, b_out)


@_op.register_kernel("cuda")
def _op_cuda(x, w_in, w_up, w_out_t, idx, act, b_in, b_out):
    return launch(x, w_in, w_up, w_out_t, idx, act, b_in, b_out)


@_op.register_fake
def _op_fake(x, w_in, w_up, w_out_t, idx, act, b_in, b_out):
    return x.new_empty(x.shape[0], w_out_t.shape[1])


def check(x, w_in, w_up, w_out_t, act, b_in, b_out) -> None:
    check_float(OP, "x", x, (1, 2))
    for name, t, nd in (("w_in", w_in, 2), ("w_up", w_up, 2), ("w_out_t", w_out_t, 2)):
        if t is not None:
            check_float(OP, name, t, nd)
            if t.stride(1) != 1:
                raise KernelInputError(f"{OP}: `{name}` must be contiguous in its last dim")
    for name, t in (("b_in", b_in), ("b_out", b_out)):
        if t is not None:
            check_float(OP, name, t, 1)
    check_same(OP, x=x, w_in=w_in, w_up=w_up, w_out_t=w_out_t, b_in=b_in, b_out=b_out)
    d_ff, d = w_in.shape
    check_dim(OP, "x", x.shape[-1], d, "features (last dim); w_in is (d_ff, d)")
    if w_up is not None and tuple(w_up.shape) != (d_ff, d):
        raise KernelInputError(
            f"{OP}: `w_up` has shape {tuple(w_up.shape)}, expected ({d_ff}, {d})"
        )
    if tuple(w_out_t.shape) != (d_ff, d):
        raise KernelInputError(
            f"{OP}: `w_out_t` has shape {tuple(w_out_t.shape)}, expected ({d_ff}, {d}) "
            "(the down projection transposed)"
        )
    if b_in is not None:
        check_dim(OP, "b_in", b_in.shape[0], d_ff, "entries")
    if b_out is not None:
        check_dim(OP, "b_out", b_out.shape[0], d, "entries")
    if act not in ACTS:
        raise KernelInputError(f"{OP}: activation {act!r} is not supported ({', '.join(ACTS)})")
    if x.device.type == "cuda" and not triton_runs_on(x.device):
        raise KernelInputError(f"{OP}: CUDA tensors need Triton (pip install 'triton==3.7.1')")


def neuron_sparse_ffn(
    x: torch.Tensor,
    w_in: torch.Tensor,
    w_up: torch.Tensor | None,
    w_out_t: torch.Tensor,
    *,
    act: str,
    idx: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    b_in: torch.Tensor | None = None,
    b_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The FFN on its active neurons only; exactly one of `idx` (int, any order, repeats
    allowed) or `mask` (bool, (d_ff,) or (B, d_ff): the union is used) says which.

    x: (d,) or (B, d); w_in, w_up: (d_ff, d) as stored by Linear; w_out_t: (d_ff, d), the
    down projection transposed once (`transpose_for_sparse`). Returns x's shape and dtype.
    """
    check(x, w_in, w_up, w_out_t, act, b_in, b_out)
    rows = active_indices(OP, w_in.shape[0], idx, mask).to(x.device)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.ops.actsparse.neuron_sparse_ffn(x2, w_in, w_up, w_out_t, rows, act, b_in, b_out)
    return y.reshape(*x.shape[:-1], w_out_t.shape[1])
