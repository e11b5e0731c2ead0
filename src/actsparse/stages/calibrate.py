"""Calibrate stage: streaming activation statistics per layer and site.

For every block and site (attention input, o_proj input, FFN input, FFN intermediate,
and the gate branch of gated FFNs) it accumulates, batch by batch in float64: per-channel mean, std, mean |x|, fractions of exact
and near zeros; a log-spaced histogram of |x| fine enough for percentile thresholds; and
`X^T X` of the input of every linear layer (one Gram matrix per linear-input site,
shared by the linears that read it). Memory does not grow with the number of tokens; with
`layers_per_pass: k` only k blocks' statistics are held at once (one forward pass per
group of k blocks, stopped after the group's last block).

Outputs, written per layer as each group finishes:
`channel_stats/layer_XXX.parquet`, `histograms/layer_XXX.parquet` (schemas in
`tables`), `gram/layer_XXX.safetensors` (float64, one tensor per site; metadata: token
count and which linears read each site), and `linears.parquet` (linear -> site).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from actsparse.activation_stats import SiteStats, log_bin_edges
from actsparse.data import TokenData, batch_at
from actsparse.faults import kill_point
from actsparse.io import save_tensors
from actsparse.models import LoadCfg, default_device, load_model_as
from actsparse.models.adapters import FamilyAdapter, linear_shape
from actsparse.schema.stages import CalibrateCfg
from actsparse.stages.job import Metric, StageResult, main
from actsparse.tables import CHANNEL_STATS, HISTOGRAMS, LINEARS, write_table

log = logging.getLogger("actsparse.calibrate")


@dataclass
class CalibrateJob:
    calibrate: CalibrateCfg = field(default_factory=CalibrateCfg)
    load: LoadCfg = field(default_factory=LoadCfg)
    seed: int = 0


class _StopForward(Exception):
    """Raised after the last block of a pass's group: later blocks need not run."""


def collect(
    model,
    adapter: FamilyAdapter,
    tokens: torch.Tensor,
    cfg: CalibrateCfg,
    seed: int,
    layers: list[int],
    dev: torch.device,
) -> dict[int, dict[str, SiteStats]]:
    """One pass over the calibration batches, accumulating the statistics of `layers`."""
    edges = log_bin_edges(cfg.hist_bins, cfg.hist_min, cfg.hist_max)
    stats: dict[int, dict[str, SiteStats]] = {}
    handles = []
    blocks = adapter.layers(model)
    for layer in layers:
        stats[layer] = {}
        for site, linears in adapter.site_linears(model, layer).items():
            name, module = linears[0]
            n_in, _ = linear_shape(module)
            s = stats[layer][site] = SiteStats(n_in, edges, cfg.near_zero_eps, device=dev)
            where = f"layer {layer} site {site} ({name})"
            handles.append(
                module.register_forward_pre_hook(
                    lambda mod, args, s=s, where=where: s.update(args[0], where)
                )
            )
        if adapter.gated:  # the gate branch act(gate_proj x): histogram and moments, no Gram
            name, act = adapter.act_module(model, layer)
            gate = model.get_submodule(f"{adapter.block_path(model, layer)}.{adapter.gate_linear}")
            s = stats[layer]["gate"] = SiteStats(
                linear_shape(gate)[1], edges, cfg.near_zero_eps, gram=False, device=dev
            )
            where = f"layer {layer} site gate ({name})"
            handles.append(
                act.register_forward_hook(
                    lambda mod, args, out, s=s, where=where: s.update(out, where)
                )
            )

    def stop(mod, args, out):
        raise _StopForward

    handles.append(blocks[max(layers)].register_forward_hook(stop))
    n_batches = math.ceil(cfg.n_tokens / (cfg.batch_size * cfg.seq_len))
    try:
        with torch.no_grad():
            for b in tqdm(
                range(n_batches),
                desc=f"calibrate layers {layers[0]}-{layers[-1]}",
                unit="batch",
                mininterval=2,
            ):
                x = batch_at(tokens, b, cfg.batch_size, cfg.seq_len, seed).to(dev)
                with contextlib.suppress(_StopForward):
                    model(input_ids=x, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


def write_layer(
    out: Path, layer: int, sites: dict[str, SiteStats], linears: dict[str, list[str]]
) -> None:
    stat_rows, hist_frames = [], []
    for site, s in sites.items():
        n = s.count
        stat_rows.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "site": site,
                    "channel": np.arange(s.n),
                    "count": n,
                    "mean": s.mean.cpu().numpy(),
                    "std": s.std.cpu().numpy(),
                    "mean_abs": (s.sum_abs / n).cpu().numpy(),
                    "frac_zero": (s.n_zero / n).cpu().numpy(),
                    "frac_near_zero": (s.n_near_zero / n).cpu().numpy(),
                }
            )
        )
        e = s.edges.cpu().numpy()
        hist_frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "site": site,
                    "bin": np.arange(len(e) + 1),
                    "lo": np.concatenate([[0.0], e]),
                    "hi": np.concatenate([e, [np.inf]]),
                    "count": s.hist.cpu().numpy(),
                }
            )
        )
    tag = f"layer_{layer:03d}"
    write_table(
        pd.concat(stat_rows, ignore_index=True),
        out / "channel_stats" / f"{tag}.parquet",
        CHANNEL_STATS,
    )
    write_table(
        pd.concat(hist_frames, ignore_index=True), out / "histograms" / f"{tag}.parquet", HISTOGRAMS
    )
    meta = {
        "n_tokens": str(next(iter(sites.values())).count),
        "layer": str(layer),
        "linears": json.dumps(linears),
        "note": "X^T X of each site's input, float64",
    }
    grams = {site: s.gram for site, s in sites.items() if s.gram is not None}
    save_tensors(out / "gram" / f"{tag}.safetensors", grams, meta)


