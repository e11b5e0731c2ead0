"""Decode latency: the sparse variant runs its sparse linears on the kernel, gives the
same tokens as the plain sparsified model, and leaves the model as it found it."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

from actsparse.kernels.decode import KernelLinear, decode_latency, sparse_linears
from actsparse.methods.sparsity.cats import gate_skips
from actsparse.methods.sparsity.mechanism import (
    Placed,
    Rule,
    SparsityPlan,
    activation_width,
    placed_for_sites,
)
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models import adapter_for
from actsparse.models.adapters import LINEAR_SITES
from actsparse.models.decode_step import FlatDecoder


def topk_everywhere(model, family: str, level: float = 0.5):
    adapter = adapter_for(family)
    placed = placed_for_sites(model, adapter, list(LINEAR_SITES), lambda *_: Rule("topk", level))
    return apply(model, adapter, SparsityPlan("topk", "t", level, placed))


def flat_step_logits(model, ids):
    flat = FlatDecoder(model, ids.shape[1] + 1)
    flat.prefill(ids[:, :-1])
    return flat.step(ids[:, -1])


def step_logits(model, ids):
    out = model(input_ids=ids[:, :-1], use_cache=True)
    return model(input_ids=ids[:, -1:], past_key_values=out.past_key_values, use_cache=True).logits


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_the_kernel_linears_decode_the_same_logits(family):
    """Top-K is a rule the compiled op applies: each wrapper is replaced whole by a kernel
    linear carrying the rule, and the step gives the wrapped model's logits."""
    model = tiny_model(family)
    handle = topk_everywhere(model, family)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = step_logits(model, ids)
        with sparse_linears(model, handle) as kernels:
            assert len(kernels) == len(handle.wrappers) > 0
            assert all(k.fused is not None and k.fused.rule == "topk" for k in kernels)
            if family == "llama":  # q, k, v and gate, up: one call each on a shared input
                assert sum(k.group is not None for k in kernels) == 2 * 5
            assert not any(w in set(model.modules()) for w in handle.wrappers.values())
            on_kernel = step_logits(model, ids)
            for k in kernels:
                k.enabled = False
            passthrough = step_logits(model, ids)
        with handle.disabled():
            dense = step_logits(model, ids)
    assert torch.allclose(on_kernel, plain, atol=1e-5)
    assert torch.equal(passthrough, dense)  # off, a fused kernel is the bare linear
    assert not any(isinstance(m, KernelLinear) for m in model.modules())
    assert all(w in set(model.modules()) for w in handle.wrappers.values())


def test_a_rule_the_op_does_not_apply_keeps_its_wrapper():
    """A rescaled top-K (and Spark's statistical top-k, rotations, predicted masks) stays
    in its wrapper; the kernel under it skips the zeros the wrapper gives."""
    model = tiny_model("llama")
    adapter = adapter_for("llama")
    rule = Rule("topk", 0.5, rescale=True)
    placed = placed_for_sites(model, adapter, list(LINEAR_SITES), lambda *_: rule)
    handle = apply(model, adapter, SparsityPlan("topk", "t", 0.5, placed))
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = step_logits(model, ids)
        with sparse_linears(model, handle) as kernels:
            assert all(k.fused is None for k in kernels)
            assert all(isinstance(w.inner, KernelLinear) for w in handle.wrappers.values())
            assert torch.allclose(step_logits(model, ids), plain, atol=1e-5)


FUSED_RULES = [
    Rule("threshold", 0.5, threshold=0.3),
    Rule("threshold", 0.5, threshold=0.2, shift=0.15),  # SCAP: centred
    Rule("topk", 0.7),
    Rule("weighted_topk", 0.6),
    Rule("rsparse", 0.5, threshold=0.4),  # rank 0: |x| alone
]


@pytest.mark.parametrize("rule", FUSED_RULES, ids=lambda r: f"{r.kind}-{r.shift}")
def test_each_fused_rule_decodes_what_its_wrapper_does(rule):
    model = tiny_model("llama")
    adapter = adapter_for("llama")
    placed = placed_for_sites(model, adapter, list(LINEAR_SITES), lambda *_: rule)
    handle = apply(model, adapter, SparsityPlan(rule.kind, "r", rule.level, placed))
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = step_logits(model, ids)
        with sparse_linears(model, handle) as kernels:
            assert all(k.fused is not None for k in kernels) and kernels
            fused = step_logits(model, ids)
    assert torch.allclose(fused, plain, atol=1e-5)


