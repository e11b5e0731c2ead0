"""Evaluate stage: one harness for every variant (the dense baseline now; methods later).

Protocol (METHODS.md, "Evaluation protocol"):
- perplexity over non-overlapping windows of `seq_len` tokens (the model's context length
  unless set) of the held-out split; within a window every token but the first is
  predicted; the tail shorter than a window is dropped. A non-finite loss fails the job,
  naming the window: it is never skipped (skipping flatters perplexity);
- the unigram baseline (train-split token frequencies, add-one smoothed) on exactly the
  same predicted tokens;
- fidelity against a reference model on the first `fidelity_tokens` of those windows:
  relative Frobenius error and mean cosine of the final hidden states, and the mean
  KL(reference || model) of next-token distributions;
- tokens/s of the forward passes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from actsparse.config import EvaluateCfg
from actsparse.data import TokenData
from actsparse.models import load_model
from actsparse.stages.calibrate import LoadCfg, device
from actsparse.stages.job import Metric, StageResult, main

log = logging.getLogger("actsparse.evaluate")


@dataclass
class EvaluateJob:
    evaluate: EvaluateCfg = field(default_factory=EvaluateCfg)
    load: LoadCfg = field(default_factory=LoadCfg)
    method: str = "dense"
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


def windows(tokens: np.ndarray, seq_len: int, max_tokens: int | None) -> torch.Tensor:
    """(n_windows, seq_len) non-overlapping windows from the start of the split."""
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    n = len(tokens) // seq_len
    if n == 0:
        raise ValueError(f"evaluate: {len(tokens)} tokens do not fill one window of {seq_len}")
    return torch.from_numpy(np.ascontiguousarray(tokens[: n * seq_len])).view(n, seq_len)


def unigram_logprobs(train_tokens: np.ndarray, vocab_size: int) -> torch.Tensor:
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    return torch.from_numpy(np.log(counts / counts.sum()))


@torch.no_grad()
def evaluate_lm(
    model,
    wins: torch.Tensor,
    batch_size: int,
    unigram: torch.Tensor,
    reference=None,
    fidelity_tokens: int = 0,
    dev: torch.device | str = "cpu",
) -> EvalResult:
    """Perplexity, unigram baseline and fidelity of `model` on `wins` (see module doc)."""
    nll_sum, n_pred, uni_sum, fwd_time = 0.0, 0, 0.0, 0.0
    fid_left = fidelity_tokens
    err2 = ref2 = cos_sum = kl_sum = 0.0
    n_fid = 0
    for start in tqdm(
        range(0, len(wins), batch_size), desc="evaluate", unit="batch", mininterval=2
    ):
        x = wins[start : start + batch_size].to(dev)  # (B, T)
        want_hidden = fid_left > 0
        t = time.perf_counter()
        out = model(input_ids=x, use_cache=False, output_hidden_states=want_hidden)
        fwd_time += time.perf_counter() - t
        logp = F.log_softmax(out.logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        target = x[:, 1:]
        tok_nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).double()  # (B, T-1)
        if not torch.isfinite(tok_nll).all():
            bad = start + int((~torch.isfinite(tok_nll)).any(1).nonzero()[0, 0])
            raise FloatingPointError(
                f"evaluate: non-finite loss in window {bad}; refusing to drop it"
            )
        nll_sum += tok_nll.sum().item()
        n_pred += target.numel()
        uni_sum += -unigram[target.cpu()].sum().item()
        if want_hidden:
            if reference is None or reference is model:
                ref_out = out
            else:
                ref_out = reference(input_ids=x, use_cache=False, output_hidden_states=True)
            h = out.hidden_states[-1].double().reshape(-1, out.hidden_states[-1].shape[-1])
            r = ref_out.hidden_states[-1].double().reshape(-1, h.shape[-1])
            k = min(fid_left, h.shape[0])
            h, r = h[:k], r[:k]
            err2 += ((h - r) ** 2).sum().item()
            ref2 += (r**2).sum().item()
            cos_sum += F.cosine_similarity(h, r, dim=-1).sum().item()
            lp = F.log_softmax(out.logits.double().reshape(-1, out.logits.shape[-1])[:k], -1)
            lr = F.log_softmax(ref_out.logits.double().reshape(-1, out.logits.shape[-1])[:k], -1)
            kl_sum += (lr.exp() * (lr - lp)).sum().item()
            n_fid += k
            fid_left -= k
    return EvalResult(
        nll=nll_sum / n_pred,
        n_predicted=n_pred,
        unigram_nll=uni_sum / n_pred,
        tokens_per_s=wins.numel() / fwd_time if fwd_time > 0 else float("nan"),
        hidden_rel_err=math.sqrt(err2 / ref2) if ref2 > 0 else float("nan"),
        hidden_cosine=cos_sum / n_fid if n_fid else float("nan"),
        kl=kl_sum / n_fid if n_fid else float("nan"),
    )


def run(cfg: EvaluateJob, inputs: dict[str, str], out: Path) -> StageResult:
    e = cfg.evaluate
    dev = device()
    model, _ = load_model(
        inputs["model"], cfg.load.dtype, cfg.load.revision, cfg.load.trust_remote_code, device=dev
    )
    if inputs.get("reference", inputs["model"]) == inputs["model"]:
        reference = model  # the dense baseline is its own reference
    else:
        reference, _ = load_model(
            inputs["reference"],
            cfg.load.dtype,
            cfg.load.revision,
            cfg.load.trust_remote_code,
            device=dev,
        )
    data = TokenData(inputs["data"])
    seq_len = e.seq_len or int(model.config.max_position_embeddings)
    wins = windows(data.tokens(e.split), seq_len, e.max_tokens)
    vocab = int(model.config.vocab_size)
    unigram = unigram_logprobs(data.tokens("train"), vocab)
    r = evaluate_lm(model, wins, e.batch_size, unigram, reference, e.fidelity_tokens, dev)
    log.info(
        "perplexity %.3f (unigram %.3f) over %d tokens",
        r.perplexity,
        math.exp(r.unigram_nll),
        r.n_predicted,
    )

    corpus, m = data.corpus, cfg.method
    kw = dict(corpus=corpus, split=e.split)
    metrics = [
        Metric("perplexity", r.perplexity, method=m, **kw),
        Metric("nll", r.nll, method=m, **kw),
        Metric("perplexity", math.exp(r.unigram_nll), method="unigram", **kw),
        Metric("nll", r.unigram_nll, method="unigram", **kw),
        Metric("eval_tokens", r.n_predicted, method=m, **kw),
        Metric("seq_len", seq_len, method=m, **kw),
        Metric("tokens_per_s", r.tokens_per_s, method=m, **kw),
        Metric("hidden_rel_err", r.hidden_rel_err, method=m, **kw),
        Metric("hidden_cosine", r.hidden_cosine, method=m, **kw),
        Metric("kl_div", r.kl, method=m, **kw),
        Metric("n_params", sum(p.numel() for p in model.parameters()), method=m),
    ]
    return StageResult(metrics)


if __name__ == "__main__":
    main("evaluate", EvaluateJob, run)
