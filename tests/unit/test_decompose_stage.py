"""The decompose stage: every family's linears swapped for low-rank factors, saved and
reloaded through the one loader with the same logits; the smoke micro Llama in-process
from its real calibration; bad statistics refused naming the layer."""

import json
from dataclasses import replace

import pytest
import torch
from helpers import tiny_model

from actsparse.methods.lowrank import LOWRANK
from actsparse.methods.lowrank.base import LayerStats
from actsparse.models import adapter_for, load_model
from actsparse.models.adapters import linear_shape
from actsparse.models.lowrank import LowRankLinear, save_lowrank
from actsparse.stages import calibrate, decompose, evaluate
from actsparse.stages.decompose import DecomposeJob, decompose_model
from actsparse.stages.job import run_job
from actsparse.sweeps import default_entry
from actsparse.tables import DECOMPOSITION, METRICS, read_table


def _entry(method: str, **keys) -> dict:
    """A decompose job's method mapping: the method's conf file with `keys`."""
    return default_entry("decompose", method, **keys).job_config()


class RandomStats:
    """A stand-in calibration: activations X ~ N(0, C) with a random anisotropic C."""

    def __init__(self, model, adapter, broken: str = ""):
        self.model, self.adapter, self.broken, self.folder = model, adapter, broken, "random"

    def n_layers(self):
        return len(self.adapter.layers(self.model))

    def layer(self, layer, sites):
        out = {}
        for site in sites:
            n = linear_shape(self.adapter.site_linears(self.model, layer)[site][0][1])[0]
            g = torch.Generator().manual_seed(layer * 10 + len(site))
            X = torch.randn(4 * n, n, generator=g, dtype=torch.float64) * torch.logspace(
                0, -1, n, dtype=torch.float64
            )
            gram = X.T @ X / len(X)
            if self.broken == "nan" and layer == 1:
                gram[0, 0] = float("nan")
            if self.broken == "shape":
                gram = gram[:-1, :-1]
            out[site] = LayerStats(gram, X.abs().mean(0), len(X))
        return out


GENERATIVE = ["llama", "mistral", "qwen2", "opt", "gpt2"]


@pytest.mark.parametrize("family", GENERATIVE)
@pytest.mark.parametrize("method", LOWRANK.names())
def test_decomposed_models_reload_with_the_same_logits(family, method, tmp_path):
    model = tiny_model(family)
    adapter = adapter_for(model.config.model_type)
    cfg = DecomposeJob(entry=method, method=_entry(method), ratio=0.4)
    table = decompose_model(model, adapter, cfg, RandomStats(model, adapter))
    n_linears = sum(
        len(v) for layer in range(2) for v in adapter.site_linears(model, layer).values()
    )
    assert len(table) == n_linears  # attention and FFN, every block
    assert sum(isinstance(m, LowRankLinear) for m in model.modules()) == n_linears
    uniform = [
        int(m * n * 0.6 / (m + n))
        for m, n in zip(table.out_features, table.in_features, strict=True)
    ]
    if LOWRANK.get(method)().allocates(default_entry("decompose", method).cfg):
        # a ratio per linear, 0.4 on average within each type: as many parameters as the
        # uniform ranks give, up to rounding (one rank per linear)
        width = table.in_features + table.out_features
        gap = (table.params_lowrank - width * uniform).groupby(table.site).sum()
        assert (gap.abs() <= width.groupby(table.site).sum()).all(), gap
    else:
        assert (table["rank"] == uniform).all()
    save_lowrank(model, tmp_path / "model", {"method": method})
    reloaded, adapter2 = load_model(tmp_path / "model")
    assert adapter2.name == adapter.name
    x = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, reloaded(input_ids=x).logits)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in model.parameters()
    )


