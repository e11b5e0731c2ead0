"""The sparsity mechanism on tiny random models of every family, and every registered
method: wrapping is exact, rules land where the sites say, achieved sparsity and cost are
counted right, and bad plans fail naming the method, site and layer."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import FAMILIES, TINY_D, TINY_F, TINY_V, Covariances, final_output, tiny_model

from actsparse.data import batch_at
from actsparse.methods.sparsity import SPARSITY
from actsparse.methods.sparsity.base import BuildContext
from actsparse.methods.sparsity.cost import cost_per_token
from actsparse.methods.sparsity.mechanism import Placed, Rule, SparsityPlan, placed_for_sites
from actsparse.methods.sparsity.teal import _BlockSearch, greedy_path, threshold_at
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models import adapter_for
from actsparse.models.adapters import LINEAR_SITES, linear_shape
from actsparse.models.blocks import block_inputs, run_block

CONF = Path(__file__).resolve().parents[2] / "conf" / "sparsify"


def _ctx(model, seed=0, method=""):
    """Calibration tokens; and the model's own covariances for a method that reads a
    calibrate job's (LaRoSA; the others calibrate on the tokens)."""
    torch.manual_seed(seed)
    tokens = torch.randint(0, TINY_V, (4096,))
    adapter = adapter_for(model.config.model_type)
    stats = Covariances(model, adapter) if method == "larosa" else None
    return BuildContext(model, adapter, stats, tokens, torch.device("cpu"))


def _cfg(name, **overrides):
    import yaml

    raw = {**yaml.safe_load((CONF / f"{name}.yaml").read_text()), **overrides}
    if "calib_tokens" in raw:
        raw.update(calib_tokens=256, calib_seq_len=16)
    if "greedy_tokens" in raw:
        raw.update(greedy_tokens=64, greedy_seq_len=16)
    return SPARSITY.get(raw["method"]).parse(raw, f"sparsify.methods.{name}")


def _usable(method, family):
    cfg = _cfg(method)
    adapter = adapter_for(tiny_model(family).config.model_type)
    return all(s in adapter.sites for s in cfg.sites_used()) and not cfg.family_problems(adapter)


def test_every_registered_method_has_a_config_file():
    assert {p.stem for p in CONF.glob("*.yaml")} == set(SPARSITY.names())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", SPARSITY.names())
