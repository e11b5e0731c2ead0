"""Atomic file and folder writes, and checked reads of tensors.

A job writes into `<out>.partial/` and renames it to `<out>/` as its last act, and every
single file is written to a temporary name and renamed: a killed job leaves nothing that
looks complete. Tensors are safetensors only (no pickle).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def partial_dir(out_dir: str | Path) -> Path:
    """The staging folder a job writes into before it is complete."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


def commit_dir(staging: Path, out_dir: str | Path) -> None:
    """Move a finished staging folder onto its final name (replacing an old output)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_tensors(path: str | Path, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupted file, or (by default) a
    tensor holding NaN or inf, is an error naming the file and the tensor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tensor file not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"corrupted or truncated safetensors file {path}: {e}") from None
    if check_finite:
        for key, t in tensors.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise FloatingPointError(f"non-finite values (NaN or inf) in {key!r} of {path}")
    return tensors


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"corrupted or truncated safetensors file {path}: {e}") from None
