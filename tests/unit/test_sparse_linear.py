"""The fused sparse-linear op (`kernels.sparse_linear`) against its float64 definition:
every rule, batch 1 to 16 (each row its own pattern; the weight rows read are the union),
float32 and bfloat16, the compiled op and the PyTorch path beside it.

Inputs have distinct magnitudes (exact in bfloat16), so a top-K is one set, not a tie
broken two ways; the bounds are the output dtype's rounding plus float32 accumulation,
which a row kept or dropped wrongly misses by orders of magnitude.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zlib

import pytest
import torch

from actsparse.kernels import KernelInputError, native
from actsparse.kernels import sparse_linear as sl

pytestmark = pytest.mark.skipif(
    not native.load(), reason=f"no compiled ops: {native.why_unavailable()}"
)

RULES = [
    ("none", None),
    ("threshold", 2.0 + 1 / 256),  # between two of the magnitudes below
    ("topk", 0.5),  # the fraction kept; the op takes the count
    ("topk", 0.1),
    ("weighted_topk", 0.3),
    ("scored_threshold", 1.5),
]


def distinct_inputs(b: int, k: int, gen: torch.Generator, zero_frac: float = 0.0):
    """(b, k) with |x| all distinct per row and exact in bfloat16: 1 + i/128, 2 + 2i/128,
    4 + 4i/128 (i < 128), random signs, a fraction `zero_frac` set to exactly 0."""
    mags = torch.cat([m * (1 + torch.arange(128) / 128) for m in (1.0, 2.0, 4.0)])
    assert k <= mags.numel()
    rows = []
    for _ in range(b):
        x = mags[torch.randperm(mags.numel(), generator=gen)[:k]]
        x = x * torch.where(torch.rand(k, generator=gen) < 0.5, -1.0, 1.0)
        x[torch.randperm(k, generator=gen)[: int(zero_frac * k)]] = 0.0
        rows.append(x)
    return torch.stack(rows)


def args_for(rule: str, p, k: int, gen):
    param = float(int(p * k)) if rule in ("topk", "weighted_topk") else (p or 0.0)
    scale = torch.rand(k, generator=gen) + 0.5 if rule in sl.SCORED else None
    return param, scale


def bound(xs: torch.Tensor, w: torch.Tensor, dtype) -> torch.Tensor:
    """|y - ref| allowed: the output's rounding plus float32 sums over the kept inputs."""
    k = xs.shape[-1]
    mag = xs.abs().double() @ w.abs().double()
    return (2 * torch.finfo(dtype).eps + k * 2.0**-23) * mag + 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2, 5, 16])
