"""Where the Triton kernels can run: on a CUDA GPU, or on CPU tensors under Triton's
interpreter (`TRITON_INTERPRET=1`, set before `triton` is imported: the tests do this).
Triton is optional (`pip install -e '.[gpu]'` on GPU nodes, `.[dev]` for the tests):
without it the ops take their PyTorch paths.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    """Whether a Triton kernel can take tensors on `device`."""
    if not have_triton():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors to fill (1 under the interpreter)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
