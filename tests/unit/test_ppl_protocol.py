"""Perplexity protocols of the evaluate stage: `stride` (sliding windows) and
`dense_prefill` (every sparsity rule off over a prefix of each window), against direct
computations on tiny random models; the defaults give exactly the previous numbers."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model

from actsparse.conf import defaults
from actsparse.config import ConfigError, compose_study
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models import adapter_for
from actsparse.models.adapters import LINEAR_SITES
from actsparse.perplexity import Protocol, evaluate_lm, unigram_logprobs, windows
from actsparse.schema.stages import EvaluateCfg

V = 64  # the tiny models' vocabulary
T = 16  # window length (the tiny models' context is 32)


def _tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, n).astype(np.int64)


def _unigram() -> torch.Tensor:
    return unigram_logprobs(_tokens(500, seed=1), V)


@torch.no_grad()
def _previous_evaluate_lm(model, wins, batch_size, unigram, reference, fidelity_tokens):
    """The evaluation as it was before the protocol options (perplexity, unigram and
    fidelity), kept here as the reference for the default path."""
    nll_sum, n_pred, uni_sum = 0.0, 0, 0.0
    fid_left, err2, ref2, cos_sum, kl_sum, n_fid = fidelity_tokens, 0.0, 0.0, 0.0, 0.0, 0
    for start in range(0, len(wins), batch_size):
        x = wins[start : start + batch_size]
        want_hidden = fid_left > 0
        out = model(input_ids=x, use_cache=False, output_hidden_states=want_hidden)
        target = x[:, 1:]
        for i in range(x.shape[0]):
            tok = F.cross_entropy(out.logits[i, :-1].float(), target[i], reduction="none")
            nll_sum += tok.double().sum().item()
        n_pred += target.numel()
        uni_sum += -unigram[target].sum().item()
        if want_hidden:
            ref = reference(input_ids=x, use_cache=False, output_hidden_states=True)
            width, vocab = out.hidden_states[-1].shape[-1], out.logits.shape[-1]
            k = min(fid_left, x.numel())
            for c in range(0, k, 512):
                e = min(c + 512, k)
                h = out.hidden_states[-1].reshape(-1, width)[c:e].double()
                r = ref.hidden_states[-1].reshape(-1, width)[c:e].double()
                err2 += ((h - r) ** 2).sum().item()
                ref2 += (r**2).sum().item()
                cos_sum += F.cosine_similarity(h, r, dim=-1).sum().item()
                lp = F.log_softmax(out.logits.reshape(-1, vocab)[c:e].double(), -1)
                lr = F.log_softmax(ref.logits.reshape(-1, vocab)[c:e].double(), -1)
                kl_sum += F.kl_div(lp, lr, log_target=True, reduction="sum").item()
            n_fid += k
            fid_left -= k
    return (
        nll_sum / n_pred,
        n_pred,
        uni_sum / n_pred,
        math.sqrt(err2 / ref2),
        cos_sum / n_fid,
        kl_sum / n_fid,
    )


def _perturbed(model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return other


def zero_everything(model, family: str, sites=LINEAR_SITES):
    """Every rule zeroes its whole activation (a threshold no entry passes)."""
    adapter = adapter_for(family)
    rule = Rule("threshold", 0.5, threshold=1e30)
    placed = placed_for_sites(model, adapter, list(sites), lambda *_: rule)
    return apply(model, adapter, SparsityPlan("threshold", "zero", 0.5, placed))


# ------------------------------------------------------------------ defaults


def _evaluate(**changes) -> EvaluateCfg:
    """The evaluate stage's settings as conf/evaluate/default.yaml has them, with `changes`."""
    return defaults(EvaluateCfg, "evaluate", **changes)


def test_the_default_protocol_is_the_plain_one():
    """conf/evaluate/default.yaml (the protocol's one home) scores non-overlapping windows
    with every position sparsified."""
    e = _evaluate()
    assert e.stride is None and e.dense_prefill == 0


def test_the_default_protocol_is_non_overlapping_windows_scoring_every_prediction():
    p = Protocol.of(_evaluate(), 512)
    assert p == Protocol(512) and p.tag == "w512" and p.prefill == 0
    assert [p.first_scored(w) for w in range(3)] == [0, 0, 0]
    assert windows(np.arange(70), T, None, stride=None).equal(windows(np.arange(70), T, None))


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_the_default_path_gives_exactly_the_previous_numbers(family):
    model = tiny_model(family)
    reference = _perturbed(tiny_model(family))
    wins = windows(_tokens(7 * T + 5), T, None)
    uni = _unigram()
    before = _previous_evaluate_lm(model, wins, 3, uni, reference, 40)
    for protocol in (None, Protocol.of(_evaluate(), T)):
        r = evaluate_lm(model, wins, 3, uni, reference, 40, protocol=protocol)
        now = (r.nll, r.n_predicted, r.unigram_nll, r.hidden_rel_err, r.hidden_cosine, r.kl)
        assert now == before  # bit for bit
    # and a sparsified model with its plan at the default protocol: as without a handle
    handle = zero_everything(model, family)
    a = evaluate_lm(model, wins, 3, uni, protocol=Protocol(T), handle=handle)
    b = evaluate_lm(model, wins, 3, uni)
    assert (a.nll, a.n_predicted) == (b.nll, b.n_predicted)


