"""Evaluate stage: one harness for every variant (dense, decomposed, sparsified, with
predicted masks).

Protocol (docs/usage.md, "Perplexity protocols"):
- perplexity over windows of `seq_len` tokens (the model's context length unless set) of
  the held-out split, from its start (BOS, where the tokenizer adds one, only there):
  non-overlapping by default, every token of a window but the first predicted; with
  `stride` s, windows start every s tokens and score their last s tokens (the first
  window all of its own). A tail that does not fill a window is dropped. With
  `dense_prefill` f, the first floor(f seq_len) positions of every window run with every
  sparsity rule off and their predictions are not scored (TEAL's evaluation). The job
  records its protocol (`protocol.json`, a tag such as `w2048.s512.prefill0.5`). A
  non-finite loss fails the job, naming the window: it is never skipped (skipping
  flatters perplexity);
- the unigram baseline (train-split token frequencies, add-one smoothed) on exactly the
  same predicted tokens;
- fidelity against a reference model on the first `fidelity_tokens` positions of those
  windows that are new in their window and sparsified (every position of a
  non-overlapping window without a dense prefill): relative Frobenius error and mean
  cosine of the final hidden states, and the mean KL(reference || model) of next-token
  distributions;
- tokens/s of the forward passes;
- measured decode latency, batch 1 (`decode_reps` steps after a `decode_context`-token
  prompt): this variant's step with its sparse linears on the input-sparse GEMV kernel,
  and the dense model's, timed in turn in this process (`decode_ms`, `decode_ms_dense`,
  `decode_speedup`); a decomposition is timed beside the model it was made from;
- for a sparsified variant (input `sparsity`: a sparsify job's plan, applied to the same
  model): the zeros each wrapped module fed on, counted on these evaluation tokens
  (`achieved_sparsity.parquet`), their error against the target per site (worst layer),
  and FLOPs and weight bytes read per token by the linear layers. The dense model with the
  plan switched off is the fidelity reference, on the same tokens;
- for predicted masks (input `predictors`: a predictors job): the same, with the masks
  chosen by the predictors (their FLOPs added to the cost), then the oracle at the same
  sites and level on the same windows: `oracle_perplexity`, `oracle_gap_pct` (perplexity
  with predicted masks over the oracle's, in %) and `oracle_sparsity`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from actsparse.data import TokenData
from actsparse.io import write_text
from actsparse.kernels.decode import decode_latency
from actsparse.methods.predictors.apply import apply_predicted, load_predictors, oracle_plan
from actsparse.methods.sparsity.cost import cost_per_token
from actsparse.methods.sparsity.mechanism import SparsityPlan
from actsparse.methods.sparsity.wrappers import Sparsified, apply
from actsparse.models import LoadCfg, adapter_for, default_device, load_model_as, synchronize
from actsparse.schema.stages import EvaluateCfg
from actsparse.stages.job import Metric, StageResult, main
from actsparse.tables import ACHIEVED_SPARSITY, write_table

log = logging.getLogger("actsparse.evaluate")


@dataclass
class EvaluateJob:
    evaluate: EvaluateCfg = field(default_factory=EvaluateCfg)
    load: LoadCfg = field(default_factory=LoadCfg)
    method: str = "dense"
    level: float | None = None
    seed: int = 0


@dataclass
class EvalResult:
    nll: float  # mean nats per predicted token
    n_predicted: int
    unigram_nll: float
    tokens_per_s: float
    hidden_rel_err: float
    hidden_cosine: float
    kl: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


@dataclass(frozen=True)
class Protocol:
    """Which windows perplexity runs on and which of their tokens it scores (module doc).

    Positions are 0..seq_len-1 in a window; the logits at position t predict token t+1.
    """

    seq_len: int
    stride: int | None = None  # None: non-overlapping windows
    dense_prefill: float = 0.0  # the fraction of each window run dense
    prefill: int = 0  # floor(dense_prefill * seq_len): dense positions

    @classmethod
    def of(cls, e: EvaluateCfg, seq_len: int) -> Protocol:
        problems = e.protocol_problems(seq_len)
        if problems:
            raise ValueError("; ".join(f"evaluate.{k}: {m}" for k, m in problems))
        return cls(seq_len, e.stride, float(e.dense_prefill), e.prefill_positions(seq_len))

    @property
    def tag(self) -> str:
        """Compact name: `w512` (non-overlapping), `w2560.s512.prefill0.5`."""
        tag = f"w{self.seq_len}"
        if self.stride is not None:
            tag += f".s{self.stride}"
        if self.dense_prefill:
            tag += f".prefill{self.dense_prefill:g}"
        return tag

    def first_scored(self, window: int) -> int:
        """The first position whose prediction window number `window` scores."""
        lo = 0 if self.stride is None or window == 0 else self.seq_len - self.stride - 1
        return max(lo, self.prefill)

    def first_fresh(self, window: int) -> int:
        """The first position of window `window` that is new in it and sparsified."""
        lo = 0 if self.stride is None or window == 0 else self.seq_len - self.stride
        return max(lo, self.prefill)

    def record(self, split: str) -> dict:
        return {
            "tag": self.tag,
            "split": split,
            "seq_len": self.seq_len,
            "stride": self.stride,
            "dense_prefill": self.dense_prefill,
            "dense_positions": self.prefill,
            "first_window": "scores all of its own tokens",
            "bos": "once, at the start of the split, where the tokenizer adds one",
        }


def windows(
    tokens: np.ndarray, seq_len: int, max_tokens: int | None, stride: int | None = None
) -> torch.Tensor:
    """(n_windows, seq_len) windows from the start of the split: non-overlapping, or (with
    `stride`) starting every `stride` tokens; a tail that fills no whole window is dropped."""
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    n = len(tokens) // seq_len
    if n == 0:
        raise ValueError(f"evaluate: {len(tokens)} tokens do not fill one window of {seq_len}")
    if stride is not None:
        t = torch.from_numpy(np.ascontiguousarray(tokens))
        return t.unfold(0, seq_len, stride).contiguous()
    return torch.from_numpy(np.ascontiguousarray(tokens[: n * seq_len])).view(n, seq_len)


def unigram_logprobs(train_tokens: np.ndarray, vocab_size: int) -> torch.Tensor:
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    return torch.from_numpy(np.log(counts / counts.sum()))


CHUNK = 512  # tokens per float64 fidelity chunk: bounds memory at CHUNK x vocab


@torch.no_grad()
def evaluate_lm(
    model,
    wins: torch.Tensor,
    batch_size: int,
    unigram: torch.Tensor,
    reference=None,
    fidelity_tokens: int = 0,
    dev: torch.device | str = "cpu",
    protocol: Protocol | None = None,
    handle: Sparsified | None = None,
) -> EvalResult:
    """Perplexity, unigram baseline and fidelity of `model` on `wins` (see module doc).

    `protocol` (default: non-overlapping windows, every prediction scored) says which
    predictions each window scores; its dense prefix switches `handle`'s rules off there.
    Throughput counts the forward passes only, with the GPU synchronised around each and
    the first batch (warm-up) left out when there is more than one.
    """
    T = wins.shape[1]
    protocol = protocol or Protocol(T)
    if protocol.seq_len != T:
        raise ValueError(f"evaluate: windows of {T} tokens, protocol for {protocol.seq_len}")

    def prefix():  # a fresh context per forward pass
        if handle is not None and protocol.prefill:
            return handle.dense_prefix(protocol.prefill, T)
        return contextlib.nullcontext()

    nll_sum, n_pred, uni_sum = 0.0, 0, 0.0
    timed_tokens, timed_s = 0, 0.0
    fid_left = fidelity_tokens
    err2 = ref2 = cos_sum = kl_sum = 0.0
    n_fid = 0
    starts = range(0, len(wins), batch_size)
    for start in tqdm(starts, desc="evaluate", unit="batch", mininterval=2):
        x = wins[start : start + batch_size].to(dev)  # (B, T)
        want_hidden = fid_left > 0
        synchronize(dev)
        t = time.perf_counter()
        with prefix():
            out = model(input_ids=x, use_cache=False, output_hidden_states=want_hidden)
        synchronize(dev)
        if start > 0 or len(starts) == 1:
            timed_s += time.perf_counter() - t
            timed_tokens += x.numel()
        target = x[:, 1:]
        firsts = [protocol.first_scored(start + i) for i in range(x.shape[0])]
        for i, a in enumerate(firsts):  # one window at a time: (T-1-a, V) in float32
            tok_nll = F.cross_entropy(
                out.logits[i, a:-1].float(), target[i, a:], reduction="none"
            ).double()
            if not torch.isfinite(tok_nll).all():
                raise FloatingPointError(
                    f"evaluate: non-finite loss in window {start + i}; refusing to drop it"
                )
            nll_sum += tok_nll.sum().item()
        # predictions left unscored are left out of the baseline too
        scored = (
            torch.cat([t[a:] for t, a in zip(target, firsts, strict=True)])
            if any(firsts)
            else target
        )
        n_pred += scored.numel()
        uni_sum += -unigram[scored.cpu()].sum().item()
        if want_hidden:
            if reference is None or reference is model:
                ref_out = out
            else:
                ref_out = reference(input_ids=x, use_cache=False, output_hidden_states=True)
            width, vocab = out.hidden_states[-1].shape[-1], out.logits.shape[-1]
            fresh = [protocol.first_fresh(start + i) for i in range(x.shape[0])]
            rows = None  # every position; else the flat rows new in their window and sparse
            if any(fresh):
                rows = torch.cat(
                    [torch.arange(i * T + f, (i + 1) * T) for i, f in enumerate(fresh)]
                ).to(out.logits.device)
            k = min(fid_left, x.numel() if rows is None else len(rows))
            for c in range(0, k, CHUNK):
                e = min(c + CHUNK, k)
                at = slice(c, e) if rows is None else rows[c:e]
                h = out.hidden_states[-1].reshape(-1, width)[at].double()  # (chunk, d)
                r = ref_out.hidden_states[-1].reshape(-1, width)[at].double()
                err2 += ((h - r) ** 2).sum().item()
                ref2 += (r**2).sum().item()
                cos_sum += F.cosine_similarity(h, r, dim=-1).sum().item()
                lp = F.log_softmax(out.logits.reshape(-1, vocab)[at].double(), -1)  # (chunk, V)
                lr = F.log_softmax(ref_out.logits.reshape(-1, vocab)[at].double(), -1)
                kl_sum += F.kl_div(
                    lp, lr, log_target=True, reduction="sum"
                ).item()  # KL(ref || model)
            n_fid += k
            fid_left -= k
    return EvalResult(
        nll=nll_sum / n_pred,
        n_predicted=n_pred,
        unigram_nll=uni_sum / n_pred,
        tokens_per_s=timed_tokens / timed_s if timed_s > 0 else float("nan"),
        hidden_rel_err=math.sqrt(err2 / ref2) if ref2 > 0 else float("nan"),
        hidden_cosine=cos_sum / n_fid if n_fid else float("nan"),
        kl=kl_sum / n_fid if n_fid else float("nan"),
    )


class DenseView:
    """The sparsified model with its plan switched off: the fidelity reference."""

    def __init__(self, model, handle: Sparsified):
        self.model, self.handle = model, handle

    def __call__(self, **kwargs):
        with self.handle.disabled():
            return self.model(**kwargs)


def sparsity_metrics(achieved: pd.DataFrame, **kw) -> list[Metric]:
    """Achieved sparsity overall and per site, its error overall (`sparsity_err`), and its
    worst error (over modules, so layers) per site, against what the rule can reach: its
    target, or the activation's own zeros where those are more (a ReLU FFN already sparser
    than the target)."""
    reach = achieved[["target", "natural"]].max(axis=1)
    share = achieved.total / achieved.total.sum()
    overall = achieved.zeros.sum() / achieved.total.sum()
    out = [  # the method as a whole: every wrapped module, weighted by its entries
        Metric("sparsity.all", overall, **kw),
        Metric("sparsity_err", abs(overall - float((reach * share).sum())), **kw),
    ]
    for site, g in achieved.groupby("site", sort=True):
        reachable = g[["target", "natural"]].max(axis=1)
        err = (g.achieved - reachable).abs()
        worst = g.loc[err.idxmax()]
        share = g.total / g.total.sum()
        out += [
            Metric(f"sparsity.{site}", g.zeros.sum() / g.total.sum(), **kw),
            Metric(f"target.{site}", float((g.target * share).sum()), **kw),
            Metric(f"natural_sparsity.{site}", float((g.natural * share).sum()), **kw),
            Metric(f"sparsity_err_max.{site}", float(err.max()), **kw),
            Metric(f"sparsity_err_layer.{site}", int(worst.layer), **kw),
        ]
    return out


def decode_metrics(model, handle, reference, e: EvaluateCfg, **mk) -> list[Metric]:
    """Measured decode latency of this variant and of the dense model, in turn, in this
    process: the variant's sparse linears on the input-sparse GEMV (`kernels.decode`)."""
    max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 20)
    context = max(1, min(e.decode_context, max_pos - e.decode_reps - 8))
    other = reference if handle is None and reference is not model else None
    t = decode_latency(model, handle, other, context=context, reps=e.decode_reps)
    log.info(
        "decode step: %.3f ms (dense %.3f ms, %.2fx; %d linears on the sparse kernel)",
        1e3 * t.seconds, 1e3 * t.dense_seconds, t.speedup, t.n_kernel_linears,
    )  # fmt: skip
    return [
        Metric("decode_ms", 1e3 * t.seconds, **mk),
        Metric("decode_ms_dense", 1e3 * t.dense_seconds, **mk),
        Metric("decode_speedup", t.speedup, **mk),
        Metric("decode_context", context, **mk),
        Metric("decode_kernel_linears", t.n_kernel_linears, **mk),
    ]


