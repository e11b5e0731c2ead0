"""Checks every kernel entry point runs before launch: a bad shape, dtype, mask or index
is a `KernelInputError` naming the argument, never a silent wrong result or a device fault.
"""

from __future__ import annotations

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class KernelInputError(ValueError):
    """An input a kernel cannot take; raised on the host, before anything is launched."""


def _names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_float(op: str, name: str, t: torch.Tensor, ndim: int | tuple[int, ...]) -> None:
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{op}: `{name}` must be a tensor, got {type(t).__name__}")
    if t.dtype not in DTYPES:
        raise KernelInputError(
            f"{op}: `{name}` has dtype {str(t.dtype).removeprefix('torch.')}; "
            f"supported: {_names(DTYPES)}"
        )
    if t.ndim not in ndims:
        raise KernelInputError(
            f"{op}: `{name}` must have {' or '.join(map(str, ndims))} dims, got shape {tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise KernelInputError(f"{op}: `{name}` is empty (shape {tuple(t.shape)})")


def check_same(op: str, **tensors: torch.Tensor | None) -> None:
    """Every given tensor on one device and (floating ones) in one dtype."""
    given = {k: v for k, v in tensors.items() if v is not None}
    devices = {str(v.device) for v in given.values()}
    if len(devices) > 1:
        where = ", ".join(f"{k} on {v.device}" for k, v in given.items())
        raise KernelInputError(f"{op}: inputs on different devices ({where})")
    dtypes = {v.dtype for v in given.values() if v.is_floating_point()}
    if len(dtypes) > 1:
        which = ", ".join(f"{k} {str(v.dtype).removeprefix('torch.')}" for k, v in given.items())
        raise KernelInputError(f"{op}: inputs in different dtypes ({which})")


def check_dim(op: str, name: str, got: int, want: int, what: str) -> None:
    if got != want:
        raise KernelInputError(f"{op}: `{name}` has {got} {what}, expected {want}")


def active_indices(
    op: str, d_ff: int, idx: torch.Tensor | None, mask: torch.Tensor | None
) -> torch.Tensor:
    """The active neurons as sorted unique int32 indices, from indices or a boolean mask.

    A mask of shape (B, d_ff) is the union over the batch: a neuron any row needs is
    computed for every row, so each row gets the exact result on its own active set plus
    the other rows' (never fewer neurons than it asked for).
    """
    if (idx is None) == (mask is None):
        raise KernelInputError(f"{op}: give exactly one of `idx` (active neurons) or `mask`")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise KernelInputError(
                f"{op}: `mask` must be bool, got {str(mask.dtype).removeprefix('torch.')}"
            )
        if mask.ndim not in (1, 2) or mask.shape[-1] != d_ff:
            raise KernelInputError(
                f"{op}: `mask` has shape {tuple(mask.shape)}; expected ({d_ff},) or (batch, {d_ff})"
            )
        union = mask if mask.ndim == 1 else mask.any(dim=0)
        return union.nonzero().flatten().to(torch.int32)
    if idx.dtype not in (torch.int32, torch.int64) or idx.ndim != 1:
        raise KernelInputError(
            f"{op}: `idx` must be a 1-d int32/int64 tensor, got {str(idx.dtype).removeprefix('torch.')} "
            f"of shape {tuple(idx.shape)}"
        )
    if idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= d_ff:
            raise KernelInputError(
                f"{op}: `idx` out of range: values in [{lo}, {hi}], d_ff is {d_ff}"
            )
    return torch.unique(idx).to(torch.int32)
