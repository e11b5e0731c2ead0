"""Train stage: a tiny Hugging Face causal LM from scratch on the data stage's tokens.

AdamW (no decay on norms and biases), linear warmup then cosine decay to
`lr * min_lr_ratio`. The batch of step `t` depends only on `(seed, t)`, and checkpoints
hold the model, optimizer, schedule and loss curve, so a killed run resumes from its last
checkpoint and continues the very same loss curve.

With a `sparse` config (the scaling grid), the model trains through the training-time
operators of `methods.training` (Q-Sparse top-K with the STE, Block Q-Sparse, Spark's
statistical top-k, BitNet b1.58): every loss, the held-out one included, is the sparse
(quantized) model's. `model/` then holds the plain latent weights and `sparse_training.json`
the operators they were trained with; `achieved_sparsity.parquet` the zeros measured on
the held-out batches.

Outputs: `model/` (save_pretrained, safetensors, with the tokenizer), `loss_curve.parquet`
(schema `tables.LOSS_CURVE`), `loss_curve.png`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import AutoTokenizer, get_cosine_with_min_lr_schedule_with_warmup

from actsparse.data import TokenData, batch_at
from actsparse.faults import kill_point
from actsparse.io import atomic_path, write_text
from actsparse.methods.training import attach
from actsparse.models.adapters import adapter_for, linear_params
from actsparse.models.loader import default_device
from actsparse.models.tiny import build_tiny
from actsparse.schema.models import ModelCfg
from actsparse.schema.study import to_dict
from actsparse.schema.training import SparseTrainCfg, TrainCfg
from actsparse.stages.job import Metric, StageResult, main
from actsparse.tables import ACHIEVED_SPARSITY, LOSS_CURVE, write_table

log = logging.getLogger("actsparse.train")


@dataclass
class TrainJob:
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    sparse: SparseTrainCfg = field(default_factory=SparseTrainCfg)  # dense by default
    seed: int = 0


def autocast(dev: torch.device):
    """bf16 mixed precision on a GPU (weights and optimizer stay fp32); nothing on a CPU,
    so that CPU runs are exact and reproducible."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


@torch.no_grad()
def held_out_loss(model, tokens: torch.Tensor, cfg: TrainCfg, seed: int) -> float:
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    with autocast(dev):
        losses = [
            model(
                input_ids=(
                    x := batch_at(tokens, -1 - i, cfg.batch_size, cfg.seq_len, seed).to(dev)
                ),
                labels=x,
            ).loss.item()
            for i in range(cfg.eval_batches)
        ]
    model.train(was_training)
    return float(np.mean(losses))


def make_optimizer(model: torch.nn.Module, cfg: TrainCfg) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )


