"""The flat decode step gives the model's own logits (float64, to rounding), dense and with a
sparsity plan applied, and says which models it does not cover."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama_with_norms, tiny_model

from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models import adapter_for
from actsparse.models.adapters import LINEAR_SITES
from actsparse.models.decode_step import FlatDecoder, supports


def decode(model, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """Logits at positions prompt-1 .. T-1: prefill, then one flat step per token."""
    flat = FlatDecoder(model, ids.shape[1] + 2)
    out = [flat.prefill(ids[:, :prompt])]
    for t in range(prompt, ids.shape[1]):
        out.append(flat.step(ids[:, t]))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_flat_steps_give_the_models_logits(family):
    model = tiny_model(family).double().eval()
    ids = torch.randint(0, 64, (1, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, 5:]
    assert torch.allclose(decode(model, ids, 6), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.bfloat16, 4e-3)])
def test_in_single_and_half_precision_the_logits_agree_to_rounding(dtype, atol):
    """Attention runs in float32 for a bfloat16 model (rounded once, as SDPA rounds): the
    logits (|logit| <= 0.25 here) agree with the model's forward to a bfloat16 ulp of them."""
    model = tiny_model("llama").to(dtype).eval()
    ids = torch.randint(0, 64, (1, 14), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, 5:]
    flat = decode(model, ids, 6)
    assert flat.dtype == dtype
    assert (flat.float() - full.float()).abs().max() <= atol


def test_flat_steps_run_the_wrappers_of_a_plan():
    """Top-K per token: the full forward applies the same rule to each position, so each
    flat step (which calls the wrapped modules) gives the same logits."""
    model = tiny_llama_with_norms().eval()
    adapter = adapter_for("llama")
    placed = placed_for_sites(model, adapter, list(LINEAR_SITES), lambda *_: Rule("topk", 0.5))
    handle = apply(model, adapter, SparsityPlan("topk", "t", 0.5, placed))
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, 3:]
        with handle.disabled():
            dense = model(input_ids=ids).logits[:, 3:]
    flat = decode(model, ids, 4)
    assert torch.allclose(flat, full, rtol=0, atol=1e-10)
    assert not torch.allclose(flat, dense, atol=1e-3)  # the rules did act


def test_models_it_does_not_cover_are_named():
    assert "model type 'opt'" in supports(tiny_model("opt"), 16)
    assert "model type 'gpt2'" in supports(tiny_model("gpt2"), 16)
    mistral = tiny_model("mistral")
    mistral.config.sliding_window = 8
    assert "exceed the sliding window of 8" in supports(mistral, 16)
    with pytest.raises(ValueError, match="does not cover this model: model type 'opt'"):
        FlatDecoder(tiny_model("opt"), 16)


def test_a_full_cache_is_refused():
    model = tiny_model("llama").eval()
    flat = FlatDecoder(model, 4)
    flat.prefill(torch.tensor([[1, 2, 3]]))
    flat.step(torch.tensor([4]))
    with pytest.raises(ValueError, match="the cache is full \\(4 positions\\)"):
        flat.step(torch.tensor([5]))
