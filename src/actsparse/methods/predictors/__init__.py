"""Predictors: one file each, registered in `PREDICTORS`.

A predictor guesses, from an input available early, which FFN neurons (or attention
heads) a token will need, so that only those are computed. The train-predictors stage
collects labels from the model, trains (or builds) one predictor per layer and scores it
on held-out tokens; the evaluate stage runs the model with the predicted masks
(`apply.py`) next to the oracle at the same sparsity.
"""

from actsparse.methods.predictors.base import PREDICTORS

PREDICTORS.discover(__name__, __path__)  # every module here registers what it defines

__all__ = ["PREDICTORS"]