@pytest.mark.parametrize("rule,p", RULES)
@pytest.mark.parametrize("path", ["native", "torch"])
def test_the_op_matches_the_float64_definition(path, rule, p, batch, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((rule, p, batch)).encode()))
    k, n = 300, 70
    x = distinct_inputs(batch, k, gen, zero_frac=0.2 if rule == "none" else 0.0).to(dtype)
    w = torch.randn(k, n, generator=gen).to(dtype)
    bias = torch.randn(n, generator=gen).to(dtype)
    param, scale = args_for(rule, p, k, gen)
    ref = sl.reference(x, w, bias, rule, param, scale)
    run = sl.sparse_linear if path == "native" else sl.fallback
    y = run(x, w, bias, rule, param, scale)
    assert y.dtype == dtype and y.shape == (batch, n)
    kept = sl.apply_rule(x.double(), rule, param, scale)
    err = (y.double() - ref).abs()
    lim = bound(kept, w, dtype) + torch.finfo(dtype).eps * bias.double().abs()
    assert (err <= lim).all(), f"max err {err.max():.3g} (bound {lim.flatten()[err.argmax()]:.3g})"
    # the rule kept what it should: a count per row for top-K rules
    if rule in ("topk", "weighted_topk"):
        assert ((kept != 0).sum(-1) == int(param)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_wide_outputs_match_the_definition(batch, dtype):
    """4,100 outputs: the threads split columns in blocks of 2,048 (a partial last one)."""
    gen = torch.Generator().manual_seed(14 + batch)
    x = distinct_inputs(batch, 200, gen).to(dtype)
    w = torch.randn(200, 4100, generator=gen).to(dtype)
    ref = sl.reference(x, w, None, "topk", 60.0)
    err = (sl.sparse_linear(x, w, None, "topk", 60.0).double() - ref).abs()
    assert (err <= bound(sl.apply_rule(x.double(), "topk", 60.0, None), w, dtype)).all()


@pytest.mark.parametrize("rule,p", RULES)
@pytest.mark.parametrize("batch", [1, 4])
def test_weight_rows_no_row_keeps_are_never_read(rule, p, batch):
    """NaN in every weight row whose input the rule drops in all batch rows: read once, it
    would reach the output. Rows kept by one batch row and dropped by another are read and
    multiply only the rows that kept them."""
    gen = torch.Generator().manual_seed(11)
    k, n = 200, 40
    x = distinct_inputs(batch, k, gen, zero_frac=0.3 if rule == "none" else 0.0)
    x[:, torch.randperm(k, generator=gen)[:40]] = 0.0  # dropped by every row, under every rule
    w = torch.randn(k, n, generator=gen)
    param, scale = args_for(rule, p, k, gen)
    kept = sl.apply_rule(x.double(), rule, param, scale)
    dead = (kept == 0).all(dim=0)
    assert dead.sum() >= 10
    poisoned = w.clone()
    poisoned[dead] = float("nan")
    for run in (sl.sparse_linear, sl.fallback):
        y = run(x, poisoned, None, rule, param, scale)
        assert torch.isfinite(y).all()
        assert torch.allclose(y.double(), sl.reference(x, w, None, rule, param, scale), atol=1e-4)


def test_a_row_with_fewer_nonzeros_than_k_reads_no_zero_input_row():
    x = torch.zeros(1, 64)
    x[0, [3, 9]] = torch.tensor([1.0, -2.0])
    w = torch.randn(64, 16)
    w[[i for i in range(64) if i not in (3, 9)]] = float("inf")
    y = sl.sparse_linear(x, w, None, "topk", 10.0)
    assert torch.allclose(y, x[:, [3, 9]] @ w[[3, 9]])


def test_the_thread_count_does_not_change_the_result():
    gen = torch.Generator().manual_seed(12)
    x = distinct_inputs(3, 384, gen)
    w = torch.randn(384, 5000, generator=gen)  # wide: the threads split columns
    w2 = torch.randn(384, 576, generator=gen)  # narrow: the threads split rows
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [sl.sparse_linear(x, m, None, "topk", 100.0) for m in (w, w2)]
        torch.set_num_threads(2)
        two = [sl.sparse_linear(x, m, None, "topk", 100.0) for m in (w, w2)]
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0])  # one sum order per output column
    assert torch.allclose(one[1], two[1], rtol=1e-5, atol=1e-3)  # partial sums added


def test_the_op_passes_opcheck_and_compiles_in_one_graph():
    gen = torch.Generator().manual_seed(13)
    x = distinct_inputs(2, 64, gen)
    w = torch.randn(64, 24, generator=gen)
    s = torch.rand(64, generator=gen) + 0.5
    torch.library.opcheck(torch.ops.actsparse.sparse_linear, (x, w, None, 2, 16.0, None))
    torch.library.opcheck(torch.ops.actsparse.sparse_linear, (x, w, w[0], 3, 16.0, s))

    def f(x):
        return torch.relu(sl.sparse_linear(x, w, None, "threshold", 2.0)) * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), f(x))