def run(cfg: CalibrateJob, inputs: dict[str, str], out: Path) -> StageResult:
    c = cfg.calibrate
    dev = default_device()
    model, adapter = load_model_as(inputs["model"], cfg.load, device=dev)
    data = TokenData(inputs["data"])
    tokens = torch.from_numpy(data.tokens(c.split))
    if len(tokens) < c.seq_len:
        raise ValueError(
            f"calibrate.seq_len={c.seq_len} exceeds the {len(tokens)} tokens of the {c.split} split"
        )
    n_layers = len(adapter.layers(model))
    per_pass = c.layers_per_pass or n_layers
    groups = [list(range(i, min(i + per_pass, n_layers))) for i in range(0, n_layers, per_pass)]

    linear_rows, summary = [], {}
    t0 = time.perf_counter()
    n_tokens = 0
    for group in groups:
        stats = collect(model, adapter, tokens, c, cfg.seed, group, dev)
        for layer in group:
            site_linears = adapter.site_linears(model, layer)
            linears = {site: [name for name, _ in mods] for site, mods in site_linears.items()}
            for site, mods in site_linears.items():
                for name, module in mods:
                    n_in, n_out = linear_shape(module)
                    linear_rows.append(
                        {
                            "layer": layer,
                            "site": site,
                            "linear": name,
                            "in_features": n_in,
                            "out_features": n_out,
                        }
                    )
            write_layer(out, layer, stats[layer], linears)
            kill_point("calibrate.after_layer")
            for site, s in stats[layer].items():
                summary.setdefault(site, []).append(
                    (
                        (s.n_zero.sum() / (s.count * s.n)).item(),
                        (s.n_near_zero.sum() / (s.count * s.n)).item(),
                    )
                )
                n_tokens = s.count
        del stats
    elapsed = time.perf_counter() - t0
    write_table(pd.DataFrame(linear_rows), out / "linears.parquet", LINEARS)

    corpus = data.corpus
    metrics = [
        Metric("calibration_tokens", n_tokens, split=c.split, corpus=corpus),
        Metric("passes", len(groups)),
        Metric("tokens_per_s", n_tokens * len(groups) / elapsed if elapsed > 0 else float("nan")),
        Metric("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    ]
    if dev.type == "cuda":
        metrics.append(Metric("peak_gpu_mem_mb", torch.cuda.max_memory_allocated(dev) / 2**20))
    for site, values in summary.items():
        frac_zero, frac_near_zero = np.mean(values, axis=0)  # averaged over layers
        metrics += [
            Metric(f"frac_zero.{site}", float(frac_zero), split=c.split, corpus=corpus),
            Metric(f"frac_near_zero.{site}", float(frac_near_zero), split=c.split, corpus=corpus),
        ]
    return StageResult(metrics, [out / "linears.parquet"])


if __name__ == "__main__":
    main("calibrate", CalibrateJob, run)
