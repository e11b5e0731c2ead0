"""Compression methods as plug-ins: one file per method, one registry per family.

Families (each arrives with its stage): `sparsity/` (sparsify), `lowrank/` (decompose),
`predictors/` (train predictors). A method file registers itself with its family's
`Registry` and has one config file `conf/<stage>/<name>.yaml`; tests parametrize over the
registry, so a new method is tested the moment it exists.
"""

from actsparse.methods.registry import Registry

__all__ = ["Registry"]
