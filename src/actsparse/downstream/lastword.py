"""`lastword`: LAMBADA-style last-word prediction on held-out paragraphs of the study corpus.

An item is one paragraph of the held-out split (text between blank lines) with at least
`MIN_CONTEXT_WORDS` words before its last one: the context is the paragraph up to its
last word, at most its last `MAX_CONTEXT_WORDS` whitespace-separated words (LAMBADA's
passages hold ~75 words), the target that word (with the whitespace before it, as
LAMBADA's " word"), trailing punctuation dropped. The cap keeps a request short: the
harness takes the log-softmax over the whole vocabulary at every position of a request,
and a 1,000-token WikiText-2 paragraph made one SmolLM2 batch take a minute. The score is LAMBADA's: the share of items whose target the
model predicts exactly under greedy decoding (lm-evaluation-harness's `acc` of a
`loglikelihood` task, `is_greedy`). Unlike LAMBADA, the paragraphs are not filtered for
words that need the whole context: the task measures what sparsity does to a model's
prediction of a whole word on the very text whose perplexity the job reports.

The text is the whole held-out split as the data job tokenized it, decoded (the tokens
the perplexity windows are cut from; perplexity reads the first `evaluate.max_tokens`),
in corpus order, cut at document separators. Every variant of
a study reads the same items (`items` is deterministic), and each evaluate job writes
them beside its metrics (`lastword.jsonl`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import yaml

from actsparse.io import write_text
from actsparse.schema.stages import LASTWORD

MIN_CONTEXT_WORDS = 20  # fewer leave little context to predict from
MAX_CONTEXT_WORDS = 100
_PARAGRAPHS = re.compile(r"\n[ \t]*\n")
_LAST_WORD = re.compile(r"(\s*)(\w+)\W*\Z")
_WORD = re.compile(r"\w+")
_CHUNK = re.compile(r"\S+")


def _in_brackets(text: str, start: int, end: int) -> bool:
    return text[start - 1 : start] == "<" and text[end : end + 1] == ">"


def paragraphs(doc: str, min_words: int = MIN_CONTEXT_WORDS) -> list[str]:
    """The paragraphs of a document: blocks of text between blank lines, and the lines of
    a block whose lines are paragraphs themselves (at least `min_words` words a line on
    average: prose with one paragraph per line, as WikiText's; code and verse keep their
    blocks whole)."""
    out = []
    for block in _PARAGRAPHS.split(doc):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if len(lines) > 1 and len(_WORD.findall(block)) >= min_words * len(lines):
            out += lines
        elif lines:
            out.append(block)
    return out


def items_from_text(
    docs: list[str], min_words: int = MIN_CONTEXT_WORDS, max_words: int = MAX_CONTEXT_WORDS
) -> list[dict[str, str]]:
    """{context, target} for each paragraph of `docs` with at least `min_words` words
    before its last word (the context: at most the last `max_words` of them), in order.
    A last word in angle brackets is markup, not a word (WikiText's `<unk>`): no item."""
    out = []
    for doc in docs:
        for para in paragraphs(doc, min_words):
            para = para.strip()
            m = _LAST_WORD.search(para)
            if m is None or _in_brackets(para, m.start(2), m.end(2)):
                continue
            context = para[: m.start()]
            if len(_WORD.findall(context)) < min_words:
                continue
            starts = [c.start() for c in _CHUNK.finditer(context)]
            if len(starts) > max_words:
                context = context[starts[-max_words] :]
            out.append({"context": context, "target": m.group(1) + m.group(2)})
    return out


def held_out_docs(tokens: np.ndarray, tokenizer) -> list[str]:
    """The documents of a split's tokens: cut at the tokenizer's special tokens (the data
    stage puts EOS between documents), each decoded."""
    special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    cuts = np.flatnonzero(np.isin(tokens, special))
    bounds = [-1, *cuts.tolist(), len(tokens)]
    return [
        tokenizer.decode(tokens[a + 1 : b].tolist())
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a + 1
    ]


def task_yaml(data_file: Path) -> dict:
    """The lm-evaluation-harness task over `data_file` (JSON lines of context, target)."""
    return {
        "task": LASTWORD,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "output_type": "loglikelihood",
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{target}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "context_words": [MIN_CONTEXT_WORDS, MAX_CONTEXT_WORDS]},
    }


def write_task(items: list[dict[str, str]], data_file: Path, task_dir: Path) -> None:
    """The items as JSON lines at `data_file` and the task's YAML in `task_dir` (a folder
    for the harness's include_path)."""
    if not items:
        raise ValueError(
            f"{LASTWORD}: the held-out split has no paragraph with {MIN_CONTEXT_WORDS} words "
            "before its last word; leave the task out of evaluate.tasks for this corpus"
        )
    write_text(data_file, "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    write_text(task_dir / f"{LASTWORD}.yaml", yaml.safe_dump(task_yaml(data_file), sort_keys=False))
