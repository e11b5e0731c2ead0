"""The one sparsity mechanism: a *rule* placed at a *site* of a block, applied by wrapping
modules of an unmodified `transformers` model.

- A `Rule` turns an activation into a sparse tensor (threshold, top-K, statistical top-k,
  head top-k); it is a plain value, saved in a sparsify job's `allocation.parquet`.
- A `SparsityPlan` is every placed rule of one method at one level, plus which weight rows
  the method lets a kernel skip (`output_skips`).
- `apply(model, adapter, plan)` swaps each target module for a wrapper that applies the
  rule to the module's input (linear-input sites, heads) or output (the gate) and counts
  the zeros it feeds on. The model's own forward code runs unchanged around the wrappers.
- `Sparsified.dense_prefix(n, window)` switches every rule off at the first `n` positions of
  each `window`-token sequence (a dense prefill; the evaluate stage's `dense_prefill`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from actsparse.io import write_text
from actsparse.methods.sparsity import ops
from actsparse.models.adapters import (
    LINEAR_SITES,
    FamilyAdapter,
    linear_params,
    linear_rank,
    linear_shape,
)
from actsparse.tables import ACHIEVED_SPARSITY, ALLOCATION, read_table, write_table

# predicted: the top-K neurons (or heads) by a predictor's scores, computed from another
# module's input before this one runs (the predictors stage; `PredictedInput`)
RULES = ("threshold", "topk", "block_topk", "stat_topk", "head_topk", "predicted")


@dataclass(frozen=True)
class Rule:
    kind: str  # one of RULES
    level: float  # the target fraction of zeros where the rule applies
    threshold: float | None = None  # threshold: keep |x| > threshold
    soft: bool = True  # stat_topk: ReLU(x - theta) rather than the hard cut
    rescale: bool = False  # topk: restore each row's L2 norm
    n_heads: int | None = None  # head_topk, and a predicted rule over heads
    pre_activation: bool = False  # at the gate: act(rule(g)) instead of rule(act(g))
    block: int = 1  # block_topk: sequences of the batch sharing one pattern per position
    ste: bool = False  # training: sparse forward, dense gradient (straight-through)

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ValueError(f"unknown rule {self.kind!r}; rules: {', '.join(RULES)}")
        if not 0.0 <= self.level < 1.0:
            raise ValueError(f"sparsity level must be in [0, 1), got {self.level}")
        if self.kind == "threshold" and (self.threshold is None or not self.threshold >= 0):
            raise ValueError(f"a threshold rule needs a threshold >= 0, got {self.threshold}")
        if self.kind == "head_topk" and not self.n_heads:
            raise ValueError("a head_topk rule needs n_heads")
        if self.block < 1:
            raise ValueError(f"a block_topk rule needs block >= 1, got {self.block}")

    @property
    def per_head(self) -> bool:
        """Whether the rule keeps or drops whole heads (counted in heads, not entries)."""
        return self.kind == "head_topk" or (self.kind == "predicted" and bool(self.n_heads))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self._sparse(x)
        return ops.straight_through(x, y) if self.ste else y

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "predicted":
            raise ValueError("a predicted rule takes its mask from a predictor (PredictedInput)")
        if self.kind == "threshold":
            return ops.threshold(x, float(self.threshold))  # type: ignore[arg-type]
        if self.kind == "topk":
            return ops.topk(x, self.level, self.rescale)
        if self.kind == "block_topk":
            return ops.block_topk(x, self.level, self.block, self.rescale)
        if self.kind == "stat_topk":
            return ops.stat_topk(x, self.level, self.soft)
        return ops.head_topk(x, int(self.n_heads), self.level)  # type: ignore[arg-type]

    def exact_target(self, width: int) -> float:
        """The fraction of zeros the rule is built to give: top-K rules keep
        `int((1 - level) n)` of `n` entries (or heads), thresholds aim at `level`."""
        if self.per_head:
            h = int(self.n_heads)  # type: ignore[arg-type]
            return 1.0 - ops.keep_count(h, self.level) / h
        if self.kind in ("topk", "block_topk", "predicted"):
            return 1.0 - ops.keep_count(width, self.level) / width
        return self.level

    def on_gate(self, g: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """The gate branch: the rule on `act(g)`, or `act(rule(g))` for pre-activation rules."""
        return act(self(g)) if self.pre_activation else self(act(g))

    def params(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in ("kind", "level", "threshold")}
        return json.dumps(d, sort_keys=True)


@dataclass(frozen=True)
class Placed:
    layer: int
    site: str
    module: str  # full module name in the model
    width: int  # the width of the activation the rule sees (checked when applied)
    rule: Rule


@dataclass
class SparsityPlan:
    method: str  # the registered method
    entry: str  # the config entry (e.g. teal_greedy)
    level: float
    placed: list[Placed]
    # module -> module whose zeros let this module skip output rows (known in advance,
    # e.g. CATS: up_proj rows of neurons the gate dropped)
    output_skips: dict[str, str] = field(default_factory=dict)
    # module -> module whose zeros are zeros of this module's input too, when it is not
    # wrapped itself (CATS: down_proj reads act(gate) * up, zero wherever the gate is)
    input_skips: dict[str, str] = field(default_factory=dict)

    def save(self, out: Path) -> None:
        rows = [
            {
                "layer": p.layer,
                "site": p.site,
                "module": p.module,
                "width": p.width,
                "rule": p.rule.kind,
                "level": p.rule.level,
                "threshold": p.rule.threshold,
                "params": p.rule.params(),
            }
            for p in self.placed
        ]
        write_table(
            pd.DataFrame(rows, columns=ALLOCATION.names), out / "allocation.parquet", ALLOCATION
        )
        meta = {
            "method": self.method,
            "entry": self.entry,
            "level": self.level,
            "output_skips": self.output_skips,
            "input_skips": self.input_skips,
        }
        write_text(out / "sparsity.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> SparsityPlan:
        folder = Path(folder)
        meta_path = folder / "sparsity.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"not a sparsify output: {folder} has no sparsity.json")
        meta = json.loads(meta_path.read_text())
        frame = read_table(folder / "allocation.parquet", ALLOCATION)
        placed = [
            Placed(
                int(r.layer),
                r.site,
                r.module,
                int(r.width),
                Rule(
                    r.rule,
                    float(r.level),
                    None if pd.isna(r.threshold) else float(r.threshold),
                    **json.loads(r.params),
                ),
            )
            for r in frame.itertuples()
        ]
        return cls(
            meta["method"],
            meta["entry"],
            float(meta["level"]),
            placed,
            meta["output_skips"],
            meta["input_skips"],
        )


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
    """A linear (nn.Linear or Conv1D) whose input goes through the rule first."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.active:
            x = self.by_position(self._sparse, _identity, x)
        return self.inner(x, *args, **kwargs)

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        y = self.placed.rule(x)
        self.count(x, y)
        return y


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


