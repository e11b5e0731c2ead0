"""One block at a time: the exact inputs a block receives, and its outputs on them.

Sequential calibration and TEAL's greedy search measure a block's output error with the
upstream rules on; these two functions let them run one block without any
family-specific code (masks, rotary embeddings and all come with the captured kwargs).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from actsparse.models.adapters import FamilyAdapter


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
