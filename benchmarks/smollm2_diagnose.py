"""Why Spark's statistical top-k and ASVD collapse on a small pretrained Llama (SmolLM2-135M).

Two parts, each measured with the package's own operators, plans and stages:

- `stat`: WikiText-2 test perplexity (first `--stat-tokens` tokens in 512-token windows)
  of the dense model, of the `stat_topk` sparsify method as implemented (soft threshold
  `ReLU(g - theta)` on the gate pre-activation, then SiLU) and of variants that change one
  thing each: the hard cut `g * 1[g > theta]`, the same operators after the SiLU, the
  shift alone without zeroing (`SiLU(g - theta)` everywhere), the statistical threshold on
  `|SiLU(g)|`, and exact top-k baselines. Each row has the fraction of zeros measured at
  the input of down_proj; a per-layer table has the gate rows' mean, std and theta.
- `lowrank`: the calibrate stage's statistics on the valid split (the stage's `collect`
  and `write_layer`; `--calib-dir` keeps and reuses them), then the decompose stage
  (`decompose_model`) per method at ratio `--ratio` (fraction of the block linears'
  parameters removed), and perplexity on the first `--lowrank-tokens` test tokens in
  512-token windows; for the `--ablate` methods also with one projection type or five
  layers compressed at a time. Per linear: the relative output error
  `||(W - W') X|| / ||W X||` on the calibration activations (the stage's `act_rel_err`);
  per site: the channels ASVD down-weights most relative to their energy
  (`sqrt(E x_j^2) / mean|x_j|`) and how far G is from diagonal.

Prints tables and writes benchmarks/results/smollm2_{gate_stats,stat_topk,lowrank_ppl,
lowrank_linears,asvd_channels,input_anisotropy}.parquet.

    python benchmarks/smollm2_diagnose.py /tmp/smol/hf --parts stat
    python benchmarks/smollm2_diagnose.py /tmp/smol/hf --parts lowrank --calib-dir /tmp/calib
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from provenance import RESULTS, provenance
from torch import nn

from actsparse.conf import defaults
from actsparse.methods.lowrank.base import LayerStats
from actsparse.methods.sparsity import SPARSITY, ops
from actsparse.methods.sparsity.base import BuildContext
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.methods.sparsity.wrappers import apply, set_module
from actsparse.models import load_model
from actsparse.models.lowrank import replace as replace_module
from actsparse.perplexity import evaluate_lm, windows
from actsparse.schema.stages import CalibrateCfg
from actsparse.stages.calibrate import collect, write_layer
from actsparse.stages.decompose import CalibrationReader, DecomposeJob, decompose_model
from actsparse.tables import LINEARS, write_table

WINDOW = 512
# entry -> (method config: the decompose stage's `method`, the statistic ASVD scales by)
LOWRANK = {
    "svd": ({"method": "svd"}, "mean_abs"),
    "asvd_a0": ({"method": "asvd", "alpha": 0.0}, "mean_abs"),
    "asvd_a0.25": ({"method": "asvd", "alpha": 0.25}, "mean_abs"),
    "asvd_a0.5": ({"method": "asvd", "alpha": 0.5}, "mean_abs"),  # the configured default
    "asvd_a1": ({"method": "asvd", "alpha": 1.0}, "mean_abs"),
    "asvd_rms_a1": ({"method": "asvd", "alpha": 1.0}, "rms"),
    "svdllm": ({"method": "svdllm"}, "mean_abs"),
    "nsvd": ({"method": "nsvd"}, "mean_abs"),
}
LOWRANK_WHAT = {
    "svd": "plain SVD",
    "asvd_a0": "ASVD alpha 0 (must equal plain SVD)",
    "asvd_a0.25": "ASVD s = mean|x|^0.25",
    "asvd_a0.5": "ASVD s = mean|x|^0.5 (configured)",
    "asvd_a1": "ASVD s = mean|x|",
    "asvd_rms_a1": "ASVD code, s = sqrt(E x^2) (diagonal whitening)",
    "svdllm": "SVD-LLM (Cholesky whitening)",
    "nsvd": "NSVD (k1 = 0.95 k)",
}


def tokens(model_dir: str, text_file: Path) -> np.ndarray:
    """The split as the data stage encodes it (BOS once, the whole text in one call)."""
    from transformers import AutoTokenizer

    from actsparse.stages.data import encode_split

    tok = AutoTokenizer.from_pretrained(model_dir)
    return encode_split(tok, [text_file.read_text()], separate_docs=False)


def perplexity(model, wins: torch.Tensor) -> float:
    vocab = int(model.config.vocab_size)
    return evaluate_lm(model, wins, 4, torch.zeros(vocab, dtype=torch.float64)).perplexity


# ----------------------------------------------------------------------------- part 1


class GateFn(nn.Module):
    """Stands in for a block's SiLU: `fn(g, act)` gives the gate branch (custom variants)."""

    def __init__(self, inner: nn.Module, fn):
        super().__init__()
        self.inner, self.fn = inner, fn

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.fn(g, self.inner)


