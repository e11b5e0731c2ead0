"""Predictors: one file each, registered in `PREDICTORS`.

A predictor guesses, from an input available early, which FFN neurons (or attention
heads) a token will need, so that only those are computed. The train-predictors stage
collects labels from the model, trains (or builds) one predictor per layer and scores it
on held-out tokens; the evaluate stage runs the model with the predicted masks
(`apply.py`) next to the oracle at the same sparsity.
"""

# importing the method files registers them
from actsparse.methods.predictors import (  # noqa: F401
    dejavu_heads,
    dejavu_mlp,
    hotcold,
    spark,
)
from actsparse.methods.predictors.base import PREDICTORS

__all__ = ["PREDICTORS"]
