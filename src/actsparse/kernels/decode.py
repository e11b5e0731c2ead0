"""Measured decode latency: one token at a time through the whole model, the sparse
variant with its sparse linears on the sparse kernels, beside the dense model, in the same
process, step by step in turn (`timing.interleaved`).

Which linears run sparse: every linear a sparsity plan wraps (its input goes through the
rule or a predicted mask) and every linear the plan says reads another module's zeros
(`input_skips`: CATS's and Spark's down projection). On the CPU, a wrapper whose rule the
compiled op applies itself (`fused_rule`: thresholds, top-K, WINA's weighted top-K,
R-Sparse's scores without a remainder, SCAP's centred threshold) is replaced whole by a
`KernelLinear` carrying the rule, so a step makes one compiled call per linear; the other
wrappers keep their rule and get a `KernelLinear` that skips the zeros they give. For the
dense steps each `KernelLinear` passes through to the original linear, so both variants
share the weights and the process.

Each variant decodes on its own KV cache, prefilled with `context` tokens; step `i` runs
at context `context + i`, as real decoding does. Llama-family models step through
`models.decode_step.FlatDecoder` (the model's modules, without `transformers`' per-step
glue); others through the model's forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from actsparse.methods.sparsity.wrappers import LinearView, SparseInput
from actsparse.models.adapters import adapter_for, input_column_norms
from actsparse.models.decode_step import FlatDecoder, supports

from . import native
from .checks import DTYPES
from .decode_ffn import neuron_ffn_targets
from .sparse_gemv import input_sparse_gemv, transpose_for_sparse
from .sparse_gemv import torch_path as gemv_torch_path
from .sparse_linear import CUT, RULE_CODES, SCORED, apply_rule
from .timing import interleaved

# rows (batch x tokens) up to which a linear takes the GEMV kernel; prefill takes the dense GEMM
MAX_GEMV_ROWS = 16
WARMUP = 2  # untimed steps of each variant before the timed ones


@dataclass(frozen=True)
class FusedRule:
    """A rule as the compiled op takes it: `rule` of RULE_CODES, its `param`, the per-input
    `scale` of scored rules, and `shift` (SCAP: the op sees x - shift, the output gets
    W (shift 1) back)."""

    rule: str
    param: float = 0.0
    scale: torch.Tensor | None = None
    shift: float = 0.0


def fused_rule(wrapper: nn.Module) -> FusedRule | None:
    """The wrapper's rule in the compiled op's terms (`Rule.kernel_form`), or None where the
    op cannot apply it (a rotated basis, a predicted mask, a rule it has no form for)."""
    if type(wrapper) is not SparseInput or wrapper.rotation is not None:
        return None
    rule = wrapper.placed.rule
    form = rule.kernel_form(wrapper.placed.width)
    if form is None:
        return None
    name, param = form
    if name in CUT:  # the wrapper compares in the activation's dtype: the cut rounded to it
        param = float(torch.tensor(param, dtype=wrapper.inner.weight.dtype))
    scale = None
    if name in SCORED:  # the columns of the weight the input multiplies
        scale = input_column_norms(wrapper.inner).detach().float().contiguous()
    return FusedRule(name, param, scale, rule.shift)


class KernelLinear(LinearView, nn.Module):
    """An nn.Linear or Conv1D computed by a sparse kernel on decode steps (its weight and
    bias stay the inner linear's): with a `FusedRule`, the compiled op applies the rule and
    reads the kept rows; without, the kernel skips the zeros of its input."""

    def __init__(self, inner: nn.Module, fused: FusedRule | None = None, compiled: bool = True):
        super().__init__()
        self.inner = inner
        w = inner.weight.detach()
        conv1d = type(inner).__name__ == "Conv1D"  # GPT-2: weight stored (in, out) already
        self.weight_t = w.contiguous() if conv1d else transpose_for_sparse(w)
        self.fused = fused
        self.enabled = True
        bias = inner.bias.detach() if inner.bias is not None else None
        if fused is not None and fused.shift:
            # what the rule does not see comes back as a bias: W (shift 1)
            back = fused.shift * self.weight_t.double().sum(0)
            bias = (back if bias is None else bias.double() + back).to(w.dtype)
        self.bias_total = bias
        self.native = compiled and native.takes(inner.weight)
        self.group: SharedInput | None = None  # set when it joins one
        self.slot = 0
        self.n_linears = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or x.dtype not in DTYPES:
            return self.inner(x)
        rows = x.numel() // x.shape[-1]
        if self.group is not None and rows <= MAX_GEMV_ROWS:
            return self.group.output(x, self.slot)
        f = self.fused
        if rows > MAX_GEMV_ROWS:  # a prompt: the dense GEMM, on what the rule keeps
            if f is None:
                return self.inner(x)
            y = apply_rule(x - f.shift, f.rule, f.param, f.scale) @ self.weight_t
            return y if self.bias_total is None else y + self.bias_total
        x2 = x.reshape(rows, x.shape[-1])
        if f is not None and f.shift:
            x2 = x2 - f.shift
        if self.native:
            code, param = (RULE_CODES[f.rule], f.param) if f is not None else (0, 0.0)
            scale = f.scale if f is not None else None
            y = torch.ops.actsparse.sparse_linear(
                x2, self.weight_t, self.bias_total, code, param, scale
            )
        else:
            if f is not None:
                x2 = apply_rule(x2, f.rule, f.param, f.scale)
            if x2.device.type == "cpu":  # the PyTorch GEMV, whatever is compiled
                y = gemv_torch_path(x2.contiguous(), self.weight_t)
            else:  # Triton
                y = input_sparse_gemv(x2, self.weight_t)
            if self.bias_total is not None:
                y = y + self.bias_total
        return y.reshape(*x.shape[:-1], y.shape[-1])


class SharedInput:
    """Compiled fused linears that read one input under one rule (q, k and v; gate and up,
    under TEAL's per-site thresholds), run as one call on their weights side by side: one
    pass over the input, one set of kept rows, each row `sum(n_i)` wide (longer runs of
    memory than each linear's alone), and fewer calls per step. The first member called
    with an input computes every member's output; the others take theirs. The members'
    `weight_t` become views of the shared matrix (no second copy)."""

    def __init__(self, members: list[KernelLinear]):
        first = members[0]
        self.fused = first.fused
        self.sizes = [m.weight_t.shape[1] for m in members]
        self.weight_t = torch.cat([m.weight_t for m in members], dim=1)
        biases = [m.bias_total for m in members]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat(
                [
                    b if b is not None else first.weight_t.new_zeros(n)
                    for b, n in zip(biases, self.sizes, strict=True)
                ]
            )
        start = 0
        for slot, (m, n) in enumerate(zip(members, self.sizes, strict=True)):
            m.weight_t = self.weight_t[:, start : start + n]
            m.group, m.slot = self, slot
            start += n
        self.n_members = len(members)
        self._input: torch.Tensor | None = None  # held, so its id cannot be reused meanwhile
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._left = 0

    def output(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        if self._input is not x:
            f = self.fused
            x2 = x.reshape(-1, x.shape[-1])
            if f.shift:
                x2 = x2 - f.shift
            y = torch.ops.actsparse.sparse_linear(
                x2, self.weight_t, self.bias, RULE_CODES[f.rule], f.param, None
            )
            self._input, self._outputs, self._left = x, y.split(self.sizes, dim=-1), self.n_members
        y = self._outputs[slot]
        self._left -= 1
        if self._left == 0:  # every member served: let the input and outputs go
            self._input, self._outputs = None, ()
        return y.reshape(*x.shape[:-1], y.shape[-1])


def share_inputs(kernels: list[tuple[KernelLinear, tuple]]) -> int:
    """Group the compiled fused kernels that read one site of one layer under one rule (the
    `key` beside each); returns how many groups were made."""
    groups: dict[tuple, list[KernelLinear]] = {}
    for k, key in kernels:
        f = k.fused
        if k.native and f is not None and f.scale is None:
            groups.setdefault((*key, f.rule, f.param, f.shift, k.weight_t.dtype), []).append(k)
    made = 0
    for members in groups.values():
        if len(members) > 1:
            SharedInput(members)
            made += 1
    return made


def kernel_capable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), child


# how a variant's sparse linears run on decode steps: "fused" (the rule in the compiled
# op where it can; a predicted FFN on its neurons, gate and up too), "kernel" (every rule
# in its wrapper, the compiled op skipping zeros), "torch" (the rule in its wrapper, the
# PyTorch GEMV: no compiled code)
PATHS = ("fused", "kernel", "torch")


@contextlib.contextmanager
def sparse_linears(model: nn.Module, handle, path: str = "fused") -> Iterator[list[nn.Module]]:
    """Swap the plan's sparse linears for `KernelLinear`s (restored on exit). `handle` is a
    `Sparsified` (its wrappers hold the linears they feed). On the "fused" path, on the CPU
    with the compiled ops, a wrapper whose rule they apply is replaced whole (`fused_rule`).
    A gated FFN whose down projection reads predicted neurons becomes a `NeuronFFN` (gate
    and up computed on those neurons too). Each swapped module has `enabled`."""
    if path not in PATHS:
        raise ValueError(f"decode path must be one of {', '.join(PATHS)}, got {path!r}")
    swapped: list[tuple[object, str, nn.Module]] = []  # (owner, attribute, original)
    kernels: list[nn.Module] = []
    modules = dict(model.named_modules())
    # predicted neurons: the whole FFN on them (gate and up too), the down wrapper inside it
    adapter = adapter_for(model.config.model_type)
    ffns = neuron_ffn_targets(model, handle, adapter) if path == "fused" else []
    in_ffns = {f.down.placed.module for _, f in ffns}
    # (owner, attribute, fused rule, (layer, site) of the input it reads)
    targets: list[tuple[object, str, FusedRule | None, tuple]] = []
    for name, w in handle.wrappers.items():
        if not kernel_capable(w.inner) or name in in_ffns:
            continue
        fused = fused_rule(w) if path == "fused" and native.takes(w.inner.weight) else None
        where = (w.placed.layer, w.placed.site)
        if fused is not None:
            targets.append((*_owner(model, name), fused, where))  # the wrapper goes, its rule stays
        else:
            targets.append((w, "inner", None, where))
    for name in handle.plan.input_skips:
        if name not in handle.wrappers and kernel_capable(modules.get(name)):
            targets.append((*_owner(model, name), None, (name,)))
    try:
        keyed = []
        for owner, attr, fused, where in targets:
            original = getattr(owner, attr)
            inner = original.inner if fused is not None else original
            k = KernelLinear(inner, fused, compiled=path != "torch")
            setattr(owner, attr, k)
            swapped.append((owner, attr, original))
            kernels.append(k)
            keyed.append((k, where))
        share_inputs(keyed)
        for name, ffn in ffns:
            owner, attr = _owner(model, name)
            swapped.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, ffn)
            kernels.append(ffn)
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
    model: nn.Module, ids: torch.Tensor, before_each: Callable[[], None], steps: int, flat: bool
) -> Callable[[], object]:
    """Prefill `ids[:, :-1]`, then each call decodes one more token on its own cache (at
    most `steps` calls): the flat Llama step where it covers the model (and `flat`), else
    the model's forward."""
    before_each()
    max_len = ids.shape[1] + steps
    if flat and not supports(model, max_len):
        flat = FlatDecoder(model, max_len)
        flat.prefill(ids[:, :-1])
        state = {"tok": ids[:, -1]}

        def flat_step():
            before_each()
            logits = flat.step(state["tok"])
            state["tok"] = logits.argmax(-1)
            return logits

        return flat_step
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
    path: str = "fused",
    flat: bool = True,
) -> DecodeTiming:
    """Median decode-step latency (batch 1) of the variant and of its dense counterpart.

    handle: the variant is `model` with this sparsity plan active and its sparse linears on
    the kernel; the dense steps disable both. reference: the variant is `model` itself
    (e.g. a decomposition), the dense one `reference`. Neither: the model is dense itself.
    path: how the sparse linears run (`PATHS`); flat: the flat step where it covers the
    model (`models.decode_step`), else the model's forward (the benchmarks compare them).
    """
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, context + 1), generator=gen).to(device)
    model.eval()
    if handle is None:
        dense_model = reference if reference is not None else model
        dense_model.eval()
        steps = {"variant": _stepper(model, ids, lambda: None, reps + WARMUP, flat)}
        if dense_model is not model:
            steps["dense"] = _stepper(dense_model, ids, lambda: None, reps + WARMUP, flat)
        t = interleaved(steps, device, reps=reps, warmup=WARMUP, flush=False)
        return DecodeTiming(t["variant"], t.get("dense", t["variant"]), 0)
    with sparse_linears(model, handle, path) as kernels:

        def mode(sparse: bool):
            def set_mode():
                for w in handle.wrappers.values():
                    w.active = sparse
                for k in kernels:
                    k.enabled = sparse

            return set_mode

        # a model small enough to stay in cache is timed as it runs: from cache
        steps = {
            "variant": _stepper(model, ids, mode(True), reps + WARMUP, flat),
            "dense": _stepper(model, ids, mode(False), reps + WARMUP, flat),
        }
        try:
            t = interleaved(steps, device, reps=reps, warmup=WARMUP, flush=False)
        finally:
            mode(True)()
        return DecodeTiming(t["variant"], t["dense"], sum(k.n_linears for k in kernels))
