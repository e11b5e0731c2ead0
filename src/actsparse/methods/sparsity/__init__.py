"""Activation-sparsity methods: one file each, registered in `SPARSITY`.

Every method places `Rule`s at sites through the one mechanism (`mechanism.py`); the
sparsify stage builds a plan per (model, method, level) and the evaluate stage applies it.
"""

# importing the method files registers them
from actsparse.methods.sparsity import (  # noqa: F401
    cats,
    contextual,
    stat_topk,
    teal,
    threshold,
    topk,
)
from actsparse.methods.sparsity.base import SPARSITY

__all__ = ["SPARSITY"]
