"""The `data` group: a corpus (stdlib files, pydoc, local files or a Hugging Face
dataset), how its splits are carved, and the tokenizer trained on it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING


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
