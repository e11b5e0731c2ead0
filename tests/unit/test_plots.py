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
