"""Deja Vu's attention-head predictor with lookahead: per layer `l`, a low-rank
`d -> r -> H` map from the *previous* layer's attention input (layer 0: its own) to one
logit per head, trained with the weighted BCE on the top-fraction-by-output-norm labels
(`labels.py`), so it can run ahead of block `l`."""

from __future__ import annotations

from actsparse.methods.predictors.base import PREDICTORS, LowRankTrained


@PREDICTORS.register("dejavu_heads")
class DejaVuHeads(LowRankTrained):
    paper = "Deja Vu"
    summary = "the head predictor: `Linear(d → r) → Linear(r → H)` from the **previous** layer's attention input (lookahead)"
    target = "heads"
