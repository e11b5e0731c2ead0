"""SCAP: thresholds on |x - m| with `W m` folded back, checked against float64
references: dense at level 0 whatever the centre, dropped entries replaced by the centre
(not by zero), thresholds the exact quantiles of |x - m| on the calibration tokens, the
KDE mode of a skewed distribution, and bad configs named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_V, final_output, tiny_model

from actsparse.methods.sparsity import SPARSITY
from actsparse.methods.sparsity.base import BuildContext
from actsparse.methods.sparsity.mechanism import Placed, Rule, SparsityPlan
from actsparse.methods.sparsity.scap import kde_mode
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models import adapter_for
from actsparse.sweeps import default_entry

G = torch.Generator().manual_seed(0)


def _context(model, family="llama", n_tokens=4096):
    tokens = torch.randint(0, TINY_V, (n_tokens,), generator=G)
    return BuildContext(model, adapter_for(family), None, tokens, torch.device("cpu"), seed=1)


def _plan(model, level, family="llama", **keys):
    entry = default_entry("sparsify", "scap", calib_tokens=512, calib_seq_len=16, **keys)
    ctx = _context(model, family)
    return SPARSITY.get("scap")().plan(entry.cfg, level, ctx), ctx


@pytest.mark.parametrize("center", ["mode", "median"])
def test_at_level_zero_scap_is_the_dense_model_whatever_the_centre(center):
    model = tiny_model("llama").double()
    plan, _ = _plan(
        model, 0.0, center=center, sites=["attn_in", "o_proj_in", "ffn_in", "ffn_intermediate"]
    )
    assert all(p.rule.shift != 0.0 for p in plan.placed)  # the fold is exercised
    x = torch.randint(0, TINY_V, (2, 12), generator=G)
    with torch.no_grad():
        dense = final_output(model, x)
        handle = apply(model, adapter_for("llama"), plan)
        sparse = final_output(model, x)
        handle.remove()
    assert torch.allclose(sparse, dense, rtol=0, atol=1e-12)


def test_dropped_entries_take_the_centre_and_the_output_is_the_folded_bias_form():
    """`W S_t(x - m) + b + W m 1` equals `W x'` with `x'` = x where |x - m| > t, else m."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(10, 6).double()
    m, t = 0.3, 0.5
    rule = Rule("threshold", 0.5, t, shift=m)
    from actsparse.methods.sparsity.wrappers import SparseInput

    wrapped = SparseInput(lin, Placed(0, "ffn_in", "lin", 10, rule))
    x = torch.randn(4, 10, generator=G, dtype=torch.float64)
    kept = torch.where((x - m).abs() > t, x, torch.full_like(x, m))
    with torch.no_grad():
        assert torch.allclose(wrapped(x), lin(kept), rtol=0, atol=1e-13)
    # the zeros counted are those of the centred input the linear reads
    assert int(wrapped.zeros) == int(((x - m).abs() <= t).sum())


def test_thresholds_are_the_quantiles_of_the_centred_magnitudes_the_site_sees():
    """Sequential: the first block's gate/up input is the dense one; its threshold is the
    `level` quantile of |x - m| over the calibration tokens, and that share is dropped."""
    model = tiny_model("llama").double()
    level = 0.4
    plan, ctx = _plan(model, level, center="median")
    first = [p for p in plan.placed if p.layer == 0 and p.site == "ffn_in"]
    assert len(first) == 2 and first[0].rule == first[1].rule  # gate and up: one input
    from actsparse.data import batch_at

    seen = []
    mod = model.get_submodule(first[0].module)
    hook = mod.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1)))
    batches = [batch_at(ctx.tokens, b, 8, 16, ctx.seed) for b in range(512 // (8 * 16))]
    with torch.no_grad():
        for b in batches:
            model(input_ids=b)
    hook.remove()
    x = torch.cat(seen).float().double()  # the calibration keeps float32 samples
    m = float(x.median())
    assert first[0].rule.shift == pytest.approx(m, abs=0)
    assert first[0].rule.threshold == pytest.approx(
        float(np.quantile((x - m).abs().numpy(), level)), rel=1e-12
    )
    assert float(((x - m).abs() <= first[0].rule.threshold).double().mean()) == pytest.approx(
        level, abs=2 / len(x) ** 0.5
    )


def test_the_kde_mode_finds_the_peak_of_a_skewed_distribution():
    """SiLU-gated activations are skewed: their mode is not their median. A gamma(2, 1)
    shifted by -1 peaks at 0 (its median is about 0.68)."""
    g = np.random.default_rng(0)
    x = torch.from_numpy(g.gamma(2.0, 1.0, 400_000) - 1.0)
    assert kde_mode(x, 100_000) == pytest.approx(0.0, abs=0.08)
    assert float(x.median()) > 0.6


def test_a_plan_with_centres_survives_save_and_load(tmp_path):
    model = tiny_model("llama")
    plan, _ = _plan(model, 0.5, center="median")
    plan.save(tmp_path)
    again = SparsityPlan.load(tmp_path)
    assert [p.rule for p in again.placed] == [p.rule for p in plan.placed]


def test_bad_scap_configs_are_named():
    with pytest.raises(ValueError, match="only a threshold rule is centred"):
        Rule("topk", 0.5, shift=0.1)
    entry = default_entry("sparsify", "scap", center="peak", calibration="dense")
    problems = dict(entry.cfg.problems())
    assert "center" in problems and "sequential only" in problems["calibration"]