def exact_value_topk(g: torch.Tensor, level: float) -> torch.Tensor:
    """Keep the k = int((1 - level) d) largest *values* of g (exact, what stat top-k estimates)."""
    return torch.where(ops.top_scores_mask(g, level), g, torch.zeros((), dtype=g.dtype))


def stat_on_abs(a: torch.Tensor, level: float) -> torch.Tensor:
    """The statistical threshold computed on |a|, applied as a hard magnitude cut."""
    theta = ops.stat_threshold(a.abs(), level)
    return torch.where(a.abs() > theta, a, torch.zeros((), dtype=a.dtype))


# name -> (what it is, how it is built): "rule" variants are the package's rules and plans
STAT_VARIANTS = {
    "impl_soft_pre": "stat_topk method as configured: SiLU(ReLU(g - theta(g)))",
    "hard_pre": "stat_topk method, soft: false: SiLU(g * 1[g > theta(g)])",
    "shift_only": "SiLU(g - theta(g)) everywhere: the soft threshold's shift, no zeroing",
    "exact_topk_pre": "exact top-k by value of g, hard: SiLU(g) on the k largest g",
    "soft_post": "rule stat_topk after the SiLU: ReLU(a - theta(a)), a = SiLU(g)",
    "hard_post": "rule stat_topk (hard) after the SiLU: a * 1[a > theta(a)]",
    "stat_abs_post": "a * 1[|a| > theta(|a|)], a = SiLU(g): statistical cut on magnitude",
    "exact_topk_abs_post": "rule topk after the SiLU: the k largest |SiLU(g)| (oracle CATS)",
}


def stat_plan(model, adapter, variant: str, level: float):
    """Apply one variant; returns a handle with `.remove()`."""
    if variant in ("impl_soft_pre", "hard_pre"):
        method = SPARSITY.get("stat_topk")()
        cfg = method.parse(
            {"method": "stat_topk", "site": "gate", "soft": variant == "impl_soft_pre"}, "diag"
        )
        ctx = BuildContext(model, adapter, None, None, torch.device("cpu"))
        return apply(model, adapter, method.plan(cfg, level, ctx))
    rules = {
        "soft_post": Rule("stat_topk", level, soft=True),
        "hard_post": Rule("stat_topk", level, soft=False),
        "exact_topk_abs_post": Rule("topk", level),
    }
    if variant in rules:
        placed = placed_for_sites(model, adapter, ["gate"], lambda *_: rules[variant])
        return apply(model, adapter, SparsityPlan(variant, variant, level, placed))
    fns = {
        "shift_only": lambda g, act: act(g - ops.stat_threshold(g, level)),
        "exact_topk_pre": lambda g, act: act(exact_value_topk(g, level)),
        "stat_abs_post": lambda g, act: stat_on_abs(act(g), level),
    }
    fn = fns[variant]
    swapped = []
    for layer in range(len(adapter.layers(model))):
        name, act = adapter.act_module(model, layer)
        set_module(model, name, GateFn(act, fn))
        swapped.append((name, act))

    class Handle:
        def remove(self):
            for name, act in swapped:
                set_module(model, name, act)

    return Handle()


def zero_counter(model, adapter):
    """Hooks counting exact zeros at the input of every down_proj (= the gate's zeros)."""
    counts = {"zero": 0, "total": 0}

    def hook(mod, args):
        x = args[0]
        counts["zero"] += int((x == 0).sum())
        counts["total"] += x.numel()

    handles = []
    for layer in range(len(adapter.layers(model))):
        _, down = adapter.site_linears(model, layer)["ffn_intermediate"][0]
        handles.append(down.register_forward_pre_hook(hook))
    return counts, handles


