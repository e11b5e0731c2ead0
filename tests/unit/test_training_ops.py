"""Training-time operators: the STE gradients, Block Q-Sparse's masks, the ternary and
8-bit quantisers, the squared-ReLU gated FFN, and wrapping a model for sparse training
(exact outputs, restored exactly)."""

import pytest
import torch
from helpers import TINY_V, tiny_model

from actsparse.methods.sparsity import ops
from actsparse.methods.sparsity.mechanism import Rule
from actsparse.methods.sparsity.wrappers import SparseGate, SparseInput
from actsparse.methods.training import BitLinear, absmax_int8, absmean_ternary, attach
from actsparse.models import adapter_for
from actsparse.models.adapters import LINEAR_SITES
from actsparse.models.tiny import build_tiny
from actsparse.schema.models import ArchCfg, ModelCfg
from actsparse.schema.training import SparseTrainCfg

# ----------------------------------------------------------------- STE


@pytest.mark.parametrize(
    "rule",
    [
        Rule("topk", 0.75, ste=True),
        Rule("topk", 0.5, rescale=True, ste=True),
        Rule("block_topk", 0.5, block=2, ste=True),
    ],
)
def test_ste_rules_are_sparse_forward_and_dense_backward(rule):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(32, 5, dtype=torch.float64)
    y = rule(x)
    plain = Rule(rule.kind, rule.level, rescale=rule.rescale, block=rule.block)
    assert torch.equal(y.detach(), plain(x.detach()))  # the forward is the sparse operator
    assert (y == 0).any()
    torch.tanh(y @ w).sum().backward()
    ys = y.detach().clone().requires_grad_(True)  # the gradient at the sparse input, passed on
    torch.tanh(ys @ w).sum().backward()
    assert torch.equal(x.grad, ys.grad)
    assert (x.grad != 0).all()  # dropped entries learn too


def test_rule_without_ste_gives_zero_gradient_to_dropped_entries():
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    Rule("topk", 0.5)(x).sum().backward()
    assert torch.equal(x.grad != 0, ops.topk_mask(x.detach(), 0.5))


# ----------------------------------------------------------------- Block Q-Sparse


def _block_reference(x: torch.Tensor, level: float, block: int) -> torch.Tensor:
    """Loop reference in float64: per group of `block` sequences and per position, the k
    features with the largest sum of squares over the group."""
    x = x.double()
    n, t, d = x.shape
    k = int((1 - level) * d)
    mask = torch.zeros_like(x, dtype=torch.bool)
    for g0 in range(0, n, block):
        for pos in range(t):
            score = (x[g0 : g0 + block, pos] ** 2).sum(0)
            keep = torch.argsort(score, descending=True)[:k]
            mask[g0 : g0 + block, pos, keep] = True
    return mask


@pytest.mark.parametrize("n,block", [(8, 4), (7, 3), (5, 1), (4, 8)])
def test_block_topk_mask_matches_the_reference(n, block):
    torch.manual_seed(n * 10 + block)
    x = torch.randn(n, 6, 20)
    mask = ops.block_topk_mask(x, 0.6, block)
    assert torch.equal(mask, _block_reference(x, 0.6, block))
    assert (mask.sum(-1) == ops.keep_count(20, 0.6)).all()  # every token keeps exactly k
    for g0 in range(0, n, block):  # one pattern per group and position
        group = mask[g0 : g0 + block]
        assert (group == group[:1]).all()


def test_block_of_one_is_per_token_topk():
    torch.manual_seed(1)
    x = torch.randn(3, 5, 16)
    assert torch.equal(ops.block_topk(x, 0.5, 1), ops.topk(x, 0.5))
    assert torch.equal(ops.block_topk(x, 0.5, 1, rescale=True), ops.topk(x, 0.5, rescale=True))


def test_block_topk_is_causal_and_rescales():
    torch.manual_seed(2)
    x = torch.randn(4, 6, 16)
    later = x.clone()
    later[:, 3:] = torch.randn(4, 3, 16) * 10  # change every later position
    a, b = ops.block_topk_mask(x, 0.5, 4), ops.block_topk_mask(later, 0.5, 4)
    assert torch.equal(a[:, :3], b[:, :3])  # the pattern at t never depends on t' > t
    y = ops.block_topk(x, 0.5, 4, rescale=True)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    with pytest.raises(ValueError, match="block must be >= 1"):
        ops.block_topk_mask(x, 0.5, 0)
    with pytest.raises(ValueError, match=r"needs \(batch, seq, d\) activations"):
        ops.block_topk_mask(x.reshape(24, 16), 0.5, 4)  # flattened tokens: not causal


# ----------------------------------------------------------------- 1.58-bit


