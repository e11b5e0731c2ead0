"""One block at a time: the exact inputs a block receives, and its outputs on them.

Sequential calibration, TEAL's greedy search and SVD-LLM's update step work on one block
with everything upstream already changed; these functions let them run one block without
any family-specific code (masks, rotary embeddings and all come with the captured kwargs).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from actsparse.models.adapters import FamilyAdapter


class StopBlock(Exception):
    """Ends a forward pass early once what it was run for has been seen."""


def _split_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    """(hidden states, other positional args, kwargs) of a block call."""
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), (), kwargs


def call_block(block, hidden: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
    """The block's output hidden states on `hidden`, with the rest of a call from
    `block_calls`."""
    rest, kwargs = call
    out = block(hidden, *rest, **kwargs)
    return out[0] if isinstance(out, tuple) else out


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
        raise StopBlock

    hook = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for x in batches:
            with contextlib.suppress(StopBlock):
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


@torch.no_grad()
def block_calls(model, adapter: FamilyAdapter, last: int, batches: list) -> tuple[list, list]:
    """What blocks `0..last` are called with for each batch of token ids, without running
    them: (the hidden states block 0 receives per batch, `calls[layer][batch]` = the
    other (args, kwargs) of that block's call: masks, rotary embeddings, positions).

    The model's own forward computes these (no family-specific code); its blocks are
    stood in for by pass-throughs meanwhile, so this costs the embeddings only. They are
    taken per layer since they may differ between layers (Qwen2's sliding-window layers
    get another mask).
    """
    blocks = adapter.layers(model)
    device = next(model.parameters()).device
    first: list[torch.Tensor] = []
    calls: list[list] = [[] for _ in range(last + 1)]
    passed: list[torch.Tensor | None] = [None]

    def stand_in(layer: int):
        def forward(*args, **kwargs):
            hidden, rest, kw = _split_call(args, kwargs)
            if layer == 0:
                first.append(hidden)
            elif hidden is not passed[0]:
                # carrying outputs forward assumes the model feeds each block's output
                # straight into the next one
                raise RuntimeError(
                    f"block {layer} does not receive block {layer - 1}'s output as its "
                    "hidden states: sequential calibration cannot carry them forward"
                )
            calls[layer].append((rest, kw))
            if layer == last:
                raise StopBlock
            passed[0] = hidden
            return hidden

        return forward

    saved = {i: blocks[i].__dict__.get("forward") for i in range(last + 1)}
    try:
        for i in range(last + 1):
            blocks[i].forward = stand_in(i)
        for x in batches:
            passed[0] = None
            with contextlib.suppress(StopBlock):
                model(input_ids=x.to(device), use_cache=False)
    finally:
        for i, forward in saved.items():
            if forward is None:
                del blocks[i].forward
            else:
                blocks[i].forward = forward
    if any(len(c) != len(batches) for c in calls):
        raise RuntimeError(
            f"the model did not call blocks 0..{last} once each per batch: sequential "
            "calibration cannot carry their outputs forward"
        )
    return first, calls
