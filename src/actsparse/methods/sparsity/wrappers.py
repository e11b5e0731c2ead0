"""The wrappers that apply a sparsity plan to an unmodified `transformers` model.

`apply(model, adapter, plan)` swaps each module the plan names for a wrapper that applies
its rule to the module's input (linear-input sites, heads) or output (the gate) and counts
the zeros it feeds on; the model's own forward code runs unchanged around them.
`Sparsified` holds the wrappers: the achieved sparsity, a dense prefix
(`dense_prefix(n, window)`), and `restore()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pandas as pd
import torch
from torch import nn

from actsparse.methods.sparsity.mechanism import Placed, SparsityPlan, activation_width
from actsparse.models.adapters import FamilyAdapter, input_column_norms, linear_shape
from actsparse.tables import ACHIEVED_SPARSITY


class _Counted(nn.Module):
    """Counts the zeros of the activations a wrapper produces (on the evaluation tokens)."""

    def __init__(self, inner: nn.Module, placed: Placed):
        super().__init__()
        self.inner, self.placed = inner, placed
        self.active = True
        # device tensors while counting (no GPU sync per call); read once in `achieved()`
        self.zeros: torch.Tensor | int = 0
        self.natural: torch.Tensor | int = 0  # zeros the activation had before the rule
        self.total = 0
        # a dense prefix: the rule is off at the first `dense_positions` positions of every
        # `window`-token sequence (`Sparsified.dense_prefix`); 0: on everywhere
        self.dense_positions, self.window = 0, 0

    def _zeros(self, y: torch.Tensor) -> torch.Tensor:
        if self.placed.rule.per_head:
            h = int(self.placed.rule.n_heads)  # type: ignore[arg-type]
            return (y.reshape(*y.shape[:-1], h, y.shape[-1] // h) == 0).all(dim=-1).sum()
        return (y == 0).sum()

    def count(self, before: torch.Tensor, after: torch.Tensor) -> None:
        self.natural = self.natural + self._zeros(before)
        self.zeros = self.zeros + self._zeros(after)
        rule = self.placed.rule
        per_token = int(rule.n_heads) if rule.per_head else after.shape[-1]  # type: ignore[arg-type]
        self.total += after[..., 0].numel() * per_token

    def by_position(self, sparse, dense, *xs: torch.Tensor) -> torch.Tensor:
        """`sparse(*xs)`, or, under a dense prefix, `dense` on the prefix positions and
        `sparse` on the rest (which alone is counted). Each of `xs` is (..., T, n) or, for
        families that flatten the batch (OPT's FFN), (B * T, n), with T the window."""
        p, t = self.dense_positions, self.window
        if not p:
            return sparse(*xs)
        parts = []
        for x in xs:
            if x.dim() < 2 or (x.dim() >= 3 and x.shape[-2] != t) or x.shape[:-1].numel() % t:
                raise ValueError(
                    f"{self.placed.module}: a dense prefix of {p} positions needs sequences "
                    f"of {t} positions, got an input of shape {tuple(x.shape)}"
                )
            parts.append(x.reshape(-1, t, x.shape[-1]))
        head = dense(*(v[:, :p] for v in parts))
        tail = sparse(*(v[:, p:] for v in parts))
        return torch.cat([head, tail], dim=1).reshape(*xs[0].shape[:-1], tail.shape[-1])

    def extra_repr(self) -> str:
        p = self.placed
        return f"site={p.site}, rule={p.rule.kind}, level={p.rule.level:g}"


class LinearView:
    """A wrapper that stands in for the linear `inner`: its weight and bias are inner's
    (code that reads `module.weight` keeps working)."""

    inner: nn.Module

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias


class SparseInput(LinearView, _Counted):
    """A linear (nn.Linear or Conv1D) whose input goes through the rule first.

    A centred rule (`shift` m, SCAP) is applied to `x - m` and the linear's output gets
    `W (m 1)` back, a bias: `W S(x - m) + b + W m 1`, which is `W x + b` where nothing is
    dropped, and the linear (or a kernel standing in for it) reads a sparse input."""

    _scale: torch.Tensor | None = None  # a weighted rule's column norms, computed once
    _shift_out: torch.Tensor | None = None  # a centred rule's W (m 1), computed once
    rotation: torch.Tensor | None = None  # a rule's basis Q (n, n), from the plan
    rotation_scale: torch.Tensor | None = None  # its basis_scale (n,), the norm weight
    _remainder: tuple | None = None  # rsparse: (rank, dtype, A, B), computed once

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not self.active:
            return self.inner(x, *args, **kwargs)
        shift, rank = self.placed.rule.shift, self.placed.rule.rank
        if rank:  # R-Sparse: the dropped part of x through a rank-r SVD of W
            y = self.by_position(self._sparse, _identity, x)
            A, B = self._low_rank(x)
            return self.inner(y, *args, **kwargs) + ((x - y) @ B.T) @ A.T
        if not shift:
            return self.inner(self.by_position(self._sparse, _identity, x), *args, **kwargs)
        y = self.inner(self.by_position(self._sparse, _identity, x - shift), *args, **kwargs)
        if self._shift_out is None or self._shift_out.dtype != y.dtype:
            ones = torch.full((1, x.shape[-1]), shift, dtype=x.dtype, device=x.device)
            zero = torch.zeros_like(ones)
            self._shift_out = (self.inner(ones) - self.inner(zero))[0].detach()  # W m 1, bias-free
        return y + self._shift_out

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        rule = self.placed.rule
        Q = g = None
        if self.rotation is not None:  # the rule sees (x / g) Q and gives back z Q^T g
            Q = self.rotation.to(dtype=x.dtype, device=x.device)
            if self.rotation_scale is not None:
                g = self.rotation_scale.to(dtype=x.dtype, device=x.device)
            x = (x if g is None else x / g) @ Q
        if rule.weighted:
            if self._scale is None:  # the columns of the weight that reads what the rule gives
                self._scale = input_column_norms(self.inner, self.rotation, self.rotation_scale)
            y = rule(x, self._scale)
        else:
            y = rule(x)
        self.count(x, y)
        if Q is None:
            return y
        return y @ Q.T if g is None else (y @ Q.T) * g

    def _low_rank(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`A = U_r Σ_r`, `B = V_r^T` of the plain SVD of this linear's weight (float64,
        computed once; R-Sparse's `torch.svd(W)`), in `x`'s dtype."""
        r = self.placed.rule.rank
        if self._remainder is None or self._remainder[:2] != (r, x.dtype):
            W = self.inner.weight.detach()
            if type(self.inner).__name__ == "Conv1D":  # stored (in, out)
                W = W.T
            U, s, Vh = torch.linalg.svd(W.double(), full_matrices=False)
            self._remainder = (r, x.dtype, (U[:, :r] * s[:r]).to(x), Vh[:r].to(x))
        return self._remainder[2], self._remainder[3]


class PredictedInput(SparseInput):
    """A linear whose input keeps only what a predictor chose: the boolean `mask` (..., n)
    over entries, or (..., H) over heads, set by a hook on the predictor's input module
    earlier in the same forward pass (`methods.predictors.apply`), used once."""

    def __init__(self, inner: nn.Module, placed: Placed):
        super().__init__(inner, placed)
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.active:
            mask, self.mask = self.mask, None
            if mask is None or mask.shape[:-1] != x.shape[:-1]:
                raise RuntimeError(
                    f"{self.placed.module}: no predicted mask for this input (the "
                    "predictor's input module did not run first in this forward pass)"
                )
            if self.placed.rule.per_head:
                mask = mask.repeat_interleave(x.shape[-1] // mask.shape[-1], dim=-1)
            x = self.by_position(self._masked, _identity, x, mask)
        return self.inner(x, *args, **kwargs)

    def _masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x * mask.to(x.dtype)
        self.count(x, y)
        return y


class SparseGate(_Counted):
    """The FFN nonlinearity of a gated FFN whose output (the gate branch) is sparsified."""

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.inner(g)
        return self.by_position(self._sparse, self.inner, g)

    def _sparse(self, g: torch.Tensor) -> torch.Tensor:
        y = self.placed.rule.on_gate(g, self.inner)
        self.count(self.inner(g), y)
        return y


def _identity(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    return x


class Sparsified:
    """Handle on a model with a plan applied: toggle it, count what it did, remove it."""

    def __init__(
        self,
        model: nn.Module,
        plan: SparsityPlan,
        wrappers: dict[str, _Counted],
        hooks: list | None = None,
    ):
        self.model, self.plan, self.wrappers = model, plan, wrappers
        self.hooks = hooks or []  # hook handles that feed the wrappers (predictors)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """The dense model (for fidelity references): every wrapper passes through."""
        for w in self.wrappers.values():
            w.active = False
        try:
            yield
        finally:
            for w in self.wrappers.values():
                w.active = True

    @contextlib.contextmanager
    def dense_prefix(self, positions: int, window: int) -> Iterator[None]:
        """Every rule off at the first `positions` positions of each `window`-token sequence
        the model runs on (a dense prefill; TEAL's evaluation keeps the first half dense):
        those positions, and what is computed from them alone (causal attention), are the
        dense model's. Zeros are counted on the other positions only. 0: no change."""
        if not 0 <= positions < window:
            raise ValueError(
                f"a dense prefix needs 0 <= positions < window; got {positions}, {window}"
            )
        for w in self.wrappers.values():
            w.dense_positions, w.window = positions, window
        try:
            yield
        finally:
            for w in self.wrappers.values():
                w.dense_positions, w.window = 0, 0

    def reset_counts(self) -> None:
        for w in self.wrappers.values():
            w.zeros = w.natural = w.total = 0

    def achieved(self) -> pd.DataFrame:
        """Zeros counted per wrapped module (schema `tables.ACHIEVED_SPARSITY`)."""
        rows = [
            {
                "layer": w.placed.layer,
                "site": w.placed.site,
                "module": name,
                "rule": w.placed.rule.kind,
                "target": w.placed.rule.exact_target(w.placed.width),
                "zeros": int(w.zeros),
                "total": w.total,
                "achieved": int(w.zeros) / w.total if w.total else float("nan"),
                "natural": int(w.natural) / w.total if w.total else float("nan"),
            }
            for name, w in self.wrappers.items()
        ]
        return pd.DataFrame(rows, columns=ACHIEVED_SPARSITY.names)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
        for name, w in self.wrappers.items():
            set_module(self.model, name, w.inner)
        self.wrappers = {}


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply(model: nn.Module, adapter: FamilyAdapter, plan: SparsityPlan) -> Sparsified:
    """Wrap the plan's modules; refuse a plan made for another model (naming where)."""
    n_layers = len(adapter.layers(model))
    modules = dict(model.named_modules())
    wrappers: dict[str, _Counted] = {}
    for p in plan.placed:
        where = f"sparsity method {plan.entry!r} ({plan.method}), layer {p.layer}, site {p.site!r}"
        adapter.check_site(p.site, where)
        if p.layer >= n_layers or p.module not in modules:
            raise ValueError(
                f"{where}: the model has no module {p.module!r} ({n_layers} layers); "
                "was this plan calibrated on another model?"
            )
        module = modules[p.module]
        if p.site == "gate":
            width = activation_width(model, adapter, p.layer, "gate")[1]
        else:
            width = linear_shape(module)[0]
        if width != p.width:
            raise ValueError(
                f"{where}: {p.module} sees activations of width {width}, the plan was "
                f"calibrated for width {p.width} (shape mismatch: another model?)"
            )
        if p.module in wrappers:
            raise ValueError(f"{where}: {p.module} has two rules")
        if p.rule.kind == "predicted":
            cls: type[_Counted] = PredictedInput
        else:
            cls = SparseGate if p.site == "gate" else SparseInput
        wrappers[p.module] = cls(module, p)
        if p.rule.basis:
            if p.rule.basis not in plan.rotations:
                raise ValueError(f"{where}: the plan has no rotation {p.rule.basis!r}")
            Q = plan.rotations[p.rule.basis]
            if tuple(Q.shape) != (width, width):
                raise ValueError(
                    f"{where}: rotation {p.rule.basis!r} is {tuple(Q.shape)}, the input width {width}"
                )
            wrappers[p.module].rotation = Q
        if p.rule.basis_scale:
            g = plan.rotations.get(p.rule.basis_scale)
            if g is None or tuple(g.shape) != (width,):
                got = "none" if g is None else tuple(g.shape)
                raise ValueError(f"{where}: the plan's basis_scale {p.rule.basis_scale!r} "
                                 f"must be a vector of the input width {width}, got {got}")  # fmt: skip
            wrappers[p.module].rotation_scale = g
    for name, w in wrappers.items():
        set_module(model, name, w)
    return Sparsified(model, plan, wrappers)