def gate_theta_stats(model, adapter, wins: torch.Tensor, levels: list[float]) -> pd.DataFrame:
    """Per layer, on one window: the gate pre-activation's row mean, std, share of g < 0,
    the mean theta at each level and the mean shift the soft threshold adds to kept SiLU
    inputs (`-theta`), relative to the row std."""
    rows, grabbed = [], {}
    hooks = []
    for layer in range(len(adapter.layers(model))):
        _, act = adapter.act_module(model, layer)
        hooks.append(
            act.register_forward_pre_hook(
                lambda m, a, layer=layer: grabbed.__setitem__(layer, a[0].detach())
            )
        )
    with torch.no_grad():
        model(input_ids=wins[:1], use_cache=False)
    for h in hooks:
        h.remove()
    for layer, g in grabbed.items():
        g = g.reshape(-1, g.shape[-1]).double()
        row = {
            "layer": layer,
            "mean": float(g.mean()),
            "std": float(g.std(-1, correction=0).mean()),
            "frac_negative": float((g < 0).double().mean()),
            # SiLU(g) of the entries a hard cut at 25% drops: not small (min SiLU = -0.278)
            "silu_of_dropped_25": float(
                torch.nn.functional.silu(g[g <= ops.stat_threshold(g, 0.25)]).abs().mean()
            ),
        }
        for level in levels:
            theta = ops.stat_threshold(g, level)
            row[f"theta_{level:g}"] = float(theta.mean())
            row[f"kept_{level:g}"] = float((g > theta).double().mean())
        rows.append(row)
    return pd.DataFrame(rows)


def part_stat(model, adapter, test_ids: np.ndarray, args) -> pd.DataFrame:
    wins = windows(test_ids, WINDOW, args.stat_tokens)
    levels = args.levels
    print(f"\n== statistical top-k at the gate: {wins.numel()} test tokens, {len(wins)} x {WINDOW}")
    th = gate_theta_stats(model, adapter, wins, levels)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(th.round(3).to_string(index=False))
    th.assign(**provenance()).to_parquet(RESULTS / "smollm2_gate_stats.parquet", index=False)
    rows = []
    t0 = time.perf_counter()
    dense = perplexity(model, wins)
    rows.append(dict(variant="dense", level=0.0, ppl=dense, zero_frac=float("nan")))
    print(f"dense: ppl {dense:.3f} ({time.perf_counter() - t0:.0f} s)")
    for variant in args.variants:
        for level in levels:
            handle = stat_plan(model, adapter, variant, level)
            counts, hooks = zero_counter(model, adapter)
            try:
                ppl = perplexity(model, wins)
            finally:
                for h in hooks:
                    h.remove()
                handle.remove()
            z = counts["zero"] / max(counts["total"], 1)
            rows.append(dict(variant=variant, level=level, ppl=ppl, zero_frac=z))
            print(f"{variant:22s} level {level:.2f}: ppl {ppl:14.3f}  zeros at down_proj {z:.3f}")
    table = pd.DataFrame(rows)
    table["ppl_over_dense"] = table.ppl / dense
    table["what"] = table.variant.map(STAT_VARIANTS).fillna("dense")
    print("\nperplexity (rows: variant; columns: level = fraction of gate entries zeroed)")
    print(table[table.variant != "dense"].pivot(index="variant", columns="level", values="ppl")
          .reindex([v for v in args.variants]).to_string(float_format=lambda v: f"{v:,.2f}"))  # fmt: skip
    print("\nmeasured fraction of zeros at the down_proj input")
    print(table[table.variant != "dense"].pivot(index="variant", columns="level", values="zero_frac")
          .reindex([v for v in args.variants]).round(3).to_string())  # fmt: skip
    table = table.assign(tokens=wins.numel(), window=WINDOW, **provenance())
    table.to_parquet(RESULTS / "smollm2_stat_topk.parquet", index=False)
    return table


# ----------------------------------------------------------------------------- part 2


