"""What every predictor method is, and what they share: the low-rank predictor module,
Deja Vu's weighted BCE, the training loop and the held-out scores.

A predictor of layer `l` maps the input it reads (see `labels.py`) to one score per unit
(FFN neuron or attention head); at inference the `int((1 - s) n)` units of highest score
are computed and the rest skipped (the `predicted` rule of the sparsity mechanism).

Scores on held-out tokens, per layer and summed over layers (`score`):
- `recall`, `precision`: of the predicted set `score > 0` (logit > 0) against the labels;
- `recall_at_k` (per level `s`): the share of labelled units inside the predictor's
  top-K, `K = int((1 - s) n)`, i.e. what the mask used at inference keeps;
- `matching_rate` (per level): `|P_K ∩ O_K| / |O_K|`, where `P_K` is the predictor's
  top-K and `O_K` the oracle's (Deja Vu's contextual sparsity: the top-K units by true
  magnitude, |activation| or head output norm), leaving out units whose magnitude is 0
  (on a ReLU FFN with fewer than K active neurons, which zeros fill the top-K is
  arbitrary). When `|O_K| = K` it is also the share of the units the predictor computes
  that the oracle computes too;
- `flops_pct`: the predictor's FLOPs per token as a percentage of the FLOPs of the
  block part it predicts for (FFN linears for neurons, attention linears for heads).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from actsparse.methods.predictors.labels import LABEL_RULES, LabelSet, layer_widths
from actsparse.methods.registry import Registry, parse_entry
from actsparse.methods.sparsity.ops import top_scores_mask
from actsparse.models.adapters import FamilyAdapter, linear_params
from actsparse.schema.stages import level_problems

log = logging.getLogger("actsparse.predictors")

# every predictor file registers here; import it from `actsparse.methods.predictors`,
# which imports them all (see methods/sparsity/base.py)
PREDICTORS: Registry = Registry("predictor")

BCE_OFFSET = 0.005  # Deja Vu: negatives weighted p + 0.005, positives 1 - (p + 0.005)


@dataclass
class PredictorCfg:
    """Keys every predictor config has (`conf/predictors/<method>.yaml`)."""

    method: str = MISSING
    levels: list[float] | None = MISSING  # null: predictors.levels (else sparsify.levels)
    models: list[str] | None = MISSING  # null: every model of the study; []: none
    label: str = MISSING  # mlp labels: auto | positive | topk | threshold (labels.py)
    label_level: float = MISSING  # topk / threshold labels, and head labels: the level they mark
    n_tokens: int = MISSING  # label tokens from the training split
    eval_tokens: int = MISSING  # held-out tokens (valid split) the scores are measured on
    seq_len: int | None = MISSING  # null: the evaluation's window
    batch_size: int = MISSING  # windows per forward pass while collecting labels
    keep_labels: bool = MISSING  # keep the collected labels in the job folder

    def reads_statistics(self) -> bool:
        """Whether the labels need the calibrate job's histograms (threshold labels)."""
        return self.label == "threshold"

    def problems(self) -> list[tuple[str, str]]:
        out = level_problems(self.levels or [])
        if self.label not in LABEL_RULES:
            out.append(("label", f"must be one of {', '.join(LABEL_RULES)}, got {self.label!r}"))
        if not 0.0 <= self.label_level < 1.0:
            out.append(("label_level", f"must be in [0, 1), got {self.label_level}"))
        for key in ("n_tokens", "eval_tokens", "batch_size"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.seq_len is not None and self.seq_len < 2:
            out.append(("seq_len", f"must be >= 2 or null, got {self.seq_len}"))
        return out


@dataclass
class TrainedCfg(PredictorCfg):
    """Keys of predictors trained on the labels (Deja Vu)."""

    rank: int = MISSING  # the low-rank bottleneck r (Deja Vu: 1000)
    ranks_curve: list[int] | None = MISSING  # extra ranks trained for the recall-vs-cost curve
    lr: float = MISSING
    weight_decay: float = MISSING
    train_batch: int = MISSING
    epochs: int = MISSING
    stop_recall: float = MISSING  # stop once held-out-of-training recall exceeds it
    val_fraction: float = MISSING  # last share of the label tokens: model selection by recall

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        for r in [self.rank, *(self.ranks_curve or [])]:
            if r < 1:
                out.append(("rank", f"ranks must be >= 1, got {r}"))
        if not 0.0 < self.val_fraction < 1.0:
            out.append(("val_fraction", f"must be in (0, 1), got {self.val_fraction}"))
        for key in ("epochs", "train_batch"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.lr <= 0:
            out.append(("lr", f"must be > 0, got {self.lr}"))
        return out


class LowRankPredictor(nn.Module):
    """Deja Vu's predictor: `Linear(d -> r, no bias) -> Linear(r -> n)`, no nonlinearity."""

    def __init__(self, d_in: int, rank: int, n_out: int):
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x.to(self.down.weight.dtype)))

    def flops(self) -> int:
        return 2 * self.down.weight.numel() + 2 * self.up.weight.numel()


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, pos_rate: float) -> torch.Tensor:
    """Deja Vu's class-weighted BCE: positives weighted `1 - (p + 0.005)`, negatives
    `p + 0.005` (`p` the positive rate), averaged over every entry."""
    w = pos_rate + BCE_OFFSET
    y = labels.to(logits.dtype)
    loss = (1 - w) * y * F.softplus(-logits) + w * (1 - y) * F.softplus(logits)
    return loss.mean()


