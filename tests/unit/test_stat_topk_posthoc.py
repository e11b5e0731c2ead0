"""Spark's statistical top-k, checked line by line against the paper's definition, and the
two properties that make it collapse when applied post hoc to a SiLU-gated model
(SmolLM2-135M, benchmarks/smollm2_diagnose.py): the soft threshold shifts every kept gate
pre-activation by -theta, and keeping the largest pre-activations drops the entries whose
SiLU is largest in magnitude. Gate pre-activations are modelled as SmolLM2's typical
row: mean -0.4, std 0.6 (measured per layer: means -0.5 to 0.3, stds 0.36 to 2.4)."""

import math

import pytest
import torch
from helpers import tiny_model
from scipy.stats import norm

from actsparse.methods.sparsity import SPARSITY, ops
from actsparse.methods.sparsity.base import BuildContext
from actsparse.methods.sparsity.mechanism import Rule
from actsparse.models import adapter_for
from actsparse.sweeps import default_entry

silu = torch.nn.functional.silu


def gate_rows(rows=512, d=1536, mean=-0.4, std=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, d, generator=g, dtype=torch.float64) * std + mean


def plan_rule(level, soft=True):
    """The rule the registered `stat_topk` method places at the gate of a Llama."""
    model = tiny_model("llama")
    method = SPARSITY.get("stat_topk")()
    cfg = default_entry("sparsify", "stat_topk", site="gate", soft=soft).cfg
    ctx = BuildContext(model, adapter_for("llama"), None, None, torch.device("cpu"))
    plan = method.plan(cfg, level, ctx)
    rules = {p.rule for p in plan.placed}
    assert len(rules) == 1 and {p.site for p in plan.placed} == {"gate"}
    return rules.pop()


@pytest.mark.parametrize("level", [0.25, 0.4, 0.5, 0.9])
def test_threshold_is_the_papers_mean_plus_population_std_times_phiinv_1_minus_k_over_d(level):
    d = 8  # small rows: the population and sample std differ by sqrt(8/7)
    x = torch.tensor(
        [[0.3, -1.2, 2.0, 0.0, 5.0, -0.7, 1.1, 0.4], [-3.0, -2.0, -1.0, -0.5, 0.0, 0.1, 0.2, 9.0]],
        dtype=torch.float64,
    )
    k_over_d = 1.0 - level  # the level is the fraction zeroed, k the entries kept
    theta = x.mean(-1, keepdim=True) + x.numpy().std(-1, ddof=0, keepdims=True) * norm.ppf(
        1 - k_over_d
    )
    torch.testing.assert_close(ops.stat_threshold(x, level), torch.as_tensor(theta))
    sample = x.mean(-1, keepdim=True) + x.std(-1, keepdim=True) * norm.ppf(1 - k_over_d)
    if level != 0.5:  # PhiInv(0.5) = 0: theta is the mean whatever the std
        assert not torch.allclose(ops.stat_threshold(x, level), sample)
    assert x.shape[-1] == d


@pytest.mark.parametrize("level", [0.25, 0.4, 0.5])
def test_the_method_zeroes_the_level_not_keeps_it(level):
    """The level convention: 25% means a quarter of the gate entries zeroed."""
    rule = plan_rule(level)
    assert rule == Rule("stat_topk", level, soft=True, pre_activation=True)
    out = rule.on_gate(gate_rows(), torch.nn.SiLU())
    assert abs(float((out == 0).double().mean()) - level) < 0.005


def test_soft_threshold_shifts_every_kept_silu_input_by_minus_theta():
    """Post hoc, `SiLU(ReLU(g - theta))` is not `SiLU(g)` on the kept entries: with the
    negative row means of a SiLU gate, theta < 0 at 25% and every kept output grows."""
    g = gate_rows()
    theta = ops.stat_threshold(g, 0.25)
    kept = g > theta
    assert (theta < -0.6).all()  # about mean - 0.674 std = -0.80
    soft = plan_rule(0.25, soft=True).on_gate(g, torch.nn.SiLU())
    hard = plan_rule(0.25, soft=False).on_gate(g, torch.nn.SiLU())
    torch.testing.assert_close(soft[kept], silu(g - theta)[kept])
    assert (soft[kept] > silu(g)[kept]).all()
    assert (soft[~kept] == 0).all() and (hard[~kept] == 0).all()
    torch.testing.assert_close(hard[kept], silu(g)[kept])  # the hard cut leaves kept ones
    # the typical kept entry moves by 0.8, several times the typical |SiLU(g)|
    assert float((soft - silu(g))[kept].abs().median()) > 2 * float(silu(g).abs().median())


def test_keeping_the_largest_pre_activations_drops_large_silu_outputs():
    """Why even the hard cut fails post hoc on SiLU: the lowest quarter of g sits near
    SiLU's minimum (-0.278 at g = -1.28), so the dropped |SiLU(g)| exceed the kept ones."""
    g = gate_rows()
    a = silu(g)
    dropped = g <= ops.stat_threshold(g, 0.25)
    assert float(a[dropped].abs().mean()) > 1.3 * float(a[~dropped].abs().mean())
    assert float(a.min()) >= -0.2785 - 1e-9 and math.isclose(
        float(silu(torch.tensor(-1.2785, dtype=torch.float64))), -0.2785, abs_tol=1e-4
    )
