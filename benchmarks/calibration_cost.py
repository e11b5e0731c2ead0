"""Sequential threshold calibration (`calibrate_thresholds`), old against new, on one model.

- `old`: the algorithm before blocks' outputs were carried forward (the tests' reference):
  for each layer the model reruns from its first layer to capture that layer's inputs, so
  the cost grows with the square of the depth;
- `new`: `actsparse.methods.sparsity.base.calibrate_thresholds`, each block run once per
  batch on the previous block's outputs (plus one partial rerun per site).

Both fill in the thresholds of the rules a method places (threshold: one site; cats: the
gate; teal: every linear-input site) at one level, on `--tokens` calibration tokens in
8-sequence batches of `--seq-len` tokens, on `--threads` CPU threads. The old one can run on
fewer tokens (`--old-tokens`; its time is then scaled linearly to `--tokens`, a batch costs
the same whatever the others: the `old_s_at_tokens` column). Where both saw the same tokens,
`max_rel_diff` is the largest relative difference between their thresholds (0: identical).
Prints a table and appends to benchmarks/results/calibration_cost.parquet.

    python benchmarks/calibration_cost.py                  # a tiny random Llama, 8 layers
    python benchmarks/calibration_cost.py /tmp/smol/hf --tokens 16384 --seq-len 512 \\
        --old-tokens 4096 --methods threshold cats
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from provenance import RESULTS, provenance

from actsparse.methods.sparsity import SPARSITY
from actsparse.methods.sparsity.base import (
    BuildContext,
    context_len,
)
from actsparse.methods.sparsity.calibration import calibrate_thresholds
from actsparse.methods.sparsity.mechanism import Rule, placed_for_sites
from actsparse.models import adapter_for

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "wikitext-2" / "valid.txt"
# the algorithm before the fix lives once, as the tests' reference
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "unit")]
from test_sequential_calibration import (  # noqa: E402
    reference_thresholds as old_calibrate_thresholds,
)


def tiny_llama(layers: int):
    """A random Llama (d 64, 4 heads, GQA): no download, the depth chosen."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    return LlamaForCausalLM(cfg).eval()


def calibration_tokens(model, folder: Path | None, text: Path) -> torch.Tensor:
    """The text file tokenized with the model folder's tokenizer; random ids without one."""
    if folder is not None and any(
        (folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(folder)(text.read_text())["input_ids"]
        return torch.tensor(ids, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, int(model.config.vocab_size), (1 << 20,), generator=g)


def timed(fn, *args) -> tuple[float, float, list]:
    """(wall s, this process's CPU s, result): on a shared machine the CPU time of a
    one-thread run is the steadier figure."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - t, time.process_time() - c, out


def max_rel_diff(a: list, b: list) -> float:
    assert [p.module for p in a] == [p.module for p in b]
    return max(
        abs(x.rule.threshold - y.rule.threshold) / max(abs(y.rule.threshold), 1e-30)
        for x, y in zip(a, b, strict=True)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="a model folder (default: a tiny random Llama)")
    p.add_argument("--layers", type=int, default=8, help="the tiny Llama's depth")
    p.add_argument("--methods", nargs="+", default=["threshold", "cats", "teal"])
    p.add_argument("--level", type=float, default=0.5)
    p.add_argument("--tokens", type=int, default=16384, help="calib_tokens of the new one")
    p.add_argument("--old-tokens", type=int, help="calib_tokens of the old one (0: skip it)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--text", type=Path, default=TEXT, help="text to tokenize (with a model)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    old_tokens = args.tokens if args.old_tokens is None else args.old_tokens

    if args.model:
        from actsparse.models.loader import load_model

        folder = Path(args.model)
        model, adapter = load_model(folder)
        name = folder.name if folder.name not in ("hf", "model") else str(folder)
    else:
        folder, model = None, tiny_llama(args.layers)
        adapter, name = adapter_for("llama"), f"tiny_llama_{args.layers}l"
    tokens = calibration_tokens(model, folder, args.text)
    seq_len = context_len(model, args.seq_len)

    def used(calib_tokens: int) -> int:
        return max(1, calib_tokens // (8 * seq_len)) * 8 * seq_len

    rows = []
    for method in args.methods:
        cls = SPARSITY.get(method)
        base = dict(method=method, calib_seq_len=seq_len)
        cfg = cls.parse({**base, "calib_tokens": args.tokens}, f"methods.{method}")
        sites = cfg.sites_used()
        if not all(s in adapter.sites for s in sites):
            print(f"{method}: {name} has no site {sites}, skipped")
            continue
        ctx = BuildContext(model, adapter, None, tokens, torch.device("cpu"))
        placed = placed_for_sites(
            model, adapter, sites, lambda *_: Rule("threshold", args.level, 0.0)
        )
        new_s, new_cpu, new = timed(calibrate_thresholds, placed, cfg, ctx)
        runs = [("new", args.tokens, new_s, new_cpu, float("nan"))]
        if old_tokens:
            old_cfg = cls.parse({**base, "calib_tokens": old_tokens}, f"methods.{method}")
            old_s, old_cpu, old = timed(old_calibrate_thresholds, placed, old_cfg, ctx)
            diff = float("nan")
            if used(old_tokens) == used(args.tokens):
                diff = max_rel_diff(new, old)
            runs.append(("old", old_tokens, old_s, old_cpu, diff))
        for impl, calib, wall, cpu, diff in runs:
            n = used(calib)
            rows.append(
                {
                    "benchmark": "calibration_cost",
                    "model": name,
                    "model_type": model.config.model_type,
                    "layers": len(adapter.layers(model)),
                    "hidden": int(model.config.hidden_size),
                    "method": method,
                    "sites": ",".join(sites),
                    "rules": len(placed),
                    "level": args.level,
                    "impl": impl,
                    "tokens": n,
                    "seq_len": seq_len,
                    "batches": n // (8 * seq_len),
                    "threads": args.threads,
                    "wall_s": wall,
                    # calibration cost is linear in the token count at a fixed seq_len
                    "s_at_tokens": wall * used(args.tokens) / n,
                    "cpu_s": cpu,
                    "cpu_s_at_tokens": cpu * used(args.tokens) / n,
                    "max_rel_diff": diff,
                    "device": "cpu",
                    "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                    "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(),
                    **provenance(),
                }
            )
            print(f"{method} {impl}: {wall:.1f} s ({cpu:.1f} s CPU) on {n} tokens", flush=True)
    table = pd.DataFrame(rows)
    if table.empty:
        return
    new = table[table.impl == "new"].set_index("method")
    old = table.impl == "old"
    table["speedup"] = (table.s_at_tokens / table.method.map(new.s_at_tokens)).where(old)
    table["cpu_speedup"] = (table.cpu_s_at_tokens / table.method.map(new.cpu_s_at_tokens)).where(
        old
    )
    cols = ["model", "layers", "method", "rules", "impl", "tokens", "seq_len", "threads"]
    cols += ["wall_s", "cpu_s", "s_at_tokens", "cpu_s_at_tokens", "speedup", "cpu_speedup"]
    cols += ["max_rel_diff"]
    print()
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\n*_at_tokens: the time scaled to {used(args.tokens)} tokens")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "calibration_cost.parquet"
    prev = pd.read_parquet(out) if out.exists() else pd.DataFrame()
    pd.concat([prev, table], ignore_index=True).to_parquet(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
