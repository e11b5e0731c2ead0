"""Decompose stage: activation-aware low-rank compression of one model at one ratio.

For each block, in order, it reads that block's calibration statistics (the float64
`X^T X` of every linear-input site and the per-channel mean |x|; one layer's matrices in
memory at a time), factorises every target linear with the method (`LOWRANK`) at rank
`k = int(m n (1 - R) / (m + n))`, and swaps in a `LowRankLinear`. The compressed model is
saved under `model/` (`save_pretrained` + `lowrank.json`) and reloads through the one
loader; `decomposition.parquet` holds each linear's rank, parameters and errors.

Two methods' steps need more than one layer's statistics: an entry that allocates its
ratios across the model (SVD-LLM V2) has every linear's truncation loss measured at the
uniform ratio first (`allocated_ratios`); an entry with an update step (SVD-LLM's) carries
calibration tokens through the blocks as they are compressed (`SequentialInputs`).
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from actsparse.data import TokenData
from actsparse.io import load_tensors, read_safetensors_metadata
from actsparse.methods.lowrank import LOWRANK
from actsparse.methods.lowrank.base import LayerStats, TruncationLoss
from actsparse.methods.lowrank.linalg import check_finite, rank_for_ratio, update_left
from actsparse.methods.lowrank.update import SequentialInputs
from actsparse.methods.registry import MethodEntry
from actsparse.models import LoadCfg, default_device, load_model_as
from actsparse.models.adapters import FamilyAdapter, linear_shape
from actsparse.models.lowrank import LowRankLinear, dense_weight, replace, save_lowrank
from actsparse.stages.job import Metric, StageResult, main
from actsparse.tables import CHANNEL_STATS, DECOMPOSITION, LINEARS, read_table, write_table

log = logging.getLogger("actsparse.decompose")


@dataclass
class DecomposeJob:
    entry: str = "method"
    method: dict[str, Any] = field(default_factory=dict)
    ratio: float = 0.2  # fraction of the target linears' parameters removed
    load: LoadCfg = field(default_factory=LoadCfg)
    seed: int = 0


class CalibrationReader:
    """One layer's Gram matrices and mean |x| from a calibrate job, checked against a model."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.linears = read_table(self.folder / "linears.parquet", LINEARS)

    def n_layers(self) -> int:
        return int(self.linears.layer.max()) + 1

    def layer(self, layer: int, sites: list[str]) -> dict[str, LayerStats]:
        path = self.folder / "gram" / f"layer_{layer:03d}.safetensors"
        grams = load_tensors(path)  # names the file and tensor on NaN or inf
        n_tokens = int(read_safetensors_metadata(path)["n_tokens"])
        stats = read_table(
            self.folder / "channel_stats" / f"layer_{layer:03d}.parquet", CHANNEL_STATS
        )
        out = {}
        for site in sites:
            if site not in grams:
                raise ValueError(f"{path}: no covariance for site {site!r} of layer {layer}")
            s = stats[stats.site == site].sort_values("channel")
            out[site] = LayerStats(
                gram=grams[site].double() / n_tokens,
                mean_abs=torch.tensor(s.mean_abs.to_numpy(), dtype=torch.float64),
                n_tokens=n_tokens,
            )
        return out


def _target_linears(model, adapter: FamilyAdapter, layer: int, stats: dict, calib, entry: str):
    """(site, name, module, float64 weight, where, cache) of each target linear of a
    layer, its shape checked against the calibration; `cache` is shared by the linears
    reading one input (q, k and v share their input's whitening)."""
    for site, st in stats.items():
        cache: dict = {}
        for name, module in adapter.site_linears(model, layer)[site]:
            where = f"layer {layer} {name} ({entry})"
            n_in, _ = linear_shape(module)
            if st.gram.shape != (n_in, n_in):
                raise ValueError(
                    f"{where}: the covariance in {calib.folder} is {tuple(st.gram.shape)}, the "
                    f"linear reads width {n_in} (shape mismatch: calibrated on another model?)"
                )
            W, _ = dense_weight(module)
            check_finite(W, "the weights", where)
            yield site, name, module, W.detach().double().cpu(), where, cache


def allocated_ratios(
    model, adapter: FamilyAdapter, entry: MethodEntry, ratio: float, calib: CalibrationReader
) -> dict[str, float]:
    """linear -> ratio for an entry that allocates them across the model (SVD-LLM V2):
    every target linear's truncation loss at the uniform `ratio` first; {} otherwise."""
    method, mcfg = entry.method_instance(), entry.cfg
    if not method.allocates(mcfg):
        return {}
    losses = []
    n_layers = len(adapter.layers(model))
    for layer in tqdm(range(n_layers), desc=f"{entry.name} losses R={ratio:g}", unit="layer"):
        stats = calib.layer(layer, mcfg.sites())
        for site, name, _, Wd, where, cache in _target_linears(
            model, adapter, layer, stats, calib, entry.name
        ):
            m, n = Wd.shape
            k = rank_for_ratio(m, n, ratio, where)
            loss = method.truncation_loss(mcfg, Wd, stats[site], k, where, cache)
            losses.append(TruncationLoss(name, name.rsplit(".", 1)[-1], m * n, loss))
    return method.allocate(mcfg, losses, ratio)


