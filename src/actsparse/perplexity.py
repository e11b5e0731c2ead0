"""Perplexity and fidelity of a language model on windows of a token stream: the
measurement the evaluate stage makes of every variant (its docstring states the protocol).

`windows` cuts a split into the windows a `Protocol` (length, stride, dense prefill)
scores; `evaluate_lm` runs the model over them and returns the summed NLL, the unigram
baseline's on the same tokens, and the fidelity to a reference model (hidden-state error
and cosine, next-token KL) in float64.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from actsparse.methods.sparsity.wrappers import Sparsified
from actsparse.models import synchronize
from actsparse.schema.stages import EvaluateCfg


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
