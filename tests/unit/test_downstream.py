"""Zero-shot tasks through the real lm-evaluation-harness on a trained micro model: the
harness on the in-memory model against the harness's own run from disk and against a
float64 computation; sparsity acting through it; the last-word task; the stage's rows."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from actsparse.data import TokenData
from actsparse.downstream import lastword
from actsparse.downstream.harness import run_tasks
from actsparse.models import load_model

N_ITEMS = 24


def write_mc_task(folder, lines: list[str], name: str = "nextline") -> None:
    """A local multiple-choice task over JSON lines: which of four lines follows a line
    (the true next line and three lines from elsewhere, the true one at rotating places)."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(N_ITEMS):
        j = 40 * i
        others = [lines[k] for k in rng.choice(len(lines), 3, replace=False)]
        label = i % 4
        choices = others[:label] + [lines[j + 1]] + others[label:]
        items.append({"context": lines[j], "choices": choices, "label": label})
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in items))
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task))


@pytest.fixture(scope="module")
def micro(smoke_outputs, shared_data, tmp_path_factory):
    from transformers import AutoTokenizer

    plan = smoke_outputs
    job = plan.evaluate("llama_micro")
    model, adapter = load_model(job.inputs["model"])
    data = TokenData(job.inputs["data"])
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    lines = [
        ln.strip()
        for ln in (shared_data / "tinyshakespeare" / "input.txt").read_text().splitlines()
        if len(ln.split()) >= 4
    ]
    folder = tmp_path_factory.mktemp("tasks")
    write_mc_task(folder, lines)
    return model, adapter, tokenizer, folder, job


def float64_scores(model, tokenizer, folder) -> tuple[float, float]:
    """acc and acc_norm computed here in float64, encoding each request as the harness
    does: context and " choice" encoded whole, the continuation the tokens past the
    context's; acc_norm divides by the choice's length in characters."""
    m64 = type(model)(model.config).double().eval()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    items = [json.loads(ln) for ln in (folder / "nextline.jsonl").read_text().splitlines()]
    acc = norm = 0
    for it in items:
        ctx = tokenizer(it["context"], add_special_tokens=False).input_ids
        ll = []
        for choice in it["choices"]:
            whole = tokenizer(it["context"] + " " + choice, add_special_tokens=False).input_ids
            ids = torch.tensor(whole)[-(model.config.max_position_embeddings + 1) :]
            n_cont = len(whole) - len(ctx)
            with torch.no_grad():
                logp = torch.log_softmax(m64(input_ids=ids[None, :-1]).logits[0], -1)
            cont = ids[-n_cont:]
            ll.append(float(logp[-n_cont:].gather(1, cont[:, None]).sum()))
        lengths = np.array([len(" " + c) for c in it["choices"]], dtype=float)
        acc += int(np.argmax(ll) == it["label"])
        norm += int(np.argmax(np.array(ll) / lengths) == it["label"])
    return acc / len(items), norm / len(items)


def test_harness_on_the_model_in_memory_equals_its_own_run_and_float64(micro):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model, _, tokenizer, folder, job = micro
    [ours] = run_tasks(model, tokenizer, ["nextline"], limit=None, batch_size=5,
                       local_paths=[folder])  # fmt: skip
    own = simple_evaluate(
        model="hf",
        model_args={"pretrained": job.inputs["model"], "device": "cpu"},  # its own load
        tasks=["nextline"],
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        log_samples=False,
    )["results"]["nextline"]
    r = ours.results["nextline"]
    assert ours.items == {"nextline": N_ITEMS} and ours.task == "nextline"
    assert r["acc"] == own["acc,none"] and r["acc_norm"] == own["acc_norm,none"]
    assert r["acc_stderr"] == pytest.approx(own["acc_stderr,none"], rel=1e-12)
    acc, acc_norm = float64_scores(model, tokenizer, folder)
    assert (r["acc"], r["acc_norm"]) == (acc, acc_norm)
    # the harness's standard error of a mean of 0/1 scores: sqrt(p (1 - p) / (n - 1))
    assert r["acc_stderr"] == pytest.approx(np.sqrt(acc * (1 - acc) / (N_ITEMS - 1)), rel=1e-9)


def test_sparsity_acts_through_the_harness_and_adds_nothing_at_level_0(micro):
    from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
    from actsparse.methods.sparsity.wrappers import apply
    from actsparse.models.adapters import LINEAR_SITES

    model, adapter, tokenizer, folder, _ = micro

    def score(level: float):
        placed = placed_for_sites(
            model, adapter, list(LINEAR_SITES), lambda *_: Rule("topk", level)
        )
        handle = apply(model, adapter, SparsityPlan("topk", "topk", level, placed))
        try:
            [s] = run_tasks(model, tokenizer, ["nextline"], limit=None, batch_size=4,
                            local_paths=[folder])  # fmt: skip
            achieved = handle.achieved()
        finally:
            handle.remove()
        return s.results["nextline"], achieved.zeros.sum() / achieved.total.sum()

    [dense] = run_tasks(model, tokenizer, ["nextline"], limit=None, batch_size=4,
                        local_paths=[folder])  # fmt: skip
    at0, _ = score(0.0)
    assert at0 == dense.results["nextline"]
    _, zeros = score(0.9)
    assert zeros == pytest.approx(0.9, abs=0.02)  # counted on the harness's requests


