"""Hot and cold neurons (PowerInfer): how often each FFN neuron is active, as a report.

From the MLP labels on the training split: each neuron's activation frequency, the
frequencies sorted in decreasing order with a power law `f(rank) = c rank^-b` fitted to
them by least squares in log-log space (scipy's `linregress`, neurons that never fired
left out), and the share of all activations that the top x% of neurons cover. A
power law with a large `b` means a few hot neurons could stay in fast memory.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from actsparse.methods.predictors.base import PREDICTORS, PredictorCfg, ReportMethod
from actsparse.methods.predictors.labels import LabelSet

TOP_PCTS = (1, 5, 10, 20, 50)


def frequencies(labels: LabelSet, layer: int, chunk: int = 65536) -> np.ndarray:
    """Each neuron's activation frequency on the training labels (streamed)."""
    n = labels.n_tokens("train")
    counts = np.zeros(labels.widths[layer][1], dtype=np.int64)
    for s in range(0, n, chunk):
        counts += labels.labels("train", layer, slice(s, s + chunk)).sum(axis=0)
    return counts / n


def power_law(freq: np.ndarray) -> tuple[float, float, float]:
    """(exponent b, prefactor c, r^2) of `f(rank) = c rank^-b` over the neurons that fired."""
    from scipy.stats import linregress  # here: scipy.stats costs every job 0.5 s to import

    f = np.sort(freq)[::-1]
    f = f[f > 0]
    if len(f) < 3:
        return float("nan"), float("nan"), float("nan")
    fit = linregress(np.log(np.arange(1, len(f) + 1)), np.log(f))
    return -float(fit.slope), float(np.exp(fit.intercept)), float(fit.rvalue**2)


def coverage(freq: np.ndarray, pct: float) -> float:
    """The share of all activations covered by the top `pct`% most frequent neurons."""
    f = np.sort(freq)[::-1]
    k = max(1, int(round(len(f) * pct / 100)))
    total = f.sum()
    return float(f[:k].sum() / total) if total > 0 else float("nan")


@PREDICTORS.register("hotcold")
class HotCold(ReportMethod):
    paper = "PowerInfer"
    summary = "hot/cold statistics: activation frequency per neuron, its power-law fit, the share of activations the top x% cover (a report, no predictor)"
    Config = PredictorCfg
    target = "mlp"

    def tables(self, labels: LabelSet) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(per-neuron frequencies, per-layer power law and coverage) (schemas in tables.py)."""
        neurons, summary = [], []
        for layer in range(labels.n_layers):
            freq = frequencies(labels, layer)
            order = np.argsort(-freq, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(1, len(freq) + 1)
            neurons.append(
                pd.DataFrame(
                    {
                        "layer": layer,
                        "neuron": np.arange(len(freq)),
                        "frequency": freq,
                        "rank": rank,
                    }  # fmt: skip
                )
            )
            b, c, r2 = power_law(freq)
            row = dict(
                layer=layer, mean_frequency=float(freq.mean()), dead=float((freq == 0).mean()),
                hot=float((freq >= 0.5).mean()), power_law_b=b, power_law_c=c, power_law_r2=r2,
            )  # fmt: skip
            row.update({f"top{p}pct_share": coverage(freq, p) for p in TOP_PCTS})
            summary.append(row)
        return pd.concat(neurons, ignore_index=True), pd.DataFrame(summary)
