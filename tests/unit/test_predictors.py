"""Predictors: labels from hand-made activations, Deja Vu's weighted loss, a planted rule
recovered, lookahead inputs, predicted masks against the oracle, bad input refused."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import tiny_model

from actsparse.io import save_tensors
from actsparse.methods.predictors import PREDICTORS
from actsparse.methods.predictors.apply import (
    META,
    apply_predicted,
    load_predictors,
    oracle_plan,
    weights_path,
)
from actsparse.methods.predictors.base import (
    fit_lowrank,
    score,
    weighted_bce,
)
from actsparse.methods.predictors.hotcold import coverage, power_law
from actsparse.methods.predictors.labels import (
    LabelSet,
    LabelSpec,
    collect,
    head_labels,
    mlp_labels,
    resolve_rule,
)
from actsparse.methods.predictors.spark import PartialKey, key_linear
from actsparse.methods.sparsity.ops import keep_count
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models import adapter_for
from actsparse.sweeps import default_entry


# --------------------------------------------------------------------------- labels
def test_mlp_labels_on_hand_made_activations():
    a = torch.tensor([[0.0, 2.0, -3.0, 0.5], [1.0, -0.1, 0.0, 4.0]])
    assert mlp_labels(a, "positive", 0.5).tolist() == [
        [False, True, False, True],
        [True, False, False, True],
    ]
    # top (1 - 0.5) * 4 = 2 by magnitude per token
    assert mlp_labels(a, "topk", 0.5).tolist() == [
        [False, True, True, False],
        [True, False, False, True],
    ]
    assert mlp_labels(a, "threshold", 0.5, threshold=0.5).tolist() == [
        [False, True, True, False],
        [True, False, False, True],
    ]
    with pytest.raises(ValueError, match="calibrated threshold"):
        mlp_labels(a, "threshold", 0.5)
    assert resolve_rule("auto", adapter_for("opt")) == "positive"
    assert resolve_rule("auto", adapter_for("llama")) == "topk"


def test_head_labels_rank_heads_by_output_norm():
    # 3 heads of width 2: norms 5, 1, 2.236 (token 0); 0, 3, 1 (token 1)
    o = torch.tensor([[3.0, 4.0, 1.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 3.0, 1.0, 0.0]])
    # keep int((1 - 0.5) * 3) = 1 head per token
    assert head_labels(o, 3, 0.5).tolist() == [[True, False, False], [False, True, False]]
    assert head_labels(o, 3, 0.0).all()


# --------------------------------------------------------------------------- the loss
def test_weighted_bce_matches_deja_vu_weights_in_float64():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 7, generator=g, dtype=torch.float64)
    y = torch.rand(50, 7, generator=g, dtype=torch.float64) < 0.2
    p = float(y.double().mean())
    w = p + 0.005
    log_sig, log_1m_sig = -torch.log1p(torch.exp(-z)), -torch.log1p(torch.exp(z))
    pos, neg = y.double(), (~y).double()
    ref = -((1 - w) * pos * log_sig + w * neg * log_1m_sig).mean()
    assert torch.allclose(weighted_bce(z, y, p), ref, rtol=1e-12, atol=0)
    # positives are weighted up when rare: a missed positive costs more than a false alarm
    one = torch.tensor([0.0], dtype=torch.float64)
    assert weighted_bce(one, torch.tensor([True]), 0.1) > weighted_bce(
        one, torch.tensor([False]), 0.1
    )


# --------------------------------------------------------------------------- a planted rule
def write_labels(folder, x_train, y_train, x_held, y_held, mag_held):
    """A labels folder in the collector's format, from arrays."""
    for split, x, y, m in (
        ("train", x_train, y_train, None),
        ("heldout", x_held, y_held, mag_held),
    ):
        (folder / split).mkdir(parents=True, exist_ok=True)
        np.save(folder / split / "layer_000_x.npy", x.astype(np.float16))
        np.save(folder / split / "layer_000_y.npy", np.packbits(y, axis=-1))
        if m is not None:
            np.save(folder / split / "layer_000_m.npy", m.astype(np.float16))
    meta = dict(
        target="mlp", rule="positive", level=0.5, thresholds=None,
        widths=[[x_train.shape[1], y_train.shape[1]]],
        splits={"train": len(x_train), "heldout": len(x_held)},
    )  # fmt: skip
    (folder / "labels.json").write_text(json.dumps(meta))
    return LabelSet(folder)


