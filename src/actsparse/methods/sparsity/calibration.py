"""Sequential threshold calibration: every threshold rule of a plan calibrated in forward
order on activations with every earlier rule switched on (the methods whose rules are
magnitude thresholds: threshold, TEAL, CATS). Each block's inputs are captured once with
the upstream rules on and carried forward, so a plan costs about one forward pass per
site rather than one per layer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np
import torch
from omegaconf import MISSING

from actsparse.activation_stats import histogram_quantile, log_bin_edges
from actsparse.data import batch_at
from actsparse.methods.sparsity.base import BuildContext, SparsityMethodCfg, context_len
from actsparse.methods.sparsity.mechanism import SparsityPlan
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models.blocks import StopBlock, block_calls, call_block

SITE_ORDER = ("attn_in", "o_proj_in", "ffn_in", "gate", "ffn_intermediate", "heads")


@dataclass
class ThresholdMethodCfg(SparsityMethodCfg):
    """Keys of methods whose rules are magnitude thresholds calibrated for a target level."""

    # sequential: each (layer, site) in forward order is calibrated on activations with
    # every earlier rule applied, so upstream sparsity cannot shift what it achieves;
    # dense: every threshold from the dense model's histograms (the calibrate stage), as
    # in TEAL's paper: downstream sites then drift from their targets
    calibration: str = MISSING
    calib_tokens: int = MISSING  # sequential: calibration tokens (train split)
    calib_seq_len: int | None = MISSING  # null: the evaluation's window (activations depend on it)

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.calibration not in ("sequential", "dense"):
            out.append(
                ("calibration", f"must be 'sequential' or 'dense', got {self.calibration!r}")
            )
        if self.calib_tokens < 2 or (self.calib_seq_len is not None and self.calib_seq_len < 2):
            out.append(("calib_tokens", "calib_tokens and calib_seq_len must be >= 2"))
        return out


def _count_magnitudes(
    hist: torch.Tensor, x: torch.Tensor, edges: torch.Tensor, width: int, where: str
) -> None:
    """Add the histogram of |x| to `hist` (bins as in `SiteStats`, binned the same way, in
    float64): thresholds need nothing else, and the moments `SiteStats` also keeps cost
    as much as the block itself at FFN widths."""
    x = x.reshape(-1, x.shape[-1])
    if x.shape[1] != width:
        raise ValueError(f"{where}: expected {width} channels, got {x.shape[1]}")
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{where}: non-finite activations (NaN or inf)")
    idx = torch.bucketize(x.abs().reshape(-1).to(torch.float64), edges, right=True)
    hist += torch.bincount(idx, minlength=len(hist))


# values of one site's activation kept for a centred calibration (strided beyond it)
MAX_SAMPLES = 1 << 24


class _Samples:
    """The values of one site's activation (float32, CPU), strided to `MAX_SAMPLES` over
    all batches, for a centre and the exact quantiles of |x - centre| (SCAP)."""

    def __init__(self, n_batches: int):
        self.n_batches, self.parts = n_batches, []

    def add(self, x: torch.Tensor, width: int, where: str) -> None:
        x = x.reshape(-1, x.shape[-1])
        if x.shape[1] != width:
            raise ValueError(f"{where}: expected {width} channels, got {x.shape[1]}")
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{where}: non-finite activations (NaN or inf)")
        stride = max(1, -(-x.numel() * self.n_batches // MAX_SAMPLES))
        self.parts.append(x.reshape(-1)[::stride].float().cpu())

    def values(self) -> torch.Tensor:
        return torch.cat(self.parts).double()


def centred_rules(group: list, samples: _Samples, center) -> list:
    """Each rule of a site with `shift = center(x)` and the threshold of `level` of
    `|x - shift|` (SCAP: `np.quantile(|x - m|, s)`), from the site's samples."""
    x = samples.values()
    m = float(center(x))
    dev = (x - m).abs().numpy()

    def threshold(level: float) -> float:  # at 0 nothing is dropped (the dense output)
        return float(np.quantile(dev, level)) if level > 0 else 0.0

    return [
        replace(p, rule=replace(p.rule, shift=m, threshold=threshold(p.rule.level))) for p in group
    ]


