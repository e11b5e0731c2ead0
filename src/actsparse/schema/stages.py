"""Per-stage settings: calibrate, evaluate, the three method sweeps (sparsify, decompose,
predictors) and what each rule asks a cluster for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class CalibrateCfg:
    split: str = MISSING
    n_tokens: int = MISSING
    seq_len: int = MISSING
    batch_size: int = MISSING
    hist_bins: int = MISSING  # log-spaced bins of |x| over [hist_min, hist_max]
    hist_min: float = MISSING
    hist_max: float = MISSING
    near_zero_eps: float = MISSING  # |x| <= eps counts as near-zero
    layers_per_pass: int = MISSING  # 0: every layer in one pass; k: k layers' at once
    # the calibration corpus: null = the study's (`data`); else an `eval_data` entry's name
    # (e.g. c4), whose `split` is read, tokenized with the study's tokenizer
    corpus: str | None = MISSING

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.split not in ("train", "valid", "test"):
            out.append(("split", f"must be train, valid or test; got {self.split!r}"))
        for key in ("n_tokens", "batch_size"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.seq_len < 2:
            out.append(("seq_len", f"must be >= 2, got {self.seq_len}"))
        if self.hist_bins < 16:
            out.append(("hist_bins", f"must be >= 16, got {self.hist_bins}"))
        if not 0 < self.hist_min < self.hist_max:
            out.append(
                (
                    "hist_min",
                    f"must satisfy 0 < hist_min < hist_max, got {self.hist_min}, {self.hist_max}",
                )
            )
        if self.near_zero_eps < 0:
            out.append(("near_zero_eps", f"must be >= 0, got {self.near_zero_eps}"))
        if self.layers_per_pass < 0:
            out.append(("layers_per_pass", f"must be >= 0, got {self.layers_per_pass}"))
        return out


# the study corpus's own last-word task (actsparse.downstream.lastword): a reserved name in
# evaluate.tasks, kept out of the zero-shot mean (it is not one of the papers' tasks)
LASTWORD = "lastword"


@dataclass
class EvaluateCfg:
    split: str = MISSING
    seq_len: int | None = MISSING  # null: the model's context length
    # perplexity protocol (docs/usage.md, "Perplexity protocols"). stride null: windows do
    # not overlap; s < seq_len: windows advance by s and score their last s tokens (the
    # first window all of its own)
    stride: int | None = MISSING
    # the first floor(dense_prefill * seq_len) positions of every window run with every
    # sparsity rule off (a dense prefill) and are not scored; 0: every position sparsified
    dense_prefill: float = MISSING
    batch_size: int = MISSING
    max_tokens: int | None = MISSING  # null: the whole split
    eval_data_max_tokens: int | None = MISSING  # eval_data corpora; null: max_tokens
    fidelity_tokens: int = MISSING  # tokens on which hidden states and next-token KL are compared
    # measured decode latency (batch 1): steps timed per variant, beside the dense model,
    # after a prompt of `decode_context` tokens; 0 steps: not measured
    decode_reps: int = MISSING
    decode_context: int = MISSING
    # zero-shot tasks run through lm-evaluation-harness on the very model the job built
    # (sparsity and low-rank factors included; actsparse.downstream): harness task names,
    # the names of tasks defined in `task_paths`, or `lastword` (the study corpus's own
    # last-word task). Empty: none
    tasks: list[str] = MISSING
    task_limit: int | None = MISSING  # the first N items of each task; null: all of them
    task_batch_size: int = MISSING
    task_paths: list[str] = MISSING  # folders of your own lm-eval task YAMLs (include paths)

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.task_limit is not None and self.task_limit < 1:
            out.append(("task_limit", f"must be >= 1 or null (every item), got {self.task_limit}"))
        if self.task_batch_size < 1:
            out.append(("task_batch_size", f"must be >= 1, got {self.task_batch_size}"))
        twice = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if twice:
            out.append(("tasks", f"lists {', '.join(twice)} more than once"))
        if self.decode_reps < 0:
            out.append(("decode_reps", f"must be >= 0, got {self.decode_reps}"))
        if self.decode_context < 1:
            out.append(("decode_context", f"must be >= 1, got {self.decode_context}"))
        if self.split not in ("train", "valid", "test"):
            out.append(("split", f"must be train, valid or test; got {self.split!r}"))
        if self.seq_len is not None and self.seq_len < 2:
            out.append(("seq_len", f"must be >= 2 or null, got {self.seq_len}"))
        if self.batch_size < 1:
            out.append(("batch_size", f"must be >= 1, got {self.batch_size}"))
        for key in ("max_tokens", "eval_data_max_tokens"):
            v = getattr(self, key)
            if v is not None and v < 2:
                out.append((key, f"must be >= 2 or null, got {v}"))
        if self.fidelity_tokens < 0:
            out.append(("fidelity_tokens", f"must be >= 0, got {self.fidelity_tokens}"))
        if self.stride is not None and self.stride < 1:
            out.append(("stride", f"must be >= 1 or null, got {self.stride}"))
        if not 0.0 <= self.dense_prefill < 1.0:
            out.append(("dense_prefill", f"must be in [0, 1), got {self.dense_prefill}"))
        if self.seq_len is not None and self.seq_len >= 2 and not out:
            out += self.protocol_problems(self.seq_len)
        return out

    def prefill_positions(self, seq_len: int) -> int:
        """The dense prefix of a `seq_len`-token window: floor(dense_prefill * seq_len)."""
        return int(round(self.dense_prefill * seq_len, 9))  # >= 0: int() is floor

    def protocol_problems(self, seq_len: int) -> list[tuple[str, str]]:
        """`stride` and `dense_prefill` against the window (checked again by the stage when
        `seq_len` is null, the model's context): every window must score a token, and a
        dense prefix must not reach the tokens a sliding window scores."""
        s, p = self.stride, self.prefill_positions(seq_len)
        if s is not None and s >= seq_len:
            return [("stride", f"must be < seq_len ({seq_len}) or null, got {s}")]
        # the lowest position whose prediction a window must score (after the first window)
        last = seq_len - 2 if s is None else seq_len - s - 1
        if p > last:
            what = "no token" if s is None else f"not all of the last {s} tokens (stride)"
            return [("dense_prefill", f"{self.dense_prefill} keeps {p} of {seq_len} positions "
                     f"dense, so a window scores {what}; at most {last} may be dense")]  # fmt: skip
        return []


def level_problems(levels: list[float]) -> list[tuple[str, str]]:
    """(key, message) for each sparsity level outside [0, 1)."""
    return [
        ("levels", f"sparsity levels must be in [0, 1), got {level}")
        for level in levels
        if not 0.0 <= level < 1.0
    ]


def ratio_problems(ratios: list[float]) -> list[tuple[str, str]]:
    """(key, message) for each compression ratio outside (0, 1)."""
    return [
        (
            "ratios",
            f"compression ratios (fraction of parameters removed) must be in (0, 1), got {r}",
        )
        for r in ratios
        if not 0.0 < r < 1.0
    ]


# The three sweeps below hold their `methods` entries raw: each entry's typed config is
# its method's dataclass, known only to the method registries (above this schema). The
# entries are parsed and checked by `actsparse.sweeps`.


@dataclass
class SparsifyCfg:
    """The sparsity sweep: every entry of `methods` (a method config from
    `conf/sparsify/<method>.yaml`, keyed by an entry name) at every level."""

    levels: list[float] = MISSING
    methods: dict[str, Any] = field(default_factory=dict)  # entries, added by presets

    def levels_of(self, entry: Any) -> list[float]:
        return list(entry.levels if entry.levels is not None else self.levels)

    def problems(self) -> list[tuple[str, str]]:
        out = level_problems(self.levels)
        if len(set(self.levels)) != len(self.levels):
            out.append(("levels", f"levels repeat: {self.levels}"))
        return out


@dataclass
class DecomposeCfg:
    """The low-rank sweep: every entry of `methods` (a method config from
    `conf/decompose/<method>.yaml`, keyed by an entry name) at every compression ratio
    (the fraction of the target linears' parameters removed)."""

    ratios: list[float] = MISSING
    methods: dict[str, Any] = field(default_factory=dict)  # entries, added by presets

    def ratios_of(self, entry: Any) -> list[float]:
        return list(entry.ratios if entry.ratios is not None else self.ratios)

    def problems(self) -> list[tuple[str, str]]:
        out = ratio_problems(self.ratios)
        if len(set(self.ratios)) != len(self.ratios):
            out.append(("ratios", f"ratios repeat: {self.ratios}"))
        return out


@dataclass
class PredictorsCfg:
    """The predictors sweep: every entry of `methods` (a predictor config from
    `conf/predictors/<method>.yaml`, keyed by an entry name) on every model; its predicted
    masks are evaluated at every level (null: the sparsify sweep's levels)."""

    levels: list[float] | None = MISSING
    methods: dict[str, Any] = field(default_factory=dict)  # entries, added by presets

    def levels_of(self, entry: Any, default: list[float]) -> list[float]:
        if entry.levels is not None:
            return list(entry.levels)
        return list(self.levels if self.levels is not None else default)

    def problems(self) -> list[tuple[str, str]]:
        levels = self.levels or []
        out = level_problems(levels)
        if len(set(levels)) != len(levels):
            out.append(("levels", f"levels repeat: {levels}"))
        return out


@dataclass
class RuleResources:
    """What one rule's jobs ask a cluster for (never part of a job's config hash)."""

    mem_mb: int = MISSING
    runtime: int = MISSING  # minutes
    gpus: int = MISSING
    threads: int = MISSING  # CPU threads (torch intra-op; SLURM cpus_per_task)

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for key in ("mem_mb", "runtime", "threads"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.gpus < 0:
            out.append(("gpus", f"must be >= 0, got {self.gpus}"))
        return out


@dataclass
class ResourcesCfg:
    data: RuleResources = field(default_factory=RuleResources)
    import_gguf: RuleResources = field(default_factory=RuleResources)
    train: RuleResources = field(default_factory=RuleResources)
    calibrate: RuleResources = field(default_factory=RuleResources)
    decompose: RuleResources = field(default_factory=RuleResources)
    sparsify: RuleResources = field(default_factory=RuleResources)
    allocate: RuleResources = field(default_factory=RuleResources)  # allocation searches
    predictors: RuleResources = field(default_factory=RuleResources)
    evaluate: RuleResources = field(default_factory=RuleResources)
    grid: RuleResources = field(default_factory=RuleResources)  # scaling-grid train jobs
    scaling: RuleResources = field(default_factory=RuleResources)  # the scaling-law fit

    def problems(self) -> list[tuple[str, str]]:
        rules = ("data", "import_gguf", "train", "calibrate", "decompose", "sparsify",
                 "allocate", "predictors", "evaluate", "grid", "scaling")  # fmt: skip
        return [(f"{rule}.{k}", m) for rule in rules for k, m in getattr(self, rule).problems()]