def test_a_predictor_trained_on_a_planted_rule_recovers_it(tmp_path):
    """Labels `1[W x > 0]` with W of rank 4: a rank-4 predictor learns them."""
    rng = np.random.default_rng(0)
    d, units, n = 24, 40, 12000
    W = rng.standard_normal((units, 4)) @ rng.standard_normal((4, d))
    x = rng.standard_normal((n + 2000, d))
    pre = x @ W.T
    y = pre > 0.5 * np.abs(pre).mean()  # a sparse rule (about 30% active)
    labels = write_labels(tmp_path, x[:n], y[:n], x[n:], y[n:], np.maximum(pre[n:], 0))
    entry = default_entry("predictors", "dejavu_mlp")
    cfg = replace(entry.cfg, rank=4, epochs=30, lr=0.01, stop_recall=1.0)
    pred, info = fit_lowrank(cfg, labels, 0, 4, 0, torch.device("cpu"), "test")
    assert 0.2 < info["pos_rate"] < 0.4
    c = score(pred, labels, "heldout", 0, [0.7], torch.device("cpu"))
    rows = {(r["metric"], r["level"]): r["value"] for r in c.rows(0, 4)}
    # the weighted loss trades precision for recall (positives weigh 1 - p, negatives p)
    assert rows[("recall", None)] > 0.98 and rows[("precision", None)] > 0.7
    # the top 30% by the predictor are the oracle's top 30% (up to a few swaps)
    assert rows[("matching_rate", 0.7)] > 0.9
    # a rank-1 predictor cannot: the curve over rank is real
    weak, _ = fit_lowrank(cfg, labels, 0, 1, 0, torch.device("cpu"), "test")
    w_rows = {(r["metric"], r["level"]): r["value"] for r in score(
        weak, labels, "heldout", 0, [0.7], torch.device("cpu")).rows(0, 1)}  # fmt: skip
    assert w_rows[("matching_rate", 0.7)] < rows[("matching_rate", 0.7)] - 0.1


def test_scores_of_a_perfect_predictor_are_one(tmp_path):
    rng = np.random.default_rng(1)
    a = np.maximum(rng.standard_normal((300, 16)), 0)
    labels = write_labels(tmp_path, a, a > 0, a, a > 0, a)
    # a predictor whose logits are the activation itself minus a hair: > 0 exactly when active
    ident = torch.nn.Linear(16, 16)
    with torch.no_grad():
        ident.weight.copy_(torch.eye(16))
        ident.bias.fill_(-1e-4)
    c = score(ident, labels, "heldout", 0, [0.75], torch.device("cpu"))
    rows = {(r["metric"], r["level"]): r["value"] for r in c.rows(0, 16)}
    assert rows[("recall", None)] == pytest.approx(1.0, abs=2e-3)  # fp16 storage of tiny a
    assert rows[("precision", None)] == 1.0
    assert rows[("matching_rate", 0.75)] == 1.0