def calibrate(model, adapter, valid_ids: np.ndarray, args, out: Path) -> None:
    """The calibrate stage's statistics of every layer on the valid split, written as the
    stage writes them (so `CalibrationReader` reads them)."""
    cfg = defaults(
        CalibrateCfg,
        "calibrate",
        split="valid",
        n_tokens=args.calib_tokens,
        seq_len=args.calib_seq_len,
        batch_size=8,
    )
    n_layers = len(adapter.layers(model))
    stats = collect(
        model, adapter, torch.from_numpy(valid_ids), cfg, 0, list(range(n_layers)), torch.device("cpu")
    )  # fmt: skip
    rows = []
    for layer in range(n_layers):
        site_linears = adapter.site_linears(model, layer)
        linears = {s: [name for name, _ in mods] for s, mods in site_linears.items()}
        for site, mods in site_linears.items():
            for name, module in mods:
                n_out, n_in = module.weight.shape
                rows.append(dict(layer=layer, site=site, linear=name, in_features=n_in, out_features=n_out))  # fmt: skip
        write_layer(out, layer, stats[layer], linears)
    write_table(pd.DataFrame(rows), out / "linears.parquet", LINEARS)


SITES_READ = ("attn_in", "o_proj_in", "ffn_in", "ffn_intermediate")


def asvd_channels(reader: CalibrationReader, n_layers: int, top: int = 3) -> pd.DataFrame:
    """Per layer and site, the channels whose ASVD weight (mean|x|) understates their
    energy most: `tail = sqrt(E x_j^2) / mean|x_j|` (sqrt(pi/2) = 1.25 for a Gaussian)."""
    rows = []
    for layer in range(n_layers):
        for site, st in reader.layer(layer, list(SITES_READ)).items():
            rms = st.gram.diagonal().sqrt()
            tail = rms / st.mean_abs.clamp_min(1e-300)
            for j in torch.argsort(tail, descending=True)[:top].tolist():
                rows.append(
                    dict(
                        layer=layer,
                        site=site,
                        channel=j,
                        mean_abs=float(st.mean_abs[j]),
                        rms=float(rms[j]),
                        tail=float(tail[j]),
                        rms_rank=int((rms > rms[j]).sum()),  # 0: the site's largest-energy channel
                        median_tail=float(tail.median()),
                    )
                )
    return pd.DataFrame(rows)


class RMSStats:
    """A calibration reader whose `mean_abs` is the channel RMS `sqrt(E x_j^2)` (the
    diagonal of the Gram matrix): ASVD with alpha 1 is then diagonal-only whitening."""

    def __init__(self, reader: CalibrationReader):
        self.reader, self.folder = reader, reader.folder

    def n_layers(self) -> int:
        return self.reader.n_layers()

    def layer(self, layer: int, sites: list[str]) -> dict[str, LayerStats]:
        return {
            site: replace(st, mean_abs=st.gram.diagonal().clamp_min(0).sqrt())
            for site, st in self.reader.layer(layer, sites).items()
        }


