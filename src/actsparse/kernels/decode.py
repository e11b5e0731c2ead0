"""Measured decode latency: one token at a time through the whole model, the sparse
variant with its sparse linears run by the input-sparse GEMV, beside the dense model, in
the same process, step by step in turn (`timing.interleaved`).

Which linears run sparse: every linear a sparsity plan wraps (its input goes through the
rule or a predicted mask) and every linear the plan says reads another module's zeros
(`input_skips`: CATS's and Spark's down projection). Each is swapped for a
`KernelLinear` holding its weight transposed once; for the dense steps it passes through
to the original linear, so both variants share the weights and the process.

Each variant decodes on its own KV cache, prefilled with `context` tokens; step `i` runs
at context `context + i`, as real decoding does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from actsparse.methods.sparsity.wrappers import LinearView

from .checks import DTYPES
from .sparse_gemv import input_sparse_gemv, transpose_for_sparse
from .timing import interleaved

# rows (batch x tokens) up to which a linear takes the GEMV kernel; prefill takes the dense GEMM
MAX_GEMV_ROWS = 16


class KernelLinear(LinearView, nn.Module):
    """An nn.Linear or Conv1D computed by `input_sparse_gemv` on decode steps (its weight
    and bias stay the inner linear's)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        w = inner.weight.detach()
        conv1d = type(inner).__name__ == "Conv1D"  # GPT-2: weight stored (in, out) already
        self.weight_t = w.contiguous() if conv1d else transpose_for_sparse(w)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if not self.enabled or rows > MAX_GEMV_ROWS or x.dtype not in DTYPES:
            return self.inner(x)
        y = input_sparse_gemv(x.reshape(rows, x.shape[-1]), self.weight_t)
        if self.inner.bias is not None:
            y = y + self.inner.bias
        return y.reshape(*x.shape[:-1], y.shape[-1])


def kernel_capable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


@contextlib.contextmanager
def sparse_linears(model: nn.Module, handle) -> Iterator[list[KernelLinear]]:
    """Swap the plan's sparse linears for `KernelLinear`s (restored on exit). `handle` is a
    `Sparsified` (its wrappers hold the linears they feed)."""
    swapped: list[tuple[object, str, nn.Module]] = []  # (owner, attribute, original)
    kernels: list[KernelLinear] = []
    modules = dict(model.named_modules())
    targets: list[tuple[object, str]] = [
        (w, "inner") for w in handle.wrappers.values() if kernel_capable(w.inner)
    ]
    for name in handle.plan.input_skips:
        if name not in handle.wrappers and kernel_capable(modules.get(name)):
            parent, _, child = name.rpartition(".")
            targets.append((model.get_submodule(parent) if parent else model, child))
    try:
        for owner, attr in targets:
            original = getattr(owner, attr)
            k = KernelLinear(original)
            setattr(owner, attr, k)
            swapped.append((owner, attr, original))
            kernels.append(k)
        yield kernels
    finally:
        for owner, attr, original in reversed(swapped):
            setattr(owner, attr, original)


@dataclass
class DecodeTiming:
    seconds: float  # median seconds per decode step of the variant
    dense_seconds: float  # of the dense model, measured in turn with it
    n_kernel_linears: int  # linears the variant ran through the sparse kernel

    @property
    def speedup(self) -> float:
        return self.dense_seconds / self.seconds


def _stepper(
    model: nn.Module, ids: torch.Tensor, before_each: Callable[[], None]
) -> Callable[[], object]:
    """Prefill `ids[:, :-1]`, then each call decodes one more token on its own cache."""
    before_each()
    out = model(input_ids=ids[:, :-1], use_cache=True)
    state = {"past": out.past_key_values, "tok": ids[:, -1:]}

    def step():
        before_each()
        o = model(input_ids=state["tok"], past_key_values=state["past"], use_cache=True)
        state["past"] = o.past_key_values
        state["tok"] = o.logits[:, -1:].argmax(-1)
        return o

    return step


@torch.no_grad()
def decode_latency(
    model: nn.Module,
    handle=None,
    reference: nn.Module | None = None,
    context: int = 64,
    reps: int = 20,
    seed: int = 0,
) -> DecodeTiming:
    """Median decode-step latency (batch 1) of the variant and of its dense counterpart.

    handle: the variant is `model` with this sparsity plan active and its sparse linears on
    the kernel; the dense steps disable both. reference: the variant is `model` itself
    (e.g. a decomposition), the dense one `reference`. Neither: the model is dense itself.
    """
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, context + 1), generator=gen).to(device)
    model.eval()
    if handle is None:
        dense_model = reference if reference is not None else model
        dense_model.eval()
        steps = {"variant": _stepper(model, ids, lambda: None)}
        if dense_model is not model:
            steps["dense"] = _stepper(dense_model, ids, lambda: None)
        t = interleaved(steps, device, reps=reps, warmup=2, flush=False)
        return DecodeTiming(t["variant"], t.get("dense", t["variant"]), 0)
    with sparse_linears(model, handle) as kernels:

        def mode(sparse: bool):
            def set_mode():
                for w in handle.wrappers.values():
                    w.active = sparse
                for k in kernels:
                    k.enabled = sparse

            return set_mode

        # a model small enough to stay in cache is timed as it runs: from cache
        steps = {
            "variant": _stepper(model, ids, mode(True)),
            "dense": _stepper(model, ids, mode(False)),
        }
        try:
            t = interleaved(steps, device, reps=reps, warmup=2, flush=False)
        finally:
            mode(True)()
        return DecodeTiming(t["variant"], t["dense"], len(kernels))