def test_sparsity_zero_reproduces_the_dense_output_exactly(family, method):
    model = tiny_model(family)
    ctx = _ctx(model, method=method)
    x = torch.randint(0, TINY_V, (2, 12))
    with torch.no_grad():
        dense = final_output(model, x)
    cfg = _cfg(method)
    if not _usable(method, family):
        # a gate-only method on an ungated FFN; LaRoSA's residual form on LayerNorm
        with pytest.raises(ValueError, match="has no site 'gate'|form 'residual'.*LayerNorm"):
            SPARSITY.get(method)().plan(cfg, 0.0, ctx)
        return
    plan = SPARSITY.get(method)().plan(cfg, 0.0, ctx)
    assert plan.placed
    handle = apply(model, ctx.adapter, plan)
    with torch.no_grad():
        if any(p.rule.shift or p.rule.basis for p in plan.placed):
            # SCAP's fold `W (x - m) + W m 1` and LaRoSA's `(x Q) Q^T` round apart from
            # `W x` in float32 (to 1e-12 / 1e-10 in float64: tests/unit/test_scap.py,
            # test_larosa.py); everything else is bit for bit
            assert torch.allclose(final_output(model, x), dense, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(final_output(model, x), dense)
    handle.remove()
    assert not any("Sparse" in type(m).__name__ for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_wrapped_linear_computes_the_linear_of_the_sparsified_input(family):
    """Each linear-input site: capture the input, apply the rule by hand, compare outputs."""
    model = tiny_model(family)
    adapter = adapter_for(model.config.model_type)
    rule = Rule("topk", 0.5)
    placed = placed_for_sites(model, adapter, list(LINEAR_SITES), lambda *_: rule)
    seen = {}
    for p in placed:
        model.get_submodule(p.module).register_forward_hook(
            lambda m, a, out, name=p.module: seen.__setitem__(name, (a[0], out))
        )
    handle = apply(model, adapter, SparsityPlan("topk", "t", 0.5, placed))
    with torch.no_grad():
        final_output(model, torch.randint(0, TINY_V, (2, 12)))
        for p in placed:
            x, out = seen[p.module]  # hooks on the inner module: x is already sparse
            assert ((x == 0).sum(-1) >= p.width - int(0.5 * p.width)).all(), p.module
            assert torch.equal(out, handle.wrappers[p.module].inner(x))
    got = handle.achieved()
    exact = got[(got.site != "ffn_intermediate") | (family != "opt")]
    assert (exact.achieved == 0.5).all()  # widths are even: exactly half of every row
    assert (got.achieved >= 0.5).all()  # ReLU's own zeros can add to it (OPT)


def test_the_gate_rule_sparsifies_act_of_the_gate_branch():
    """Llama MLP with a gate threshold: down(thr(act(gate x)) * up x), computed by hand."""
    model = tiny_model("llama")
    adapter = adapter_for("llama")
    mlp = model.model.layers[1].mlp
    rule = Rule("threshold", 0.5, 0.05)
    name, width = "model.layers.1.mlp.act_fn", TINY_F
    apply(model, adapter, SparsityPlan("cats", "c", 0.5, [Placed(1, "gate", name, width, rule)]))
    x = torch.randn(3, TINY_D)
    with torch.no_grad():
        a = torch.nn.functional.silu(mlp.gate_proj(x))
        expected = mlp.down_proj(a * (a.abs() > 0.05) * mlp.up_proj(x))
        torch.testing.assert_close(mlp(x), expected, rtol=0, atol=0)


def test_stat_topk_at_the_gate_acts_on_the_pre_activation():
    model = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    rule = Rule("stat_topk", 0.7, soft=True, pre_activation=True)
    p = Placed(0, "gate", "model.layers.0.mlp.act_fn", TINY_F, rule)
    apply(model, adapter_for("llama"), SparsityPlan("stat_topk", "s", 0.7, [p]))
    x = torch.randn(3, TINY_D)
    with torch.no_grad():
        g = mlp.gate_proj(x)
        theta = (
            g.mean(-1, keepdim=True) + g.std(-1, keepdim=True, correction=0) * 0.5244005127080407
        )
        expected = mlp.down_proj(torch.nn.functional.silu(torch.relu(g - theta)) * mlp.up_proj(x))
        torch.testing.assert_close(mlp(x), expected, rtol=1e-6, atol=1e-7)


def test_achieved_sparsity_counts_zero_heads_and_entries():
    model = tiny_model("opt")
    adapter = adapter_for("opt")
    heads = Placed(
        0,
        "heads",
        "model.decoder.layers.0.self_attn.out_proj",
        TINY_D,
        Rule("head_topk", 0.75, n_heads=4),
    )
    handle = apply(model, adapter, SparsityPlan("contextual", "c", 0.75, [heads]))
    with torch.no_grad():
        model(input_ids=torch.randint(0, TINY_V, (2, 5)))
    row = handle.achieved().iloc[0]
    assert (row.zeros, row.total, row.achieved) == (30, 40, 0.75)  # 3 of 4 heads, 10 tokens
    with handle.disabled(), torch.no_grad():
        model(input_ids=torch.randint(0, TINY_V, (2, 5)))
    assert handle.achieved().iloc[0].total == 40  # the dense reference pass is not counted


def test_cost_counts_input_and_skipped_output_rows():
    model = tiny_model("llama")
    adapter = adapter_for("llama")
    dense = cost_per_token(model, adapter)
    n_linear = 2 * (
        TINY_D * TINY_D + 2 * TINY_D * (TINY_D // 2) + TINY_D * TINY_D + 3 * TINY_D * TINY_F
    )
    head = TINY_V * TINY_D
    assert dense["flops_per_token"] == 2 * (n_linear + head)
    assert dense["weight_bytes_per_token"] == 4 * (n_linear + head)
    achieved = pd.DataFrame(
        {
            "module": ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.act_fn"],
            "achieved": [0.5, 0.25],
        }
    )
    skips = {"model.layers.0.mlp.up_proj": "model.layers.0.mlp.act_fn"}
    c = cost_per_token(model, adapter, achieved, skips)
    saved = 0.5 * TINY_F * TINY_D + 0.25 * TINY_D * TINY_F  # down columns + up rows
    assert c["flops_per_token"] == pytest.approx(2 * (n_linear + head - saved), rel=1e-12)
    assert c["effective_sparsity"] == pytest.approx(saved / n_linear, rel=1e-12)


def test_teal_greedy_reaches_the_target_with_real_parameter_counts():
    """GQA: k/v have half of q's parameters; every block's parameter-weighted sparsity is
    exactly the target, and no projection exceeds max_level."""
    model = tiny_model("llama")
    ctx = _ctx(model)
    adapter = ctx.adapter
    # greedy searches with the dense histograms: make them from the model's own activations
    from actsparse.methods.sparsity.calibration import calibrate_thresholds

    class Stats:
        def threshold(self, layer, site, level):
            p = [q for q in placed if q.layer == layer and q.site == site][0]
            return calibrate_thresholds(
                [Placed(p.layer, p.site, p.module, p.width, Rule("threshold", level, 0.0))],
                cfg,
                ctx,
            )[0].rule.threshold

    cfg = _cfg("teal", allocation="greedy", greedy_step=0.1)
    placed = placed_for_sites(
        model, adapter, list(LINEAR_SITES), lambda *_: Rule("threshold", 0.0, 0.0)
    )
    ctx.stats = Stats()
    levels = greedy_path(cfg, [0.5], ctx, threshold_at(ctx))[0.5]
    for layer in range(2):
        mods = {n: m for s in LINEAR_SITES for n, m in adapter.site_linears(model, layer)[s]}
        params = {n: math.prod(linear_shape(m)) for n, m in mods.items()}
        k = f"model.layers.{layer}.self_attn.k_proj"
        assert params[k] * 2 == params[f"model.layers.{layer}.self_attn.q_proj"]
        eff = sum(params[n] * levels[n] for n in mods) / sum(params.values())
        assert eff == pytest.approx(0.5, abs=1e-9)
        assert max(levels[n] for n in mods) <= cfg.max_level
        assert len({round(levels[n], 6) for n in mods}) > 1  # not uniform
        # TEAL's steps: 0.1 / w_p with w_p = P_p / d^2; only the last step may be cut short
        steps = {n: levels[n] * params[n] / (0.1 * TINY_D * TINY_D) for n in mods}
        off = [n for n, k in steps.items() if abs(k - round(k)) > 1e-6]
        assert len(off) <= 1, steps


class _QuantileStats:
    """Thresholds that grow with the level, as a histogram's quantiles do."""

    def threshold(self, layer, site, level):
        return 0.02 * level + 0.001 * layer


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_teal_greedy_path_equals_one_walk_per_level(family):
    """One walk serving 25/40/70% (the allocate job's) gives each level exactly the levels
    of a walk made for that level alone."""
    model = tiny_model(family)
    ctx = _ctx(model)
    ctx.stats = _QuantileStats()
    cfg = _cfg("teal", allocation="greedy", greedy_step=0.1)
    path = greedy_path(cfg, [0.7, 0.25, 0.4], ctx, threshold_at(ctx))
    assert sorted(path) == [0.25, 0.4, 0.7]
    x = torch.cat([batch_at(ctx.tokens, b, 1, 16, ctx.seed) for b in range(4)])
    for level in path:
        alone = {}  # the plain walk to this level alone, block by block
        for layer in range(2):
            with _BlockSearch(cfg, ctx, layer, x, threshold_at(ctx)) as block:
                zeros = {name: 0.0 for name in block.params}
                alone.update(block.walk(zeros, 0.0, level, stop_before_cut=False)[0])
        assert path[level] == alone, level  # exact: the same steps, the same floats
    assert len({round(v, 6) for v in path[0.7].values()}) > 1  # not uniform


def test_bad_level_and_missing_site_name_the_method_site_and_layer():
    model = tiny_model("opt")
    ctx = _ctx(model)
    with pytest.raises(ValueError, match="sparsity method 'cats'.*family 'opt' has no site 'gate'"):
        SPARSITY.get("cats")().plan(_cfg("cats"), 0.5, ctx)
    with pytest.raises(ValueError, match=r"level must be in \[0, 1\), got 1.5"):
        SPARSITY.get("topk")().plan(_cfg("topk"), 1.5, ctx)
    bad = SparsityPlan(
        "cats",
        "my_cats",
        0.5,
        [
            Placed(
                1,
                "gate",
                "model.decoder.layers.1.activation_fn",
                TINY_F,
                Rule("threshold", 0.5, 0.1),
            )
        ],
    )
    with pytest.raises(
        ValueError, match="'my_cats' \\(cats\\), layer 1, site 'gate'.*no site 'gate'"
    ):
        apply(model, ctx.adapter, bad)


def test_a_plan_from_another_model_is_refused(tmp_path):
    small, big = tiny_model("llama"), tiny_model("llama")
    plan = SPARSITY.get("topk")().plan(_cfg("topk"), 0.5, _ctx(small))
    plan.entry = "topk"
    plan.save(tmp_path)
    loaded = SparsityPlan.load(tmp_path)
    assert loaded.placed == plan.placed
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=TINY_V,
            hidden_size=32,
            intermediate_size=TINY_F,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
    ).eval()
    with pytest.raises(
        ValueError,
        match=r"'topk' \(topk\), layer 0, site 'attn_in'.*width 32.*width 16 \(shape mismatch",
    ):
        apply(wider, adapter_for("llama"), loaded)
    deeper = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=TINY_V,
            hidden_size=TINY_D,
            intermediate_size=TINY_F,
            num_hidden_layers=1,
            num_attention_heads=4,
        )
    ).eval()
    with pytest.raises(
        ValueError, match="layer 1, site 'attn_in'.*has no module.*calibrated on another model"
    ):
        apply(deeper, adapter_for("llama"), loaded)
    del big


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", SPARSITY.names())
def test_each_method_at_half_sparsity_lands_on_its_sites_and_level(family, method, tmp_path):
    """Level 0.5 on random tokens: the rules sit exactly at the method's sites (one per
    reading linear), achieve the level on fresh tokens, and declare the right skips."""
    if not _usable(method, family):
        pytest.skip("a family the method refuses (refusal tested above)")
    model = tiny_model(family)
    ctx = _ctx(model, method=method)
    adapter = ctx.adapter
    cfg = _cfg(method)
    plan = SPARSITY.get(method)().plan(cfg, 0.5, ctx)
    sites = set(cfg.sites_used())  # as its conf file has them
    assert {p.site for p in plan.placed} == sites
    per_layer = sum(
        len(adapter.site_linears(model, 0)[s]) if s in LINEAR_SITES else 1 for s in sites
    )
    assert len(plan.placed) == 2 * per_layer and len({p.module for p in plan.placed}) == len(
        plan.placed
    )
    plan.save(tmp_path)
    assert SparsityPlan.load(tmp_path) == plan  # rules, thresholds and skips round-trip
    handle = apply(model, adapter, plan)
    torch.manual_seed(7)
    with torch.no_grad():
        final_output(model, torch.randint(0, TINY_V, (8, 16)))
    got = handle.achieved()
    for site, g in got.groupby("site"):
        achieved = g.zeros.sum() / g.total.sum()
        if method in ("topk", "larosa") or site == "heads":  # exact: top-K's own count
            natural = family == "opt" and site == "ffn_intermediate"
            target = g.target.mean()  # LaRoSA: 0.8 s rotated, 1.2 s plain
            assert achieved >= target if natural else achieved == target, (site, achieved)
        elif method == "rsparse":  # its sparse part drops 1 - c / n >= s; thresholds from
            # the dense model (as its code does), so downstream sites drift further
            assert abs(achieved - g.target.mean()) < 0.1, (site, achieved)
        elif method == "stat_topk":
            assert abs(achieved - 0.5) < 0.1, (site, achieved)  # a Gaussian assumption
        elif not (family == "opt" and site == "ffn_intermediate"):
            assert abs(achieved - 0.5) < 0.06, (site, achieved)  # calibrated on other tokens
    gate_skipping = method in ("cats", "stat_topk")
    ups = {f"model.layers.{i}.mlp.up_proj" for i in range(2)} if gate_skipping else set()
    downs = {f"model.layers.{i}.mlp.down_proj" for i in range(2)} if gate_skipping else set()
    if method == "contextual":
        ffn_in = {n for i in range(2) for n, _ in adapter.site_linears(model, i)["ffn_in"]}
        assert ffn_in <= set(plan.output_skips)
    else:
        assert set(plan.output_skips) == ups
    assert set(plan.input_skips) == downs
    cost = cost_per_token(model, adapter, got, plan.output_skips, 4, plan.input_skips)
    assert 0.05 < cost["effective_sparsity"] < 0.9
    if gate_skipping:  # down_proj reads only surviving neurons: credited through input_skips
        no_in = cost_per_token(model, adapter, got, plan.output_skips, 4)
        assert cost["effective_sparsity"] > no_in["effective_sparsity"] + 0.05


