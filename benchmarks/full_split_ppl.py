"""The dense model's perplexity over the whole held-out split of a study's corpus, under the
study's protocol (and, with --seq-len, other window lengths): the one number a reader
compares with the literature, measured once beside the study's bounded evaluations.

    python benchmarks/full_split_ppl.py [--experiment smollm2] [--model smollm2] \
        [--seq-len 512 2048] [--threads 2]

Needs the study's data job and the model (e.g. `snakemake -c2 --config experiment=smollm2
data/smollm2/evaluate/<the dense job>`). Prints a table and appends rows to
benchmarks/results/full_split_ppl.parquet. Uses the evaluate stage's own functions.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd
import torch
from provenance import append_rows, provenance

from actsparse.config import compose_study
from actsparse.data import TokenData
from actsparse.models import load_model_as
from actsparse.models.loader import LoadCfg
from actsparse.perplexity import Protocol, evaluate_lm, unigram_logprobs, windows
from actsparse.plan import StudyPlan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="smollm2")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--seq-len", type=int, nargs="*", help="window lengths (default: the study's)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    plan = StudyPlan(compose_study([f"experiment={args.experiment}"]))
    e = plan.cfg.evaluate
    data_dir = Path(plan.data(plan.data_variant(args.model)).out_dir)
    model_dir = plan.model_path(args.model)
    if not data_dir.is_dir():
        raise SystemExit(f"run the study's data job first: {data_dir} is missing")
    load = LoadCfg(**plan.evaluate(args.model).config["load"])
    model, _ = load_model_as(model_dir, load)
    data = TokenData(data_dir)
    tokens = data.tokens(e.split)
    unigram = unigram_logprobs(data.tokens("train"), int(model.config.vocab_size))
    rows = []
    for seq_len in args.seq_len or [e.seq_len]:
        protocol = Protocol.of(e, seq_len)
        t = time.perf_counter()
        wins = windows(tokens, seq_len, None, e.stride)
        r = evaluate_lm(model, wins, e.batch_size, unigram, protocol=protocol)
        rows.append(
            {
                "benchmark": "full_split_ppl",
                "experiment": args.experiment,
                "model": args.model,
                "corpus": data.corpus,
                "split": e.split,
                "split_tokens": len(tokens),
                "protocol": protocol.tag,
                "scored_tokens": r.n_predicted,
                "perplexity": r.perplexity,
                "unigram_perplexity": math.exp(r.unigram_nll),
                "wall_s": time.perf_counter() - t,
                "threads": args.threads,
                **provenance(),
            }
        )
        print(pd.DataFrame(rows[-1:]).drop(columns=["benchmark"]).to_string(index=False))
    table = pd.DataFrame(rows)
    append_rows(table, "full_split_ppl")


if __name__ == "__main__":
    main()