@torch.no_grad()
def calibrate_thresholds(
    placed: list, cfg: ThresholdMethodCfg, ctx: BuildContext, center=None
) -> list:
    """Fill in the threshold of every threshold rule in `placed` for its level.

    A threshold `t` with `P(|x| < t) = level` (TEAL's `F^-1(0.5 + s/2)`), read from a
    histogram of |x|: the calibrate stage's (dense) or one collected here, in forward
    order, with the rules already calibrated switched on (sequential).

    Sequentially, the blocks run one at a time on every calibration batch: each block's
    outputs, with the rules of its own and every earlier block on, are kept as the next
    block's inputs (the hidden states of all calibration tokens at one layer are held).
    Each site's statistics come from its block rerun on those inputs with the rules
    calibrated so far on, stopped once the site's activation has been seen. The cost is
    one forward pass plus, per site, the blocks up to that site: linear in the depth,
    where running the model from its first layer to reach each layer was quadratic.

    `center` (sequential only): a function of a site's activation values (float64, 1-D)
    giving the scalar each rule there is centred on (SCAP's mode): the rule's `shift`, and
    its threshold the quantile of `|x - shift|`, exact on (strided) samples of the values.
    """
    if center is not None and cfg.calibration != "sequential":
        raise ValueError("a centred threshold calibration must be sequential")
    if cfg.calibration == "dense":
        assert ctx.stats is not None
        return [
            replace(
                p,
                rule=replace(p.rule, threshold=ctx.stats.threshold(p.layer, p.site, p.rule.level)),
            )
            for p in placed
        ]
    if ctx.tokens is None:
        raise ValueError("sequential threshold calibration needs calibration tokens")
    model, adapter = ctx.model, ctx.adapter
    seq_len = context_len(model, cfg.calib_seq_len or ctx.window or 10**9)
    n_batches = max(1, cfg.calib_tokens // (8 * seq_len))
    batches = [batch_at(ctx.tokens, b, 8, seq_len, ctx.seed) for b in range(n_batches)]
    edges = log_bin_edges(2048, 1e-6, 1e4).to(ctx.device)
    groups: dict[tuple[int, str], list] = {}
    for p in placed:
        groups.setdefault((p.layer, p.site), []).append(p)
    if not groups:
        return []
    last = max(layer for layer, _ in groups)
    blocks = adapter.layers(model)
    hidden, calls = block_calls(model, adapter, last, batches)
    done: list = []
    for layer in range(last + 1):
        block = blocks[layer]
        for site in [s for s in SITE_ORDER if (layer, s) in groups]:
            group = groups[(layer, site)]
            hist = torch.zeros(len(edges) + 1, dtype=torch.int64, device=ctx.device)
            samples = _Samples(len(hidden))
            where = f"layer {layer} site {site}"

            def seen(x, h=hist, n=group[0].width, w=where, s=samples):
                if center is None:
                    _count_magnitudes(h, x, edges, n, w)
                else:
                    s.add(x, n, w)
                raise StopBlock  # the rest of the block cannot change this site's statistics

            if site == "gate":
                _, act = adapter.act_module(model, layer)
                hook = act.register_forward_hook(lambda m, a, out, f=seen: f(out))
            else:
                module = model.get_submodule(group[0].module)
                hook = module.register_forward_pre_hook(lambda m, a, f=seen: f(a[0]))
            handle = apply(model, adapter, SparsityPlan("calibration", "", 0.0, done))
            try:
                for h, call in zip(hidden, calls[layer], strict=True):
                    with contextlib.suppress(StopBlock):
                        call_block(block, h, call)
            finally:
                hook.remove()
                handle.remove()
            if center is not None:
                done += centred_rules(group, samples, center)
                continue
            counts, e = hist.cpu().numpy(), edges.cpu().numpy()
            done += [
                replace(
                    p, rule=replace(p.rule, threshold=histogram_quantile(e, counts, p.rule.level))
                )
                for p in group
            ]
        if layer < last:
            handle = apply(model, adapter, SparsityPlan("calibration", "", 0.0, done))
            try:
                for b, call in enumerate(calls[layer]):
                    hidden[b] = call_block(block, hidden[b], call)
            finally:
                handle.remove()
    return done
