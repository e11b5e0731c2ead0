"""The compiled CPU kernels (`csrc/sparse_cpu.cpp`): built on first use with
`torch.utils.cpp_extension` (g++ with OpenMP, tuned for this CPU; ~15 s), then loaded from
the build folder (`build_dir()`) in milliseconds.

They register two `torch.library` ops, `torch.ops.actsparse.sparse_linear` (the input-sparse
linear with its rule fused) and `torch.ops.actsparse.neuron_ffn`; their fake kernels below
let `torch.compile` trace through them. Where no compiler is found (or the build fails),
`load()` says once why and returns False, and the callers take their PyTorch paths (slower
at small shapes, the same results).

    actsparse kernels     # build now (a cluster's set-up does this once per kind of node)
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "sparse_cpu.cpp"
# the rule codes the C++ op takes (its header comment lists the same)
RULE_CODES = {"none": 0, "threshold": 1, "topk": 2, "weighted_topk": 3, "scored_threshold": 4}
DISABLE_ENV = "ACTSPARSE_NO_NATIVE"  # set to 1 to run the PyTorch paths (comparisons, debugging)
BUILD_ENV = "ACTSPARSE_KERNELS_DIR"  # where builds live (default ~/.cache/actsparse/kernels)
DTYPES = (torch.float32, torch.bfloat16)  # what the compiled ops take

_state: dict[str, object] = {}


def _cpu_signature() -> str:
    """What the build is tuned for: -march=native code faults on an older CPU, so a shared
    home directory on a mixed cluster keeps one build per kind of CPU."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    return f"{platform.machine()} {flags}"


def _cflags() -> list[str]:
    cflags = ["-O3", "-fopenmp", "-std=c++17"]
    if platform.machine() in ("x86_64", "AMD64"):
        cflags.append("-march=native")
    elif platform.machine() in ("aarch64", "arm64"):
        cflags.append("-mcpu=native")
    return cflags


def _name() -> str:
    """The build's name: its source, flags, torch and CPU in a hash, so a build is never
    loaded for anything but what it was made from."""
    text = f"{SOURCE.read_text()}{_cflags()}{torch.__version__}{_cpu_signature()}"
    return f"actsparse_cpu_{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def build_dir() -> Path:
    """Where builds live: $ACTSPARSE_KERNELS_DIR, else ~/.cache/actsparse/kernels."""
    root = os.environ.get(BUILD_ENV) or Path.home() / ".cache" / "actsparse" / "kernels"
    return Path(root) / _name()


def _build() -> None:
    """Load the published build of this source, or build it (the first time, ~15 s).

    A build happens in a folder of its own process and is published by renaming the
    library into `build_dir()`, then writing the `.done` marker: a build killed half-way
    leaves only its private folder (never loaded, never waited on), and two jobs that
    start at once each build and publish the same file."""
    folder = build_dir()
    library, done = folder / f"{_name()}.so", folder / ".done"
    if done.is_file() and library.is_file():
        torch.ops.load_library(str(library))
        return
    from torch.utils import cpp_extension

    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise RuntimeError("no C++ compiler on PATH (install g++, or set CXX)")
    folder.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix="build-", dir=folder))
    log.info("building the compiled CPU kernels in %s (once: ~15 s)", private)
    try:
        cpp_extension.load(  # loads the library it built into this process
            name=_name(),
            sources=[str(SOURCE)],
            extra_cflags=_cflags(),
            extra_ldflags=["-fopenmp"],
            build_directory=str(private),
            is_python_module=False,
            verbose=False,
        )
        os.replace(private / f"{_name()}.so", library)
        done.write_text(f"{_name()}\n")
    finally:
        shutil.rmtree(private, ignore_errors=True)


def load() -> bool:
    """Build (first time) and load the compiled ops; False, with the reason logged and
    warned once, where they cannot be had."""
    if "ok" in _state:
        return bool(_state["ok"])
    if os.environ.get(DISABLE_ENV) == "1":
        _state.update(ok=False, why=f"{DISABLE_ENV}=1")
        return False
    try:
        _build()
        _register_fakes()
        _state.update(ok=True, why="")
    except Exception as e:  # noqa: BLE001 - any build failure leaves the PyTorch paths
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        _state.update(ok=False, why=why)
        warnings.warn(
            "actsparse: the compiled CPU kernels are not available "
            f"({why}); sparse decode on CPU takes the slower PyTorch path",
            RuntimeWarning,
            stacklevel=2,
        )
    return bool(_state["ok"])


def takes(t: torch.Tensor) -> bool:
    """Whether the compiled ops run on `t`: a CPU tensor of float32 or bfloat16, the ops
    built and loaded (the first call builds them)."""
    return t.device.type == "cpu" and t.dtype in DTYPES and load()


def why_unavailable() -> str:
    """'' when the ops are loaded, else the reason (after `load()`)."""
    return str(_state.get("why", "not loaded yet"))


def describe() -> str:
    """Where the built ops live, or why there are none (after `load()`)."""
    if not _state.get("ok"):
        return f"unavailable ({why_unavailable()}); the PyTorch paths run"
    return f"loaded from {build_dir()}"


def _register_fakes() -> None:
    @torch.library.register_fake("actsparse::sparse_linear")
    def _sparse_linear_fake(x, weight_t, bias, rule, param, scale):
        return x.new_empty(x.shape[0], weight_t.shape[1])

    @torch.library.register_fake("actsparse::neuron_ffn")
    def _neuron_ffn_fake(x, w_in, w_up, w_out_t, idx, act, b_in, b_out):
        return x.new_empty(x.shape[0], w_out_t.shape[1])
