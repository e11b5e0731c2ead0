"""The report's tables read the study's own corpus, even when calibration used another."""

from __future__ import annotations

import pandas as pd
import pytest

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


def task_summary():
    """A dense model and TEAL at two levels on two harness tasks and lastword."""
    specs = []
    scores = {  # (method, level) -> task -> (metric -> value)
        ("dense", None): {"piqa": (0.70, 0.68), "boolq": (0.60, None), "lastword": (0.30, None)},
        ("teal", 0.5): {"piqa": (0.69, 0.675), "boolq": (0.595, None), "lastword": (0.25, None)},
        ("teal", 0.7): {"piqa": (0.64, 0.60), "boolq": (0.50, None), "lastword": (0.10, None)},
    }
    for (method, level), tasks in scores.items():
        variant = f"m.{method}" + (f".s{int(100 * level)}" if level else "")
        ev = ("evaluate", method, variant, level, "m")
        specs += [(*ev, "wt", "test", "study_corpus", 1.0), (*ev, "wt", "test", "perplexity", 10.0)]
        for task, (acc, acc_norm) in tasks.items():
            specs += [(*ev, None, None, f"acc.{task}", acc), (*ev, None, None, f"acc_stderr.{task}", 0.05),
                      (*ev, None, None, f"task_items.{task}", 100), (*ev, None, None, f"task_s.{task}", 9.0)]  # fmt: skip
            if acc_norm is not None:
                specs += [(*ev, None, None, f"acc_norm.{task}", acc_norm),
                          (*ev, None, None, f"acc_norm_stderr.{task}", 0.04)]  # fmt: skip
    return rows(*specs)


def test_task_scores_read_acc_norm_where_reported_and_compare_with_dense():
    from actsparse.results import task_scores

    s = task_scores(task_summary()).set_index(["method", "level", "task"])
    assert s.loc[("teal", 0.5, "piqa")].metric == "acc_norm"
    assert s.loc[("teal", 0.5, "piqa")].accuracy == 0.675
    assert s.loc[("teal", 0.5, "piqa")].stderr == 0.04
    assert s.loc[("teal", 0.7, "boolq")].metric == "acc"
    assert s.loc[("teal", 0.7, "boolq")].vs_dense_pts == pytest.approx(-10.0)
    assert s.loc[("teal", 0.5, "lastword")].vs_dense_pts == pytest.approx(-5.0)
    assert s["items"].eq(100).all() and s.seconds.eq(9.0).all()


def test_the_leaderboard_has_a_column_per_task_and_the_papers_mean():
    from actsparse.results import leaderboard

    board = leaderboard(task_summary()).set_index(["method", "level"])
    assert {"zero_shot_mean", "acc_norm.piqa", "acc.boolq", "acc.lastword"} <= set(board.columns)
    # the mean of the harness's tasks, lastword left out
    assert board.loc[("teal", "0.7"), "zero_shot_mean"] == pytest.approx((0.60 + 0.50) / 2)
    assert board.loc[("dense", ""), "zero_shot_mean"] == pytest.approx((0.68 + 0.60) / 2)


def test_the_frontier_reads_the_largest_level_within_one_point_of_dense_accuracy():
    from actsparse.results import sparsity_frontier, task_scores

    sweep = pd.DataFrame({"model": ["m", "m"], "method": ["teal", "teal"], "level": [0.5, 0.7],
                          "ppl_increase_%": [0.5, 8.0], "effective_sparsity": [0.4, 0.6]})  # fmt: skip
    f = sparsity_frontier(sweep, task_scores(task_summary())).iloc[0]
    # the mean drops 0.5 points at 0.5 ((0.675 + 0.595) / 2 against 0.64), 9 at 0.7
    assert f["max_level_ppl+1%"] == 0.5 and f["max_level_ppl+5%"] == 0.5
    assert f["max_level_acc-1pt"] == 0.5
    assert "max_level_acc-1pt" not in sparsity_frontier(sweep).columns
