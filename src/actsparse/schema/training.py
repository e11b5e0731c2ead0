"""Training: the optimiser settings of a train job, the training-time sparsity operators
(`SparseTrainCfg`) and the scaling grid trained with them (`ScalingCfg`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from omegaconf import MISSING

from actsparse.schema.models import HIDDEN_ACTS, TRAINABLE_FAMILIES, ArchCfg


@dataclass
class TrainCfg:
    steps: int = MISSING
    batch_size: int = MISSING
    seq_len: int = MISSING
    lr: float = MISSING
    min_lr_ratio: float = MISSING  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    beta1: float = MISSING
    beta2: float = MISSING
    grad_clip: float = MISSING
    eval_interval: int = MISSING
    eval_batches: int = MISSING
    ckpt_interval: int = MISSING

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for key in ("steps", "batch_size", "eval_interval", "eval_batches", "ckpt_interval"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.seq_len < 2:
            out.append(("seq_len", f"must be >= 2, got {self.seq_len}"))
        if not 0 < self.lr < 1:
            out.append(("lr", f"must be in (0, 1), got {self.lr}"))
        if not 0 <= self.min_lr_ratio <= 1:
            out.append(("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"))
        if not 0 <= self.warmup_steps < max(self.steps, 1):
            out.append(
                ("warmup_steps", f"must be in [0, steps={self.steps}), got {self.warmup_steps}")
            )
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                out.append((key, f"must be in [0, 1), got {getattr(self, key)}"))
        if self.weight_decay < 0:
            out.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        if self.grad_clip <= 0:
            out.append(("grad_clip", f"must be > 0, got {self.grad_clip}"))
        return out


@dataclass(frozen=True)
class TrainOperator:
    """What the config checks and the plan need to know of a training-time operator (its
    rule is built in `methods.training`)."""

    gate_only: bool = False  # acts at the gate pre-activation of a gated FFN (Spark)
    groups_sequences: bool = False  # one pattern per position over `block` sequences
    rescales: bool = False  # `rescale` applies (restores each row's L2 norm)
    fitted: bool = False  # Q-Sparse's scaling law can be fitted to it


TRAIN_OPERATORS = {
    "none": TrainOperator(),
    "topk": TrainOperator(rescales=True, fitted=True),  # Q-Sparse
    "block_topk": TrainOperator(groups_sequences=True, rescales=True, fitted=True),
    "stat_topk": TrainOperator(gate_only=True),  # Spark's statistical top-k
}
FITTED_OPERATORS = tuple(name for name, op in TRAIN_OPERATORS.items() if op.fitted)
PRECISIONS = ("fp", "b1.58")


@dataclass
class SparseTrainCfg:
    """Training-time operators of one train job (`methods.training`): Q-Sparse top-K with
    the STE, Block Q-Sparse, Spark's statistical top-k, and BitNet b1.58 weights."""

    operator: str = "none"  # none | topk | block_topk | stat_topk
    level: float = 0.0  # S: the fraction of zeros the operator keeps out
    sites: list[str] | None = (
        None  # null: topk/block_topk every projection input; stat_topk the gate
    )
    rescale: bool = True  # topk/block_topk: restore each row's L2 norm (Q-Sparse from scratch)
    block: int = 4  # block_topk: sequences of the batch sharing one pattern per position
    precision: str = "fp"  # fp | b1.58 (ternary weights, 8-bit activations, STE)

    def problems(self) -> list[tuple[str, str]]:
        """Everything but `sites`: the site names are the model adapters' (checked by
        actsparse.validation)."""
        out = []
        if self.operator not in TRAIN_OPERATORS:
            out.append(
                ("operator", f"must be one of {', '.join(TRAIN_OPERATORS)}; got {self.operator!r}")
            )
        if not 0.0 <= self.level < 1.0:
            out.append(("level", f"must be in [0, 1), got {self.level}"))
        if self.operator == "none" and self.level:
            out.append(("level", f"operator 'none' trains dense; got level {self.level}"))
        if self.precision not in PRECISIONS:
            out.append(
                ("precision", f"must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
            )
        if self.block < 1:
            out.append(("block", f"must be >= 1, got {self.block}"))
        return out


@dataclass
class ScalingVariantCfg:
    """More grid points beside the main operator (e.g. Spark at 8% nonzero FFN): compared
    with the dense point of the same size and precision, not fitted."""

    operator: str = "stat_topk"
    levels: list[float] = field(default_factory=lambda: [0.92])
    sites: list[str] | None = None
    rescale: bool = True
    block: int = 4
    precisions: list[str] = field(default_factory=lambda: ["fp"])
    sizes: list[str] | None = None  # null: every size


@dataclass
class ScalingFitCfg:
    starts: int = MISSING  # random starts of the least-squares fit (the best one is kept)
    robust: str = MISSING  # scipy least_squares loss on log-space residuals
    f_scale: float = MISSING  # log-residual size where the robust loss turns linear
    bootstrap: int = MISSING  # residual-bootstrap refits for the intervals
    ci: float = MISSING  # central interval reported

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.starts < 1:
            out.append(("starts", f"must be >= 1, got {self.starts}"))
        if self.robust not in ("linear", "soft_l1", "huber", "cauchy", "arctan"):
            out.append(("robust", f"must be a scipy least_squares loss, got {self.robust!r}"))
        if self.f_scale <= 0:
            out.append(("f_scale", f"must be > 0, got {self.f_scale}"))
        if self.bootstrap < 0:
            out.append(("bootstrap", f"must be >= 0, got {self.bootstrap}"))
        if not 0 < self.ci < 1:
            out.append(("ci", f"must be in (0, 1), got {self.ci}"))
        return out


@dataclass
class ScalingCfg:
    """The sparse-training grid (sizes x levels x precisions, one train job each) and the
    fit of Q-Sparse's scaling law to it. No sizes: no grid."""

    family: str = MISSING
    hidden_act: str = MISSING  # Q-Sparse's squared-ReLU gated FFN
    sizes: dict[str, ArchCfg] = field(default_factory=dict)  # entries, added by presets
    levels: list[float] = MISSING
    precisions: list[str] = MISSING
    operator: str = MISSING  # the fitted operator: one of FITTED_OPERATORS
    rescale: bool = MISSING
    block: int = MISSING
    train: TrainCfg = field(default_factory=TrainCfg)
    variants: dict[str, ScalingVariantCfg] = field(
        default_factory=dict
    )  # entries, added by presets
    fit: ScalingFitCfg = field(default_factory=ScalingFitCfg)

    def problems(self) -> list[tuple[str, str]]:
        out = [(f"train.{k}", m) for k, m in self.train.problems()]
        out += [(f"fit.{k}", m) for k, m in self.fit.problems()]
        if not self.sizes:
            return out
        if self.family not in TRAINABLE_FAMILIES:
            out.append(
                ("family", f"must be one of {', '.join(TRAINABLE_FAMILIES)}; got {self.family!r}")
            )
        if self.hidden_act not in HIDDEN_ACTS:
            out.append(
                ("hidden_act", f"must be one of {', '.join(HIDDEN_ACTS)}; got {self.hidden_act!r}")
            )
        if self.family == "opt" and self.hidden_act == "relu2":
            out.append(("hidden_act", "relu2 (the squared-ReLU *gated* FFN) needs family llama"))
        for name, arch in self.sizes.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                out.append((f"sizes.{name}", "size names may use only letters, digits and _"))
            out += [(f"sizes.{name}.{k}", m) for k, m in arch.problems()]
            if self.train.seq_len > arch.max_position_embeddings:
                out.append((f"sizes.{name}.max_position_embeddings",
                            f"{arch.max_position_embeddings} < scaling.train.seq_len={self.train.seq_len}"))  # fmt: skip
        if self.family != "llama":
            ops = {self.operator, *(v.operator for v in self.variants.values())}
            for name in sorted(ops & set(TRAIN_OPERATORS)):
                op = TRAIN_OPERATORS[name]
                if op.groups_sequences:
                    why = ("groups sequences, and OPT flattens the batch before its FFN (a "
                           "group would see later tokens)")  # fmt: skip
                elif op.gate_only:
                    why = "acts at the gate of a gated FFN"
                else:
                    continue
                out.append(("family", f"{name} {why}: it needs family llama"))
        if self.operator not in FITTED_OPERATORS:
            out.append(
                (
                    "operator",
                    f"the fitted operator is one of {', '.join(FITTED_OPERATORS)}; "
                    f"got {self.operator!r}",
                )  # fmt: skip
            )
        points = [
            (k, m)
            for lv in self.levels
            for k, m in self.point_cfg(self.operator, lv, None, self.block).problems()
        ]
        out += [("levels" if k == "level" else k, m) for k, m in points]
        if len(set(self.levels)) != len(self.levels):
            out.append(("levels", f"repeat a level: {self.levels}"))
        for p in self.precisions:
            if p not in PRECISIONS:
                out.append(("precisions", f"must be among {', '.join(PRECISIONS)}; got {p!r}"))
        n_sizes, n_levels = len(self.sizes), len(set(self.levels))
        if n_sizes < 2 or n_levels < 3 or n_sizes * n_levels < 5:
            out.append(("levels", f"the fit of 5 constants needs >= 2 sizes, >= 3 levels and >= 5 "
                        f"points per precision; the grid has {n_sizes} sizes x {n_levels} levels"))  # fmt: skip
        for name, v in self.variants.items():
            key = f"variants.{name}"
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                out.append((key, "variant names may use only letters, digits and _"))
            for lv in v.levels:
                out += [
                    (f"{key}.{k}", m)
                    for k, m in self.point_cfg(v.operator, lv, v.sites, v.block).problems()
                ]
            for p in v.precisions:
                if p not in PRECISIONS:
                    out.append(
                        (f"{key}.precisions", f"must be among {', '.join(PRECISIONS)}; got {p!r}")
                    )
            for size in v.sizes or []:
                if size not in self.sizes:
                    out.append(
                        (f"{key}.sizes", f"unknown size {size!r}; sizes: {', '.join(self.sizes)}")
                    )
        return out

    @staticmethod
    def point_cfg(
        operator: str, level: float, sites: list[str] | None, block: int
    ) -> SparseTrainCfg:
        """The training-time operator of one grid point (level 0: the dense point)."""
        op = operator if level else "none"
        return SparseTrainCfg(operator=op, level=level, sites=sites, block=block)