# ------------------------------------------------------------------ stride


def test_sliding_windows_start_every_stride_tokens_and_drop_the_tail():
    w = windows(np.arange(70), T, None, stride=4)
    assert w.shape == ((70 - T) // 4 + 1, T)
    assert w[0, 0] == 0 and w[1, 0] == 4 and w[-1, -1] == 4 * (w.shape[0] - 1) + T - 1
    assert windows(np.arange(70), T, 30, stride=4).shape == ((30 - T) // 4 + 1, T)
    with pytest.raises(ValueError, match="do not fill one window"):
        windows(np.arange(T - 1), T, None, stride=4)


@pytest.mark.parametrize("stride", [4, 5, T - 1])
def test_sliding_window_perplexity_equals_a_float64_token_by_token_reference(stride):
    """Each token j is scored once: by the first window if j < T (context: the split's
    start), else by the window whose last `stride` tokens hold it (context: that window's
    tokens before j). The reference recomputes every scored token's log-probability on
    its own, in float64."""
    model = tiny_model("llama")
    tokens = _tokens(83)
    wins = windows(tokens, T, None, stride=stride)
    uni = _unigram()
    protocol = Protocol.of(_evaluate(stride=stride), T)
    r = evaluate_lm(model, wins, 4, uni, protocol=protocol)

    exact = copy.deepcopy(model).double()
    last = stride * (len(wins) - 1) + T - 1  # the last token a window holds
    nll, uni_nll = [], []
    with torch.no_grad():
        for j in range(1, last + 1):
            start = 0 if j < T else math.ceil((j - T + 1) / stride) * stride
            ctx = torch.from_numpy(tokens[start : j + 1])[None]
            logp = F.log_softmax(exact(input_ids=ctx).logits[0, -2].double(), -1)
            nll.append(-logp[tokens[j]].item())
            uni_nll.append(-uni[tokens[j]].item())
    assert r.n_predicted == len(nll) == (T - 1) + (len(wins) - 1) * stride
    assert math.isclose(r.nll, float(np.mean(nll)), rel_tol=1e-5)
    assert math.isclose(r.unigram_nll, float(np.mean(uni_nll)), rel_tol=1e-12)
    assert protocol.tag == f"w{T}.s{stride}"


def test_sliding_fidelity_counts_each_position_once():
    model = tiny_model("llama")
    wins = windows(_tokens(60), T, None, stride=4)
    r = evaluate_lm(model, wins, 2, _unigram(), _perturbed(model), 10_000, protocol=Protocol(T, 4))
    assert 0 < r.hidden_rel_err < 1 and r.kl > 0
    same = evaluate_lm(model, wins, 2, _unigram(), model, 10_000, protocol=Protocol(T, 4))
    assert same.hidden_rel_err == 0.0 and same.kl == 0.0


# ------------------------------------------------------------------ dense prefill


@pytest.mark.parametrize(
    "family, sites",
    [
        ("llama", LINEAR_SITES),
        ("llama", ("gate", "heads")),
        ("opt", LINEAR_SITES),  # OPT's FFN sees the batch flattened: (B * T, d)
        ("gpt2", LINEAR_SITES),  # Conv1D linears
    ],
)
def test_a_dense_prefix_gives_the_dense_models_logits_there_and_only_there(family, sites):
    model = tiny_model(family)
    handle = zero_everything(model, family, sites)
    x = torch.from_numpy(_tokens(3 * T)).view(3, T)
    p = Protocol.of(_evaluate(dense_prefill=0.25), T).prefill
    assert p == T // 4
    with torch.no_grad():
        with handle.disabled():
            dense = model(input_ids=x).logits
        with handle.dense_prefix(p, T):
            mixed = model(input_ids=x).logits
        sparse = model(input_ids=x).logits
    assert torch.equal(mixed[:, :p], dense[:, :p])
    gap = (mixed[:, p:] - dense[:, p:]).abs().amax(dim=-1)  # (B, T - p)
    assert (gap > 1e-3).all()  # every later position sparsified
    assert not torch.equal(mixed[:, :p], sparse[:, :p])  # the prefix did change
    # zeros are counted on the sparsified positions only: all of them zero
    a = handle.achieved()
    assert (a.achieved == 1.0).all()
    handle.reset_counts()
    with torch.no_grad(), handle.dense_prefix(p, T):
        model(input_ids=x)
    a = handle.achieved()
    for w in handle.wrappers.values():
        assert w.total == 3 * (T - p) * w.placed.width
    assert (a.achieved == 1.0).all()
    # the plan is back in force everywhere after the context
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, sparse)


def test_a_dense_prefix_applies_to_predicted_masks():
    model = tiny_model("llama")
    adapter = adapter_for("llama")
    placed = placed_for_sites(
        model, adapter, ["ffn_intermediate"], lambda *_: Rule("predicted", 0.5)
    )
    handle = apply(model, adapter, SparsityPlan("p", "p", 0.5, placed))
    for w in handle.wrappers.values():  # a predictor that keeps nothing
        w.register_forward_pre_hook(
            lambda mod, args: setattr(mod, "mask", torch.zeros_like(args[0], dtype=torch.bool))
        )
    x = torch.from_numpy(_tokens(2 * T)).view(2, T)
    with torch.no_grad():
        with handle.disabled():
            dense = model(input_ids=x).logits
        with handle.dense_prefix(5, T):
            mixed = model(input_ids=x).logits
    assert torch.equal(mixed[:, :5], dense[:, :5])
    assert ((mixed[:, 5:] - dense[:, 5:]).abs().amax(dim=-1) > 1e-4).all()


def test_a_dense_prefix_refuses_inputs_that_are_not_windows():
    model = tiny_model("llama")
    handle = zero_everything(model, "llama")
    with (
        torch.no_grad(),
        handle.dense_prefix(4, T),
        pytest.raises(ValueError, match="16 positions"),
    ):
        model(input_ids=torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="0 <= positions < window"), handle.dense_prefix(T, T):
        pass


@pytest.mark.parametrize("stride", [None, 5])
def test_dense_prefill_scores_only_predictions_from_sparsified_positions(stride):
    """Against a direct computation: one forward of each window under the dense prefix,
    predictions from position max(prefill, the window's first scored) on."""
    model = tiny_model("llama")
    handle = zero_everything(model, "llama")
    tokens = _tokens(70)
    e = _evaluate(stride=stride, dense_prefill=0.5)
    protocol = Protocol.of(e, T)
    p = protocol.prefill
    assert p == T // 2 and protocol.tag == ("w16" if stride is None else "w16.s5") + ".prefill0.5"
    wins = windows(tokens, T, None, stride=stride)
    uni = _unigram()
    r = evaluate_lm(model, wins, 3, uni, model, 10_000, protocol=protocol, handle=handle)

    nll, uni_nll = [], []
    with torch.no_grad():
        for w, x in enumerate(wins):
            with handle.dense_prefix(p, T):
                logp = F.log_softmax(model(input_ids=x[None]).logits[0].double(), -1)
            first = p if stride is None or w == 0 else max(p, T - stride - 1)
            for t in range(first, T - 1):
                nll.append(-logp[t, x[t + 1]].item())
                uni_nll.append(-uni[x[t + 1]].item())
    assert r.n_predicted == len(nll)
    assert math.isclose(r.nll, float(np.mean(nll)), rel_tol=1e-6)
    assert math.isclose(r.unigram_nll, float(np.mean(uni_nll)), rel_tol=1e-12)
    # the plan applies again after the evaluation, and zeros were counted where it acted
    assert all(wr.dense_positions == 0 for wr in handle.wrappers.values())
    assert (handle.achieved().achieved == 1.0).all()
    # the dense model under the same protocol: the same tokens, a different perplexity
    with handle.disabled():
        d = evaluate_lm(model, wins, 3, uni, protocol=protocol)
    assert d.n_predicted == r.n_predicted and d.nll != r.nll


def test_teal_protocol_as_config():
    """TEAL (utils/eval_ppl.py): 2048 + 512 = 2560-token inputs every 512 tokens, the last
    512 scored; its SparsifyFn leaves the first L - L // 2 = 1280 positions dense."""
    p = Protocol.of(_evaluate(seq_len=2560, stride=512, dense_prefill=0.5), 2560)
    assert p.tag == "w2560.s512.prefill0.5" and p.prefill == 2560 - 2560 // 2
    assert p.first_scored(1) == 2560 - 512 - 1 and p.first_scored(0) == 1280


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    "kw, key, pattern",
    [
        (dict(stride=0), "stride", "must be >= 1 or null, got 0"),
        (dict(stride=-3), "stride", "must be >= 1 or null"),
        (dict(seq_len=64, stride=64), "stride", r"must be < seq_len \(64\)"),
        (dict(dense_prefill=1.0), "dense_prefill", r"must be in \[0, 1\), got 1.0"),
        (dict(dense_prefill=-0.1), "dense_prefill", r"must be in \[0, 1\)"),
        (dict(seq_len=64, stride=32, dense_prefill=0.6), "dense_prefill", "last 32 tokens"),
        (dict(seq_len=4, dense_prefill=0.75), "dense_prefill", "scores no token"),
    ],
)
def test_bad_protocol_values_are_refused_naming_the_key(kw, key, pattern):
    problems = dict(_evaluate(**kw).problems())
    assert key in problems and re.search(pattern, problems[key])