def test_the_error_is_measured_against_what_the_rule_can_reach():
    """A ReLU FFN already sparser than the target is not an error; a miss is, per layer."""
    from actsparse.stages.evaluate import sparsity_metrics

    achieved = pd.DataFrame(
        {
            "layer": [0, 1, 0],
            "site": ["ffn_intermediate", "ffn_intermediate", "attn_in"],
            "module": ["a", "b", "c"],
            "rule": ["threshold"] * 3,
            "target": [0.5, 0.5, 0.5],
            "zeros": [80, 53, 48],
            "total": [100, 100, 100],
            "achieved": [0.80, 0.53, 0.48],
            "natural": [0.80, 0.10, 0.0],
        }
    )
    m = {x.metric: x.value for x in sparsity_metrics(achieved)}
    assert m["sparsity_err_max.ffn_intermediate"] == pytest.approx(0.03)  # layer 1 misses
    assert m["sparsity_err_layer.ffn_intermediate"] == 1
    assert m["natural_sparsity.ffn_intermediate"] == pytest.approx(0.45)
    assert m["sparsity_err_max.attn_in"] == pytest.approx(0.02)
    assert m["sparsity.ffn_intermediate"] == pytest.approx(0.665)


def test_natural_zeros_are_counted_before_the_rule():
    model = tiny_model("opt")
    adapter = adapter_for("opt")
    placed = placed_for_sites(model, adapter, ["ffn_intermediate"], lambda *_: Rule("topk", 0.25))
    handle = apply(model, adapter, SparsityPlan("topk", "t", 0.25, placed))
    with torch.no_grad():
        model(input_ids=torch.randint(0, TINY_V, (4, 8)))
    got = handle.achieved()
    assert (got.natural > 0.2).all()  # ReLU
    assert (got.achieved >= got.natural).all() and (got.achieved >= 0.25).all()
    assert (got.target == 1 - int(0.75 * TINY_F) / TINY_F).all()  # top-K's exact target


