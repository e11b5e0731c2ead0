"""The sparse kernels against their float64 references, on random data (never zeros).

Every case runs the Triton kernel (through Triton's interpreter on CPU, natively on a GPU
when there is one) and the CPU path (no Triton); the bounds are the rounding of the
output dtype plus float32 accumulation, so a skipped row that should have been read, or
a row read that should have been skipped, fails them by orders of magnitude.
"""

from __future__ import annotations

import pytest
import torch

from actsparse.kernels import (
    KernelInputError,
    fused_stat_topk,
    input_sparse_gemv,
    neuron_sparse_ffn,
    transpose_for_sparse,
)
from actsparse.kernels import sparse_ffn as ffn_mod
from actsparse.kernels import sparse_gemv as gemv_mod
from actsparse.kernels import stat_topk as stat_mod

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def sparse_input(b: int, k: int, level: float, dtype, gen) -> torch.Tensor:
    """Random normal inputs with a fraction `level` of each row exactly zero."""
    x = torch.randn(b, k, generator=gen) + 0.1
    for row in x:
        row[torch.randperm(k, generator=gen)[: int(level * k)]] = 0.0
    return x.to(dtype)


def triton_gemv(x, w, config=None, idx=None):
    return gemv_mod.launch(x, w, idx=idx, config=config)


def cpu_gemv(x, w, config=None, idx=None):
    return gemv_mod.cpu_path(x, w, idx=idx)  # the compiled op where it takes the dtype


def torch_gemv(x, w, config=None, idx=None):
    return gemv_mod.torch_path(x, w, idx=idx)  # where no compiler is


GEMV_PATHS = {"triton": triton_gemv, "cpu": cpu_gemv, "torch": torch_gemv}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", list(GEMV_PATHS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("level", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(1, 100, 70), (1, 257, 130), (4, 64, 96), (19, 40, 33)])
def test_input_sparse_gemv_matches_the_reference(shape, level, dtype, path, device):
    b, k, n = shape
    gen = torch.Generator().manual_seed(hash((shape, level)) % 2**31)
    x = sparse_input(b, k, level, dtype, gen).to(device)
    w = torch.randn(k, n, generator=gen).to(dtype).to(device)
    ref = gemv_mod.reference(x, w)
    bound = (2 * eps(dtype) + k * 2.0**-23) * (x.abs().double() @ w.abs().double()) + 1e-30
    for config in (None, gemv_mod.GemvConfig(block_b=2, block_k=16, block_n=32, split_k=3)):
        y = GEMV_PATHS[path](x, w, config)
        assert y.dtype == dtype and y.shape == (b, n)
        err = (y.double() - ref).abs()
        assert (err <= bound).all(), (
            f"max err {err.max():.3g}, bound there {bound.flatten()[err.argmax()]:.3g}"
        )


@pytest.mark.parametrize("path", list(GEMV_PATHS))
def test_the_gemv_never_reads_a_row_whose_inputs_are_all_zero(path):
    """NaN in every weight row no batch row needs: read once, it would poison the output.
    Rows some batch rows need and others do not are read (the union) and stay exact."""
    gen = torch.Generator().manual_seed(3)
    x = sparse_input(3, 80, 0.6, torch.float32, gen)
    w = torch.randn(80, 48, generator=gen)
    dead = (x == 0).all(dim=0)
    assert dead.sum() >= 10 and ((x == 0).any(dim=0) & ~dead).any()  # both kinds present
    poisoned = w.clone()
    poisoned[dead] = float("nan")
    y = GEMV_PATHS[path](x, poisoned, gemv_mod.GemvConfig(4, 16, 16, 2))
    assert torch.isfinite(y).all()
    assert torch.allclose(y.double(), gemv_mod.reference(x, w), rtol=1e-5, atol=1e-5)


def test_a_nan_input_reaches_the_output_as_it_would_dense():
    x = torch.zeros(1, 32)
    x[0, 5] = float("nan")
    w = torch.randn(32, 8)
    for path in GEMV_PATHS.values():
        assert torch.isnan(path(x, w)).all()


def test_the_gemv_op_handles_a_vector_and_any_batch():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(64, 40, generator=gen)
    x = sparse_input(5, 64, 0.5, torch.float32, gen)
    y = input_sparse_gemv(x[0], w)
    assert y.shape == (40,)
    assert torch.allclose(y.double(), gemv_mod.reference(x[0], w), atol=1e-4)
    assert torch.allclose(input_sparse_gemv(x, w).double(), gemv_mod.reference(x, w), atol=1e-4)


def test_transpose_for_sparse_gives_the_linears_product():
    lin = torch.nn.Linear(24, 10, bias=False)
    x = sparse_input(2, 24, 0.5, torch.float32, torch.Generator().manual_seed(0))
    assert torch.allclose(
        input_sparse_gemv(x, transpose_for_sparse(lin.weight)), lin(x).detach(), atol=1e-5
    )