@dataclass
class Counts:
    """Sums over tokens from which every score follows (so layers add up)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    hits: dict[float, int] | None = None  # level -> labelled units inside the top-K
    matched: dict[float, int] | None = None  # level -> top-K shared with the oracle's
    kept: dict[float, int] | None = None  # level -> K x tokens

    def add(self, other: Counts) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn
        for name in ("hits", "matched", "kept"):
            mine, theirs = getattr(self, name) or {}, getattr(other, name) or {}
            setattr(self, name, {k: mine.get(k, 0) + v for k, v in theirs.items()})

    def rows(self, layer: int, rank: int) -> list[dict[str, Any]]:
        def ratio(a: int, b: int) -> float:
            return a / b if b else float("nan")

        rows = [
            dict(layer=layer, rank=rank, level=None, metric="recall",
                 value=ratio(self.tp, self.tp + self.fn)),
            dict(layer=layer, rank=rank, level=None, metric="precision",
                 value=ratio(self.tp, self.tp + self.fp)),
        ]  # fmt: skip
        for level in sorted(self.kept or {}):
            assert self.hits is not None and self.matched is not None and self.kept is not None
            rows += [
                dict(layer=layer, rank=rank, level=level, metric="recall_at_k",
                     value=ratio(self.hits[level], self.tp + self.fn)),
                dict(layer=layer, rank=rank, level=level, metric="matching_rate",
                     value=ratio(self.matched[level], self.kept[level])),
            ]  # fmt: skip
        return rows


@torch.no_grad()
def score(
    predictor: nn.Module,
    labels: LabelSet,
    split: str,
    layer: int,
    levels: list[float],
    device: torch.device,
    chunk: int = 4096,
) -> Counts:
    """Counts of `predictor` on a held-out split of one layer (see module doc)."""
    x_all = labels.array(split, layer, "x")
    mag_all = labels.array(split, layer, "m")
    c = Counts(hits={}, matched={}, kept={})
    for start in range(0, len(x_all), chunk):
        rows = slice(start, start + chunk)
        x = torch.from_numpy(np.asarray(x_all[rows], dtype=np.float32)).to(device)
        y = torch.from_numpy(labels.labels(split, layer, rows)).to(device)
        mag = torch.from_numpy(np.asarray(mag_all[rows], dtype=np.float32)).to(device)
        z = predictor(x).float()
        pred = z > 0
        part = Counts(
            tp=int((pred & y).sum()),
            fp=int((pred & ~y).sum()),
            fn=int((~pred & y).sum()),
            hits={},
            matched={},
            kept={},
        )
        for level in levels:
            top = top_scores_mask(z, level)
            # the oracle's top-K among units that are not zero (a ReLU FFN with fewer than K
            # active neurons: which zeros fill its top-K is arbitrary)
            oracle = top_scores_mask(mag, level) & (mag > 0)
            assert part.hits is not None and part.matched is not None and part.kept is not None
            part.hits[level] = int((top & y).sum())
            part.matched[level] = int((top & oracle).sum())
            part.kept[level] = int(oracle.sum())
        c.add(part)
    return c


def recall_on(predictor: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = predictor(x) > 0
    pos = int(y.sum())
    return int((pred & y).sum()) / pos if pos else 1.0


def fit_lowrank(
    cfg: TrainedCfg,
    labels: LabelSet,
    layer: int,
    rank: int,
    seed: int,
    device: torch.device,
    where: str,
) -> tuple[LowRankPredictor, dict[str, float]]:
    """Train one layer's predictor on the `train` labels: AdamW, weighted BCE, batches of
    `train_batch` tokens for up to `epochs`; keep the epoch of highest recall on the last
    `val_fraction` of the label tokens, stop once it exceeds `stop_recall`."""
    d_in, units = labels.widths[layer]
    if rank > d_in:
        raise ValueError(
            f"{where}: rank {rank} is larger than the predictor's input width {d_in} at "
            f"layer {layer} (a low-rank predictor needs rank <= width)"
        )
    n = labels.n_tokens("train")
    n_val = max(1, int(n * cfg.val_fraction))
    n_fit = n - n_val
    if n_fit < 1:
        raise ValueError(f"{where}: {n} label tokens leave none to train on")
    x_mm = labels.array("train", layer, "x")
    # the positive rate of the training labels (streamed; bits counted per chunk)
    y_mm = labels.array("train", layer, "y")
    pos = sum(
        int(np.unpackbits(y_mm[s : min(s + 65536, n_fit)], axis=-1, count=units).sum())
        for s in range(0, n_fit, 65536)
    )
    pos_rate = pos / (n_fit * units)
    x_val = torch.from_numpy(np.asarray(x_mm[n_fit:], dtype=np.float32)).to(device)
    y_val = torch.from_numpy(labels.labels("train", layer, slice(n_fit, n))).to(device)

    g = torch.Generator().manual_seed(seed * 1_000_003 + layer * 101 + rank)
    torch.manual_seed(seed * 1_000_003 + layer * 101 + rank)
    model = LowRankPredictor(d_in, rank, units).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_recall, best_state, best_epoch, epochs_run = -1.0, None, 0, 0
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n_fit, generator=g).numpy()
        model.train()
        for s in range(0, n_fit, cfg.train_batch):
            idx = np.sort(perm[s : s + cfg.train_batch])
            x = torch.from_numpy(np.asarray(x_mm[idx], dtype=np.float32)).to(device)
            y = torch.from_numpy(labels.labels("train", layer, idx)).to(device)
            loss = weighted_bce(model(x), y, pos_rate)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{where}: layer {layer}: non-finite predictor loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        recall = recall_on(model, x_val, y_val)
        epochs_run = epoch + 1
        if recall > best_recall:
            best_recall, best_epoch = recall, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if recall > cfg.stop_recall:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    info = dict(pos_rate=pos_rate, val_recall=best_recall, best_epoch=best_epoch, epochs=epochs_run)
    return model, info


def block_flops(model, adapter: FamilyAdapter, layer: int, target: str) -> int:
    """FLOPs per token of the linears a predictor predicts for: the FFN (mlp) or the
    attention projections (heads)."""
    linears = adapter.site_linears(model, layer)
    sites = ("ffn_in", "ffn_intermediate") if target == "mlp" else ("attn_in", "o_proj_in")
    return 2 * sum(linear_params(m) for s in sites for _, m in linears[s])


class MethodBase:
    """What every registered entry of `PREDICTORS` has: its config and its labels."""

    Config: ClassVar[type[PredictorCfg]] = PredictorCfg
    # its row in docs/predictors.md's method table (`actsparse methods`)
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # what it is, in one line
    target: ClassVar[str] = "mlp"  # mlp | heads: what its labels are
    evaluated: ClassVar[bool] = True  # its predicted masks are evaluated (not a report)
    has_weights: ClassVar[bool] = True  # predictors saved as safetensors (else rebuilt)

    @classmethod
    def parse(cls, raw: dict[str, Any], where: str) -> PredictorCfg:
        return parse_entry(cls.Config, raw, where)  # type: ignore[no-any-return]

    def ranks(self, cfg: Any) -> list[int]:
        """The ranks to score: the predictor's own first, then the curve's."""
        own = getattr(cfg, "rank", None)
        curve = [r for r in (getattr(cfg, "ranks_curve", None) or []) if r != own]
        return [own, *sorted(set(curve))]

    def check(self, cfg: Any, model, adapter: FamilyAdapter, who: str) -> None:
        """Refuse a config the model cannot take, naming the layer."""
        for layer, (d_in, _) in enumerate(layer_widths(model, adapter, self.target)):
            for r in self.ranks(cfg):
                if r is not None and r > d_in:
                    raise ValueError(
                        f"{who}: rank {r} is larger than the predictor's input width {d_in} "
                        f"at layer {layer}"
                    )


class ReportMethod(MethodBase, ABC):
    """A statistics report from the labels (no predictor, nothing evaluated)."""

    evaluated = False
    has_weights = False

    def ranks(self, cfg: Any) -> list[int]:
        return []

    @abstractmethod
    def tables(self, labels: LabelSet) -> tuple[Any, ...]:
        """The report's tables (written by the stage)."""


