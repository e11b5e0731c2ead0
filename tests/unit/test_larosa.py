"""LaRoSA: top-K in the PCA basis of each layer's input, checked against float64
references: the rotation alone leaves the model's outputs unchanged (1e-10), the basis
diagonalises the covariance it comes from, a wrapped linear computes `W (TopK(x Q) Q^T)`
(`online`) or `W (TopK((x / g) Q) Q^T * g)` (`residual`), the residual form is the
paper's folded model (rotated residual stream, adapters between blocks) to 1e-10, the
rotations survive save and load, and their cost is counted."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TINY_V, Covariances, final_output, tiny_llama_with_norms, tiny_model
from torch import nn

from actsparse.methods.sparsity import SPARSITY, ops
from actsparse.methods.sparsity.base import BuildContext
from actsparse.methods.sparsity.mechanism import Placed, Rule, SparsityPlan
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models import adapter_for
from actsparse.sweeps import default_entry

G = torch.Generator().manual_seed(0)
FORMS = ["residual", "online"]


def _plan(model, level, family="llama", **keys):
    adapter = adapter_for(family)
    ctx = BuildContext(model, adapter, Covariances(model, adapter), None, torch.device("cpu"))
    cfg = default_entry("sparsify", "larosa", **keys).cfg
    return SPARSITY.get("larosa")().plan(cfg, level, ctx), ctx


@pytest.mark.parametrize(("family", "form"), [("llama", "residual"), ("llama", "online"),
                                              ("opt", "online")])  # fmt: skip
def test_the_rotation_alone_leaves_the_outputs_unchanged(family, form):
    model = tiny_llama_with_norms() if family == "llama" else tiny_model(family).double()
    plan, _ = _plan(model, 0.0, family, form=form)
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


@pytest.mark.parametrize("form", FORMS)
def test_the_basis_is_orthogonal_and_diagonalises_the_covariance(form):
    model = tiny_llama_with_norms()
    plan, ctx = _plan(model, 0.5, rotation="per_site", form=form)
    bases = {k: Q for k, Q in plan.rotations.items() if not k.endswith(".norm")}
    assert len(bases) == 4
    for name, Q in bases.items():
        layer, site = name.split(".")
        n = len(Q)
        assert torch.allclose(Q.T @ Q, torch.eye(n, dtype=Q.dtype), atol=1e-12)
        gram = ctx.stats.gram(int(layer), site)
        if form == "residual":  # the second moment of the normalised stream u = x / g
            g = ctx.adapter.rms_norm_weight(model, int(layer), site)
            gram = gram / torch.outer(g, g)
        D = Q.T @ gram @ Q
        off = D - torch.diag(torch.diagonal(D))
        assert float(off.abs().max()) < 1e-10 * float(D.abs().max())
        assert (torch.diagonal(D)[:-1] >= torch.diagonal(D)[1:] - 1e-12).all()  # PCA order


@pytest.mark.parametrize("form", FORMS)
def test_a_wrapped_linear_reads_the_top_k_of_the_rotated_input_rotated_back(form):
    model = tiny_llama_with_norms()
    plan, ctx = _plan(model, 0.5, form=form)
    q_name, q = ctx.adapter.site_linears(model, 1)["attn_in"][0]
    Q = plan.rotations["1.attn_in"]
    g = model.model.layers[1].input_layernorm.weight.detach()
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
    x = given[0]
    online = ops.topk(x @ Q, 0.4) @ Q.T
    want = online if form == "online" else (ops.topk((x / g) @ Q, 0.4) @ Q.T) * g
    assert torch.allclose(read[0], want, rtol=0, atol=1e-12)
    assert not torch.allclose(read[0], x, atol=1e-3)  # it did drop something


def folded_model(model: nn.Module, rotations: dict[str, torch.Tensor]) -> nn.Module:
    """The paper's model, built by hand: every RMSNorm weight folded into the linears it
    feeds, the residual stream rotated by block l's `Q_l` (the embedding by `Q_0`, o_proj
    and down write `Q_l^T`-rotated outputs), an adapter `Q_l^T Q_{l+1}` in front of each
    later block, and the LM head, untied, reading `diag(g) Q_L`."""
    m = copy.deepcopy(model)
    layers = m.model.layers
    Qs = [rotations[f"{i}.attn_in"] for i in range(len(layers))]
    head = m.lm_head.weight.detach().clone()
    final = m.model.norm.weight.detach().clone()
    m.model.embed_tokens.weight = nn.Parameter(m.model.embed_tokens.weight.detach() @ Qs[0])
    m.lm_head.weight = nn.Parameter((head * final) @ Qs[-1])
    m.model.norm.weight.data.fill_(1.0)
    for i, (block, Q) in enumerate(zip(layers, Qs, strict=True)):
        att, mlp = block.self_attn, block.mlp
        for norm, readers in (
            (block.input_layernorm, (att.q_proj, att.k_proj, att.v_proj)),
            (block.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
        ):
            g = norm.weight.detach().clone()
            norm.weight.data.fill_(1.0)
            for lin in readers:
                lin.weight.data = (lin.weight.data * g) @ Q  # W diag(g) Q
        for writer in (att.o_proj, mlp.down_proj):
            writer.weight.data = Q.T @ writer.weight.data
        if i:
            A = Qs[i - 1].T @ Q

            def adapter(mod, args, kwargs, A=A):
                if args:
                    return (args[0] @ A, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": kwargs["hidden_states"] @ A}

            block.register_forward_pre_hook(adapter, with_kwargs=True)
    return m


def _rms_norm_in_float64(self, h):
    # transformers' LlamaRMSNorm normalises in float32 even in a float64 model (1e-8
    # apart); the identity is the algebra's, so both models normalise in their own dtype
    return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def test_the_residual_form_is_the_papers_folded_model(monkeypatch):
    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _rms_norm_in_float64)
    model = tiny_llama_with_norms()
    plan, ctx = _plan(model, 0.5, form="residual")
    folded = folded_model(model, plan.rotations)
    # the folded model's linears read the rotated stream itself: plain top-K everywhere
    plain = [Placed(p.layer, p.site, p.module, p.width, Rule("topk", p.rule.level))
             for p in plan.placed]  # fmt: skip
    x = torch.randint(0, TINY_V, (2, 12), generator=G)
    with torch.no_grad():
        dense = final_output(model, x)
        assert torch.allclose(final_output(folded, x), dense, rtol=0, atol=1e-10)
        handle = apply(model, ctx.adapter, plan)
        ours = final_output(model, x)
        handle.remove()
        apply(folded, ctx.adapter, SparsityPlan("topk", "", 0.5, plain))
        paper = final_output(folded, x)
    assert torch.allclose(ours, paper, rtol=0, atol=1e-10)
    assert float((ours - dense).abs().max()) > 1e-2  # top-K did change the model


@pytest.mark.parametrize(("form", "adapters"), [("residual", 1), ("online", 4)])
def test_per_layer_shares_the_attention_basis_and_the_plain_sites_are_plain(form, adapters):
    model = tiny_llama_with_norms()
    plan, _ = _plan(model, 0.5, form=form)
    bases = sorted(k for k in plan.rotations if not k.endswith(".norm"))
    assert bases == ["0.attn_in", "1.attn_in"]
    by_site = {p.site: p.rule for p in plan.placed if p.layer == 0}
    assert by_site["ffn_in"].basis == by_site["attn_in"].basis == "0.attn_in"
    assert by_site["o_proj_in"].basis == "" and by_site["o_proj_in"].level == pytest.approx(0.6)
    if form == "residual":  # each rotated site divides by its own norm's weight
        assert (by_site["attn_in"].basis_scale, by_site["ffn_in"].basis_scale) == (
            "0.attn_in.norm", "0.ffn_in.norm")  # fmt: skip
    # cost: the residual stream changes basis once between the two blocks; online, one
    # x Q per layer and rotated site (q, k, v share theirs)
    n = model.config.hidden_size
    assert plan.overhead_params(model) == adapters * n * n
    per_site, _ = _plan(model, 0.5, form=form, rotation="per_site")
    assert per_site.overhead_params(model) == (3 if form == "residual" else 4) * n * n


def test_the_residual_form_is_refused_where_norms_are_not_rms_norms_or_not_invertible():
    from actsparse.config import ConfigError, compose_study

    with pytest.raises(ValueError, match=r"larosa.*form 'residual'.*'opt' has LayerNorm"):
        _plan(tiny_model("opt"), 0.5, "opt")
    with pytest.raises(
        ConfigError, match=r"sparsify.methods.larosa.models.*'opt_micro'.*LayerNorm"
    ):
        compose_study(["experiment=smoke", "sparsify.methods.larosa.models=[opt_micro]"])
    model = tiny_llama_with_norms()
    model.model.layers[1].post_attention_layernorm.weight.data[3] = 0.0
    with pytest.raises(ValueError, match=r"larosa: layer 1 site 'ffn_in'.*1 zero.*invertible"):
        _plan(model, 0.5)
    _plan(model, 0.5, form="online")  # the released code's form does not divide by it


def test_rotations_survive_save_and_load_and_a_missing_one_is_named(tmp_path):
    model = tiny_model("llama")
    plan, ctx = _plan(model, 0.5)
    plan.save(tmp_path)
    again = SparsityPlan.load(tmp_path)
    assert again.rotations.keys() == plan.rotations.keys()
    assert all(torch.equal(again.rotations[k], plan.rotations[k]) for k in plan.rotations)
    norm = again.rotations.pop("1.ffn_in.norm")
    with pytest.raises(ValueError, match=r"layer 1, site 'ffn_in'.*basis_scale '1.ffn_in.norm'"):
        apply(model, ctx.adapter, again)
    again.rotations["1.ffn_in.norm"] = norm
    again.rotations.pop("1.attn_in")
    with pytest.raises(ValueError, match=r"layer 1, site 'attn_in'.*no rotation '1.attn_in'"):
        apply(model, ctx.adapter, again)


def test_a_level_the_scales_push_past_one_is_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"larosa: level 0.9 x scale 1.2 = 1.08 is not below 1"):
        _plan(model, 0.9)
    entry = default_entry("sparsify", "larosa", rotation="global", form="folded")
    assert {"rotation", "form"} <= set(dict(entry.cfg.problems()))
    # checked at the levels the entry runs, before any job: the sweep's 0.9 here
    from actsparse.config import ConfigError, compose_study

    with pytest.raises(
        ConfigError, match=r"sparsify.methods.larosa.plain_scale.*level 0.9 x plain_scale 1.2"
    ):
        compose_study(["experiment=smoke", "sparsify.levels=[0.5,0.9]"])
