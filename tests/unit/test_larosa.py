"""LaRoSA: top-K in the PCA basis of each layer's input, checked against float64
references: the rotation alone leaves the model's outputs unchanged (1e-10), the basis
diagonalises the covariance, a wrapped linear computes `W (TopK(x Q) Q^T) + b`, the
rotations survive save and load, and their cost is counted."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_V, Covariances, final_output, tiny_model

from actsparse.methods.sparsity import SPARSITY, ops
from actsparse.methods.sparsity.base import BuildContext
from actsparse.methods.sparsity.mechanism import SparsityPlan
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models import adapter_for
from actsparse.sweeps import default_entry

G = torch.Generator().manual_seed(0)


def _plan(model, level, family="llama", **keys):
    adapter = adapter_for(family)
    ctx = BuildContext(model, adapter, Covariances(model, adapter), None, torch.device("cpu"))
    cfg = default_entry("sparsify", "larosa", **keys).cfg
    return SPARSITY.get("larosa")().build(cfg, level, ctx), ctx


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_the_rotation_alone_leaves_the_outputs_unchanged(family):
    model = tiny_model(family).double()
    plan, _ = _plan(model, 0.0, family)
    assert plan.rotations and all(
        p.rule.basis for p in plan.placed if p.site in ("attn_in", "ffn_in")
    )
    x = torch.randint(0, TINY_V, (2, 12), generator=G)
    with torch.no_grad():
        dense = final_output(model, x)
        handle = apply(model, adapter_for(family), plan)
        rotated = final_output(model, x)
        handle.remove()
    assert torch.allclose(rotated, dense, rtol=0, atol=1e-10)


def test_the_basis_is_orthogonal_and_diagonalises_the_covariance():
    model = tiny_model("llama").double()
    plan, ctx = _plan(model, 0.5, rotation="per_site")
    for name, Q in plan.rotations.items():
        layer, site = name.split(".")
        n = len(Q)
        assert torch.allclose(Q.T @ Q, torch.eye(n, dtype=Q.dtype), atol=1e-12)
        D = Q.T @ ctx.stats.gram(int(layer), site) @ Q
        off = D - torch.diag(torch.diagonal(D))
        assert float(off.abs().max()) < 1e-10 * float(D.abs().max())
        assert (torch.diagonal(D)[:-1] >= torch.diagonal(D)[1:] - 1e-12).all()  # PCA order


def test_a_wrapped_linear_reads_the_top_k_of_the_rotated_input_rotated_back():
    model = tiny_model("llama").double()
    plan, ctx = _plan(model, 0.5)
    q_name, q = ctx.adapter.site_linears(model, 1)["attn_in"][0]
    Q = plan.rotations["1.attn_in"]
    rule = next(p.rule for p in plan.placed if p.module == q_name)
    assert rule.level == pytest.approx(0.4)  # rotated_scale 0.8
    handle = apply(model, ctx.adapter, plan)
    given, read = [], []
    hooks = [
        model.get_submodule(q_name).register_forward_pre_hook(lambda m, a: given.append(a[0])),
        q.register_forward_pre_hook(lambda m, a: read.append(a[0])),  # the linear inside
    ]
    with torch.no_grad():
        model(input_ids=torch.randint(0, TINY_V, (2, 10), generator=G))
    for h in hooks:
        h.remove()
    handle.remove()
    want = ops.topk(given[0] @ Q, 0.4) @ Q.T
    assert torch.allclose(read[0], want, rtol=0, atol=1e-12)
    assert not torch.allclose(read[0], given[0], atol=1e-3)  # it did drop something


def test_per_layer_shares_the_attention_basis_and_the_plain_sites_are_plain():
    model = tiny_model("llama").double()
    plan, _ = _plan(model, 0.5)
    assert sorted(plan.rotations) == ["0.attn_in", "1.attn_in"]
    by_site = {p.site: p.rule for p in plan.placed if p.layer == 0}
    assert by_site["ffn_in"].basis == by_site["attn_in"].basis == "0.attn_in"
    assert by_site["o_proj_in"].basis == "" and by_site["o_proj_in"].level == pytest.approx(0.6)
    # cost: one x Q per layer and rotated site (q, k, v share theirs)
    n = model.config.hidden_size
    assert plan.overhead_params(model) == 2 * 2 * n * n


def test_rotations_survive_save_and_load_and_a_missing_one_is_named(tmp_path):
    model = tiny_model("llama")
    plan, ctx = _plan(model, 0.5)
    plan.save(tmp_path)
    again = SparsityPlan.load(tmp_path)
    assert again.rotations.keys() == plan.rotations.keys()
    assert all(torch.equal(again.rotations[k], plan.rotations[k]) for k in plan.rotations)
    again.rotations.pop("1.attn_in")
    with pytest.raises(ValueError, match=r"layer 1, site 'attn_in'.*no rotation '1.attn_in'"):
        apply(model, ctx.adapter, again)


def test_a_level_the_scales_push_past_one_is_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"larosa: level 0.9 x scale 1.2 = 1.08 is not below 1"):
        _plan(model, 0.9)
    entry = default_entry("sparsify", "larosa", rotation="global")
    assert "rotation" in dict(entry.cfg.problems())
    # checked at the levels the entry runs, before any job: the sweep's 0.9 here
    from actsparse.config import ConfigError, compose_study

    with pytest.raises(
        ConfigError, match=r"sparsify.methods.larosa.plain_scale.*level 0.9 x plain_scale 1.2"
    ):
        compose_study(["experiment=smoke", "sparsify.levels=[0.5,0.9]"])
