"""Activation-sparsity methods: one file each, registered in `SPARSITY`.

Every method places `Rule`s at sites through the one mechanism (`mechanism.py`); the
sparsify stage builds a plan per (model, method, level) and the evaluate stage applies it.
"""

from actsparse.methods.sparsity.base import SPARSITY

SPARSITY.discover(__name__, __path__)  # every module here registers what it defines

__all__ = ["SPARSITY"]
