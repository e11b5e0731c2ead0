"""Calibration statistics equal a float64 reference computed from all activations at once."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from actsparse.data import TokenData, batch_at
from actsparse.io import load_tensors, read_safetensors_metadata
from actsparse.models import load_model
from actsparse.stages import calibrate
from actsparse.stages.job import run_job
from actsparse.tables import CHANNEL_STATS, HISTOGRAMS, LINEARS, METRICS, read_table


def _reference(plan, model_name):
    """Every site's activations of every calibration batch, kept in memory (the naive way)."""
    job = plan.calibrate(model_name)
    c = plan.cfg.calibrate
    model, adapter = load_model(job.inputs["model"])
    tokens = torch.from_numpy(TokenData(job.inputs["data"]).tokens("train"))
    acts = {}
    for layer in range(len(adapter.layers(model))):
        for site, linears in adapter.site_linears(model, layer).items():
            linears[0][1].register_forward_pre_hook(
                lambda m, a, key=(layer, site): acts.setdefault(key, []).append(
                    a[0].reshape(-1, a[0].shape[-1]).double()
                )
            )
        if adapter.gated:  # the gate branch: the output of the FFN nonlinearity
            adapter.act_module(model, layer)[1].register_forward_hook(
                lambda m, a, out, key=(layer, "gate"): acts.setdefault(key, []).append(
                    out.reshape(-1, out.shape[-1]).double()
                )
            )
    n_batches = -(-c.n_tokens // (c.batch_size * c.seq_len))
    with torch.no_grad():
        for b in range(n_batches):
            model(input_ids=batch_at(tokens, b, c.batch_size, c.seq_len, plan.cfg.study.seed))
    return {k: torch.cat(v).numpy() for k, v in acts.items()}


@pytest.mark.parametrize("model_name", ["llama_micro", "opt_micro"])
def test_statistics_match_the_float64_reference(smoke_outputs, model_name):
    plan = smoke_outputs
    out = run_job(plan.calibrate(model_name), calibrate.CalibrateJob, calibrate.run)
    ref = _reference(plan, model_name)
    layers = sorted({k[0] for k in ref})
    linears = read_table(out / "linears.parquet", LINEARS)
    assert set(linears.site) == {"attn_in", "o_proj_in", "ffn_in", "ffn_intermediate"}
    for layer in layers:
        grams = load_tensors(out / "gram" / f"layer_{layer:03d}.safetensors")
        meta = read_safetensors_metadata(out / "gram" / f"layer_{layer:03d}.safetensors")
        assert json.loads(meta["linears"])["ffn_in"][0].endswith(
            "gate_proj" if "llama" in model_name else "fc1"
        )
        stats = read_table(out / "channel_stats" / f"layer_{layer:03d}.parquet", CHANNEL_STATS)
        hist = read_table(out / "histograms" / f"layer_{layer:03d}.parquet", HISTOGRAMS)
        sites = ["attn_in", "o_proj_in", "ffn_in", "ffn_intermediate"]
        assert set(stats.site) == set(sites) | ({"gate"} if "llama" in model_name else set())
        for site in sorted(stats.site.unique()):
            x = ref[(layer, site)]  # (tokens, n)
            assert int(meta["n_tokens"]) == x.shape[0] == plan.cfg.calibrate.n_tokens
            if site == "gate":
                assert site not in grams  # no linear reads the gate alone: no Gram matrix
            else:
                g = grams[site].numpy()
                assert grams[site].dtype == torch.float64
                assert np.abs(g - x.T @ x).max() <= 1e-10 * np.abs(x.T @ x).max()
            s = stats[stats.site == site].sort_values("channel")
            np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(s["mean_abs"], np.abs(x).mean(0), rtol=1e-9)
            np.testing.assert_allclose(s["frac_zero"], (x == 0).mean(0))
            np.testing.assert_allclose(
                s["frac_near_zero"], (np.abs(x) <= plan.cfg.calibrate.near_zero_eps).mean(0)
            )
            h = hist[hist.site == site].sort_values("bin")
            a = np.abs(x).ravel()
            inner = np.histogram(a, h.lo.values[1:])[0]  # edges e_0..e_B
            # float32 activations cast to float64 land in the same bins as in the stage
            np.testing.assert_array_equal(h["count"].values[1:-1], inner)
            assert h["count"].values[0] == np.sum(a < h.hi.values[0])
            assert h["count"].sum() == x.size


def test_layer_by_layer_passes_give_identical_statistics(smoke_outputs, tmp_path):
    from helpers import smoke_plan

    job_all = smoke_outputs.calibrate("llama_micro")
    out_all = Path(job_all.out_dir)
    if not out_all.is_dir():
        run_job(job_all, calibrate.CalibrateJob, calibrate.run)
    one = smoke_plan(tmp_path, "calibrate.layers_per_pass=1")
    spec = replace(one.calibrate("llama_micro"), inputs=job_all.inputs)  # same model and data
    out_one = run_job(spec, calibrate.CalibrateJob, calibrate.run)
    for layer in (0, 1):
        tag = f"layer_{layer:03d}"
        a = load_tensors(out_all / "gram" / f"{tag}.safetensors")
        b = load_tensors(out_one / "gram" / f"{tag}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for sub, schema in (("channel_stats", CHANNEL_STATS), ("histograms", HISTOGRAMS)):
            pd.testing.assert_frame_equal(
                read_table(out_all / sub / f"{tag}.parquet", schema),
                read_table(out_one / sub / f"{tag}.parquet", schema),
            )
    metrics = read_table(out_one / "metrics.parquet", METRICS).set_index("metric")
    assert metrics.loc["passes", "value"] == 2
