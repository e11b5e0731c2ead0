"""Deja Vu's MLP predictor: per layer, a low-rank `d -> r -> d_ff` map from the FFN's input
to one logit per neuron, trained with the weighted BCE on labels of active neurons
(`labels.py`); at inference the top-K logits choose the neurons computed."""

from __future__ import annotations

from actsparse.methods.predictors.base import PREDICTORS, LowRankTrained


@PREDICTORS.register("dejavu_mlp")
class DejaVuMLP(LowRankTrained):
    paper = "Deja Vu"
    summary = "the MLP predictor: `Linear(d → r, no bias) → Linear(r → d_ff)` from the FFN's input, weighted BCE"
    target = "mlp"