def test_an_allocation_search_without_the_level_is_refused_naming_both(tmp_path):
    from actsparse.methods.sparsity.base import read_allocation
    from actsparse.tables import ALLOCATIONS, write_table

    rows = pd.DataFrame({"target": [0.25, 0.5], "module": ["m.q", "m.q"], "level": [0.3, 0.6]})
    write_table(rows, tmp_path / "allocations.parquet", ALLOCATIONS)
    assert read_allocation(tmp_path, 0.5) == {"m.q": 0.6}
    with pytest.raises(ValueError, match=r"has no level 0.7 \(it has \[0.25, 0.5\]\)"):
        read_allocation(tmp_path, 0.7)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_teal_objective_is_its_codes_last_quarter_norm_with_the_first_half_dense(family):
    """`greedy_objective: teal` scores a trial as TEAL's greedyopt.py does, computed here
    independently: the block rerun with the trial's thresholds on the second half of each
    sequence only, `torch.norm(target[:, s:] - new[:, s:], dim=1).mean()`, `s = 3T/4`."""
    model = tiny_model(family).double()
    ctx = _ctx(model)

    class Stats:  # thresholds the size of the activations: errors far above rounding
        def threshold(self, layer, site, level):
            return 2.0 * level

    ctx.stats = Stats()
    cfg = _cfg("teal", allocation="greedy", greedy_step=0.1, greedy_objective="teal")
    x = torch.cat([batch_at(ctx.tokens, b, 1, 16, ctx.seed) for b in range(4)])
    layer = 1
    with _BlockSearch(cfg, ctx, layer, x, threshold_at(ctx)) as block:
        name = next(iter(block.params))
        block.set_level(name, 0.6)
        got = block.error()
        rule = block.handle.wrappers[name].placed.rule
    adapter = ctx.adapter
    inputs = block_inputs(model, adapter, layer, [x])
    target = run_block(model, adapter, layer, inputs)[0]
    site = [s for s in LINEAR_SITES for n, _ in adapter.site_linears(model, layer)[s] if n == name][
        0
    ]
    width = linear_shape(model.get_submodule(name))[0]
    handle = apply(
        model, adapter, SparsityPlan("teal", "t", 0.6, [Placed(layer, site, name, width, rule)])
    )
    with handle.dense_prefix(8, 16):
        new = run_block(model, adapter, layer, inputs)[0]
    handle.remove()
    want = float(torch.norm(target[:, 12:] - new[:, 12:], dim=1).mean())
    assert got == pytest.approx(want, rel=1e-4) and want > 1e-6  # the search runs in float32
    # a walk under it lands on the target like the default objective's
    levels = greedy_path(cfg, [0.5], ctx, threshold_at(ctx))[0.5]
    params = {n: math.prod(linear_shape(model.get_submodule(n))) for n in levels}
    for layer in range(2):
        mine = [n for n in levels if f".{layer}." in n]
        eff = sum(params[n] * levels[n] for n in mine) / sum(params[n] for n in mine)
        assert eff == pytest.approx(0.5, abs=1e-9)