# --- neuron-sparse FFN ----------------------------------------------------------------


def ffn_weights(d, d_ff, dtype, gated, bias, gen):
    w_in = torch.randn(d_ff, d, generator=gen) / d**0.5
    w_up = torch.randn(d_ff, d, generator=gen) / d**0.5 if gated else None
    w_out = torch.randn(d, d_ff, generator=gen) / d_ff**0.5
    b_in = torch.randn(d_ff, generator=gen) * 0.1 if bias else None
    b_out = torch.randn(d, generator=gen) * 0.1 if bias else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(w_in), cast(w_up), transpose_for_sparse(w_out.to(dtype)), cast(b_in), cast(b_out)


def normwise_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "act,gated,bias",
    [
        ("silu", True, False),
        ("relu", False, True),
        ("gelu", False, True),
        ("gelu_new", False, False),
        ("relu2", True, False),
    ],
)
@pytest.mark.parametrize("b", [1, 3, 17])
def test_sparse_ffn_matches_the_reference(b, act, gated, bias, dtype, device):
    d, d_ff = 48, 150
    gen = torch.Generator().manual_seed(b * 7 + len(act))
    x = torch.randn(b, d, generator=gen).to(dtype)
    w_in, w_up, w_out_t, b_in, b_out = ffn_weights(d, d_ff, dtype, gated, bias, gen)
    mask = torch.rand(b, d_ff, generator=gen) < 0.2
    idx = mask.any(dim=0).nonzero().flatten().to(torch.int32)
    ref = ffn_mod.reference(x, w_in, w_up, w_out_t, idx, act, b_in, b_out)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    args = [to(t) for t in (x, w_in, w_up, w_out_t)]
    # the Triton kernel keeps h in float32; the CPU path rounds z, up and h to the dtype
    y_triton = ffn_mod.launch(*args, idx.to(device), act, to(b_in), to(b_out))
    y_cpu = ffn_mod.cpu_path(x, w_in, w_up, w_out_t, idx, act, b_in, b_out)
    y_torch = ffn_mod.torch_path(x, w_in, w_up, w_out_t, idx, act, b_in, b_out)
    y_op = neuron_sparse_ffn(*args, act=act, mask=mask.to(device), b_in=to(b_in), b_out=to(b_out))
    assert y_triton.dtype == y_cpu.dtype == y_torch.dtype == y_op.dtype == dtype
    assert normwise_error(y_triton.cpu(), ref) <= 2 * eps(dtype) + 1e-5
    assert normwise_error(y_cpu, ref) <= 6 * eps(dtype) + 1e-5
    assert normwise_error(y_torch, ref) <= 6 * eps(dtype) + 1e-5
    assert normwise_error(y_op.cpu(), ref) <= 6 * eps(dtype) + 1e-5


def test_the_relu_oracle_mask_gives_the_dense_ffn_exactly():
    """Deja Vu's oracle on a ReLU FFN (OPT): the neurons with fc1 x + b > 0. The inactive
    ones contribute exactly zero, so the sparse FFN is the dense FFN (in float64 terms)."""
    gen = torch.Generator().manual_seed(5)
    d, d_ff = 32, 128
    x = torch.randn(4, d, generator=gen)
    w_in, _, w_out_t, b_in, b_out = ffn_weights(d, d_ff, torch.float32, False, True, gen)
    z = x @ w_in.T + b_in
    dense = torch.relu(z.double()) @ w_out_t.double() + b_out.double()
    for path in (ffn_mod.launch, ffn_mod.cpu_path, ffn_mod.torch_path):
        idx = (z > 0).any(dim=0).nonzero().flatten().to(torch.int32)
        assert 0.3 * d_ff < idx.numel() < d_ff
        y = path(x, w_in, None, w_out_t, idx, "relu", b_in, b_out)
        assert torch.allclose(y.double(), dense, atol=1e-5)


@pytest.mark.parametrize("path", ["triton", "cpu", "torch"])
def test_the_ffn_never_reads_an_inactive_neuron(path):
    gen = torch.Generator().manual_seed(6)
    d, d_ff = 32, 96
    x = torch.randn(2, d, generator=gen)
    w_in, w_up, w_out_t, _, _ = ffn_weights(d, d_ff, torch.float32, True, False, gen)
    idx = torch.randperm(d_ff, generator=gen)[:20].sort().values.to(torch.int32)
    ref = ffn_mod.reference(x, w_in, w_up, w_out_t, idx, "silu")
    inactive = torch.ones(d_ff, dtype=torch.bool)
    inactive[idx.long()] = False
    for w in (w_in, w_up, w_out_t):
        w[inactive] = float("nan")
    run = {"triton": ffn_mod.launch, "cpu": ffn_mod.cpu_path, "torch": ffn_mod.torch_path}[path]
    y = run(x, w_in, w_up, w_out_t, idx, "silu")
    assert torch.isfinite(y).all() and normwise_error(y, ref) < 1e-5


