"""Kernels that turn activation sparsity into speed.

Each file holds one kernel: the Triton kernel (CUDA; CPU tensors under Triton's
interpreter), its PyTorch reference in float64, a CPU path that needs no Triton, and a
`torch.library` op (`torch.ops.actsparse.*`) that picks the path by device and that
`torch.compile` traces through. Inputs are checked on the host before any launch
(`KernelInputError`).

- `input_sparse_gemv`: TEAL-style decode GEMV that skips weight rows whose input is zero.
- `neuron_sparse_ffn`: Deja Vu/CATS-style FFN on its active neurons (mask or predicted indices).
- `fused_stat_topk`: Spark's statistical top-k, fused into one pass.
"""

from .checks import KernelInputError
from .sparse_ffn import neuron_sparse_ffn
from .sparse_gemv import input_sparse_gemv, transpose_for_sparse
from .stat_topk import fused_stat_topk

__all__ = [
    "KernelInputError",
    "input_sparse_gemv",
    "fused_stat_topk",
    "neuron_sparse_ffn",
    "transpose_for_sparse",
]
