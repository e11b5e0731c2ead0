"""Decode steps of predictor-driven variants on the neuron-sparse FFN: the gated FFN of a
layer whose down projection reads a predicted neuron mask (Deja Vu's and Spark's
predictors, `methods.predictors.apply`) runs only its chosen neurons, gate and up rows
included, in one call (`neuron_sparse_ffn`: the compiled op on a CPU, Triton on a GPU).

The predictor is a forward pre-hook on the FFN's first linear that sets the down
projection's mask; `NeuronFFN` runs those hooks itself, on the FFN's input, then reads the
mask and computes `down(act(gate(x)) * up(x))` on the masked neurons only, which is what
the wrapped FFN computes (the other neurons' products are multiplied by zero there).
"""

from __future__ import annotations

import torch
from torch import nn

from actsparse.methods.sparsity.wrappers import PredictedInput
from actsparse.models.adapters import FamilyAdapter

from . import native
from .sparse_ffn import ACTS, neuron_sparse_ffn
from .sparse_gemv import transpose_for_sparse

# one token: the op computes the union of the rows' neurons for every row, while each row
# of the wrapped FFN keeps only its own, so more rows run through the wrapped FFN
MAX_ROWS = 1


class NeuronFFN(nn.Module):
    """A gated FFN module computed on its predicted neurons on decode steps (its weights
    stay the inner FFN's; `enabled` off: the inner FFN as it is)."""

    def __init__(
        self, inner: nn.Module, gate: nn.Module, up: nn.Module, down: PredictedInput, act: str
    ):
        super().__init__()
        self.inner, self.gate, self.down, self.act = inner, gate, down, act
        self.w_gate = gate.weight.detach()
        self.w_up = up.weight.detach()
        self.w_down_t = transpose_for_sparse(down.inner.weight)
        self.enabled = True
        self.n_linears = 3
        self.native = native.takes(self.w_gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if not self.enabled or rows > MAX_ROWS:
            return self.inner(x)
        for hook in list(self.gate._forward_pre_hooks.values()):
            hook(self.gate, (x,))  # the predictor: sets the down projection's mask
        mask, self.down.mask = self.down.mask, None
        if mask is None:
            raise RuntimeError(f"{self.down.placed.module}: no predicted mask for this step")
        x2 = x.reshape(rows, x.shape[-1])
        if self.native:  # straight to the compiled op: one token, the mask's neurons
            idx = mask.reshape(-1).nonzero().flatten()
            y = torch.ops.actsparse.neuron_ffn(
                x2, self.w_gate, self.w_up, self.w_down_t, idx, ACTS[self.act], None, None
            )
        else:
            y = neuron_sparse_ffn(
                x2, self.w_gate, self.w_up, self.w_down_t, act=self.act, mask=mask.reshape(rows, -1)
            )
        return y.reshape(x.shape)


def neuron_ffn_targets(
    model: nn.Module, handle, adapter: FamilyAdapter
) -> list[tuple[str, NeuronFFN]]:
    """(FFN module name, its `NeuronFFN`) for each layer whose down projection reads a
    predicted neuron mask, in gated families with a known activation; none elsewhere."""
    act = str(getattr(model.config, "hidden_act", ""))
    if not adapter.gated or act not in ACTS:
        return []
    out = []
    for layer in range(len(adapter.layers(model))):
        block = adapter.block_path(model, layer)
        down_name = f"{block}.{adapter.linears['ffn_intermediate'][0]}"
        down = handle.wrappers.get(down_name)
        if type(down) is not PredictedInput or down.placed.rule.per_head:
            continue
        ffn_name = down_name.rpartition(".")[0]
        gate_rel, up_rel = (
            adapter.gate_linear.rpartition(".")[2],
            adapter.up_linear.rpartition(".")[2],
        )  # type: ignore[union-attr]
        ffn = model.get_submodule(ffn_name)
        gate, up = getattr(ffn, gate_rel, None), getattr(ffn, up_rel, None)
        plain = all(isinstance(m, nn.Linear) and m.bias is None for m in (gate, up, down.inner))
        if not plain:
            continue
        out.append((ffn_name, NeuronFFN(ffn, gate, up, down, act)))
    return out