def test_indices_in_any_order_with_repeats_are_the_set_they_name():
    gen = torch.Generator().manual_seed(7)
    d, d_ff = 16, 40
    x = torch.randn(3, d, generator=gen)
    w_in, w_up, w_out_t, _, _ = ffn_weights(d, d_ff, torch.float32, True, False, gen)
    idx = torch.tensor([9, 3, 3, 31, 0, 9], dtype=torch.int64)
    ref = ffn_mod.reference(x, w_in, w_up, w_out_t, torch.tensor([0, 3, 9, 31]), "silu")
    assert (
        normwise_error(neuron_sparse_ffn(x, w_in, w_up, w_out_t, act="silu", idx=idx), ref) < 1e-5
    )
    # a 1-d mask naming the same neurons
    mask = torch.zeros(d_ff, dtype=torch.bool)
    mask[idx] = True
    assert (
        normwise_error(neuron_sparse_ffn(x[0], w_in, w_up, w_out_t, act="silu", mask=mask), ref[:1])
        < 1e-5
    )


def test_no_active_neuron_gives_the_output_bias():
    d, d_ff = 16, 40
    gen = torch.Generator().manual_seed(8)
    w_in, _, w_out_t, b_in, b_out = ffn_weights(d, d_ff, torch.float32, False, True, gen)
    x = torch.randn(2, d, generator=gen)
    none = torch.zeros(d_ff, dtype=torch.bool)
    for path in (ffn_mod.launch, ffn_mod.cpu_path, ffn_mod.torch_path):
        y = path(x, w_in, None, w_out_t, none.nonzero().flatten().int(), "relu", b_in, b_out)
        assert torch.equal(y, b_out.expand(2, d))


# --- statistical top-k ------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soft", [True, False])
@pytest.mark.parametrize(
    "shape,max_block", [((1, 100), 16384), ((5, 1000), 16384), ((3, 1000), 256), ((2, 37), 16)]
)
def test_stat_topk_matches_the_sparsify_operator(shape, max_block, soft, dtype, device):
    gen = torch.Generator().manual_seed(shape[1])
    # a nonzero mean: tests the two-pass path's shifted sums
    x = (torch.randn(*shape, generator=gen) * 3 + 1).to(dtype).to(device)
    level = 0.9
    ref = stat_mod.reference(x.cpu(), level, soft)
    for y in (
        stat_mod.launch(x, level, soft, max_block=max_block).cpu(),
        stat_mod.cpu_path(x.cpu(), level, soft),
    ):
        assert_stat_topk_close(x.cpu(), y, ref, level, dtype)


def assert_stat_topk_close(x, y, ref, level, dtype):
    assert y.dtype == dtype
    # the kept set is the reference's, except entries within rounding of the threshold
    xd = x.double()
    theta = xd.mean(-1, keepdim=True) + xd.std(-1, correction=0, keepdim=True) * stat_mod.quantile(
        level
    )
    near = (xd - theta).abs() <= 1e-4 * xd.abs().max()
    assert ((y != 0) == (ref != 0))[~near].all()
    bound = 2 * eps(dtype) * (xd.abs() + theta.abs()) + 1e-6
    assert ((y.double() - ref).abs()[~near] <= bound.expand_as(ref)[~near]).all()
    kept = (ref != 0).double().mean()
    assert 0.03 < kept < 0.2  # about 1 - level for Gaussian rows


def test_stat_topk_op_keeps_the_shape_and_level_zero_is_identity():
    x = torch.randn(2, 3, 64)
    before = x.clone()
    y = fused_stat_topk(x, 0.8)
    assert torch.equal(x, before)  # the input is not modified
    assert y.shape == x.shape
    assert torch.allclose(y.double(), stat_mod.reference(x, 0.8), atol=1e-6)
    assert fused_stat_topk(x, 0.0) is x


# --- ops: torch.library registration, torch.compile -------------------------------------


def test_the_ops_pass_torch_library_opcheck():
    gen = torch.Generator().manual_seed(9)
    x = sparse_input(2, 32, 0.5, torch.float32, gen)
    w = torch.randn(32, 16, generator=gen)
    torch.library.opcheck(torch.ops.actsparse.input_sparse_gemv, (x, w))
    w_in, w_up, w_out_t, b_in, b_out = ffn_weights(32, 64, torch.float32, True, True, gen)
    idx = torch.arange(0, 64, 3, dtype=torch.int32)
    torch.library.opcheck(
        torch.ops.actsparse.neuron_sparse_ffn, (x, w_in, w_up, w_out_t, idx, "silu", b_in, b_out)
    )
    torch.library.opcheck(torch.ops.actsparse.fused_stat_topk, (torch.randn(3, 40), 0.7, True))


