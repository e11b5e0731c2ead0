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
  with predicted masks over the oracle's, in %) and `oracle_sparsity`;
- zero-shot tasks (`tasks`) through lm-evaluation-harness on this variant as built (its
  sparsity on every token of every request): per task, `acc.<task>`, `acc_norm.<task>`
  and their `_stderr`, as the harness reports them, with `task_items.<task>` and
  `task_s.<task>` (seconds); `tasks.json` records where each task was defined.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from actsparse.data import TokenData
from actsparse.downstream import lastword
from actsparse.downstream.harness import run_tasks
from actsparse.io import write_text
from actsparse.kernels.decode import decode_latency
from actsparse.methods.predictors.apply import apply_predicted, load_predictors, oracle_plan
from actsparse.methods.sparsity.cost import cost_per_token
from actsparse.methods.sparsity.mechanism import SparsityPlan
from actsparse.methods.sparsity.wrappers import Sparsified, apply
from actsparse.models import LoadCfg, adapter_for, default_device, load_model_as
from actsparse.perplexity import Protocol, evaluate_lm, unigram_logprobs, windows
from actsparse.schema.stages import LASTWORD, EvaluateCfg
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


def task_metrics(model, data: TokenData, e: EvaluateCfg, seed: int, out: Path, **mk):
    """The zero-shot tasks on `model` as it stands, as metrics (no corpus: a task is its
    own data), and the files that record them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    files = [out / "tasks.json"]
    with tempfile.TemporaryDirectory() as task_dir:  # lastword's YAML (it names a path)
        paths: list[str | Path] = list(e.task_paths)
        if LASTWORD in e.tasks:
            docs = lastword.held_out_docs(data.tokens(e.split), tokenizer)
            items = lastword.items_from_text(docs)
            lastword.write_task(items, out / "lastword.jsonl", Path(task_dir))
            paths.append(task_dir)
            files.append(out / "lastword.jsonl")
        scores = run_tasks(
            model, tokenizer, list(e.tasks), limit=e.task_limit, batch_size=e.task_batch_size,
            local_paths=paths, seed=seed,
        )  # fmt: skip
    metrics = []
    for s in scores:
        for task, values in s.results.items():
            metrics += [Metric(f"{k}.{task}", v, **mk) for k, v in sorted(values.items())]
            if not {"acc", "acc_norm"} & set(values):
                log.warning("task %s reports %s, no acc or acc_norm: in the job's metrics, not "
                            "in the report's accuracy tables", task, sorted(values))  # fmt: skip
        metrics += [Metric(f"task_items.{t}", n, **mk) for t, n in sorted(s.items.items())]
        metrics.append(Metric(f"task_s.{s.task}", s.seconds, **mk))
    built = "lastword.jsonl: built by this job from the held-out split"
    record = [
        {"task": s.task, "defined_in": built if s.task == LASTWORD else s.defined_in,
         "items": s.items, "seconds": s.seconds, "limit": e.task_limit, "results": s.results}
        for s in scores
    ]  # fmt: skip
    write_text(out / "tasks.json", json.dumps(record, indent=2) + "\n")
    return metrics, files


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
        overhead_params=handle.plan.overhead_params(model) if handle is not None else 0.0,
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
    if e.tasks:  # after the zeros above were counted: the tasks' tokens are not the study's
        task_rows, task_files = task_metrics(model, data, e, cfg.seed, out, **mk)
        metrics += task_rows
        artifacts += task_files
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
