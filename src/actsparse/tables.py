"""Every Parquet table the stages exchange: its schema, a checked writer and a checked reader.

This module is the contract between stages: a reader never guesses another stage's columns.
Writes are atomic; reads verify the columns and types and name the file on any problem.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from actsparse.io import atomic_path

# The long-format study table: one row per (job, metric). Every job writes its own
# `metrics.parquet` with this schema; the summary rule concatenates them.
METRICS = pa.schema(
    [
        ("stage", pa.string()),
        ("method", pa.string()),  # dense, unigram, (later) teal, svdllm, ...
        ("variant", pa.string()),  # the job's variant (model, model.method, corpus)
        ("level", pa.float64()),  # sparsity / compression level; null for dense
        ("model", pa.string()),
        ("corpus", pa.string()),
        ("split", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("config_hash", pa.string()),
        ("mlflow_run_id", pa.string()),
    ]
)

DATA_MANIFEST = pa.schema(
    [
        ("split", pa.string()),
        ("shard", pa.int32()),
        ("path", pa.string()),  # relative to the data job's folder
        ("n_tokens", pa.int64()),
        ("dtype", pa.string()),
        ("sha256", pa.string()),  # of the shard file
        ("corpus_sha256", pa.string()),  # of the split's text (before tokenizing)
        ("n_chars", pa.int64()),
        ("source", pa.string()),
    ]
)

LOSS_CURVE = pa.schema(
    [
        ("step", pa.int64()),
        ("tokens", pa.int64()),
        ("lr", pa.float64()),
        ("train_loss", pa.float64()),
        ("valid_loss", pa.float64()),  # null except every eval_interval steps
        ("elapsed_s", pa.float64()),
    ]
)

CHANNEL_STATS = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),
        ("channel", pa.int32()),
        ("count", pa.int64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),  # population std
        ("mean_abs", pa.float64()),
        ("frac_zero", pa.float64()),  # exactly 0
        ("frac_near_zero", pa.float64()),  # |x| <= near_zero_eps
    ]
)

HISTOGRAMS = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),
        ("bin", pa.int32()),  # 0: [0, lo_1) underflow incl. exact zeros; last: overflow
        ("lo", pa.float64()),
        ("hi", pa.float64()),
        ("count", pa.int64()),
    ]
)

LINEARS = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),  # the activation this linear layer reads
        ("linear", pa.string()),  # module name in the model
        ("in_features", pa.int64()),
        ("out_features", pa.int64()),
    ]
)

# A sparsify job's placed rules: one row per wrapped module (mechanism.SparsityPlan)
ALLOCATION = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),
        ("module", pa.string()),  # the wrapped module (a linear, or the FFN nonlinearity)
        ("width", pa.int64()),  # the width of the activation the rule sees
        ("rule", pa.string()),  # threshold | topk | stat_topk | head_topk
        ("level", pa.float64()),  # target fraction of zeros
        ("threshold", pa.float64()),  # threshold rules only
        ("params", pa.string()),  # the rule's other parameters, JSON
    ]
)

# An allocate job's search: the level of every module at each target level of one entry
ALLOCATIONS = pa.schema(
    [
        ("target", pa.float64()),  # the entry's level (a model-wide effective sparsity)
        ("module", pa.string()),  # the projection
        ("level", pa.float64()),  # its fraction of zeros
    ]
)

# Zeros an evaluation counted per wrapped module on its tokens
ACHIEVED_SPARSITY = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),
        ("module", pa.string()),
        ("rule", pa.string()),
        ("target", pa.float64()),  # what the rule aims at (top-K: 1 - int((1 - s) n) / n)
        ("zeros", pa.int64()),  # heads: zero heads; otherwise zero entries
        ("total", pa.int64()),
        ("achieved", pa.float64()),  # zeros / total
        ("natural", pa.float64()),  # zeros the activation already had (ReLU): a floor
    ]
)

# A decompose job's layers: one row per low-rank linear
DECOMPOSITION = pa.schema(
    [
        ("layer", pa.int32()),
        ("site", pa.string()),  # the activation the linear reads
        ("linear", pa.string()),
        ("in_features", pa.int64()),
        ("out_features", pa.int64()),
        ("rank", pa.int64()),
        ("params_dense", pa.int64()),  # n m
        ("params_lowrank", pa.int64()),  # k (n + m)
        ("act_rel_err", pa.float64()),  # ||(W - W') X||_F / ||W X||_F on the calibration tokens
        ("weight_rel_err", pa.float64()),  # ||W - W'||_F / ||W||_F
        ("ridge", pa.float64()),  # ridge added to a non-positive-definite covariance (0: none)
        ("seconds", pa.float64()),
    ]
)

# A predictors job's scores on held-out tokens (long format; layer -1: every layer)
PREDICTOR_METRICS = pa.schema(
    [
        ("layer", pa.int32()),
        ("rank", pa.int64()),  # the predictor's rank (Spark: r, the input dims it reuses)
        ("level", pa.float64()),  # top-K scores (recall_at_k, matching_rate); else null
        ("metric", pa.string()),  # recall, precision, recall_at_k, matching_rate, flops_pct, ...
        ("value", pa.float64()),
    ]
)

# Hot/cold neurons: each FFN neuron's activation frequency on the training labels
NEURON_FREQUENCY = pa.schema(
    [
        ("layer", pa.int32()),
        ("neuron", pa.int64()),
        ("frequency", pa.float64()),  # share of tokens on which the neuron is active
        ("rank", pa.int64()),  # 1: the most frequent neuron of its layer
    ]
)

HOTCOLD = pa.schema(
    [
        ("layer", pa.int32()),
        ("mean_frequency", pa.float64()),
        ("dead", pa.float64()),  # share of neurons never active
        ("hot", pa.float64()),  # share of neurons active on at least half the tokens
        ("power_law_b", pa.float64()),  # f(rank) = c rank^-b, log-log least squares
        ("power_law_c", pa.float64()),
        ("power_law_r2", pa.float64()),
        ("top1pct_share", pa.float64()),  # share of activations of the top 1% neurons
        ("top5pct_share", pa.float64()),
        ("top10pct_share", pa.float64()),
        ("top20pct_share", pa.float64()),
        ("top50pct_share", pa.float64()),
    ]
)

# The scaling grid: one row per trained point (the fit stage's input, gathered)
SCALING_POINTS = pa.schema(
    [
        ("variant", pa.string()),  # the grid train job (<size>.<precision>[.<variant>].s<pct>)
        ("size", pa.string()),
        ("precision", pa.string()),  # fp | b1.58
        ("operator", pa.string()),  # the operator trained with (none: dense)
        ("group", pa.string()),  # '' for the fitted grid, else the extra variant's name
        ("level", pa.float64()),  # the configured level
        # S the fit uses: the parameter-weighted fraction of inputs the rule zeroes, top-K
        # keeping int((1 - level) d) of d per linear (level, up to that rounding)
        ("sparsity", pa.float64()),
        ("achieved", pa.float64()),  # zeros measured on held-out batches (null: dense)
        ("n_params", pa.float64()),  # N: parameters of the block linears
        ("n_active", pa.float64()),  # (1 - S) N
        ("loss", pa.float64()),  # final held-out loss (nats/token)
    ]
)

# The fitted law per precision, long: E, B, C, beta, alpha, S_star, S_star_numeric,
# N_over_Na (estimate and bootstrap interval), and the fit's diagnostics (lo/hi null)
SCALING_FIT = pa.schema(
    [
        ("precision", pa.string()),
        ("param", pa.string()),
        ("estimate", pa.float64()),
        ("lo", pa.float64()),
        ("hi", pa.float64()),
    ]
)

# Each sparse point against the dense point of the same size and precision
SCALING_COMPARE = pa.schema(
    [
        ("size", pa.string()),
        ("precision", pa.string()),
        ("operator", pa.string()),
        ("group", pa.string()),
        ("level", pa.float64()),
        ("loss", pa.float64()),
        ("dense_loss", pa.float64()),
        ("delta", pa.float64()),  # loss - dense_loss (nats/token)
        ("delta_pct", pa.float64()),
    ]
)


class TableError(ValueError):
    """A table that is missing, unreadable or does not match its schema (names the file)."""


def write_table(data: pd.DataFrame | pa.Table, path: str | Path, schema: pa.Schema) -> None:
    """Cast `data` to `schema` (exact columns, in order) and write it atomically."""
    if isinstance(data, pd.DataFrame):
        missing = [n for n in schema.names if n not in data.columns]
        extra = [c for c in data.columns if c not in schema.names]
        if missing or extra:
            raise TableError(
                f"{path}: columns do not match schema (missing {missing}, unexpected {extra})"
            )
        table = pa.Table.from_pandas(data[schema.names], schema=schema, preserve_index=False)
    else:
        table = data.select(schema.names).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path, schema: pa.Schema) -> pd.DataFrame:
    """Read a Parquet file (or a folder of them) and check it against `schema`."""
    path = Path(path)
    if not path.exists():
        raise TableError(f"table not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise TableError(f"corrupted or unreadable Parquet file {path}: {e}") from None
    check_schema(table.schema, schema, path)
    return table.select(schema.names).to_pandas()


def check_schema(actual: pa.Schema, expected: pa.Schema, path: str | Path) -> None:
    for f in expected:
        if f.name not in actual.names:
            raise TableError(
                f"{path}: missing column {f.name!r} (expected schema: {expected.names})"
            )
        got = actual.field(f.name).type
        if got != f.type and not (pa.types.is_dictionary(got) and got.value_type == f.type):
            raise TableError(f"{path}: column {f.name!r} has type {got}, expected {f.type}")