def test_a_down_projection_reading_the_gates_zeros_runs_on_the_kernel():
    """CATS: the gate is wrapped, the down projection is not, but it reads the gate's zeros
    (`input_skips`): it is swapped for a kernel linear too, and restored after."""
    model = tiny_model("llama")
    adapter = adapter_for("llama")
    name, width = activation_width(model, adapter, 1, "gate")
    plan = SparsityPlan("cats", "c", 0.5, [Placed(1, "gate", name, width, Rule("topk", 0.5))])
    gate_skips(model, adapter, plan)
    down = next(iter(plan.input_skips))
    original = model.get_submodule(down)
    handle = apply(model, adapter, plan)
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = step_logits(model, ids)
        with sparse_linears(model, handle) as kernels:
            assert isinstance(model.get_submodule(down), KernelLinear) and len(kernels) == 1
            assert torch.allclose(step_logits(model, ids), plain, atol=1e-5)
    assert model.get_submodule(down) is original


def test_decode_latency_times_both_variants_and_restores_the_model():
    model = tiny_model("llama")
    handle = topk_everywhere(model, "llama")
    before = {n: type(m) for n, m in model.named_modules()}
    t = decode_latency(model, handle, context=8, reps=3)
    assert t.seconds > 0 and t.dense_seconds > 0 and t.speedup == t.dense_seconds / t.seconds
    assert t.n_kernel_linears == len(handle.wrappers)
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert all(w.active for w in handle.wrappers.values())


def test_a_dense_model_is_timed_alone_and_a_decomposition_beside_its_reference():
    model, reference = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    alone = decode_latency(model, context=8, reps=2)
    assert alone.seconds == alone.dense_seconds and alone.n_kernel_linears == 0
    beside = decode_latency(model, reference=reference, context=8, reps=2)
    assert (
        beside.seconds > 0 and beside.dense_seconds > 0 and beside.seconds != beside.dense_seconds
    )


def test_the_swap_is_undone_when_a_step_fails():
    model = tiny_model("llama")
    handle = topk_everywhere(model, "llama")
    with pytest.raises(RuntimeError, match="boom"), sparse_linears(model, handle):
        raise RuntimeError("boom")
    assert not any(isinstance(m, KernelLinear) for m in model.modules())


def test_each_rule_says_how_the_compiled_op_applies_it():
    assert Rule("topk", 0.7).kernel_form(100) == ("topk", 30.0)
    assert Rule("threshold", 0.5, threshold=0.25).kernel_form(8) == ("threshold", 0.25)
    assert Rule("rsparse", 0.5, threshold=0.1).kernel_form(8) == ("threshold", 0.1)
    assert Rule("weighted_topk", 0.5).kernel_form(10) == ("weighted_topk", 5.0)
    for rule in (
        Rule("topk", 0.5, rescale=True),
        Rule("topk", 0.5, basis="q"),
        Rule("rsparse", 0.5, threshold=0.1, rank=4),
        Rule("stat_topk", 0.5),
        Rule("head_topk", 0.5, n_heads=4),
        Rule("block_topk", 0.5, block=2),
    ):
        assert rule.kernel_form(16) is None, rule


def test_predicted_neurons_run_the_whole_ffn_on_them():
    """Deja Vu's FFN predictor (a pre-hook on the gate projection setting the down
    projection's mask): on decode steps the gated FFN becomes one neuron-sparse call, gate
    and up rows of the chosen neurons only, and gives the wrapped model's logits."""
    from pathlib import Path

    from actsparse.kernels.decode_ffn import NeuronFFN
    from actsparse.methods.predictors.apply import PredictorSet, apply_predicted

    model = tiny_model("llama")
    adapter = adapter_for("llama")
    torch.manual_seed(4)
    d, d_ff = model.config.hidden_size, model.config.intermediate_size
    predictors = [torch.nn.Linear(d, d_ff, bias=False) for _ in range(2)]
    meta = {"method": "dejavu", "entry": "d", "target": "mlp"}
    handle = apply_predicted(model, adapter, PredictorSet(Path("."), meta, predictors), 0.6)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = step_logits(model, ids)
        with sparse_linears(model, handle) as kernels:
            ffns = [k for k in kernels if isinstance(k, NeuronFFN)]
            assert len(ffns) == len(kernels) == 2  # the down wrappers live inside them
            on_kernel = step_logits(model, ids)
            flat_kernel = flat_step_logits(model, ids)
        flat_plain = flat_step_logits(model, ids)
    assert torch.allclose(on_kernel, plain, atol=1e-5)
    assert torch.allclose(flat_kernel, flat_plain, atol=1e-5)  # the flat step calls the FFN module
    assert torch.allclose(flat_plain[:, None], plain, atol=1e-5)
    assert not any(isinstance(m, NeuronFFN) for m in model.modules())