def run(cfg: EvaluateJob, inputs: dict[str, str], out: Path) -> StageResult:
    e = cfg.evaluate
    dev = default_device()
    model, adapter = load_model_as(inputs["model"], cfg.load, device=dev)
    handle, pset = None, None
    if "sparsity" in inputs:
        plan = SparsityPlan.load(inputs["sparsity"])
        handle = apply(model, adapter, plan)
        reference = DenseView(model, handle)
    elif "predictors" in inputs:
        if cfg.level is None:
            raise ValueError("evaluate: predicted masks need a level")
        pset = load_predictors(inputs["predictors"], model, adapter, dev)
        handle = apply_predicted(model, adapter, pset, cfg.level)
        reference = DenseView(model, handle)
    elif inputs.get("reference", inputs["model"]) == inputs["model"]:
        reference = model  # the dense baseline is its own reference
    else:
        reference, _ = load_model_as(inputs["reference"], cfg.load, device=dev)
    seq_len = e.seq_len or int(model.config.max_position_embeddings)
    protocol = Protocol.of(e, seq_len)  # stride and dense_prefill checked against seq_len
    write_text(out / "protocol.json", json.dumps(protocol.record(e.split), indent=2) + "\n")
    log.info("perplexity protocol %s", protocol.tag)
    vocab = int(model.config.vocab_size)
    m, level = cfg.method, cfg.level
    mk = dict(method=m, level=level)

    def measure(data: TokenData, max_tokens: int | None) -> list[Metric]:
        """Perplexity, the unigram baseline and fidelity on one corpus's held-out split."""
        wins = windows(data.tokens(e.split), seq_len, max_tokens, e.stride)
        unigram = unigram_logprobs(data.tokens("train"), vocab)
        r = evaluate_lm(
            model, wins, e.batch_size, unigram, reference, e.fidelity_tokens, dev,
            protocol=protocol, handle=handle,
        )  # fmt: skip
        log.info(
            "%s: perplexity %.3f (unigram %.3f) over %d tokens",
            data.corpus,
            r.perplexity,
            math.exp(r.unigram_nll),
            r.n_predicted,
        )
        kw = dict(corpus=data.corpus, split=e.split)
        return [
            Metric("perplexity", r.perplexity, **mk, **kw),
            Metric("nll", r.nll, **mk, **kw),
            Metric("perplexity", math.exp(r.unigram_nll), method="unigram", **kw),
            Metric("nll", r.unigram_nll, method="unigram", **kw),
            Metric("eval_tokens", r.n_predicted, **mk, **kw),
            Metric("seq_len", seq_len, **mk, **kw),
            # the protocol (protocol.json names it): stride seq_len = non-overlapping windows
            Metric("stride", protocol.stride or seq_len, **mk, **kw),
            Metric("dense_prefill", protocol.dense_prefill, **mk, **kw),
            Metric("tokens_per_s", r.tokens_per_s, **mk, **kw),
            Metric("hidden_rel_err", r.hidden_rel_err, **mk, **kw),
            Metric("hidden_cosine", r.hidden_cosine, **mk, **kw),
            Metric("kl_div", r.kl, **mk, **kw),
        ]

    data = TokenData(inputs["data"])
    kw = dict(corpus=data.corpus, split=e.split)
    metrics = measure(data, e.max_tokens)
    # which corpus is the study's own (the report's tables); calibration may use another
    metrics.append(Metric("study_corpus", 1.0, **mk, **kw))
    metrics.append(Metric("n_params", sum(p.numel() for p in model.parameters()), **mk))
    artifacts = [out / "protocol.json"]
    achieved = None
    if handle is not None:
        achieved = handle.achieved()
        write_table(achieved, out / "achieved_sparsity.parquet", ACHIEVED_SPARSITY)
        artifacts.append(out / "achieved_sparsity.parquet")
        metrics += sparsity_metrics(achieved, **mk, **kw)
    cost = cost_per_token(
        model,
        adapter,
        achieved,
        handle.plan.output_skips if handle is not None else None,
        bytes_per_param=next(model.parameters()).element_size(),
        input_skips=handle.plan.input_skips if handle is not None else None,
    )
    if pset is not None:  # the predictors run too
        cost["predictor_flops_per_token"] = float(pset.flops_per_token)
        cost["flops_per_token"] += pset.flops_per_token
    if reference is not model and not isinstance(reference, DenseView):
        # other weights (a decomposition): FLOPs against the model they were made from
        ref = cost_per_token(reference, adapter_for(reference.config.model_type))
        cost["dense_flops_per_token"] = ref["dense_flops_per_token"]
    metrics += [Metric(k, v, **mk) for k, v in cost.items()]
    metrics.append(
        Metric("flops_ratio", cost["flops_per_token"] / cost["dense_flops_per_token"], **mk)
    )
    if e.decode_reps:
        metrics += decode_metrics(model, handle, reference, e, **mk)
    # extra corpora (eval_data) after the zeros above were counted on the study's own
    for key in sorted(k for k in inputs if k.startswith("data.")):
        metrics += measure(TokenData(inputs[key]), e.eval_data_max_tokens or e.max_tokens)
    if pset is not None and handle is not None:
        ppl = next(m.value for m in metrics if m.metric == "perplexity" and m.method == cfg.method)
        handle.remove()
        oracle = apply(model, adapter, oracle_plan(pset, model, adapter, float(cfg.level)))
        wins = windows(data.tokens(e.split), seq_len, e.max_tokens, e.stride)
        unigram = unigram_logprobs(data.tokens("train"), vocab)
        r = evaluate_lm(
            model, wins, e.batch_size, unigram, None, 0, dev, protocol=protocol, handle=oracle
        )
        oracle_sparsity = sparsity_metrics(oracle.achieved())[0].value
        oracle.remove()
        log.info("oracle at the same level: perplexity %.3f (predicted %.3f)", r.perplexity, ppl)
        metrics += [
            Metric("oracle_perplexity", r.perplexity, **mk, **kw),
            Metric("oracle_gap_pct", 100 * (ppl / r.perplexity - 1), **mk, **kw),
            Metric("oracle_sparsity", oracle_sparsity, **mk, **kw),
        ]
    return StageResult(metrics, artifacts)


if __name__ == "__main__":
    main("evaluate", EvaluateJob, run)
