"""R-Sparse: the sparse part plus a rank-r SVD of the rest, checked against float64
references: rank 0 is the sparse part alone, full rank the dense linear, any rank the
formula; the reference's budget split; the search is deterministic and picks from its
candidates; the low-rank factors are counted in the cost."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_V, tiny_model

from actsparse.methods.sparsity import SPARSITY, ops
from actsparse.methods.sparsity.base import BuildContext
from actsparse.methods.sparsity.mechanism import Placed, Rule
from actsparse.methods.sparsity.rsparse import split
from actsparse.methods.sparsity.wrappers import SparseInput
from actsparse.models import adapter_for
from actsparse.models.adapters import linear_shape
from actsparse.sweeps import default_entry

G = torch.Generator().manual_seed(0)


def _wrapped(rank: int, t: float = 0.8):
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 7).double()
    return lin, SparseInput(lin, Placed(0, "ffn_in", "lin", 12, Rule("rsparse", 0.5, t, rank=rank)))


def test_rank_zero_is_the_sparse_part_and_full_rank_the_dense_linear():
    x = torch.randn(5, 12, generator=G, dtype=torch.float64)
    lin, w = _wrapped(0)
    with torch.no_grad():
        assert torch.allclose(w(x), lin(ops.threshold(x, 0.8)), rtol=0, atol=1e-13)
        lin, w = _wrapped(7)  # min(m, n): the SVD is exact
        assert torch.allclose(w(x), lin(x), rtol=0, atol=1e-12)


def test_any_rank_is_the_sparse_part_plus_the_truncated_svd_of_the_rest():
    x = torch.randn(5, 12, generator=G, dtype=torch.float64)
    lin, w = _wrapped(3)
    W = lin.weight.detach()
    score = x.abs() * W.norm(dim=0)
    keep = score > 0.8
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    low = U[:, :3] @ torch.diag(s[:3]) @ Vh[:3]
    want = (x * keep) @ W.T + lin.bias + (x * ~keep) @ low.T
    with torch.no_grad():
        assert torch.allclose(w(x), want, rtol=0, atol=1e-12)
    assert 0 < int(w.zeros) < x.numel()  # the zeros of the sparse part are counted


def test_the_budget_split_is_the_reference_codes():
    """`utils/setup.py`: c = int(n (1 - s) alpha), r = int((n m (1 - s) - c m) / (n + m))."""
    assert split(4096, 4096, 0.5, 0.9) == (1843, 102)
    assert split(4096, 11008, 0.5, 1.0) == (2048, 0)  # pure sparsity
    for n, m, s, a in [(576, 1536, 0.4, 0.75), (1536, 576, 0.7, 0.5)]:
        c, r = split(n, m, s, a)
        cost = c * m + r * (n + m)
        assert (1 - s) * n * m - (n + m) - m < cost <= (1 - s) * n * m


def _build(level, **keys):
    model = tiny_model("llama")
    tokens = torch.randint(0, TINY_V, (4096,), generator=torch.Generator().manual_seed(1))
    ctx = BuildContext(model, adapter_for("llama"), None, tokens, torch.device("cpu"), seed=2)
    entry = default_entry(
        "sparsify", "rsparse", calib_tokens=256, calib_seq_len=16, search_tokens=64, **keys
    )
    return model, SPARSITY.get("rsparse")().plan(entry.cfg, level, ctx)


def test_the_search_is_deterministic_and_picks_from_its_candidates():
    model, a = _build(0.5)
    _, b = _build(0.5)
    assert [p.rule for p in a.placed] == [p.rule for p in b.placed]
    for p in a.placed:
        n, m = linear_shape(model.get_submodule(p.module))
        splits = {split(n, m, 0.5, alpha) for alpha in (1.0, 0.9, 0.75, 0.5)}
        c = round((1 - p.rule.level) * n)
        assert (c, p.rule.rank) in splits, p
    # the cost counts the low-rank factors beside the sparse part
    low = sum(p.rule.rank * sum(linear_shape(model.get_submodule(p.module))) for p in a.placed)
    assert a.overhead_params(model) == low


def test_uniform_alpha_and_level_zero():
    model, plan = _build(0.5, search="uniform", alpha=0.5)
    assert all(p.rule.rank > 0 for p in plan.placed)
    _, dense = _build(0.0, search="block")
    assert all(p.rule.rank == 0 and p.rule.threshold == 0.0 for p in dense.placed)


def test_bad_rsparse_configs_are_named():
    with pytest.raises(ValueError, match="only an rsparse rule has a rank"):
        Rule("topk", 0.5, rank=3)
    problems = dict(
        default_entry("sparsify", "rsparse", search="genetic", alphas=[1.5]).cfg.problems()
    )
    assert "search" in problems and "alpha must be in (0, 1]" in problems["alphas"]