def test_a_manifest_that_does_not_match_the_weights_is_refused(tmp_path):
    model = tiny_model("qwen2")
    adapter = adapter_for("qwen2")
    cfg = DecomposeJob(entry="svd", method=_entry("svd"), ratio=0.5)
    decompose_model(model, adapter, cfg, RandomStats(model, adapter))
    save_lowrank(model, tmp_path, {"method": "svd"})
    manifest = json.loads((tmp_path / "lowrank.json").read_text())
    name = next(iter(manifest["modules"]))
    manifest["modules"][name]["rank"] += 1
    (tmp_path / "lowrank.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ValueError, match=r"(?s)could not load the model weights in .*size mismatch"
    ):
        load_model(tmp_path)
    del manifest["modules"][name]
    (tmp_path / "lowrank.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"weights do not match lowrank\.json: .*unexpected \["):
        load_model(tmp_path)


def test_targets_choose_attention_or_ffn():
    model = tiny_model("llama")
    adapter = adapter_for("llama")
    cfg = DecomposeJob(entry="s", method=_entry("svd", targets=["ffn"]), ratio=0.5)
    table = decompose_model(model, adapter, cfg, RandomStats(model, adapter))
    assert set(table.site) == {"ffn_in", "ffn_intermediate"} and len(table) == 2 * 3


def test_parameter_count_is_within_one_percent_of_the_target_at_quickstart_width():
    """The quickstart Llama's shapes (d=192, FFN 512, 4 blocks): rank floors lose < 1%."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                    num_attention_heads=4, max_position_embeddings=256)
    ).eval()  # fmt: skip
    adapter = adapter_for("llama")
    dense = sum(p.numel() for p in model.parameters())
    for ratio in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        m = LlamaForCausalLM(model.config).eval()
        cfg = DecomposeJob(entry="svd", method=_entry("svd"), ratio=ratio)
        table = decompose_model(m, adapter, cfg, RandomStats(m, adapter))
        target = dense - ratio * table.params_dense.sum()
        got = sum(p.numel() for p in m.parameters())
        assert abs(got / target - 1) < 0.01, ratio
        removed = 1 - table.params_lowrank.sum() / table.params_dense.sum()
        assert ratio <= removed < ratio + 0.02


@pytest.mark.parametrize(
    "broken, error, pattern",
    [
        (
            "nan",
            FloatingPointError,
            r"layer 1 model\.layers\.1\.self_attn\.q_proj \(svdllm\): non-finite.*covariance",
        ),
        (
            "shape",
            ValueError,
            r"layer 0 model\.layers\.0\.self_attn\.q_proj \(svdllm\): the covariance .* is \(15, 15\), the linear reads width 16",
        ),
    ],
)
def test_bad_statistics_name_the_layer(broken, error, pattern):
    model = tiny_model("llama")
    adapter = adapter_for("llama")
    cfg = DecomposeJob(entry="svdllm", method=_entry("svdllm"), ratio=0.3)
    with pytest.raises(error, match=pattern):
        decompose_model(model, adapter, cfg, RandomStats(model, adapter, broken))


def test_non_finite_weights_and_bad_ratio_are_refused():
    model = tiny_model("opt")
    adapter = adapter_for("opt")
    with torch.no_grad():
        model.model.decoder.layers[1].fc2.weight[0, 0] = float("inf")
    cfg = DecomposeJob(entry="svd", method=_entry("svd"), ratio=0.3)
    with pytest.raises(
        FloatingPointError,
        match=r"layer 1 model\.decoder\.layers\.1\.fc2 \(svd\): non-finite.*weights",
    ):
        decompose_model(model, adapter, cfg, RandomStats(model, adapter))
    cfg = DecomposeJob(entry="svd", method=_entry("svd"), ratio=1.0)
    with pytest.raises(ValueError, match=r"compression ratio must be in \(0, 1\), got 1\.0"):
        decompose_model(tiny_model("opt"), adapter, cfg, RandomStats(model, adapter))


@pytest.fixture(scope="module")
def calibrated(smoke_outputs):
    plan = smoke_outputs
    for m in ("llama_micro", "opt_micro"):
        run_job(plan.calibrate(m), calibrate.CalibrateJob, calibrate.run)
    return plan


@pytest.mark.parametrize("entry", ["svdllm", "svdllm_update", "svdllm_v2"])
def test_svdllm_on_the_micro_llama_from_its_calibration(calibrated, entry):
    plan = calibrated
    out = run_job(plan.decompose("llama_micro", entry, 0.3), DecomposeJob, decompose.run)
    table = read_table(out / "decomposition.parquet", DECOMPOSITION)
    assert len(table) == 2 * 7 and (table.act_rel_err < table.weight_rel_err).all()
    manifest = json.loads((out / "model" / "lowrank.json").read_text())
    assert manifest["ratio"] == 0.3 and len(manifest["modules"]) == 14
    m = read_table(out / "metrics.parquet", METRICS).set_index("metric").value
    assert m["ratio_removed"] == 0.3 and 0.6 < m["fraction_kept"] <= 0.7
    ev = run_job(
        plan.evaluate_decomposed("llama_micro", entry, 0.3),
        evaluate.EvaluateJob,
        evaluate.run,
    )
    e = read_table(ev / "metrics.parquet", METRICS)
    ppl = e[(e.metric == "perplexity") & (e.method == entry)].set_index("corpus").value
    assert set(ppl.index) == {"stdlib", "pydoc"}  # calibrated on one, evaluated on both
    kl = e[(e.metric == "kl_div")].set_index("corpus").value
    assert (kl > 0).all()
    f = e[e.method == entry].set_index("metric").value
    # FLOPs against the undecomposed model's (the LM head is not decomposed: above 1 - R)
    assert 0.7 < f["flops_ratio"] < 0.9
    assert f["flops_ratio"] == f["flops_per_token"] / f["dense_flops_per_token"]


def test_a_covariance_from_another_model_is_refused(calibrated):
    plan = calibrated
    job = plan.decompose("llama_micro", "svd", 0.3)
    spec = replace(
        job,
        inputs={**job.inputs, "calibration": plan.calibrate("opt_micro").out_dir},
        output=job.output + "-other",
    )
    with pytest.raises(
        ValueError,
        match=r"layer 0 model\.layers\.0\.mlp\.down_proj \(svd\): the covariance in .*opt_micro.* is "
        r"\(128, 128\), the linear reads width 64 \(shape mismatch",
    ):
        run_job(spec, DecomposeJob, decompose.run)


def test_the_cost_model_counts_low_rank_factors_and_input_zeros():
    """A low-rank linear reads k (n + m) weights; zeros at its input skip only k n of them."""
    import pandas as pd

    from actsparse.methods.sparsity.cost import cost_per_token

    model = tiny_model("llama")
    adapter = adapter_for("llama")
    dense = cost_per_token(model, adapter)
    cfg = DecomposeJob(entry="svd", method=_entry("svd", targets=["ffn"]), ratio=0.5)
    table = decompose_model(model, adapter, cfg, RandomStats(model, adapter))
    low = cost_per_token(model, adapter)
    saved = (table.params_dense - table.params_lowrank).sum()
    assert dense["flops_per_token"] - low["flops_per_token"] == 2 * saved
    down = table[table.site == "ffn_intermediate"].iloc[0]  # k x (40 + 16)
    achieved = pd.DataFrame({"module": [down.linear], "achieved": [0.5]})
    sparse = cost_per_token(model, adapter, achieved)
    skipped = down["rank"] * down.in_features * 0.5  # columns of `down` only
    assert low["flops_per_token"] - sparse["flops_per_token"] == 2 * skipped


def test_the_update_step_fits_each_left_factor_to_what_the_compressed_model_feeds_it():
    """With `update: true`, every left factor of the last block is the least-squares fit
    on the inputs the compressed upstream feeds it (the residual against the dense
    linear's outputs is orthogonal to what the factor can move in); whitening alone is
    not."""
    from actsparse.data import batch_at

    tokens = torch.randint(0, 64, (4000,), generator=torch.Generator().manual_seed(0))
    residuals = {}
    for update in (False, True):
        model = tiny_model("llama")
        adapter = adapter_for("llama")
        dense = {
            n: m.weight.detach().double().clone()
            for n, m in model.named_modules()
            if n.endswith("q_proj")
        }
        keys = dict(update=update, update_tokens=64, update_seq_len=16)
        cfg = DecomposeJob(entry="svdllm", method=_entry("svdllm", **keys), ratio=0.4, seed=3)
        decompose_model(model, adapter, cfg, RandomStats(model, adapter), tokens)
        name, q = adapter.site_linears(model, 1)["attn_in"][0]
        seen: list[torch.Tensor] = []

        def grab(m, a, seen=seen):
            seen.append(a[0].reshape(-1, a[0].shape[-1]))

        hook = q.register_forward_pre_hook(grab)
        with torch.no_grad():
            for b in range(4):  # the update's batches: 64 tokens in sequences of 16
                model(input_ids=batch_at(tokens, b, 1, 16, 3))
        hook.remove()
        X = torch.cat(seen).double()
        A, B = q.up.weight.detach().double(), q.down.weight.detach().double()
        R = (dense[name] - A @ B) @ X.T
        residuals[update] = float((R @ (B @ X.T).T).norm() / (R.norm() * (B @ X.T).norm()))
    assert residuals[True] < 1e-5 < residuals[False]


def test_only_entries_with_an_update_step_read_calibration_tokens(tmp_path):
    from helpers import smoke_plan

    plan = smoke_plan(tmp_path)
    assert "data" not in plan.decompose("llama_micro", "svdllm", 0.3).inputs
    job = plan.decompose("llama_micro", "svdllm_update", 0.3)
    assert job.inputs["data"] == plan.calibration_data("llama_micro").out_dir
