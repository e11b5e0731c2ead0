"""Data stage: corpus -> tokenizer -> token shards + a Parquet manifest.

Outputs (in the job folder): `tokenizer/` (a Hugging Face tokenizer folder),
`tokens/<split>_<shard>.npy`, `manifest.parquet` (schema `tables.DATA_MANIFEST`) and
`corpus.json` (source, the corpus content hash, per-split hashes and sizes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from actsparse.data import SPLITS, Corpus, load_corpus
from actsparse.faults import kill_point
from actsparse.io import atomic_path, write_text
from actsparse.schema.corpus import DataCfg
from actsparse.stages.job import Metric, StageResult, main
from actsparse.tables import DATA_MANIFEST, write_table

log = logging.getLogger("actsparse.data")
EOS = "<|endoftext|>"


@dataclass
class DataJob:
    data: DataCfg = field(default_factory=DataCfg)
    # a checkpoint's own tokenizer: {path, revision, trust_remote_code}, or {input: name}
    # for the folder of an upstream job (an imported GGUF)
    tokenizer_from: dict[str, Any] | None = None
    seed: int = 0


def train_bpe(docs: list[str], vocab_size: int, min_frequency: int):
    """A byte-level BPE tokenizer trained on `docs`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None
    )


def load_model_tokenizer(source: dict[str, Any]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        source["path"],
        revision=source.get("revision"),
        trust_remote_code=bool(source.get("trust_remote_code", False)),
    )


def adds_bos(tokenizer) -> bool:
    """Whether `tokenizer(text)` starts with BOS (Llama-2's does; SmolLM2's GGUF tokenizer
    has a BOS token but does not add it; our BPE's BOS is its EOS)."""
    bos = tokenizer.bos_token_id
    if bos is None or tokenizer.bos_token == EOS:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos


def encode_split(tokenizer, docs: list[str], separate_docs: bool, batch: int = 64) -> np.ndarray:
    """Token ids of a split: BOS once at the start if the tokenizer adds one itself, EOS
    between documents when documents are separate files.

    Each document is encoded whole, in one call: cutting it would change the tokens at the
    cuts (SentencePiece tokenizers add a leading space marker per call), and the result
    must equal `tokenizer(text)` as the perplexity literature computes it.
    """
    backend = tokenizer.backend_tokenizer
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    if adds_bos(tokenizer):
        ids.append(tokenizer.bos_token_id)
    bar = tqdm(total=len(docs), desc="tokenize", unit="doc", leave=False, mininterval=2)
    for start in range(0, len(docs), batch):
        for i, enc in enumerate(
            backend.encode_batch(docs[start : start + batch], add_special_tokens=False)
        ):
            ids.extend(enc.ids)
            if separate_docs and eos is not None and start + i < len(docs) - 1:
                ids.append(eos)
        bar.update(min(batch, len(docs) - start))
    bar.close()
    return np.asarray(ids, dtype=np.int64)


def write_shards(
    out: Path,
    split: str,
    ids: np.ndarray,
    shard_tokens: int,
    vocab: int,
    corpus_sha: str,
    n_chars: int,
    source: str,
) -> list[dict[str, Any]]:
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    rows = []
    for shard, start in enumerate(range(0, len(ids), shard_tokens)):
        rel = f"tokens/{split}_{shard:04d}.npy"
        part = ids[start : start + shard_tokens].astype(dtype)
        with atomic_path(out / rel) as tmp, open(tmp, "wb") as f:
            np.save(f, part, allow_pickle=False)
        rows.append(
            {
                "split": split,
                "shard": shard,
                "path": rel,
                "n_tokens": len(part),
                "dtype": np.dtype(dtype).name,
                "sha256": hashlib.sha256((out / rel).read_bytes()).hexdigest(),
                "corpus_sha256": corpus_sha,
                "n_chars": n_chars,
                "source": source,
            }
        )
    return rows


def run(cfg: DataJob, inputs: dict[str, str], out: Path) -> StageResult:
    corpus: Corpus = load_corpus(cfg.data)
    log.info("corpus %s: %s", corpus.description, {s: corpus.n_chars(s) for s in SPLITS})
    if "tokenizer" in inputs:  # an extra evaluation corpus: the study's own tokenizer
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(Path(inputs["tokenizer"]) / "tokenizer")
    elif cfg.tokenizer_from:  # a checkpoint's own
        source = dict(cfg.tokenizer_from)
        if "input" in source:  # the folder of an upstream job (an imported GGUF)
            source = {"path": inputs[source["input"]]}
        tokenizer = load_model_tokenizer(source)
    elif cfg.data.tokenizer.kind == "bpe":
        tokenizer = train_bpe(
            corpus.docs["train"], cfg.data.tokenizer.vocab_size, cfg.data.tokenizer.min_frequency
        )
    else:
        raise ValueError("data.tokenizer.kind=model but the job names no model to take it from")
    tokenizer.save_pretrained(out / "tokenizer")
    vocab = len(tokenizer)

    rows, metrics = [], []
    for split in SPLITS:
        ids = encode_split(
            tokenizer, corpus.docs[split], separate_docs=corpus.source in ("stdlib", "pydoc")
        )
        if len(ids) < 2:
            raise ValueError(f"data: the {split} split has {len(ids)} tokens; need at least 2")
        sha = corpus.sha256(split)
        rows += write_shards(
            out, split, ids, cfg.data.shard_tokens, vocab, sha, corpus.n_chars(split), corpus.source
        )
        kill_point("data.after_shards")
        metrics += [
            Metric("n_tokens", len(ids), split=split, corpus=cfg.data.name),
            Metric("n_chars", corpus.n_chars(split), split=split, corpus=cfg.data.name),
        ]
    write_table(pd.DataFrame(rows), out / "manifest.parquet", DATA_MANIFEST)
    info = {
        "name": cfg.data.name,
        "source": corpus.source,
        "description": corpus.description,
        "content_sha256": corpus.content_sha256,
        "splits": {
            s: {
                "sha256": corpus.sha256(s),
                "n_chars": corpus.n_chars(s),
                "n_docs": len(corpus.docs[s]),
            }
            for s in SPLITS
        },
        "vocab_size": vocab,
    }
    write_text(out / "corpus.json", json.dumps(info, indent=2) + "\n")
    metrics.append(Metric("vocab_size", vocab, corpus=cfg.data.name))
    return StageResult(metrics, [out / "corpus.json", out / "manifest.parquet"])


if __name__ == "__main__":
    main("data", DataJob, run)