def activation_width(
    model: nn.Module, adapter: FamilyAdapter, layer: int, site: str
) -> tuple[str, int]:
    """(module to wrap, width of the activation the rule sees) for a layer's site; the
    module for linear-input sites is the site's first linear."""
    adapter.check_site(site)
    if site == "gate":
        name, _ = adapter.act_module(model, layer)
        gate = model.get_submodule(f"{adapter.block_path(model, layer)}.{adapter.gate_linear}")
        return name, linear_shape(gate)[1]
    linear_site = "o_proj_in" if site == "heads" else site
    name, module = adapter.site_linears(model, layer)[linear_site][0]
    return name, linear_shape(module)[0]


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
    for name, w in wrappers.items():
        set_module(model, name, w)
    return Sparsified(model, plan, wrappers)


class _Stop(Exception):
    pass


@torch.no_grad()
def block_inputs(model: nn.Module, adapter: FamilyAdapter, layer: int, batches) -> list:
    """The exact (args, kwargs) block `layer` receives for each batch of token ids: the
    model runs up to that block only. Running the block on them again (`run_block`) needs
    no family-specific code (masks, rotary embeddings and all come with the kwargs)."""
    block = adapter.layers(model)[layer]
    device = next(model.parameters()).device
    captured = []

    def grab(mod, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    hook = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for x in batches:
            with contextlib.suppress(_Stop):
                model(input_ids=x.to(device), use_cache=False)
    finally:
        hook.remove()
    return captured


@torch.no_grad()
def run_block(model: nn.Module, adapter: FamilyAdapter, layer: int, inputs: list) -> list:
    """The block's output hidden states for each captured input."""
    block = adapter.layers(model)[layer]
    outs = []
    for args, kwargs in inputs:
        out = block(*args, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def linear_inventory(model: nn.Module, adapter: FamilyAdapter) -> pd.DataFrame:
    """Every block linear: layer, site, module, in and out features (the cost model's rows)."""
    rows = []
    for layer in range(len(adapter.layers(model))):
        for site in LINEAR_SITES:
            for name, module in adapter.site_linears(model, layer)[site]:
                n_in, n_out = linear_shape(module)  # unwraps a sparsity wrapper
                rows.append(
                    dict(
                        layer=layer,
                        site=site,
                        module=name,
                        n_in=n_in,
                        n_out=n_out,
                        params=linear_params(module),
                        rank=linear_rank(module),
                    )
                )
    return pd.DataFrame(rows)


def cost_per_token(
    model: nn.Module,
    adapter: FamilyAdapter,
    achieved: pd.DataFrame | None = None,
    output_skips: dict[str, str] | None = None,
    bytes_per_param: int = 4,
    input_skips: dict[str, str] | None = None,
) -> dict[str, float]:
    """FLOPs and weight bytes read per token by the linear layers (blocks and LM head).

    A linear with input sparsity `s_in` (the zero fraction fed to it, or that of the module
    named in `input_skips` when it is not wrapped itself) and output-row
    sparsity `s_out` (rows a method knows in advance it can skip) costs
    `2 n_in n_out (1 - s_in)(1 - s_out)` FLOPs (low-rank, rank k:
    `2 k (n_in (1 - s_in) + n_out (1 - s_out))`) and reads that fraction of its weights.
    Attention scores (QK^T, AV) depend on the context length and are not counted.
    """
    inv = linear_inventory(model, adapter)
    zero = (
        dict(zip(achieved.module, achieved.achieved, strict=True)) if achieved is not None else {}
    )
    skips, in_skips = output_skips or {}, input_skips or {}
    s_in = inv.module.map(lambda m: zero.get(m, zero.get(in_skips.get(m, ""), 0.0)))
    s_out = inv.module.map(lambda m: zero.get(skips[m], 0.0) if m in skips else 0.0)
    dense_params = inv.params.astype(float)  # k (n + m) for a low-rank linear
    # a low-rank linear up(down(x)): input zeros skip columns of down (k n), skipped output
    # rows skip rows of up (k m)
    low = inv["rank"] > 0
    active = (dense_params * (1 - s_in) * (1 - s_out)).where(
        ~low, inv["rank"] * (inv.n_in * (1 - s_in) + inv.n_out * (1 - s_out))
    )
    head = model.get_output_embeddings()
    head_params = float(head.weight.numel()) if head is not None else 0.0
    return {
        "flops_per_token": 2 * (active.sum() + head_params),
        "weight_bytes_per_token": bytes_per_param * (active.sum() + head_params),
        "dense_flops_per_token": 2 * (dense_params.sum() + head_params),
        # the fraction of block-linear weight reads skipped (TEAL's "model-wide sparsity")
        "effective_sparsity": 1 - active.sum() / dense_params.sum(),
    }


def placed_for_sites(
    model: nn.Module, adapter: FamilyAdapter, sites: list[str], rule_for
) -> list[Placed]:
    """One rule per module reading each site of every layer: `rule_for(layer, site, module)`
    returns the Rule (linear-input sites wrap every reading linear, so per-linear
    allocations such as TEAL's greedy one are possible)."""
    placed = []
    for layer in range(len(adapter.layers(model))):
        for site in sites:
            adapter.check_site(site)
            if site in LINEAR_SITES:
                for name, module in adapter.site_linears(model, layer)[site]:
                    width = linear_shape(module)[0]
                    placed.append(Placed(layer, site, name, width, rule_for(layer, site, name)))
            else:
                name, width = activation_width(model, adapter, layer, site)
                placed.append(Placed(layer, site, name, width, rule_for(layer, site, name)))
    return placed