class PredictorMethod(MethodBase, ABC):
    """A registered predictor. Subclasses set `Config`, `target` and implement `fit` (and
    `load` for predictors without saved weights)."""

    @abstractmethod
    def fit(
        self, cfg: Any, model, adapter, labels: LabelSet, layer: int, rank: int, seed: int,
        device: torch.device, where: str,
    ) -> tuple[nn.Module, dict[str, float]]:  # fmt: skip
        """One layer's predictor at `rank`, and what its training measured."""

    def load(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor] | None, model,
             adapter: FamilyAdapter, layer: int, where: str) -> nn.Module:  # fmt: skip
        """One layer's predictor from its saved tensors (shape-checked, naming the layer)."""
        d_in, units = meta["widths"][layer]
        assert tensors is not None
        down, up = tensors.get("down.weight"), tensors.get("up.weight")
        if down is None or up is None or "up.bias" not in tensors:
            raise ValueError(f"{where}: layer {layer}: predictor tensors are incomplete")
        if down.shape[1] != d_in or up.shape[0] != units or up.shape[1] != down.shape[0]:
            raise ValueError(
                f"{where}: layer {layer}: predictor of shape {tuple(down.shape)} -> "
                f"{tuple(up.shape)} does not fit the model's (input width, units) "
                f"({d_in}, {units}) (a predictor from another model?)"
            )
        module = LowRankPredictor(d_in, down.shape[0], units)
        module.load_state_dict(tensors)
        return module


class LowRankTrained(PredictorMethod):
    """Deja Vu's predictors: a `LowRankPredictor` trained on the labels (`fit_lowrank`)."""

    Config = TrainedCfg

    def fit(self, cfg, model, adapter, labels, layer, rank, seed, device, where):
        return fit_lowrank(cfg, labels, layer, rank, seed, device, where)