def test_ternary_weights_round_trip():
    w = torch.tensor([[0.9, -0.1, 0.4], [-1.2, 0.05, 0.25]], dtype=torch.float64)
    gamma = w.abs().mean()  # 0.4833...
    q = absmean_ternary(w)
    codes = q / gamma
    assert torch.equal(codes, torch.tensor([[1.0, -0.0, 1.0], [-1.0, 0.0, 1.0]], dtype=w.dtype))
    # codes * gamma is the dequantised matrix, and quantising it with its own scale
    # gives back the same codes
    torch.testing.assert_close(absmean_ternary(q) / q.abs().mean(), codes, rtol=0, atol=0)
    torch.manual_seed(0)
    big = torch.randn(64, 64)
    assert set((absmean_ternary(big) / big.abs().mean()).round().unique().tolist()) == {
        -1.0,
        0.0,
        1.0,
    }


def test_int8_activations_round_trip():
    torch.manual_seed(0)
    x = torch.randn(5, 33, dtype=torch.float64)
    q = absmax_int8(x)
    step = x.abs().amax(-1, keepdim=True) / 127
    codes = q / step
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-9)  # integer codes
    assert (codes.abs() <= 127 + 1e-9).all()
    assert ((q - x).abs() <= step / 2 + 1e-12).all()  # rounding error at most half a step
    torch.testing.assert_close(absmax_int8(q), q, rtol=0, atol=1e-12)  # on-grid: unchanged
    assert torch.equal(absmax_int8(torch.zeros(2, 4)), torch.zeros(2, 4))


def test_bitlinear_forward_is_quantised_and_backward_straight_through():
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 7, dtype=torch.float64)
    bit = BitLinear(lin)
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    y = bit(x)
    wq = absmean_ternary(lin.weight.detach())
    torch.testing.assert_close(
        y.detach(), torch.nn.functional.linear(absmax_int8(x.detach()), wq, lin.bias.detach())
    )
    y.square().sum().backward()
    # STE: the latent weight gets the gradient taken at the quantised weight and input
    wq_leaf = wq.clone().requires_grad_(True)
    xq_leaf = absmax_int8(x.detach()).requires_grad_(True)
    torch.nn.functional.linear(xq_leaf, wq_leaf, lin.bias.detach()).square().sum().backward()
    torch.testing.assert_close(lin.weight.grad, wq_leaf.grad)
    torch.testing.assert_close(x.grad, xq_leaf.grad)


# ----------------------------------------------------------------- models


def test_squared_relu_gated_ffn():
    cfg = ModelCfg(
        source="train",
        family="llama",
        arch=ArchCfg(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=24, hidden_act="relu2"),
    )  # fmt: skip
    model = build_tiny(cfg, vocab_size=TINY_V, bos_id=0, eos_id=0).double()
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, 16, dtype=torch.float64)
    expected = mlp.down_proj(
        (x @ mlp.up_proj.weight.T) * torch.relu(x @ mlp.gate_proj.weight.T) ** 2
    )
    torch.testing.assert_close(mlp(x), expected)


@pytest.mark.parametrize(
    "sparse",
    [
        SparseTrainCfg(operator="topk", level=0.5),
        SparseTrainCfg(operator="block_topk", level=0.5, block=2),
        SparseTrainCfg(operator="stat_topk", level=0.8),
        SparseTrainCfg(operator="topk", level=0.5, precision="b1.58"),
        SparseTrainCfg(precision="b1.58"),
    ],
)
def test_attach_wraps_every_site_and_removes_exactly(sparse):
    model = tiny_model("llama")
    adapter = adapter_for("llama")
    x = torch.randint(0, TINY_V, (4, 8))
    dense = model(input_ids=x).logits
    keys = set(model.state_dict())
    handle = attach(model, adapter, sparse)
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, SparseInput | SparseGate)}
    quantized = {n for n, m in model.named_modules() if isinstance(m, BitLinear)}
    n_linears = 2 * sum(len(v) for v in adapter.linears.values())
    if sparse.operator == "stat_topk":
        assert len(wrapped) == 2 and all(isinstance(m, SparseGate) for m in wrapped.values())
        assert all(m.placed.rule.pre_activation for m in wrapped.values())
    elif sparse.operator != "none":
        assert len(wrapped) == n_linears
        assert all(m.placed.rule.ste and m.placed.site in LINEAR_SITES for m in wrapped.values())
    else:
        assert not wrapped
    assert len(quantized) == (n_linears if sparse.precision == "b1.58" else 0)
    sparse_out = model(input_ids=x).logits
    assert not torch.allclose(sparse_out, dense)
    sparse_out.sum().backward()  # trains: every linear weight gets a gradient
    assert all(
        p.grad is not None for n, p in model.named_parameters() if "proj" in n and "weight" in n
    )
    if sparse.operator != "none":
        achieved = handle.achieved()
        assert (achieved.achieved >= achieved.target - 1e-9).all() or sparse.operator == "stat_topk"
    handle.remove()
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(model(input_ids=x).logits, dense)


def test_dense_full_precision_attaches_nothing():
    model = tiny_model("llama")
    before = [n for n, _ in model.named_modules()]
    handle = attach(model, adapter_for("llama"), SparseTrainCfg())
    assert [n for n, _ in model.named_modules()] == before and handle.achieved() is None
