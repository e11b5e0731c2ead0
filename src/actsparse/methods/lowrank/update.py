"""The inputs SVD-LLM's update step fits on: calibration tokens carried through the model
block by block, each block run dense to collect what its linears receive and then, once
compressed, to produce the next block's inputs (the reference code's
`whitening_local_update`: earlier blocks compressed, the block at hand still dense)."""

from __future__ import annotations

import torch

from actsparse.data import batch_at
from actsparse.methods.lowrank.base import UpdateStep
from actsparse.methods.lowrank.linalg import check_finite
from actsparse.models.adapters import FamilyAdapter
from actsparse.models.blocks import block_calls, call_block


class SequentialInputs:
    """Hidden states of `step.tokens` calibration tokens at the current block."""

    def __init__(
        self, model, adapter: FamilyAdapter, tokens: torch.Tensor, step: UpdateStep, seed: int
    ):
        self.model, self.adapter = model, adapter
        limit = getattr(model.config, "max_position_embeddings", None)
        seq_len = min(step.seq_len, int(limit)) if limit else step.seq_len
        if len(tokens) < seq_len:
            raise ValueError(
                f"the update step needs sequences of {seq_len} tokens; the calibration "
                f"corpus's train split has {len(tokens)}"
            )
        # one sequence per batch: a block's attention scores stay (heads, T, T)
        batches = [
            batch_at(tokens, b, 1, seq_len, seed) for b in range(max(1, step.tokens // seq_len))
        ]
        last = len(adapter.layers(model)) - 1
        self.hidden, self.calls = block_calls(model, adapter, last, batches)
        self.n_tokens = len(batches) * seq_len

    @torch.no_grad()
    def grams(self, layer: int, sites: list[str]) -> dict[str, torch.Tensor]:
        """site -> `X'^T X' / T'` (float64, CPU) of what the site's linears read when block
        `layer` runs on the current hidden states, as it is now."""
        block = self.adapter.layers(self.model)[layer]
        sums: dict[str, torch.Tensor] = {}
        hooks = []
        for site in sites:
            name, module = self.adapter.site_linears(self.model, layer)[site][0]

            def grab(mod, args, site=site, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                check_finite(x, "the update's inputs", f"layer {layer} {name}")
                sums[site] = sums[site] + x.T @ x if site in sums else x.T @ x

            hooks.append(module.register_forward_pre_hook(grab))
        try:
            for h, call in zip(self.hidden, self.calls[layer], strict=True):
                call_block(block, h, call)
        finally:
            for hook in hooks:
                hook.remove()
        return {site: (g / self.n_tokens).cpu() for site, g in sums.items()}

    @torch.no_grad()
    def advance(self, layer: int) -> None:
        """Run block `layer` (compressed by now) on the hidden states: the next block's inputs."""
        block = self.adapter.layers(self.model)[layer]
        self.hidden = [
            call_block(block, h, c) for h, c in zip(self.hidden, self.calls[layer], strict=True)
        ]
