"""What every low-rank method is: a config dataclass and `factorize(W, stats, k) -> (A, B)`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import MISSING

from actsparse.methods.registry import Registry, parse_entry
from actsparse.schema.stages import ratio_problems

# every method file registers here; import it from `actsparse.methods.lowrank`, which
# imports them all (see methods/sparsity/base.py)
LOWRANK: Registry = Registry("low-rank")

# which block linears a decomposition touches, by the site they read
TARGETS = {
    "attention": ("attn_in", "o_proj_in"),  # q, k, v and o
    "ffn": ("ffn_in", "ffn_intermediate"),  # gate, up (fc1) and down (fc2)
}


@dataclass
class LowRankMethodCfg:
    """Keys every method's config has (`conf/decompose/<method>.yaml`)."""

    method: str = MISSING  # the registered method this entry runs
    targets: list[str] = MISSING
    ratios: list[float] | None = MISSING  # null: the study's decompose.ratios
    models: list[str] | None = MISSING  # null: every model of the study; []: none

    def problems(self) -> list[tuple[str, str]]:
        out = ratio_problems(self.ratios or [])
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            out.append(
                ("targets", f"must be a non-empty subset of {list(TARGETS)}, got {self.targets}")
            )
        return out

    def sites(self) -> list[str]:
        return [s for t in self.targets for s in TARGETS.get(t, ())]


@dataclass
class LayerStats:
    """Calibration statistics of one linear's input, in float64."""

    gram: torch.Tensor  # (n, n): X^T X / T, the input's second moment
    mean_abs: torch.Tensor  # (n,): mean_t |X_jt|
    n_tokens: int


@dataclass(frozen=True)
class UpdateStep:
    """SVD-LLM's second step as an entry asks for it: the calibration tokens (in sequences
    of `seq_len`) on which each left factor is refitted, block by block, with every earlier
    block compressed (the decompose stage runs it; `linalg.update_left`)."""

    tokens: int
    seq_len: int


@dataclass(frozen=True)
class TruncationLoss:
    """One target linear's loss at the study's uniform ratio, for a method that allocates
    ratios across the model (`LowRankMethod.allocate`)."""

    linear: str  # the module's full name
    kind: str  # its type across layers (q_proj, down_proj, ...): a group of equal shapes
    params: int  # m n
    loss: float  # ||(W - W') X||_F, over as many tokens as the method says


class LowRankMethod(ABC):
    """A registered method. Subclasses set `Config` and implement `factorize`."""

    Config: ClassVar[type[LowRankMethodCfg]] = LowRankMethodCfg
    # its row in docs/lowrank.md's method table (`actsparse methods`)
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # what it computes, in one line

    @classmethod
    def parse(cls, raw: dict[str, Any], where: str) -> LowRankMethodCfg:
        return parse_entry(cls.Config, raw, where)  # type: ignore[return-value]

    @abstractmethod
    def factorize(
        self, cfg: Any, W: torch.Tensor, stats: LayerStats, k: int, where: str, cache: dict
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Rank-k factors `(A (m, k), B (k, n))` of the float64 weight `W (m, n)`, and
        per-layer diagnostics. `cache` is shared by the linears reading the same input
        (q, k and v): a whitening factor is computed once per site."""

    def update_step(self, cfg: Any) -> UpdateStep | None:
        """The left-factor update this entry asks for (SVD-LLM's second step), or None."""
        return None

    def allocates(self, cfg: Any) -> bool:
        """Whether this entry sets a ratio per linear from a pass over the whole model
        (SVD-LLM V2): the stage then measures `truncation_loss` of every target linear at
        the study's ratio first, and factorizes each at the ratio `allocate` gives it."""
        return False

    def truncation_loss(
        self, cfg: Any, W: torch.Tensor, stats: LayerStats, k: int, where: str, cache: dict
    ) -> float:
        """`||(W - W_k) X||_F` at rank k, over as many tokens as the method's allocation
        assumes (see `allocates`)."""
        raise TypeError(f"{cfg.method} allocates no ratios (allocates is False)")

    def allocate(self, cfg: Any, losses: list[TruncationLoss], ratio: float) -> dict[str, float]:
        """linear -> ratio, for a model-wide `ratio` (see `allocates`)."""
        raise TypeError(f"{cfg.method} allocates no ratios (allocates is False)")
