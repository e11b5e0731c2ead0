"""Low-rank decomposition methods: one file each, registered in `LOWRANK`.

Each method turns a layer's weight `W (m, n)` and the calibration statistics of its input
into rank-k factors `A (m, k)`, `B (k, n)`; the decompose stage swaps the linear for a
`LowRankLinear` holding them and saves a model the one loader reloads.
"""

from actsparse.methods.lowrank.base import LOWRANK

LOWRANK.discover(__name__, __path__)  # every module here registers what it defines

__all__ = ["LOWRANK"]
