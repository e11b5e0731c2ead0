"""Sequential threshold calibration carries each block's outputs forward as the next
block's inputs: it must give the thresholds of the slow algorithm it replaced (the model
rerun from its first layer to capture every layer's inputs, kept here as the reference),
and run each block a number of times that does not grow with the depth."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import TINY_D, TINY_F, TINY_V

from actsparse.activation_stats import SiteStats, histogram_quantile, log_bin_edges
from actsparse.data import batch_at
from actsparse.methods.sparsity import SPARSITY, cats, teal, threshold
from actsparse.methods.sparsity.base import (
    BuildContext,
    context_len,
)
from actsparse.methods.sparsity.calibration import SITE_ORDER, calibrate_thresholds
from actsparse.methods.sparsity.mechanism import Placed, Rule, SparsityPlan, placed_for_sites
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models import adapter_for
from actsparse.models.adapters import LINEAR_SITES
from actsparse.models.blocks import block_calls, block_inputs, run_block
from actsparse.sweeps import default_entry

N_LAYERS = 4


@torch.no_grad()
def reference_thresholds(placed, cfg, ctx):
    """The algorithm before the fix, verbatim: for each layer, the whole model reruns up
    to that layer (earlier layers' rules on) to capture its inputs, then the block reruns
    in full once per site."""
    model, adapter = ctx.model, ctx.adapter
    seq_len = context_len(model, cfg.calib_seq_len or ctx.window or 10**9)
    n_batches = max(1, cfg.calib_tokens // (8 * seq_len))
    batches = [batch_at(ctx.tokens, b, 8, seq_len, ctx.seed) for b in range(n_batches)]
    edges = log_bin_edges(2048, 1e-6, 1e4)
    groups: dict[tuple[int, str], list] = {}
    for p in placed:
        groups.setdefault((p.layer, p.site), []).append(p)
    done: list = []
    for layer in sorted({layer for layer, _ in groups}):
        handle = apply(model, adapter, SparsityPlan("calibration", "", 0.0, done))
        try:
            inputs = block_inputs(model, adapter, layer, batches)
        finally:
            handle.remove()
        for site in [s for s in SITE_ORDER if (layer, s) in groups]:
            group = groups[(layer, site)]
            stats = SiteStats(group[0].width, edges, 0.0, gram=False, device=ctx.device)
            where = f"layer {layer} site {site}"
            if site == "gate":
                _, act = adapter.act_module(model, layer)
                hook = act.register_forward_hook(
                    lambda m, a, out, s=stats, w=where: s.update(out, w)
                )
            else:
                module = model.get_submodule(group[0].module)
                hook = module.register_forward_pre_hook(
                    lambda m, a, s=stats, w=where: s.update(a[0], w)
                )
            handle = apply(model, adapter, SparsityPlan("calibration", "", 0.0, done))
            try:
                run_block(model, adapter, layer, inputs)
            finally:
                hook.remove()
                handle.remove()
            counts, e = stats.hist.cpu().numpy(), edges.numpy()
            done += [
                replace(
                    p, rule=replace(p.rule, threshold=histogram_quantile(e, counts, p.rule.level))
                )
                for p in group
            ]
    return done


def deep_model(family: str, seed: int = 0):
    """A tiny random model with `N_LAYERS` blocks (errors compound with depth);
    `qwen2_sliding`: its blocks alternate full and sliding-window attention masks."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(
        vocab_size=TINY_V,
        hidden_size=TINY_D,
        intermediate_size=TINY_F,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    if family == "qwen2_sliding":
        types = ["full_attention", "sliding_attention"] * (N_LAYERS // 2)
        cfg = Qwen2Config(**common, use_sliding_window=True, sliding_window=4, layer_types=types)
        return Qwen2ForCausalLM(cfg).eval()
    if family == "opt":
        cfg = OPTConfig(
            vocab_size=TINY_V,
            hidden_size=TINY_D,
            ffn_dim=TINY_F,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=32,
            word_embed_proj_dim=TINY_D,
        )
        return OPTForCausalLM(cfg).eval()
    raise KeyError(family)


def _ctx(model, seed=0):
    torch.manual_seed(seed)
    tokens = torch.randint(0, TINY_V, (4096,))
    adapter = adapter_for(model.config.model_type)
    return BuildContext(model, adapter, None, tokens, torch.device("cpu"), seed=seed)


def _cfg(method, **keys):
    # 384 tokens in 16-token windows: 3 batches, so batches are carried separately
    return default_entry("sparsify", method, calib_tokens=384, calib_seq_len=16, **keys).cfg


def assert_same_thresholds(new, ref):
    assert [(p.layer, p.site, p.module, p.rule.level) for p in new] == [
        (p.layer, p.site, p.module, p.rule.level) for p in ref
    ]
    got = [p.rule.threshold for p in new]
    want = [p.rule.threshold for p in ref]
    assert all(t > 0 for t, p in zip(want, ref, strict=True) if p.rule.level > 0)
    assert got == pytest.approx(want, rel=1e-9, abs=0)


CASES = [
    ("llama", "threshold", dict(site="ffn_intermediate")),
    ("llama", "threshold", dict(site="attn_in")),
    ("llama", "cats", {}),
    ("llama", "teal", {}),
    (
        "llama",
        "teal",
        dict(allocation="greedy", greedy_step=0.25, greedy_tokens=64, greedy_seq_len=16),
    ),
    ("qwen2_sliding", "teal", {}),
    ("opt", "threshold", dict(site="ffn_intermediate")),
    ("opt", "teal", {}),
]


class _DenseStats:
    """Stands in for a calibrate job's histograms (teal's greedy search reads them)."""

    def threshold(self, layer, site, level):
        return 0.1 * level * (1 + layer) * (1 + SITE_ORDER.index(site))

    def check_model(self, *args):
        pass


@pytest.mark.parametrize("family,method,keys", CASES)
def test_plans_equal_the_slow_reference(family, method, keys, monkeypatch):
    """Every method calibrated sequentially builds the same plan, threshold for threshold,
    as with the reference algorithm (each rule's module, site, level and order too)."""
    model = deep_model(family)
    cfg = _cfg(method, **keys)
    ctx = _ctx(model)
    ctx.stats = _DenseStats()
    # the greedy search is untouched by the change and slow: searched once for both runs
    searched = {}
    greedy = teal.greedy_path
    monkeypatch.setattr(teal, "greedy_path", lambda *a: searched.setdefault("levels", greedy(*a)))
    new = SPARSITY.get(method)().plan(cfg, 0.5, ctx).placed
    for mod in (threshold, cats, teal):
        monkeypatch.setattr(mod, "calibrate_thresholds", reference_thresholds)
    ref = SPARSITY.get(method)().plan(cfg, 0.5, ctx).placed
    assert len(new) == len(ref) > 0
    assert_same_thresholds(new, ref)
    if keys.get("allocation") == "greedy":
        assert len({p.rule.level for p in new}) > 1  # levels differ per projection


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_rules_on_some_layers_only_and_mixed_levels(family):
    """Layers without rules run dense in between; rules at one site with different levels
    per module share one histogram; a placed list out of forward order comes back in it."""
    model = deep_model(family)
    ctx = _ctx(model, seed=3)
    cfg = _cfg("teal")
    levels = iter([0.2, 0.7, 0.4, 0.9, 0.5, 0.3, 0.6, 0.8] * 10)
    placed = [
        p
        for p in placed_for_sites(
            model,
            ctx.adapter,
            ["ffn_intermediate", "attn_in", "o_proj_in"],
            lambda *_: Rule("threshold", next(levels), 0.0),
        )
        if p.layer in (1, 3)
    ]
    new = calibrate_thresholds(placed, cfg, ctx)
    assert_same_thresholds(new, reference_thresholds(placed, cfg, ctx))
    assert [p.site for p in new if p.layer == 1][0] == "attn_in"


def test_a_single_rule_deep_in_the_model():
    model = deep_model("llama")
    ctx = _ctx(model)
    cfg = _cfg("threshold")
    name = "model.layers.3.mlp.down_proj"
    placed = [Placed(3, "ffn_intermediate", name, TINY_F, Rule("threshold", 0.5, 0.0))]
    assert_same_thresholds(
        calibrate_thresholds(placed, cfg, ctx), reference_thresholds(placed, cfg, ctx)
    )
    assert calibrate_thresholds([], cfg, ctx) == []


def _count_block_runs(model, adapter):
    """Completed runs of each block's last linear (a block run to its end)."""
    counts = [0] * N_LAYERS
    hooks = [
        adapter.site_linears(model, layer)["ffn_intermediate"][0][1].register_forward_hook(
            lambda m, a, out, i=layer: counts.__setitem__(i, counts[i] + 1)
        )
        for layer in range(N_LAYERS)
    ]
    return counts, hooks


def test_each_block_runs_once_per_batch_whatever_the_depth():
    """The cost that grew with the square of the depth: the reference runs block 0 to the
    end once per later layer (and per site); now every block but the last runs to its end
    once per batch (carrying its outputs), and site statistics stop the block early."""
    model = deep_model("llama")
    ctx = _ctx(model)
    cfg = _cfg("teal")
    n_batches = 384 // (8 * 16)
    placed = placed_for_sites(
        model, ctx.adapter, list(LINEAR_SITES), lambda *_: Rule("threshold", 0.5, 0.0)
    )
    counts, hooks = _count_block_runs(model, ctx.adapter)
    try:
        calibrate_thresholds(placed, cfg, ctx)
        new = list(counts)
        counts[:] = [0] * N_LAYERS
        reference_thresholds(placed, cfg, ctx)
        ref = list(counts)
    finally:
        for h in hooks:
            h.remove()
    assert new == [n_batches] * (N_LAYERS - 1) + [0]
    # per site one full block run, plus one full prefix per later layer
    assert ref == [n_batches * (4 + N_LAYERS - 1 - layer) for layer in range(N_LAYERS)]


def test_block_calls_are_taken_per_layer_and_the_model_is_left_as_it_was():
    """Sliding-window layers get their own mask; the blocks' forwards are restored."""
    model = deep_model("qwen2_sliding")
    ctx = _ctx(model)
    blocks = ctx.adapter.layers(model)
    x = batch_at(ctx.tokens, 0, 2, 16, 0)
    first, calls = block_calls(model, ctx.adapter, N_LAYERS - 1, [x])
    assert first[0].shape == (2, 16, TINY_D) and len(calls) == N_LAYERS
    masks = [call[0][1].get("attention_mask") for call in calls]
    # full attention: sdpa's own causal mask (None); sliding: an explicit one
    assert masks[0] is None and masks[2] is None
    assert masks[1] is not None and masks[1] is masks[3]
    assert all("forward" not in b.__dict__ for b in blocks)
    # the blocks, run on the carried inputs with those calls, give the model's own output
    h = first[0]
    for layer in range(N_LAYERS):
        h = blocks[layer](h, *calls[layer][0][0], **calls[layer][0][1])
    with torch.no_grad():
        want = model(input_ids=x, use_cache=False, output_hidden_states=True).hidden_states
    assert torch.allclose(model.model.norm(h), want[-1], atol=1e-6)


def test_non_finite_activations_name_the_layer_and_site_and_leave_the_model_alone():
    model = deep_model("llama")
    ctx = _ctx(model)
    names = {n for n, _ in model.named_modules()}
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[0, 0] = float("nan")
    placed = placed_for_sites(
        model, ctx.adapter, ["ffn_intermediate"], lambda *_: Rule("threshold", 0.5, 0.0)
    )
    with pytest.raises(FloatingPointError, match="layer 2 site ffn_intermediate: non-finite"):
        calibrate_thresholds(placed, _cfg("threshold"), ctx)
    assert {n for n, _ in model.named_modules()} == names  # no wrapper left behind
    assert all("forward" not in b.__dict__ for b in ctx.adapter.layers(model))