# --------------------------------------------------------------------------- collection
@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_lookahead_inputs_are_the_previous_layers_attention_input(family, tmp_path):
    model = tiny_model(family)
    adapter = adapter_for(family)
    x = torch.randint(0, 64, (3, 8))
    seen = {}
    hooks = [
        adapter.site_linears(model, layer)[site][0][1].register_forward_pre_hook(
            lambda m, a, k=(layer, site): seen.__setitem__(k, a[0].reshape(-1, a[0].shape[-1]))
        )
        for layer in range(2)
        for site in ("attn_in", "ffn_in")
    ]
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    heads = LabelSpec("heads", "topk", 0.5)
    collect(model, adapter, x, heads, tmp_path / "h", "heldout", 2, magnitudes=True)
    lab = LabelSet(tmp_path / "h")
    stored = [
        torch.from_numpy(np.asarray(lab.array("heldout", i, "x"), dtype=np.float32))
        for i in range(2)
    ]
    tol = dict(rtol=1e-3, atol=1e-3)  # float16 storage
    assert torch.allclose(stored[1], seen[(0, "attn_in")], **tol)  # layer 1 reads layer 0's
    assert not torch.allclose(stored[1], seen[(1, "attn_in")], **tol)
    assert torch.allclose(stored[0], seen[(0, "attn_in")], **tol)  # layer 0: its own
    mlp = LabelSpec("mlp", resolve_rule("auto", adapter), 0.5)
    collect(model, adapter, x, mlp, tmp_path / "m", "heldout", 2, magnitudes=True)
    lab = LabelSet(tmp_path / "m")
    got = torch.from_numpy(np.asarray(lab.array("heldout", 1, "x"), dtype=np.float32))
    assert torch.allclose(got, seen[(1, "ffn_in")], **tol)  # the FFN's own input
    lab.check(model, adapter)
    with pytest.raises(ValueError, match=r"layer 0: labels in .* have \(input width, units\) "
                       r"\(16, 40\), the model \(16, 48\) \(shape mismatch"):  # fmt: skip
        lab.check(wider_llama(), adapter_for("llama"))


def wider_llama(layers: int = 2):
    """The tiny Llama with a wider FFN (48 neurons) or fewer layers: another model."""
    import copy

    from transformers import LlamaForCausalLM

    config = copy.deepcopy(tiny_model("llama").config)
    config.intermediate_size, config.num_hidden_layers = 48, layers
    return LlamaForCausalLM(config).eval()


# --------------------------------------------------------------------------- predicted masks
def spark_folder(tmp_path, model, adapter, rank):
    """A predictors folder for Spark (no weights) on `model`."""
    from actsparse.methods.predictors.labels import layer_widths

    meta = dict(method="spark", entry="spark", target="mlp", rank=rank,
                widths=[list(w) for w in layer_widths(model, adapter, "mlp")])  # fmt: skip
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / META).write_text(json.dumps(meta))
    return tmp_path


def test_spark_with_every_input_dim_is_the_oracle_on_a_relu_model(tmp_path):
    """With r = d the scores are fc1's pre-activations: on a ReLU FFN their top-K by value is
    the top-K of |relu(.)| whenever K neurons fire, so predicted masks equal the oracle's."""
    model = tiny_model("opt")
    adapter = adapter_for("opt")
    x = torch.randint(0, 64, (2, 16))
    pset = load_predictors(spark_folder(tmp_path, model, adapter, 16), model, adapter, "cpu")
    handle = apply_predicted(model, adapter, pset, 0.9)  # keep 4 of 40 neurons
    with torch.no_grad():
        predicted = model(input_ids=x).logits
    achieved = handle.achieved()
    handle.remove()
    oracle = apply(model, adapter, oracle_plan(pset, model, adapter, 0.9))
    with torch.no_grad():
        ref = model(input_ids=x).logits
    oracle.remove()
    assert torch.equal(predicted, ref)
    assert (achieved.achieved == 1 - keep_count(40, 0.9) / 40).all()
    assert (achieved.rule == "predicted").all()
    with torch.no_grad():
        dense = model(input_ids=x).logits
    assert not torch.allclose(dense, ref)  # the masks did something


def test_partial_key_reads_the_first_r_input_dims_of_linear_and_conv1d():
    for family in ("llama", "gpt2"):
        model = tiny_model(family)
        adapter = adapter_for(family)
        key = key_linear(model, adapter, 0)
        x = torch.randn(5, 16)
        x_cut = x.clone()
        x_cut[:, 6:] = 0
        full = key(x_cut)
        assert torch.allclose(PartialKey(key, 6)(x), full, atol=1e-6)


