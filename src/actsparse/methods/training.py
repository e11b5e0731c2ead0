"""Training-time operators: sparse and low-bit training through the one sparsity mechanism.

- Sparsity: a `Rule` placed at sites of every block (`mechanism.placed_for_sites`) and
  applied by the same wrappers as post-hoc sparsity, with `ste=True` for the top-K rules:
  Q-Sparse's top-K on every projection input, with L2 rescaling; Block Q-Sparse
  (`ops.block_topk`: one pattern per group of sequences); Spark's statistical top-k on
  the gate pre-activation (differentiable almost everywhere: no STE).
- Precision `b1.58` (BitNet b1.58): every block linear becomes a `BitLinear` with ternary
  weights (absmean scale) and 8-bit activations (absmax per token), both trained with the
  STE. A sparse input is sparsified first and quantized after (zeros stay zero).

`attach(model, adapter, cfg)` wraps an unmodified `transformers` model in place and
returns a handle; `remove()` restores the plain modules, whose weights are the latent
full-precision ones (what `save_pretrained` writes).
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from actsparse.methods.sparsity import ops
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.methods.sparsity.wrappers import LinearView, Sparsified, apply, set_module
from actsparse.models.adapters import LINEAR_SITES, FamilyAdapter
from actsparse.schema.training import PRECISIONS, SparseTrainCfg

DEFAULT_SITES = {  # where each operator acts unless `sites` says otherwise
    "topk": list(LINEAR_SITES),  # Q-Sparse: the input of every projection
    "block_topk": list(LINEAR_SITES),
    "stat_topk": ["gate"],  # Spark: the FFN's gate pre-activation
    "none": [],
}


def absmean_ternary(w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """BitNet b1.58's weights: `gamma * RoundClip(W / (gamma + eps), -1, 1)`, `gamma =
    mean|W|` (one scale per matrix): every entry is -gamma, 0 or +gamma."""
    gamma = w.abs().mean()
    return (w / (gamma + eps)).round().clamp(-1, 1) * gamma


def absmax_int8(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """8-bit activations, absmax per token: `round(x * 127 / max|x|)` clipped to
    [-128, 127], scaled back; zeros stay zero."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp_min(eps)
    return (x * scale).round().clamp(-128, 127) / scale


class BitLinear(LinearView, nn.Module):
    """A linear trained at 1.58 bits: ternary weights and 8-bit inputs in the forward pass,
    the full-precision gradient backward (STE on both); the latent weights stay `inner`'s."""

    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner = inner
        self.in_features, self.out_features = inner.in_features, inner.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.inner.weight
        w = ops.straight_through(w, absmean_ternary(w))
        x = ops.straight_through(x, absmax_int8(x))
        return F.linear(x, w, self.inner.bias)


def rule_of(cfg: SparseTrainCfg) -> Rule:
    """The rule a train job's operator places: Spark's soft statistical top-k on the gate
    pre-activation (no STE), or a top-K rule with the STE."""
    if cfg.operator == "stat_topk":
        return Rule("stat_topk", cfg.level, soft=True, pre_activation=True)
    return Rule(cfg.operator, cfg.level, rescale=cfg.rescale, block=cfg.block, ste=True)


def sites_of(cfg: SparseTrainCfg) -> list[str]:
    return list(cfg.sites) if cfg.sites is not None else DEFAULT_SITES[cfg.operator]


class Attached:
    """Handle on a model wrapped for training: count zeros, restore the plain model."""

    def __init__(self, model: nn.Module, sparsified: Sparsified | None, quantized: list[str]):
        self.model, self.sparsified, self.quantized = model, sparsified, quantized

    def reset_counts(self) -> None:
        if self.sparsified is not None:
            self.sparsified.reset_counts()

    def achieved(self) -> pd.DataFrame | None:
        return self.sparsified.achieved() if self.sparsified is not None else None

    def remove(self) -> None:
        if self.sparsified is not None:
            self.sparsified.remove()
            self.sparsified = None
        for name in self.quantized:
            set_module(self.model, name, self.model.get_submodule(name).inner)
        self.quantized = []


def attach(model: nn.Module, adapter: FamilyAdapter, cfg: SparseTrainCfg) -> Attached:
    """Wrap `model` for training with `cfg`'s operators (quantize first, then sparsify, so
    that the sparse input is what gets quantized). Level 0 or operator `none`: dense."""
    quantized = []
    if cfg.precision == "b1.58":
        for layer in range(len(adapter.layers(model))):
            for site in LINEAR_SITES:
                for name, module in adapter.site_linears(model, layer)[site]:
                    if not isinstance(module, nn.Linear):
                        raise ValueError(f"precision b1.58: {name} is not an nn.Linear")
                    set_module(model, name, BitLinear(module))
                    quantized.append(name)
    elif cfg.precision != "fp":
        raise ValueError(f"unknown precision {cfg.precision!r}; precisions: {PRECISIONS}")
    sparsified = None
    if cfg.operator != "none" and cfg.level > 0:
        rule = rule_of(cfg)
        placed = placed_for_sites(model, adapter, sites_of(cfg), lambda *_: rule)
        plan = SparsityPlan(f"train_{cfg.operator}", cfg.operator, cfg.level, placed)
        sparsified = apply(model, adapter, plan)
    return Attached(model, sparsified, quantized)