def test_last_word_items_are_paragraph_ends_with_enough_context():
    words = " ".join(f"w{i}" for i in range(20))
    docs = [
        f" = Heading = \n \n {words} the end . \n \n short one here .\n",
        f"{words} x.attribute\n\n{words}\n  last_word ) ;",
    ]
    assert lastword.items_from_text(docs) == [
        {"context": f"{words} the", "target": " end"},  # punctuation after the word dropped
        {"context": f"{words} x.", "target": "attribute"},  # no space before: none added
        {"context": words, "target": "\n  last_word"},  # the whitespace kept, as it is
    ]
    # WikiText: one paragraph per line; a last word that is markup (<unk>) is no item
    wiki = f" = Title = \n \n {words} one .\n {words} <unk> .\n {words} two .\n"
    assert lastword.items_from_text([wiki]) == [
        {"context": f"{words}", "target": " one"},
        {"context": f"{words}", "target": " two"},
    ]
    long = " ".join(f"v{i}" for i in range(150))
    assert lastword.items_from_text([f"{long} final."]) == [
        {"context": " ".join(f"v{i}" for i in range(50, 150)), "target": " final"}  # the last 100
    ]
    assert lastword.items_from_text(docs, min_words=21) == [
        {"context": f"{words} the", "target": " end"},
        {"context": f"{words} x.", "target": "attribute"},
    ]
    with pytest.raises(ValueError, match="no paragraph with 20 words"):
        lastword.write_task([], None, None)


def test_last_word_docs_are_the_held_out_text_cut_at_separators(micro):
    _, _, tokenizer, _, job = micro
    data = TokenData(job.inputs["data"])
    tokens = data.tokens("test")
    docs = lastword.held_out_docs(tokens, tokenizer)
    special = set(tokenizer.all_special_ids)
    runs = [
        list(run)
        for is_special, run in itertools.groupby(tokens.tolist(), key=special.__contains__)
        if not is_special
    ]
    assert len(docs) > 1 and docs == [tokenizer.decode(r) for r in runs]


def test_evaluate_stage_records_task_accuracy_and_its_cost(micro, smoke_outputs):
    """A sparsified variant with tasks: their rows and files, and the rest of the job's
    tables exactly as without tasks (the zeros are counted before the tasks run)."""
    from actsparse.stages import evaluate, sparsify
    from actsparse.stages.job import run_job
    from actsparse.tables import ACHIEVED_SPARSITY, METRICS, read_table

    _, _, _, folder, _ = micro
    plan = smoke_outputs
    run_job(plan.sparsify("llama_micro", "topk", 0.5), sparsify.SparsifyJob, sparsify.run)
    job = plan.evaluate_sparse("llama_micro", "topk", 0.5)
    cfg = json.loads(json.dumps(job.config))
    cfg["evaluate"]["decode_reps"] = 0
    plain = run_job(replace(job, config=cfg, output=job.output + "-plain"), evaluate.EvaluateJob,
                    evaluate.run)  # fmt: skip
    cfg["evaluate"].update(tasks=["lastword", "nextline"], task_limit=10, task_batch_size=4,
                           task_paths=[str(folder)])  # fmt: skip
    out = run_job(replace(job, config=cfg, output=job.output + "-tasks"), evaluate.EvaluateJob,
                  evaluate.run)  # fmt: skip
    achieved = [
        read_table(d / "achieved_sparsity.parquet", ACHIEVED_SPARSITY) for d in (plain, out)
    ]
    pd.testing.assert_frame_equal(*achieved)
    before = read_table(plain / "metrics.parquet", METRICS)
    after = read_table(out / "metrics.parquet", METRICS)
    timings = {"tokens_per_s", "wall_time_s", "peak_rss_mb"}
    keep = ~after.metric.str.contains(r"\.(lastword|nextline)$")
    same = ["metric", "method", "corpus", "value"]
    cmp = [f[~f.metric.isin(timings)][same].reset_index(drop=True) for f in (before, after[keep])]
    pd.testing.assert_frame_equal(*cmp)
    m = after.set_index("metric")["value"]
    for task in ("lastword", "nextline"):
        assert m[f"task_items.{task}"] == 10 and m[f"task_s.{task}"] > 0
        assert 0 <= m[f"acc.{task}"] <= 1 and m[f"acc_stderr.{task}"] >= 0
    assert "acc_norm.nextline" in m and "acc_norm.lastword" not in m
    record = json.loads((out / "tasks.json").read_text())
    assert [r["task"] for r in record] == ["lastword", "nextline"]
    items = [json.loads(ln) for ln in (out / "lastword.jsonl").read_text().splitlines()]
    assert len(items) >= 10 and all(set(it) == {"context", "target"} for it in items)