def decompose_model(
    model,
    adapter: FamilyAdapter,
    cfg: DecomposeJob,
    calib: CalibrationReader,
    tokens: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Swap every target linear of `model` for its low-rank factors; one row per linear.
    `tokens`: the calibration corpus's train split, for an entry with an update step."""
    entry = MethodEntry.for_job(LOWRANK, cfg.entry, cfg.method, f"decompose.methods.{cfg.entry}")
    method, mcfg = entry.method_instance(), entry.cfg
    n_layers = len(adapter.layers(model))
    if calib.n_layers() != n_layers:
        raise ValueError(
            f"decompose {cfg.entry!r}: calibration {calib.folder} has {calib.n_layers()} layers, "
            f"the model {n_layers}: calibrated on another model?"
        )
    sites = mcfg.sites()
    ratios = allocated_ratios(model, adapter, entry, cfg.ratio, calib)
    step = method.update_step(mcfg)
    if step is not None and tokens is None:
        raise ValueError(f"decompose {cfg.entry!r}: the update step needs calibration tokens")
    inputs = SequentialInputs(model, adapter, tokens, step, cfg.seed) if step else None
    rows = []
    for layer in tqdm(range(n_layers), desc=f"decompose {cfg.entry} R={cfg.ratio:g}", unit="layer"):
        stats = calib.layer(layer, sites)
        refit = inputs.grams(layer, sites) if inputs else {}  # inputs with upstream compressed
        for site, name, module, Wd, where, cache in _target_linears(
            model, adapter, layer, stats, calib, cfg.entry
        ):
            st = stats[site]
            n_in, n_out = linear_shape(module)
            ratio = ratios.get(name, cfg.ratio)
            k = rank_for_ratio(n_out, n_in, ratio, where)
            t0 = time.perf_counter()
            A, B, info = method.factorize(mcfg, Wd, st, k, where, cache)
            if site in refit:
                A = update_left(Wd, B, refit[site], where)
            seconds = time.perf_counter() - t0
            check_finite(A, "the left factor", where)
            check_finite(B, "the right factor", where)
            bias = dense_weight(module)[1]
            low = LowRankLinear.from_factors(A, B, bias, module.weight)
            check_finite(low.up.weight, "the left factor in the model's dtype", where)
            check_finite(low.down.weight, "the right factor in the model's dtype", where)
            # the errors of the factors as stored (the model's dtype), in float64
            up, down = (t.detach().double().cpu() for t in (low.up.weight, low.down.weight))
            E = Wd - up @ down
            act_err = float((E @ st.gram * E).sum() / (Wd @ st.gram * Wd).sum().clamp_min(1e-300))
            replace(model, name, low)
            rows.append(
                dict(
                    layer=layer,
                    site=site,
                    linear=name,
                    in_features=n_in,
                    out_features=n_out,
                    rank=A.shape[1],
                    params_dense=n_in * n_out,
                    params_lowrank=A.shape[1] * (n_in + n_out),
                    act_rel_err=act_err**0.5,
                    weight_rel_err=float(E.norm() / Wd.norm().clamp_min(1e-300)),
                    ridge=float(info.get("ridge", 0.0)),
                    seconds=seconds,
                )
            )
        del stats
        if inputs:
            inputs.advance(layer)
    return pd.DataFrame(rows)


def run(cfg: DecomposeJob, inputs: dict[str, str], out: Path) -> StageResult:
    dev = default_device()
    model, adapter = load_model_as(inputs["model"], cfg.load, device=dev)
    dense_total = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    # the calibration corpus's train split: planned for an entry with an update step
    tokens = (
        torch.from_numpy(TokenData(inputs["data"]).tokens("train")) if "data" in inputs else None
    )
    table = decompose_model(model, adapter, cfg, CalibrationReader(inputs["calibration"]), tokens)
    seconds = time.perf_counter() - t0
    write_table(table, out / "decomposition.parquet", DECOMPOSITION)
    info = {
        "method": cfg.method.get("method"),
        "entry": cfg.entry,
        "ratio": cfg.ratio,
        "base": inputs["model"],
    }
    save_lowrank(model, out / "model", info)

    total = sum(p.numel() for p in model.parameters())
    dense_t, low_t = int(table.params_dense.sum()), int(table.params_lowrank.sum())
    target = dense_total - cfg.ratio * dense_t  # the whole model, had every target lost R exactly
    kw = dict(method=cfg.entry, level=cfg.ratio)
    metrics = [
        Metric("ratio_removed", cfg.ratio, **kw),
        Metric("fraction_kept", low_t / dense_t, **kw),  # of the target linears' parameters
        Metric("n_params", total, **kw),
        Metric("n_params_dense", dense_total, **kw),
        Metric("n_params_target", target, **kw),
        Metric("params_err_pct", 100 * (total / target - 1), **kw),
        Metric("linears", len(table), **kw),
        Metric("act_rel_err_mean", float(table.act_rel_err.mean()), **kw),
        Metric("act_rel_err_max", float(table.act_rel_err.max()), **kw),
        Metric("ridge_layers", int((table.ridge > 0).sum()), **kw),
        Metric("decompose_s", seconds, **kw),
        Metric("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **kw),
    ]
    if dev.type == "cuda":
        metrics.append(
            Metric("peak_gpu_mem_mb", torch.cuda.max_memory_allocated(dev) / 2**20, **kw)
        )
    log.info(
        "%s R=%g: %d linears, kept %.4f of their parameters; model %d -> %d parameters "
        "(target %d, %+.3f%%); mean relative activation error %.4f",
        cfg.entry, cfg.ratio, len(table), low_t / dense_t, dense_total, total, target,
        100 * (total / target - 1), table.act_rel_err.mean(),
    )  # fmt: skip
    return StageResult(metrics, [out / "decomposition.parquet", out / "model" / "lowrank.json"])


if __name__ == "__main__":
    main("decompose", DecomposeJob, run)