def test_torch_compile_traces_through_the_ops_in_one_graph():
    gen = torch.Generator().manual_seed(10)
    w = torch.randn(32, 24, generator=gen)
    w_in, w_up, w_out_t, _, _ = ffn_weights(24, 48, torch.float32, True, False, gen)
    idx = torch.arange(0, 48, 2, dtype=torch.int32)

    def block(x):
        h = input_sparse_gemv(x, w)
        h = torch.ops.actsparse.neuron_sparse_ffn(h, w_in, w_up, w_out_t, idx, "silu", None, None)
        return fused_stat_topk(h, 0.5)

    x = sparse_input(2, 32, 0.5, torch.float32, gen)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x), block(x))


# --- bad input: a clear error before launch ---------------------------------------------


def test_bad_gemv_input_is_refused_by_name():
    x = torch.randn(2, 16)
    w = torch.randn(16, 8)
    cases = [
        (lambda: input_sparse_gemv(x.double(), w.double()), "`x` has dtype float64"),
        (lambda: input_sparse_gemv(x.int(), w), "`x` has dtype int32"),
        (lambda: input_sparse_gemv(x, w.half()), "different dtypes"),
        (lambda: input_sparse_gemv(torch.randn(2, 15), w), "`x` has 15 inputs"),
        (lambda: input_sparse_gemv(x, torch.randn(8, 16).t()), "must be contiguous"),
        (lambda: input_sparse_gemv(torch.randn(2, 2, 16), w), "`x` must have 1 or 2 dims"),
        (lambda: input_sparse_gemv(torch.randn(0, 16), w), "`x` is empty"),
    ]
    for call, message in cases:
        with pytest.raises(KernelInputError, match=message):
            call()


def test_bad_ffn_input_is_refused_by_name():
    gen = torch.Generator().manual_seed(11)
    d, d_ff = 16, 40
    x = torch.randn(2, d, generator=gen)
    w_in, w_up, w_out_t, _, _ = ffn_weights(d, d_ff, torch.float32, True, False, gen)

    def call(**kw):
        args = {"x": x, "w_in": w_in, "w_up": w_up, "w_out_t": w_out_t, "act": "silu"} | kw
        if "idx" not in args and "mask" not in args:
            args["idx"] = torch.tensor([1, 2])
        return neuron_sparse_ffn(
            args.pop("x"), args.pop("w_in"), args.pop("w_up"), args.pop("w_out_t"), **args
        )

    cases = [
        ({"mask": torch.ones(d_ff - 1, dtype=torch.bool)}, r"`mask` has shape \(39,\)"),
        ({"mask": torch.ones(3, d_ff, dtype=torch.bool).T}, r"`mask` has shape \(40, 3\)"),
        ({"mask": torch.ones(d_ff)}, "`mask` must be bool"),
        ({"idx": torch.tensor([0, d_ff])}, r"`idx` out of range: values in \[0, 40\], d_ff is 40"),
        ({"idx": torch.tensor([-1, 3])}, "`idx` out of range"),
        ({"idx": torch.tensor([1.0])}, "`idx` must be a 1-d int32/int64"),
        ({"idx": torch.tensor([1]), "mask": torch.ones(d_ff, dtype=torch.bool)}, "exactly one of"),
        ({"w_out_t": w_out_t.T.contiguous()}, r"`w_out_t` has shape \(16, 40\)"),
        ({"w_up": w_up[:, :8]}, r"`w_up` has shape \(40, 8\)"),
        ({"act": "swish"}, "activation 'swish' is not supported"),
        ({"x": x.double()}, "`x` has dtype float64"),
        ({"x": torch.randn(2, d + 1)}, "`x` has 17 features"),
        ({"b_out": torch.randn(d + 2)}, "`b_out` has 18 entries, expected 16"),
    ]
    for kw, message in cases:
        with pytest.raises(KernelInputError, match=message):
            call(**kw)


def test_bad_stat_topk_input_is_refused_by_name():
    for call, message in [
        (lambda: fused_stat_topk(torch.randn(3, 8), 1.0), r"`level` must be in \[0, 1\)"),
        (lambda: fused_stat_topk(torch.randn(3, 8), -0.1), r"`level` must be in \[0, 1\)"),
        (lambda: fused_stat_topk(torch.randn(3, 1), 0.5), "at least 2 entries"),
        (lambda: fused_stat_topk(torch.randn(3, 8).double(), 0.5), "dtype float64"),
        (lambda: fused_stat_topk(torch.arange(8), 0.5), "dtype int64"),
    ]:
        with pytest.raises(KernelInputError, match=message):
            call()
