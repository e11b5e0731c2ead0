"""Spark's parameter-reusing predictor, evaluated post hoc on a trained model.

Spark splits the FFN input `x = [x[:r], x[r:]]` and uses the first `r` input dimensions of
the key (gate, or fc1) matrix as the predictor: the scores are the partial pre-activations
`K1^T x[:r]` (plus fc1's bias), computed with weights the FFN already holds; no parameter
is added. The top-K scores choose the neurons; a chosen neuron is then computed in full
(a model trained dense has no reason to tolerate Spark's `act(K1^T x[:r]) * (K2^T x[r:])`
bracketing, so post hoc the partial product only ranks). `rank` is `r` (null: d / 4,
our choice: the paper's `r` for this placement is not confirmed). Scores rank by value (Spark's top-k keeps
the largest pre-activations), so on a gated FFN they rank `gate`, not `act(gate) * up`.
Its FLOPs (`2 r d_ff`) are counted in full as predictor cost: an upper bound, since the
chosen neurons reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from actsparse.methods.predictors.base import PREDICTORS, PredictorCfg, PredictorMethod
from actsparse.methods.predictors.labels import layer_widths
from actsparse.models.adapters import FamilyAdapter


@dataclass
class SparkCfg(PredictorCfg):
    rank: int | None = MISSING  # r: input dims reused (null: d / 4)

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.rank is not None and self.rank < 1:
            out.append(("rank", f"must be >= 1 or null, got {self.rank}"))
        return out


class PartialKey(nn.Module):
    """Scores `x[..., :r] @ K[:, :r]^T (+ b)` from the model's own key (gate/fc1) weights."""

    def __init__(self, key: nn.Module, r: int):
        super().__init__()
        weight = key.weight
        # nn.Linear stores (out, in); transformers' Conv1D (in, out)
        w = weight[:, :r] if isinstance(key, nn.Linear) else weight[:r, :].T
        self.register_buffer("w", w.detach())
        b = getattr(key, "bias", None)
        self.register_buffer("b", None if b is None else b.detach())
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x[..., : self.r].to(self.w.dtype) @ self.w.T
        return z if self.b is None else z + self.b

    def flops(self) -> int:
        return 2 * self.w.numel()


def key_linear(model, adapter: FamilyAdapter, layer: int) -> nn.Module:
    """The FFN's key matrix: the gate projection of a gated FFN, fc1 otherwise."""
    name = adapter.site_linears(model, layer)["ffn_in"][0][0]
    module = model.get_submodule(name)
    return getattr(module, "inner", module)


@PREDICTORS.register("spark")
class Spark(PredictorMethod):
    paper = "Spark Transformer"
    summary = "the parameter-reusing predictor, post hoc: the first `r` input dims of the FFN's key (gate / fc1) matrix; no new parameters"
    Config = SparkCfg
    target = "mlp"
    has_weights = False

    def ranks(self, cfg):
        return [cfg.rank]

    def r_of(self, cfg_rank: int | None, d_in: int) -> int:
        return cfg_rank if cfg_rank is not None else max(1, d_in // 4)

    def fit(self, cfg, model, adapter, labels, layer, rank, seed, device, where):
        key = key_linear(model, adapter, layer)
        if hasattr(key, "rank"):
            raise ValueError(f"{where}: layer {layer}: spark needs a dense key matrix")
        r = self.r_of(rank, labels.widths[layer][0])
        return PartialKey(key, r).to(device), {"r": float(r)}

    def load(self, meta, tensors, model, adapter, layer, where):
        d_in = layer_widths(model, adapter, "mlp")[layer][0]
        return PartialKey(key_linear(model, adapter, layer), self.r_of(meta["rank"], d_in))