def test_bad_input_is_refused_by_name():
    x, w = torch.randn(2, 16), torch.randn(16, 8)
    cases = [
        (dict(x=x, weight_t=torch.randn(15, 8)), "`x` has 16 inputs"),
        (dict(x=x, weight_t=w, rule="top"), "unknown rule 'top'"),
        (dict(x=x, weight_t=w, rule="weighted_topk", param=4.0), "needs `scale`"),
        (dict(x=x, weight_t=w, rule="threshold", param=-1.0), "`param` must be >= 0"),
        (dict(x=x, weight_t=w.t().contiguous().t()), "must be contiguous"),
        (dict(x=x.double(), weight_t=w.double()), "dtype float64"),
        (dict(x=x, weight_t=w.bfloat16()), "different dtypes"),
    ]
    for kw, msg in cases:
        with pytest.raises(KernelInputError, match=msg):
            sl.sparse_linear(**kw)


def test_without_a_compiler_the_torch_path_runs_and_says_why_once(tmp_path):
    code = (
        "import warnings, torch\n"
        "from actsparse.kernels import native, sparse_linear as sl\n"
        "x, w = torch.randn(2, 32), torch.randn(32, 8)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    a = sl.sparse_linear(x, w, None, 'topk', 8.0)\n"
        "    b = sl.sparse_linear(x, w, None, 'topk', 8.0)\n"
        "assert not native.load() and 'no C++ compiler' in native.why_unavailable()\n"
        "assert len([c for c in caught if 'compiled CPU kernels' in str(c.message)]) == 1\n"
        "assert torch.allclose(a.double(), sl.reference(x, w, None, 'topk', 8.0), atol=1e-5)\n"
    )
    env = {**os.environ, "CXX": "/nonexistent/c++", "ACTSPARSE_KERNELS_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_float16_input_takes_the_torch_path():
    x, w = torch.randn(1, 32).half(), torch.randn(32, 8).half()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = sl.sparse_linear(x, w, None, "threshold", 0.5)
    assert y.dtype == torch.float16
    ref = sl.reference(x, w, None, "threshold", 0.5)
    assert torch.allclose(y.double(), ref, rtol=1e-2, atol=1e-2)


def test_a_build_killed_half_way_is_rebuilt_not_loaded(tmp_path):
    """What a killed build leaves (a library without the `.done` marker, a stale lock)
    is never loaded nor waited on: the next job builds and publishes its own."""
    folder = tmp_path / native.build_dir().name
    folder.mkdir()
    (folder / f"{folder.name}.so").write_bytes(b"half a library")
    (folder / "lock").write_text("")
    code = (
        "import torch\n"
        "from actsparse.kernels import native, sparse_linear as sl\n"
        "assert native.load(), native.why_unavailable()\n"
        "x, w = torch.randn(1, 16), torch.randn(16, 4)\n"
        "assert torch.allclose(sl.sparse_linear(x, w, None, 'topk', 4.0).double(),\n"
        "                      sl.reference(x, w, None, 'topk', 4.0), atol=1e-5)\n"
    )
    env = {**os.environ, "ACTSPARSE_KERNELS_DIR": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (folder / ".done").is_file()
    assert (folder / f"{folder.name}.so").read_bytes()[:4] == b"\x7fELF"
    assert not [p for p in folder.iterdir() if p.name.startswith("build-")]


@pytest.mark.parametrize("rule,p", [("none", None), ("threshold", 2.0 + 1 / 256), ("topk", 0.5)])
def test_a_row_kept_by_one_batch_row_reaches_only_that_row(rule, p):
    """The union is read, but each batch row multiplies only what it kept: inf in a weight
    row that row 0 keeps and row 1 drops gives row 0 a non-finite output, row 1 none."""
    gen = torch.Generator().manual_seed(15)
    x = distinct_inputs(2, 120, gen, zero_frac=0.3 if rule == "none" else 0.0)
    param, scale = args_for(rule, p, 120, gen)
    kept = sl.apply_rule(x.double(), rule, param, scale) != 0
    r = int(((kept[0]) & ~kept[1]).nonzero()[0])
    w = torch.randn(120, 8, generator=gen)
    w[r] = float("inf")
    for run in (sl.sparse_linear, sl.fallback):
        y = run(x, w, None, rule, param, scale)
        assert not torch.isfinite(y[0]).all() and torch.isfinite(y[1]).all()