def _save_checkpoint(
    path: Path, model, optimizer, scheduler, step: int, rows: list[dict], elapsed: float
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "rows": rows,
        "elapsed": elapsed,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def run(cfg: TrainJob, inputs: dict[str, str], out: Path) -> StageResult:
    tc = cfg.train
    data = TokenData(inputs["data"])
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    train_tokens = torch.from_numpy(data.tokens("train"))
    valid_tokens = torch.from_numpy(data.tokens("valid"))
    for name, toks in (("train", train_tokens), ("valid", valid_tokens)):
        if len(toks) < tc.seq_len + 1:
            raise ValueError(
                f"train.seq_len={tc.seq_len} exceeds the {len(toks)} tokens of the {name} split"
            )

    torch.manual_seed(cfg.seed)
    eos = tokenizer.eos_token_id
    model = build_tiny(cfg.model, vocab_size=len(tokenizer), bos_id=eos, eos_id=eos)
    adapter = adapter_for(model.config.model_type)
    linears = [m for lay in range(len(adapter.layers(model)))
               for mods in adapter.site_linears(model, lay).values() for _, m in mods]  # fmt: skip
    n_linear = sum(linear_params(m) for m in linears)
    ops = attach(model, adapter, cfg.sparse)  # a no-op for dense full-precision training
    dev = default_device()  # a GPU where there is one (cluster grids), else the CPU
    model.to(dev)
    model.train()
    optimizer = make_optimizer(model, tc)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=tc.warmup_steps,
        num_training_steps=tc.steps,
        min_lr_rate=tc.min_lr_ratio,
    )
    ckpt = out / "ckpt" / "state.pt"
    start, rows, elapsed = 0, [], 0.0
    if ckpt.is_file():  # resume a killed run
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, rows, elapsed = int(state["step"]), list(state["rows"]), float(state["elapsed"])
        log.info("resuming from checkpoint at step %d", start)

    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter() - elapsed
    bar = tqdm(
        range(start, tc.steps),
        initial=start,
        total=tc.steps,
        desc=f"train {cfg.model.family}",
        unit="step",
        mininterval=2,
    )
    for step in bar:
        x = batch_at(train_tokens, step, tc.batch_size, tc.seq_len, cfg.seed).to(dev)
        with autocast(dev):
            loss = model(input_ids=x, labels=x).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train: non-finite loss {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        valid = (
            held_out_loss(model, valid_tokens, tc, cfg.seed)
            if done % tc.eval_interval == 0 or done == tc.steps
            else None
        )
        rows.append(
            {
                "step": done,
                "tokens": done * tc.batch_size * tc.seq_len,
                "lr": lr,
                "train_loss": loss.item(),
                "valid_loss": valid,
                "elapsed_s": time.perf_counter() - t0,
            }
        )
        bar.set_postfix(
            loss=f"{loss.item():.3f}",
            **({"valid": f"{valid:.3f}"} if valid is not None else {}),
            refresh=False,
        )
        if done % tc.ckpt_interval == 0 and done < tc.steps:
            _save_checkpoint(
                ckpt, model, optimizer, scheduler, done, rows, time.perf_counter() - t0
            )
            kill_point("train.after_checkpoint")
    bar.close()

    model.eval()
    ops.reset_counts()  # the zeros the operators make on the held-out batches
    held_out_loss(model, valid_tokens, tc, cfg.seed)
    achieved = ops.achieved()
    ops.remove()
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    curve = pd.DataFrame(rows, columns=LOSS_CURVE.names)
    write_table(curve, out / "loss_curve.parquet", LOSS_CURVE)
    plot = plot_loss_curve(
        curve, out / "loss_curve.png", title=f"{cfg.model.family} ({n_params / 1e6:.2f}M params)"
    )
    shutil.rmtree(out / "ckpt", ignore_errors=True)

    final_valid = float(curve.valid_loss.dropna().iloc[-1])
    metrics = [
        Metric("final_train_loss", float(curve.train_loss.tail(10).mean()), split="train"),
        Metric("final_valid_loss", final_valid, split="valid"),
        Metric("valid_perplexity", math.exp(final_valid), split="valid"),
        Metric("n_params", n_params),
        Metric("n_linear_params", n_linear),  # N of the scaling law: what sparsity acts on
        Metric("tokens_trained", float(curve.tokens.iloc[-1])),
    ]
    artifacts = [out / "loss_curve.parquet", plot]
    if cfg.sparse.operator != "none" or cfg.sparse.precision != "fp":
        write_text(out / "sparse_training.json", json.dumps(to_dict(cfg.sparse), indent=2) + "\n")
        metrics.append(Metric("train_sparsity", cfg.sparse.level))
        if achieved is not None:
            write_table(achieved, out / "achieved_sparsity.parquet", ACHIEVED_SPARSITY)
            zeros, total = achieved.zeros.sum(), achieved.total.sum()
            metrics.append(Metric("achieved_sparsity", float(zeros / total), split="valid"))
            artifacts.append(out / "achieved_sparsity.parquet")
        for m in metrics:  # the operator names the method of a scaling-grid point
            m.method, m.level = grid_method(cfg.sparse), cfg.sparse.level
    return StageResult(metrics, artifacts)


def grid_method(sparse: SparseTrainCfg) -> str:
    """The method column of a sparse or 1.58-bit train job: `topk`, `dense+b1.58`, ..."""
    op = "dense" if sparse.operator == "none" else sparse.operator
    return op if sparse.precision == "fp" else f"{op}+{sparse.precision}"


def plot_loss_curve(curve: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve.step, curve.train_loss, lw=0.8, alpha=0.6, label="train")
    v = curve.dropna(subset=["valid_loss"])
    ax.plot(v.step, v.valid_loss, "o-", label="held-out (valid)")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main("train", TrainJob, run, resumable=True)