def test_predicted_heads_mask_whole_heads_with_lookahead(tmp_path):
    model = tiny_model("llama")
    adapter = adapter_for("llama")
    from actsparse.methods.predictors.labels import layer_widths

    widths = layer_widths(model, adapter, "heads")
    assert widths == [(16, 4), (16, 4)]
    for layer in range(2):
        torch.manual_seed(layer)
        save_tensors(
            weights_path(tmp_path, layer),
            {"down.weight": torch.randn(3, 16), "up.weight": torch.randn(4, 3),
             "up.bias": torch.zeros(4)},
        )  # fmt: skip
    meta = dict(method="dejavu_heads", entry="h", target="heads", rank=3,
                widths=[list(w) for w in widths])  # fmt: skip
    (tmp_path / META).write_text(json.dumps(meta))
    pset = load_predictors(tmp_path, model, adapter, "cpu")
    handle = apply_predicted(model, adapter, pset, 0.5)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 64, (2, 8)))
    a = handle.achieved()
    handle.remove()
    assert (a.site == "heads").all() and (a.achieved == 0.5).all() and (a.target == 0.5).all()


# --------------------------------------------------------------------------- bad input
def test_predictors_from_another_model_are_refused_naming_the_layer(tmp_path):
    llama = tiny_model("llama")
    folder = spark_folder(tmp_path / "s", llama, adapter_for("llama"), 8)
    with pytest.raises(ValueError, match=r"layer 0: predictor for \(input width, units\) "
                       r"\(16, 40\), the model has \(16, 48\) \(shape mismatch"):  # fmt: skip
        load_predictors(folder, wider_llama(), adapter_for("llama"), "cpu")
    with pytest.raises(ValueError, match=r"predictors for 2 layers, the model has 1"):
        load_predictors(folder, wider_llama(layers=1), adapter_for("llama"), "cpu")
    # trained weights of the wrong shape: a clear error naming the layer
    w = tmp_path / "w"
    for layer in range(2):
        save_tensors(weights_path(w, layer),
                     {"down.weight": torch.randn(3, 16), "up.weight": torch.randn(40, 3),
                      "up.bias": torch.zeros(40)})  # fmt: skip
    meta = dict(method="dejavu_mlp", entry="m", target="mlp", rank=3, widths=[[16, 40], [16, 40]])
    (w / META).write_text(json.dumps(meta))
    load_predictors(w, llama, adapter_for("llama"), "cpu")  # fits
    save_tensors(weights_path(w, 1),
                 {"down.weight": torch.randn(3, 16), "up.weight": torch.randn(41, 3),
                  "up.bias": torch.zeros(41)})  # fmt: skip
    with pytest.raises(ValueError, match=r"layer 1: predictor of shape \(3, 16\) -> \(41, 3\)"):
        load_predictors(w, llama, adapter_for("llama"), "cpu")


@pytest.mark.parametrize("method", ["dejavu_mlp", "dejavu_heads", "spark"])
def test_a_rank_larger_than_the_width_is_refused_naming_the_layer(method):
    model = tiny_model("llama")
    m = PREDICTORS.get(method)()
    cfg = default_entry("predictors", method, rank=17).cfg
    with pytest.raises(
        ValueError, match=r"rank 17 is larger than the predictor's input width 16 at layer 0"
    ):
        m.check(cfg, model, adapter_for("llama"), "predictor 'x'")


def test_bad_predictor_configs_name_the_key():
    bad = dict(rank=0, label="sign", label_level=1.2, val_fraction=0)
    probs = dict(default_entry("predictors", "dejavu_mlp", **bad).cfg.problems())
    assert set(probs) == {"rank", "label", "label_level", "val_fraction"}
    with pytest.raises(ValueError, match=r"predictors\.methods\.dejavu_mlp\.rnk"):
        default_entry("predictors", "dejavu_mlp", rnk=3)


# --------------------------------------------------------------------------- hot / cold
def test_power_law_fit_recovers_a_planted_exponent_and_coverage_is_exact():
    ranks = np.arange(1, 201)
    freq = 0.9 * ranks**-0.8
    rng = np.random.default_rng(0)
    b, c, r2 = power_law(rng.permutation(freq))  # the order of neurons does not matter
    assert b == pytest.approx(0.8, abs=1e-9) and c == pytest.approx(0.9, rel=1e-9) and r2 > 0.999
    f = np.array([0.5, 0.3, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert coverage(f, 10) == pytest.approx(0.5) and coverage(f, 20) == pytest.approx(0.8)
