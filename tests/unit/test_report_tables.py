"""The report's tables read the study's own corpus, even when calibration used another."""

from __future__ import annotations

import pandas as pd

from actsparse.results import evaluate_wide, main_corpus


def rows(*specs):
    cols = ["stage", "method", "variant", "level", "model", "corpus", "split", "metric", "value"]
    frame = pd.DataFrame([dict(zip(cols, s, strict=True)) for s in specs])
    return frame.assign(config_hash="h", mlflow_run_id="r")


def test_the_study_corpus_is_the_one_evaluate_marks_not_the_calibration_corpus():
    """7B presets calibrate on C4 and evaluate on WikiText-2 (and C4): the leaderboard is
    WikiText-2's."""
    summary = rows(
        ("calibrate", "dense", "llama", None, "llama", "c4", "train", "n_tokens", 1e6),
        ("evaluate", "dense", "llama", None, "llama", "wikitext2", "test", "study_corpus", 1.0),
        ("evaluate", "dense", "llama", None, "llama", "wikitext2", "test", "perplexity", 5.47),
        ("evaluate", "dense", "llama", None, "llama", "c4", "test", "perplexity", 7.26),
        ("evaluate", "dense", "llama", None, "llama", None, None, "decode_ms", 20.0),
    )
    assert main_corpus(summary) == "wikitext2"
    wide = evaluate_wide(summary)
    assert wide.perplexity.tolist() == [5.47] and wide.decode_ms.tolist() == [20.0]


def test_a_table_without_the_marker_falls_back_to_the_calibration_corpus():
    summary = rows(
        ("calibrate", "dense", "llama", None, "llama", "stdlib", "train", "n_tokens", 1e5),
        ("evaluate", "dense", "llama", None, "llama", "stdlib", "test", "perplexity", 80.0),
        ("evaluate", "dense", "llama", None, "llama", "pydoc", "test", "perplexity", 300.0),
    )
    assert main_corpus(summary) == "stdlib"
    assert evaluate_wide(summary).perplexity.tolist() == [80.0]
