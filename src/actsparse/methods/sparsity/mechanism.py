"""The one sparsity mechanism: a *rule* placed at a *site* of a block, applied by wrapping
modules of an unmodified `transformers` model.

- A `Rule` turns an activation into a sparse tensor (threshold, top-K, statistical top-k,
  head top-k); it is a plain value, saved in a sparsify job's `allocation.parquet`.
- A `SparsityPlan` is every placed rule of one method at one level, plus which weight rows
  the method lets a kernel skip (`output_skips`).
- `placed_for_sites` places one rule per module reading each site of every layer.

The plan is applied by `wrappers.apply`; `cost.py` counts what it saves, `models.blocks` runs
one block at a time for the methods that calibrate or search with upstream rules on.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from actsparse.io import load_tensors, save_tensors, write_text
from actsparse.methods.sparsity import ops
from actsparse.models.adapters import (
    LINEAR_SITES,
    FamilyAdapter,
    linear_shape,
)
from actsparse.tables import ALLOCATION, read_table, write_table

# predicted: the top-K neurons (or heads) by a predictor's scores, computed from another
# module's input before this one runs (the predictors stage; `PredictedInput`)
# weighted_topk: top-K by |x_i| times a per-channel scale the wrapper supplies, the
# column norms of the weight the input multiplies (WINA)
ROTATIONS = "rotations.safetensors"  # a plan's bases, beside allocation.parquet
# rsparse: keep x_i where |x_i| ||W[:, i]||_2 > threshold (|x_i| alone at rank 0); the
# linear also gets the rest of its input through a rank-`rank` SVD of its weight (R-Sparse)
RULES = (
    "threshold", "topk", "block_topk", "stat_topk", "head_topk", "predicted", "weighted_topk",
    "rsparse",
)  # fmt: skip


@dataclass(frozen=True)
class Rule:
    kind: str  # one of RULES
    level: float  # the target fraction of zeros where the rule applies
    threshold: float | None = None  # threshold: keep |x| > threshold
    # threshold: the rule sees x - shift and the linear adds W (shift 1) back, so what it
    # drops is what lies within `threshold` of `shift` (SCAP's mode-centering, `SparseInput`)
    shift: float = 0.0
    # top-K in an orthogonal basis Q, the plan's rotation of this name (LaRoSA, WINA's
    # transform): the rule sees x Q and the linear reads rule(x Q) Q^T (a weighted rule
    # scores with the columns of W Q); "": the activation's own basis
    basis: str = ""
    # with a basis, LaRoSA's rotated residual stream: the plan's vector of this name (the
    # RMSNorm weight in front of the linear); the rule sees (x / scale) Q and the linear
    # reads rule(...) Q^T * scale, what the model with the norm weight and Q folded into
    # its weights computes
    basis_scale: str = ""
    rank: int = 0  # rsparse: the rank of the SVD that carries the dropped part of the input
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
        if self.kind in ("threshold", "rsparse") and (
            self.threshold is None or not self.threshold >= 0
        ):
            raise ValueError(f"a threshold rule needs a threshold >= 0, got {self.threshold}")
        if self.shift and self.kind != "threshold":
            raise ValueError(f"only a threshold rule is centred (shift), not {self.kind!r}")
        if self.rank and self.kind != "rsparse" or self.rank < 0:
            raise ValueError(f"only an rsparse rule has a rank >= 0, got {self.kind!r} {self.rank}")
        if self.basis and self.kind not in ("topk", "weighted_topk"):
            raise ValueError(f"only a top-K rule acts in a rotated basis, not {self.kind!r}")
        if self.basis_scale and not self.basis:
            raise ValueError("a basis_scale goes with a basis (a rotated rule)")
        if not math.isfinite(self.shift):
            raise ValueError(f"a rule's shift must be finite, got {self.shift}")
        if self.kind == "head_topk" and not self.n_heads:
            raise ValueError("a head_topk rule needs n_heads")
        if self.block < 1:
            raise ValueError(f"a block_topk rule needs block >= 1, got {self.block}")

    @property
    def per_head(self) -> bool:
        """Whether the rule keeps or drops whole heads (counted in heads, not entries)."""
        return self.kind == "head_topk" or (self.kind == "predicted" and bool(self.n_heads))

    @property
    def weighted(self) -> bool:
        """Whether the rule scores channels by the weight they multiply (`__call__` then
        takes that weight's column norms as `scale`)."""
        return self.kind == "weighted_topk" or (self.kind == "rsparse" and self.rank > 0)

    def __call__(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self._sparse(x, scale)
        return ops.straight_through(x, y) if self.ste else y

    def _sparse(self, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        if self.weighted:
            if scale is None:
                raise ValueError(f"a {self.kind} rule needs the weight's column norms")
            if self.kind == "rsparse":
                return ops.scored_threshold(x, scale, float(self.threshold))  # type: ignore[arg-type]
            return ops.weighted_topk(x, scale, self.level)
        if self.kind == "predicted":
            raise ValueError("a predicted rule takes its mask from a predictor (PredictedInput)")
        if self.kind in ("threshold", "rsparse"):  # rsparse at rank 0: |x| alone
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
        if self.kind in ("topk", "block_topk", "predicted", "weighted_topk"):
            return 1.0 - ops.keep_count(width, self.level) / width
        return self.level

    def kernel_form(self, width: int) -> tuple[str, float] | None:
        """The rule as the compiled CPU op applies it inside the linear: `(rule, param)` in
        the op's terms (`kernels.sparse_linear.RULE_CODES`; a centred threshold's `shift` is
        applied around the op), or None where the op cannot (a rotated basis, a low-rank
        remainder, a rescaled top-K, statistical, head, block and predicted rules)."""
        if self.basis:
            return None
        if self.kind == "threshold" or (self.kind == "rsparse" and self.rank == 0):
            return "threshold", float(self.threshold)  # type: ignore[arg-type]
        if self.kind == "topk" and not self.rescale:
            return "topk", float(ops.keep_count(width, self.level))
        if self.kind == "weighted_topk":
            return "weighted_topk", float(ops.keep_count(width, self.level))
        return None

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
    # basis name -> orthogonal (n, n) matrix, for rules with a `basis` (LaRoSA); saved
    # beside the plan as rotations.safetensors
    rotations: dict[str, torch.Tensor] = field(default_factory=dict, compare=False)

    def overhead_params(self, model: nn.Module) -> int:
        """Weights a token reads beside the linears' own (the cost model's overhead).

        A rotated rule: folded into the weights, `W Q` reads the rotated input and nothing
        rotates back; what remains is `x Q`, `n^2` per layer and site (q, k and v share
        it), or, in the rotated residual stream (`basis_scale`), the residual adapter
        `Q_a^T Q_b`, `n^2`, wherever the stream's basis changes (once per layer with one
        `Q` a layer; the embedding and the LM head absorb the first and the last). A rule
        with a low-rank remainder: its factors' `rank (n + m)` (R-Sparse)."""
        rotated = sorted(
            {(p.layer, LINEAR_SITES.index(p.site), p.rule.basis, p.width, bool(p.rule.basis_scale))
             for p in self.placed if p.rule.basis}
        )  # fmt: skip
        in_stream = [(b, n) for *_, b, n, residual in rotated if residual]
        changes = [n for (a, _), (b, n) in zip(in_stream, in_stream[1:], strict=False) if a != b]
        online = {(layer, site): n for layer, site, _, n, residual in rotated if not residual}
        low = sum(
            p.rule.rank * sum(linear_shape(model.get_submodule(p.module)))
            for p in self.placed
            if p.rule.rank
        )
        return sum(n * n for n in changes) + sum(n * n for n in online.values()) + low

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
        if self.rotations:
            save_tensors(out / ROTATIONS, self.rotations)
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
        rotations = load_tensors(folder / ROTATIONS) if (folder / ROTATIONS).is_file() else {}
        return cls(
            meta["method"],
            meta["entry"],
            float(meta["level"]),
            placed,
            meta["output_skips"],
            meta["input_skips"],
            rotations,
        )


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