def test_bad_values_against_the_models_context_are_refused_when_the_stage_runs():
    """seq_len null (the model's context): checked once the window is known."""
    e = _evaluate(stride=32)
    assert e.problems() == []
    with pytest.raises(ValueError, match=r"evaluate\.stride: must be < seq_len \(32\)"):
        Protocol.of(e, 32)
    with pytest.raises(ValueError, match=r"evaluate\.dense_prefill: .*last 16 tokens"):
        Protocol.of(_evaluate(stride=16, dense_prefill=0.6), 32)
    assert Protocol.of(_evaluate(stride=16, dense_prefill=0.45), 32).prefill == 14


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("evaluate.stride=0", r"evaluate\.stride: must be >= 1 or null"),
        ("evaluate.dense_prefill=1.5", r"evaluate\.dense_prefill: must be in \[0, 1\)"),
    ],
)
def test_a_study_with_bad_protocol_values_is_refused_naming_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        compose_study(["experiment=smoke", override])


def test_a_study_composes_with_the_teal_protocol():
    cfg = compose_study(
        [
            "experiment=smoke",
            "evaluate.seq_len=64",
            "evaluate.stride=16",
            "evaluate.dense_prefill=0.5",
        ]
    )
    assert (cfg.evaluate.stride, cfg.evaluate.dense_prefill) == (16, 0.5)


