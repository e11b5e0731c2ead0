"""The quality-vs-speed figure: perplexity on a log scale, every point labelled with its
level, the labels of a cluster kept apart."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pandas as pd

from actsparse import plots


def board() -> pd.DataFrame:
    rows = [dict(model="m", method="dense", level="", perplexity=27.6, decode_speedup=1.0)]
    for i, method in enumerate(["teal", "topk", "wina", "cats"]):
        for j, level in enumerate(["0.25", "0.4", "0.5", "0.7"]):
            # a cluster: four methods within 2% of each other in speed and perplexity
            rows.append(dict(model="m", method=method, level=level,
                             perplexity=28.0 * (1 + 0.01 * i) * (1 + 0.5 * j**2),
                             decode_speedup=1.05 + 0.004 * i + 0.2 * j))  # fmt: skip
    return pd.DataFrame(rows)


def test_perplexity_is_on_a_log_scale_and_every_point_is_labelled(tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path.name)
    assert plots.plot_quality_vs_speed(board(), tmp_path) == "quality_vs_speed.png"
    (ax,) = figs[0].axes
    assert ax.get_yscale() == "log"
    texts = [t.get_text() for t in ax.texts]
    assert sorted(texts) == sorted(["25%", "40%", "50%", "70%"] * 4)  # dense: no label
    renderer = figs[0].canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    overlapping = sum(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert overlapping <= 2, f"{overlapping} pairs of labels overlap"
    plt.close(figs[0])


def test_a_board_without_decode_timings_draws_nothing(tmp_path):
    b = board().drop(columns="decode_speedup")
    assert plots.plot_quality_vs_speed(b, tmp_path) is None


def test_task_accuracy_has_a_panel_per_task_with_the_dense_score_and_error_bars(
    tmp_path, monkeypatch
):
    from test_report_tables import task_summary

    from actsparse.results import task_scores

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path.name)
    scores = task_scores(task_summary())
    assert plots.plot_task_accuracy(scores, tmp_path) == "task_accuracy.png"
    panels = [ax for ax in figs[0].axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in panels) == [
        "m: boolq (100 items)", "m: lastword (100 items)", "m: piqa (100 items)"]  # fmt: skip
    piqa = next(ax for ax in panels if "piqa" in ax.get_title())
    (teal,) = [c for c in piqa.containers if c.get_label() == "teal"]
    line, _, (bars,) = teal
    assert list(line.get_ydata()) == [67.5, 60.0]  # acc_norm, in %
    assert len(bars.get_segments()) == 2  # a standard-error bar at each level
    dense = [ln for ln in piqa.get_lines() if ln.get_linestyle() == "--"]
    assert [ln.get_ydata()[0] for ln in dense] == [68.0]
    assert piqa.get_ylabel() == "acc_norm (%)"
    plt.close(figs[0])
    assert plots.plot_task_accuracy(scores[scores.method == "dense"], tmp_path) is None
