"""WINA: top-K of each linear's input by |x_i| * ||W[:, i]||_2, checked against float64
references: it is the best K-subset when the weight's columns are orthogonal (the case its
error bound is tight for), the magnitude top-K when the column norms are equal, dense at
level 0, and each wrapped linear scores with its own columns (nn.Linear, GPT-2's Conv1D,
a low-rank linear)."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import TINY_V, final_output, tiny_llama_with_norms, tiny_model

from actsparse.methods.sparsity import SPARSITY, ops
from actsparse.methods.sparsity.base import BuildContext
from actsparse.methods.sparsity.mechanism import Placed, Rule, SparsityPlan
from actsparse.methods.sparsity.wrappers import SparseInput, apply
from actsparse.models import adapter_for
from actsparse.models.adapters import input_column_norms
from actsparse.models.lowrank import LowRankLinear
from actsparse.sweeps import default_entry

G = torch.Generator().manual_seed(0)


def _orthogonal_columns(m: int, norms: torch.Tensor) -> torch.Tensor:
    """W (m, n) whose columns are orthogonal with the given norms, float64."""
    q, _ = torch.linalg.qr(torch.randn(m, len(norms), generator=G, dtype=torch.float64))
    return q * norms


def test_with_orthogonal_columns_wina_keeps_the_best_k_subset():
    """||W (x - x_S)||^2 = sum over dropped i of x_i^2 ||W[:, i]||^2 when the columns are
    orthogonal: keeping the largest |x_i| ||W[:, i]|| is the optimum over all subsets."""
    n, level = 8, 0.5
    k = ops.keep_count(n, level)
    norms = torch.tensor([0.1, 3.0, 0.5, 2.0, 1.0, 0.2, 4.0, 0.7], dtype=torch.float64)
    W = _orthogonal_columns(12, norms)
    beaten = 0
    for _ in range(20):
        x = torch.randn(n, generator=G, dtype=torch.float64)

        def err(keep, x=x):
            return float((W @ (x - keep)).norm() ** 2)

        best = min(
            err(x * torch.isin(torch.arange(n), torch.tensor(s)))
            for s in itertools.combinations(range(n), k)
        )
        wina = err(ops.weighted_topk(x, W.norm(dim=0), level))
        assert wina == pytest.approx(best, rel=1e-12, abs=1e-12)
        beaten += err(ops.topk(x, level)) > best * (1 + 1e-9)  # magnitude alone
    assert beaten > 0  # the column norms change the choice on these inputs


def test_with_equal_column_norms_wina_is_the_magnitude_top_k():
    x = torch.randn(6, 16, generator=G, dtype=torch.float64)
    W = _orthogonal_columns(32, torch.full((16,), 1.7, dtype=torch.float64))
    for level in (0.25, 0.5, 0.9):
        assert torch.equal(ops.weighted_topk(x, W.norm(dim=0), level), ops.topk(x, level))


def test_each_row_keeps_exactly_k_and_level_zero_is_the_identity():
    x = torch.randn(5, 3, 40, generator=G)
    scale = torch.rand(40, generator=G) + 0.1
    for level in (0.3, 0.7):
        kept = (ops.weighted_topk(x, scale, level) != 0).sum(-1)
        assert (kept == ops.keep_count(40, level)).all()
    assert torch.equal(ops.weighted_topk(x, scale, 0.0), x)
    with pytest.raises(ValueError, match="scale of shape"):
        ops.weighted_topk(x, scale[:-1], 0.5)
    with pytest.raises(ValueError, match="needs the weight's column norms"):
        Rule("weighted_topk", 0.5)(x)


def _reference(x: torch.Tensor, W: torch.Tensor, bias, level: float) -> torch.Tensor:
    """The wrapped linear in float64: mask by |x| times the float64 column norms of W
    (out, in), then W x + b."""
    x64, W64 = x.double(), W.double()
    mask = ops.top_scores_mask(x64.abs() * W64.norm(dim=0), level)
    y = (x64 * mask) @ W64.T
    return y + bias.double() if bias is not None else y


@pytest.mark.parametrize("kind", ["linear", "conv1d", "lowrank"])
def test_a_wrapped_linear_scores_with_its_own_columns(kind):
    torch.manual_seed(1)
    if kind == "linear":
        inner = torch.nn.Linear(24, 10)
        W = inner.weight.detach()
    elif kind == "conv1d":
        from transformers.pytorch_utils import Conv1D

        inner = Conv1D(10, 24)  # weight stored (in, out)
        torch.nn.init.normal_(inner.weight)
        W = inner.weight.detach().T
    else:
        inner = LowRankLinear(24, 10, 4, bias=True)
        W = (inner.up.weight @ inner.down.weight).detach()
    norms = input_column_norms(inner)
    assert torch.allclose(norms.double(), W.double().norm(dim=0), rtol=1e-6)
    wrapper = SparseInput(inner, Placed(0, "ffn_in", "m", 24, Rule("weighted_topk", 0.6)))
    x = torch.randn(3, 5, 24)
    bias = inner.up.bias if kind == "lowrank" else inner.bias
    ref = _reference(x, W, bias.detach(), 0.6)
    assert torch.allclose(wrapper(x).double(), ref, atol=1e-5)
    assert input_column_norms(wrapper).equal(norms)  # through the wrapper too


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_wina_on_a_model_keeps_k_per_linear_and_is_dense_at_level_zero(family):
    model = tiny_model(family)
    adapter = adapter_for(model.config.model_type)
    ctx = BuildContext(model, adapter, None, None, torch.device("cpu"))
    entry = default_entry("sparsify", "wina")
    x = torch.randint(0, TINY_V, (2, 12), generator=G)
    dense = final_output(model, x)
    zero = SPARSITY.get("wina")().plan(entry.cfg, 0.0, ctx)
    handle = apply(model, adapter, zero)
    assert torch.equal(final_output(model, x), dense)
    handle.remove()
    plan = SPARSITY.get("wina")().plan(entry.cfg, 0.5, ctx)
    assert {p.site for p in plan.placed} == set(entry.cfg.sites)
    handle = apply(model, adapter, plan)
    final_output(model, x)
    achieved = handle.achieved()
    # every linear keeps exactly k = int(d / 2) of its d inputs at every position
    assert ((achieved.zeros - achieved.total * achieved.target).abs() < 1e-6).all()
    handle.remove()
    assert torch.equal(final_output(model, x), dense)


def test_the_plan_round_trips(tmp_path):
    model = tiny_model("llama")
    ctx = BuildContext(model, adapter_for("llama"), None, None, torch.device("cpu"))
    plan = SPARSITY.get("wina")().plan(default_entry("sparsify", "wina").cfg, 0.4, ctx)
    plan.save(tmp_path)
    assert SparsityPlan.load(tmp_path) == plan
    assert {p.rule.kind for p in plan.placed} == {"weighted_topk"}


def test_wina_greedy_takes_teals_search_with_its_own_rule():
    """`allocation: greedy`: each projection's level from TEAL's walk, scored with WINA's
    rule; every block's parameter-weighted level is the target, the levels differ, and the
    entry reads calibration tokens (uniform WINA reads none)."""
    import math

    from actsparse.data import batch_at  # noqa: F401
    from actsparse.models.adapters import linear_shape

    model = tiny_model("llama")
    tokens = torch.randint(0, TINY_V, (4096,), generator=G)
    ctx = BuildContext(model, adapter_for("llama"), None, tokens, torch.device("cpu"))
    entry = default_entry(
        "sparsify",
        "wina",
        allocation="greedy",
        greedy_step=0.1,
        greedy_tokens=64,
        greedy_seq_len=16,
    )
    method = SPARSITY.get("wina")()
    assert method.searches_allocation(entry.cfg) and method.needs_tokens_for(entry.cfg)
    assert not method.needs_tokens_for(default_entry("sparsify", "wina").cfg)
    plan = method.plan(entry.cfg, 0.5, ctx)
    assert {p.rule.kind for p in plan.placed} == {"weighted_topk"}
    levels = {p.module: p.rule.level for p in plan.placed}
    assert len({round(v, 6) for v in levels.values()}) > 1
    for layer in range(2):
        mine = [p for p in plan.placed if p.layer == layer]
        params = [math.prod(linear_shape(model.get_submodule(p.module))) for p in mine]
        eff = sum(w * p.rule.level for w, p in zip(params, mine, strict=True)) / sum(params)
        assert eff == pytest.approx(0.5, abs=1e-9)


def _transformed(model, level, **keys):
    ctx = BuildContext(model, adapter_for("llama"), None, None, torch.device("cpu"))
    cfg = default_entry("sparsify", "wina", transform="orthogonal", **keys).cfg
    return SPARSITY.get("wina")().plan(cfg, level, ctx), ctx


def test_the_transform_makes_k_and_gate_columns_orthogonal_and_keeps_the_model():
    model = tiny_llama_with_norms()
    plan, ctx = _transformed(model, 0.0)
    block = model.model.layers[1]
    for site, linear, norm in (
        ("attn_in", block.self_attn.k_proj, block.input_layernorm),
        ("ffn_in", block.mlp.gate_proj, block.post_attention_layernorm),
    ):
        V, g = plan.rotations[f"1.{site}"], plan.rotations[f"1.{site}.norm"]
        assert torch.equal(g, norm.weight.detach())
        assert torch.allclose(V.T @ V, torch.eye(len(V), dtype=V.dtype), atol=1e-12)
        folded = (linear.weight.detach() * g) @ V  # the weight that reads the rotated stream
        gram = folded.T @ folded
        assert float((gram - torch.diag(torch.diagonal(gram))).abs().max()) < 1e-10
    x = torch.randint(0, TINY_V, (2, 12), generator=G)
    with torch.no_grad():
        dense = final_output(model, x)
        handle = apply(model, ctx.adapter, plan)
        assert torch.allclose(final_output(model, x), dense, rtol=0, atol=1e-10)
        handle.remove()


def test_a_transformed_linear_reads_the_weighted_top_k_of_the_rotated_stream():
    """What the folded model's q_proj (`W diag(g) V`) computes on the sparse rotated
    stream: WINA's score with that weight's columns, in the rotated basis."""
    model = tiny_llama_with_norms()
    plan, ctx = _transformed(model, 0.5)
    name, q = ctx.adapter.site_linears(model, 0)["attn_in"][0]
    V, g = plan.rotations["0.attn_in"], plan.rotations["0.attn_in.norm"]
    handle = apply(model, ctx.adapter, plan)
    given, read = [], []
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(lambda m, a: given.append(a[0])),
        q.register_forward_pre_hook(lambda m, a: read.append(a[0])),
    ]
    with torch.no_grad():
        model(input_ids=torch.randint(0, TINY_V, (2, 10), generator=G))
    for h in hooks:
        h.remove()
    handle.remove()
    folded = (q.weight.detach() * g) @ V
    z = ops.weighted_topk((given[0] / g) @ V, folded.norm(dim=0), 0.5)
    assert torch.allclose(read[0], (z @ V.T) * g, rtol=0, atol=1e-12)
    assert torch.allclose(q(read[0]), z @ folded.T, rtol=0, atol=1e-12)


def test_the_transform_costs_two_adapters_a_block_and_is_refused_without_rms_norms():
    from actsparse.config import ConfigError, compose_study

    model = tiny_llama_with_norms()
    plan, _ = _transformed(model, 0.5)
    n = model.config.hidden_size
    # the stream turns at every site: attn 0 -> ffn 0 -> attn 1 -> ffn 1
    assert plan.overhead_params(model) == 3 * n * n
    assert SPARSITY.get("wina")().plan(
        default_entry("sparsify", "wina").cfg, 0.5,
        BuildContext(model, adapter_for("llama"), None, None, torch.device("cpu")),
    ).overhead_params(model) == 0  # fmt: skip
    opt = tiny_model("opt")
    ctx = BuildContext(opt, adapter_for("opt"), None, None, torch.device("cpu"))
    cfg = default_entry("sparsify", "wina", transform="orthogonal").cfg
    with pytest.raises(ValueError, match=r"wina.*transform 'orthogonal'.*'opt'.*transform: none"):
        SPARSITY.get("wina")().plan(cfg, 0.5, ctx)
    with pytest.raises(ConfigError, match=r"sparsify.methods.wina.models.*'opt_micro'.*orthogonal"):
        compose_study(
            [
                "experiment=smoke",
                "sparsify.methods.wina.models=[llama_micro,opt_micro]",
                "sparsify.methods.wina.transform=orthogonal",
            ]
        )
    assert "transform" in dict(default_entry("sparsify", "wina", transform="svd").cfg.problems())


def test_the_greedy_search_runs_in_the_transformed_basis():
    model = tiny_llama_with_norms()
    tokens = torch.randint(0, TINY_V, (4096,), generator=G)
    ctx = BuildContext(model, adapter_for("llama"), None, tokens, torch.device("cpu"))
    keys = dict(allocation="greedy", greedy_step=0.1, greedy_tokens=64, greedy_seq_len=16)
    method = SPARSITY.get("wina")()
    plain = method.plan(default_entry("sparsify", "wina", **keys).cfg, 0.5, ctx)
    cfg = default_entry("sparsify", "wina", transform="orthogonal", **keys).cfg
    plan = method.plan(cfg, 0.5, ctx)
    rotated = [p for p in plan.placed if p.site in ("attn_in", "ffn_in")]
    assert rotated and all(p.rule.basis and p.rule.basis_scale for p in rotated)
    levels = {p.module: p.rule.level for p in plan.placed}
    assert levels != {p.module: p.rule.level for p in plain.placed}  # another basis, another walk
    assert method.search_allocations(cfg, [0.5], ctx)[0.5] == levels  # the allocate job's
