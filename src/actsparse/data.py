"""Corpora (three sources, one interface) and the token shards the data stage writes.

Sources:
- `stdlib`: this Python installation's standard-library source files. Offline, needs
  nothing outside the repository and Python. Whole files are assigned to splits by a hash
  of their relative path, so held-out text never shares a file with training text.
- `pydoc`: English prose from the same installation: the Python Language Reference topics
  that `help()` shows (`pydoc_data.topics`, left out of `stdlib`). Offline; a corpus unlike
  the code the tiny models learn from, for out-of-distribution evaluation. Whole topics are
  assigned to splits by a hash of their name.
- `local`: plain-text files (train / valid / test).
- `hf`: a Hugging Face `datasets` dataset by name (WikiText-2, C4, or the `text` builder
  over local files, which is how the same code path is tested offline).

A split whose text the source does not provide is carved from the tail of train.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actsparse.schema.corpus import DataCfg
from actsparse.tables import DATA_MANIFEST, read_table

SPLITS = ("train", "valid", "test")
STDLIB_SKIP = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idle_test",
    "__pycache__",
    "encodings",
    "lib2to3",
    "pydoc_data",
    "ensurepip",
    "turtledemo",
}


@dataclass
class Corpus:
    """Documents per split, and the sha256 of each split's text."""

    docs: dict[str, list[str]]
    source: str
    description: str

    def sha256(self, split: str) -> str:
        h = hashlib.sha256()
        for doc in self.docs[split]:
            h.update(doc.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.hexdigest()

    @property
    def content_sha256(self) -> str:
        """One hash of the whole corpus (all splits): what `data.sha256` pins."""
        return hashlib.sha256("".join(self.sha256(s) for s in SPLITS).encode()).hexdigest()

    def n_chars(self, split: str) -> int:
        return sum(len(d) for d in self.docs[split])


def load_corpus(cfg: DataCfg) -> Corpus:
    if cfg.source == "stdlib":
        corpus = _stdlib_corpus(cfg)
    elif cfg.source == "pydoc":
        corpus = _pydoc_corpus(cfg)
    elif cfg.source == "local" and local_files_missing(cfg) and cfg.hf.path:
        corpus = _hf_corpus(cfg)  # the same corpus from the hub, where the files are not
    elif cfg.source == "local":
        corpus = _local_corpus(cfg)
    elif cfg.source == "hf":
        corpus = _hf_corpus(cfg)
    else:
        raise ValueError(f"data.source: unknown source {cfg.source!r}")
    for split in SPLITS:
        limit = getattr(cfg.max_chars, split)
        if limit is not None:
            corpus.docs[split] = _truncate(corpus.docs[split], limit)
        if not corpus.docs[split] or corpus.n_chars(split) == 0:
            raise ValueError(f"data: the {split} split of {corpus.description} is empty")
    if cfg.sha256 is not None and corpus.content_sha256 != cfg.sha256:
        raise ValueError(
            f"data.sha256: corpus content hash {corpus.content_sha256} differs from the pinned "
            f"{cfg.sha256} ({corpus.description})"
        )
    return corpus


def _truncate(docs: list[str], limit: int) -> list[str]:
    """The first `limit` characters of the documents; the last one kept is cut at a line end."""
    out, total = [], 0
    for doc in docs:
        room = limit - total
        if len(doc) > room:
            cut = doc.rfind("\n", 0, room)
            if cut > 0:
                out.append(doc[: cut + 1])
            break
        out.append(doc)
        total += len(doc)
    return out


def _split_of(relpath: str, holdout: float) -> str:
    u = int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) / 2**32
    return "test" if u < holdout else "valid" if u < 2 * holdout else "train"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_corpus(cfg: DataCfg) -> Corpus:
    root = stdlib_root()
    docs: dict[str, list[str]] = {s: [] for s in SPLITS}
    # files in the order of a hash of their path: a budget (max_chars) then takes a mix of
    # packages rather than the alphabetically first ones
    key = lambda p: hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest()  # noqa: E731
    seen: set[bytes] = set()
    for path in sorted(root.rglob("*.py"), key=key):
        rel = path.relative_to(root).as_posix()
        if STDLIB_SKIP.intersection(rel.split("/")[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        if text.strip() and digest not in seen:  # identical files would leak across splits
            seen.add(digest)
            docs[_split_of(rel, cfg.holdout_fraction)].append(text)
    if not docs["train"]:
        raise FileNotFoundError(f"data: no Python source files found under {root}")
    return Corpus(docs, "stdlib", f"Python standard library at {root}")


def _pydoc_corpus(cfg: DataCfg) -> Corpus:
    from pydoc_data.topics import topics

    docs: dict[str, list[str]] = {s: [] for s in SPLITS}
    for name in sorted(topics, key=lambda t: hashlib.sha256(t.encode()).hexdigest()):
        if topics[name].strip():
            docs[_split_of(name, cfg.holdout_fraction)].append(topics[name])
    return Corpus(docs, "pydoc", "Python Language Reference topics (pydoc_data.topics)")


def _carve(text: str, fraction: float) -> tuple[str, str]:
    """Split `text` into (head, tail) with the tail about `fraction` of it, at a line end."""
    cut = text.rfind("\n", 0, int(len(text) * (1 - fraction)))
    cut = cut + 1 if cut > 0 else int(len(text) * (1 - fraction))
    return text[:cut], text[cut:]


def local_files_missing(cfg: DataCfg) -> list[str]:
    """The splits whose local corpus file is named but absent."""
    return [
        split
        for split in SPLITS
        if (p := getattr(cfg.files, split)) is not None and not Path(p).expanduser().is_file()
    ]


def _local_corpus(cfg: DataCfg) -> Corpus:
    texts: dict[str, str | None] = {}
    for split in SPLITS:
        p = getattr(cfg.files, split)
        if p is None:
            texts[split] = None
            continue
        path = Path(p).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.files.{split}: corpus file not found: {p}")
        texts[split] = path.read_text(encoding="utf-8", errors="replace")
    return _from_texts(texts, cfg.holdout_fraction, "local", f"local files {cfg.files}")


def _from_texts(texts: dict[str, str | None], fraction: float, source: str, desc: str) -> Corpus:
    if texts["train"] is None:
        raise ValueError(f"data: {desc} has no train split")
    train = texts["train"]
    for split in ("test", "valid"):
        if texts[split] is None:
            train, texts[split] = _carve(train, fraction)
    texts["train"] = train
    return Corpus({s: [texts[s] or ""] for s in SPLITS}, source, desc)


def _hf_corpus(cfg: DataCfg) -> Corpus:
    import datasets

    h = cfg.hf
    texts: dict[str, str | None] = {}
    for split in SPLITS:
        name = h.splits.get(split)
        if name is None:
            texts[split] = None
            continue
        ds = datasets.load_dataset(
            h.path,
            h.name,
            revision=h.revision,
            data_files=dict(h.data_files) if h.data_files else None,
            split=name,
        )
        if h.text_field not in ds.column_names:
            raise KeyError(
                f"data.hf.text_field: {h.text_field!r} not in {h.path} columns {ds.column_names}"
            )
        limit = getattr(cfg.max_chars, split)
        rows, total = [], 0
        for row in ds[h.text_field]:
            rows.append(row)
            total += len(row) + 2
            if limit is not None and total > limit:
                break
        texts[split] = "\n\n".join(rows)  # the convention of the perplexity literature
    return _from_texts(
        texts, cfg.holdout_fraction, "hf", f"{h.path}/{h.name} (Hugging Face datasets)"
    )


# --------------------------------------------------------------------------- token shards


def batch_at(tokens, step: int, batch_size: int, seq_len: int, seed: int):
    """The (batch_size, seq_len) random windows of batch `step`: a pure function of
    (seed, step), so training resumes on the same batches and calibration is repeatable."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(tokens) - seq_len + 1, (batch_size,), generator=g)
    return tokens[starts[:, None] + torch.arange(seq_len)]  # (B, T)


class TokenData:
    """The data stage's output: tokenizer and checked token shards per split."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        self.manifest = read_table(self.dir / "manifest.parquet", DATA_MANIFEST)
        self.tokenizer_dir = self.dir / "tokenizer"
        self._cache: dict[str, np.ndarray] = {}

    @property
    def corpus(self) -> str:
        import yaml

        spec = yaml.safe_load((self.dir / "config.yaml").read_text())
        return str(spec["config"]["data"]["name"])

    def tokens(self, split: str) -> np.ndarray:
        """All tokens of a split (int64), each shard checked against its size and hash."""
        if split not in self._cache:
            rows = self.manifest[self.manifest.split == split].sort_values("shard")
            if rows.empty:
                raise ValueError(f"{self.dir / 'manifest.parquet'}: no shards for split {split!r}")
            parts = []
            for row in rows.itertuples():
                path = self.dir / row.path
                if not path.is_file():
                    raise FileNotFoundError(f"token shard missing: {path}")
                if hashlib.sha256(path.read_bytes()).hexdigest() != row.sha256:
                    raise ValueError(
                        f"token shard {path} does not match its sha256 in the manifest"
                    )
                arr = np.load(path, allow_pickle=False)
                if arr.shape != (row.n_tokens,):
                    raise ValueError(
                        f"token shard {path} has {arr.shape} tokens, manifest says {row.n_tokens}"
                    )
                parts.append(arr.astype(np.int64))
            self._cache[split] = np.concatenate(parts)
        return self._cache[split]