# ------------------------------------------------------------------ the stage


def test_the_stage_records_its_protocol_and_runs_teals(smoke_outputs):
    """A sparsified micro model evaluated in-process under the default protocol and under
    TEAL's shape (sliding windows, half of each window dense): each job names its
    protocol (`protocol.json`, and `stride` / `dense_prefill` metric rows)."""
    import json

    from actsparse.stages import evaluate, sparsify
    from actsparse.stages.job import run_job
    from actsparse.tables import ACHIEVED_SPARSITY, METRICS, read_table

    plan = smoke_outputs
    sp = run_job(plan.sparsify("llama_micro", "topk", 0.5), sparsify.SparsifyJob, sparsify.run)
    widths = {p.module: p.width for p in SparsityPlan.load(sp).placed}
    base = plan.evaluate_sparse("llama_micro", "topk", 0.5)
    out = {}
    for name, extra in (("default", {}), ("teal", {"stride": 16, "dense_prefill": 0.5})):
        spec = replace(
            base,
            output=f"{base.output}-{name}",
            config={
                **base.config,
                "evaluate": {**base.config["evaluate"], **extra, "decode_reps": 0},
            },
        )
        folder = run_job(spec, evaluate.EvaluateJob, evaluate.run)
        m = read_table(folder / "metrics.parquet", METRICS)
        m = m[(m.corpus == "stdlib") & (m.method == "topk")].set_index("metric").value
        achieved = read_table(folder / "achieved_sparsity.parquet", ACHIEVED_SPARSITY)
        rows = set(achieved.total / achieved.module.map(widths))  # positions counted
        out[name] = (json.loads((folder / "protocol.json").read_text()), m, rows)
    (p0, m0, rows0), (p1, m1, rows1) = out["default"], out["teal"]
    assert p0["tag"] == "w64" and (m0["stride"], m0["dense_prefill"]) == (64, 0.0)
    assert m0["eval_tokens"] == 4096 // 64 * 63
    assert p1["tag"] == "w64.s16.prefill0.5" and p1["dense_positions"] == 32
    assert (m1["stride"], m1["dense_prefill"]) == (16, 0.5)
    n_windows = (4096 - 64) // 16 + 1
    assert m1["eval_tokens"] == (63 - 32) + (n_windows - 1) * 16
    # zeros counted on the sparsified positions only (the study corpus's windows)
    assert rows0 == {4096} and rows1 == {n_windows * 32}
    assert abs(m1["sparsity.all"] - 0.5) < 1e-3 and abs(m0["sparsity.all"] - 0.5) < 1e-3