def ablation_groups(names: list[str], n_layers: int) -> dict[str, list[str]]:
    """Subsets of the target linears compressed alone (the rest stay dense): one per
    projection type, one per block of five layers."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(f"only {name.rsplit('.', 1)[-1]}", []).append(name)
    for lo in range(0, n_layers, 5):
        span = range(lo, min(lo + 5, n_layers))
        groups[f"only layers {span[0]}-{span[-1]}"] = [
            n for n in names if int(n.split(".layers.")[1].split(".")[0]) in span
        ]
    return groups


def input_anisotropy(reader: CalibrationReader, n_layers: int) -> pd.DataFrame:
    """Per layer and site, how far the input's second moment G is from diagonal (what a
    per-channel scaling like ASVD's can represent): the share of E||x||^2 along G's top
    eigenvector and top 8, the participation ratio (sum lambda)^2 / sum lambda^2 (the
    number of directions that carry the energy), and ||G - diag G||_F / ||G||_F."""
    rows = []
    for layer in range(n_layers):
        for site, st in reader.layer(layer, list(SITES_READ)).items():
            G = st.gram
            lam = torch.linalg.eigvalsh(G).flip(0).clamp_min(0)
            rows.append(
                dict(
                    layer=layer,
                    site=site,
                    width=len(G),
                    top1_share=float(lam[0] / lam.sum()),
                    top8_share=float(lam[:8].sum() / lam.sum()),
                    participation=float(lam.sum() ** 2 / (lam**2).sum()),
                    offdiag_share=float((G - torch.diag(G.diagonal())).norm() / G.norm()),
                )
            )
    return pd.DataFrame(rows)


def part_lowrank(model_dir: str, test_ids: np.ndarray, valid_ids: np.ndarray, args) -> None:
    wins = windows(test_ids, WINDOW, args.lowrank_tokens)
    print(f"\n== low-rank at R = {args.ratio} (fraction of block-linear parameters removed); "
          f"calibration {args.calib_tokens} valid tokens in {args.calib_seq_len}-token windows; "
          f"perplexity on {wins.numel()} test tokens, {len(wins)} x {WINDOW}")  # fmt: skip
    model, adapter = load_model(model_dir)
    n_layers = len(adapter.layers(model))
    ppl_rows = [dict(entry="dense", subset="all", ppl=perplexity(model, wins))]
    print(f"dense: ppl {ppl_rows[0]['ppl']:.3f}")
    with contextlib.ExitStack() as stack:
        calib_dir = args.calib_dir or stack.enter_context(tempfile.TemporaryDirectory())
        if not (Path(calib_dir) / "linears.parquet").is_file():
            t0 = time.perf_counter()
            calibrate(model, adapter, valid_ids, args, Path(calib_dir))
            print(f"calibrated in {time.perf_counter() - t0:.0f} s ({calib_dir})")
        else:
            print(f"calibration statistics reused from {calib_dir}")
        reader = CalibrationReader(calib_dir)
        del model
        ch = asvd_channels(reader, n_layers)
        an = input_anisotropy(reader, n_layers)
        tables, factors, lowmods = [], {}, {}
        for entry in args.lowrank:
            model, adapter = load_model(model_dir)
            method, stat = LOWRANK[entry]
            job = DecomposeJob(entry=entry, method=dict(method), ratio=args.ratio)
            t = decompose_model(model, adapter, job, RMSStats(reader) if stat == "rms" else reader)
            # layer 0's factors, to check that alpha 0 is plain SVD exactly
            factors[entry] = {
                r.linear: (m.up.weight.detach().clone(), m.down.weight.detach().clone())
                for r in t[t.layer == 0].itertuples()
                for m in [model.get_submodule(r.linear)]
            }
            if entry in args.ablate:
                lowmods[entry] = {name: model.get_submodule(name) for name in t.linear}
            ppl = perplexity(model, wins)
            ppl_rows.append(dict(entry=entry, subset="all", ppl=ppl))
            tables.append(t.assign(entry=entry))
            print(f"{entry:12s} ppl {ppl:16.3f}  mean act_rel_err {t.act_rel_err.mean():.4f}  "
                  f"max {t.act_rel_err.max():.4f}")  # fmt: skip
            del model
    if lowmods:
        print("\nablation: one subset of the linears compressed, the rest dense")
        model, adapter = load_model(model_dir)
        for entry, mods in lowmods.items():
            for subset, names in ablation_groups(list(mods), n_layers).items():
                dense_mods = {n: model.get_submodule(n) for n in names}
                for n in names:
                    replace_module(model, n, mods[n])
                try:
                    ppl = perplexity(model, wins)
                finally:
                    for n in names:
                        replace_module(model, n, dense_mods[n])
                ppl_rows.append(dict(entry=entry, subset=subset, ppl=ppl))
                print(f"{entry:12s} {subset:18s} ppl {ppl:14.3f}", flush=True)
        del model
    if "svd" in factors and "asvd_a0" in factors:
        same = all(
            torch.equal(factors["svd"][k][i], factors["asvd_a0"][k][i])
            for k in factors["svd"]
            for i in (0, 1)
        )
        print(f"ASVD alpha 0 factors identical to plain SVD (layer 0): {same}")
    ppl = pd.DataFrame(ppl_rows)
    ppl["ppl_over_dense"] = ppl.ppl / ppl.ppl.iloc[0]
    print("\nperplexity (every target linear compressed)")
    full = ppl[ppl.subset == "all"].drop(columns="subset")
    full["what"] = full.entry.map(LOWRANK_WHAT).fillna("dense")
    print(full.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
    if (ppl.subset != "all").any():
        print("\nperplexity with one subset compressed (rows) by method (columns)")
        ab = ppl[ppl.subset != "all"].pivot(index="subset", columns="entry", values="ppl")
        order = list(dict.fromkeys(ppl[ppl.subset != "all"].subset))
        print(ab.reindex(order).to_string(float_format=lambda v: f"{v:,.2f}"))
    meta = dict(ratio=args.ratio, calib_tokens=args.calib_tokens, calib_seq_len=args.calib_seq_len,
                eval_tokens=wins.numel(), window=WINDOW, **provenance())  # fmt: skip
    print("\nchannels ASVD down-weights most (tail = rms / mean|x|; Gaussian 1.25), top 12")
    print(ch.sort_values("tail", ascending=False).head(12).to_string(index=False,
          float_format=lambda v: f"{v:.4g}"))  # fmt: skip
    print("\ninput second moments G, median over layers (min-max): energy on G's top 1 / 8 "
          "eigenvectors, participation ratio, off-diagonal share of ||G||_F")  # fmt: skip
    cols = ["top1_share", "top8_share", "participation", "offdiag_share"]
    agg = an.groupby("site", sort=False)[cols].agg(
        lambda v: f"{v.median():.3g} ({v.min():.3g}-{v.max():.3g})"
    )
    print(agg.to_string())
    ch.assign(**meta).to_parquet(RESULTS / "smollm2_asvd_channels.parquet", index=False)
    an.assign(**meta).to_parquet(RESULTS / "smollm2_input_anisotropy.parquet", index=False)
    if not tables:
        return
    lin = pd.concat(tables, ignore_index=True)
    lin["proj"] = lin.linear.str.rsplit(".", n=1).str[-1]
    print("\nrelative output error ||(W - W')X|| / ||WX|| on the calibration activations: "
          "median over layers (max, at layer)")  # fmt: skip
    summary = {}
    for entry, g in lin.groupby("entry", sort=False):
        col = {}
        for proj, h in g.groupby("proj", sort=False):
            worst = h.loc[h.act_rel_err.idxmax()]
            col[proj] = (
                f"{h.act_rel_err.median():.3f} ({worst.act_rel_err:.3g} @{int(worst.layer)})"
            )
        summary[entry] = col
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(pd.DataFrame(summary).to_string())
    worst = lin.sort_values("act_rel_err", ascending=False).groupby("entry", sort=False).head(3)
    print("\nworst three linears per method")
    print(worst[["entry", "layer", "proj", "rank", "act_rel_err", "weight_rel_err"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4g}"))  # fmt: skip
    ppl.assign(**meta).to_parquet(RESULTS / "smollm2_lowrank_ppl.parquet", index=False)
    lin.assign(**meta).to_parquet(RESULTS / "smollm2_lowrank_linears.parquet", index=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="Hugging Face model folder (SmolLM2-135M)")
    p.add_argument("--data", default="/work/shared/data/wikitext-2", help="{valid,test}.txt")
    p.add_argument("--parts", nargs="+", default=["stat", "lowrank"], choices=["stat", "lowrank"])
    p.add_argument("--levels", nargs="+", type=float, default=[0.25, 0.4, 0.5])
    p.add_argument(
        "--variants", nargs="+", default=list(STAT_VARIANTS), choices=list(STAT_VARIANTS)
    )
    p.add_argument("--stat-tokens", type=int, default=4096)
    p.add_argument("--lowrank", nargs="*", default=list(LOWRANK), choices=list(LOWRANK))
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--calib-seq-len", type=int, default=128)  # conf/calibrate/default.yaml
    p.add_argument("--lowrank-tokens", type=int, default=8192)
    p.add_argument(
        "--ablate",
        nargs="*",
        default=["svd", "asvd_a0.5", "svdllm"],
        help="entries also evaluated with one subset of linears compressed at a time",
    )
    p.add_argument("--calib-dir", help="keep (or reuse) the calibration statistics here")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    data = Path(args.data)
    test_ids = tokens(args.model, data / "test.txt")
    if "stat" in args.parts:
        model, adapter = load_model(args.model)
        part_stat(model, adapter, test_ids, args)
        del model
    if "lowrank" in args.parts:
        part_lowrank(args.model, test_ids, tokens(args.model, data / "valid.txt"), args)


if __name__ == "__main__":
    main()
