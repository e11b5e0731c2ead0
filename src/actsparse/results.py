"""The study table as the views people read: the leaderboard and the sweeps.

Pure pandas over `summary.parquet` (schema `tables.METRICS`): no plotting and no job
folders, so the CLI's tables (`actsparse leaderboard`, `sparsity`, `lowrank`, `predictors`,
`claims`) and the report's page show the same rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from actsparse.claims import Tables, claims_table, protocols
from actsparse.schema.stages import LASTWORD
from actsparse.tables import SCALING_COMPARE, SCALING_FIT, read_table


def main_corpus(summary: pd.DataFrame) -> str:
    """The study's own corpus: the one evaluate jobs mark `study_corpus` (calibration may
    use another, e.g. C4 for the 7B presets); in tables written before that marker, the
    corpus the models were calibrated on."""
    ev = summary[(summary.stage == "evaluate") & (summary.metric == "study_corpus")]
    if not ev.empty:
        return str(ev.corpus.iloc[0])
    cal = summary[(summary.stage == "calibrate") & (summary.corpus.fillna("") != "")]
    return str(cal.corpus.iloc[0]) if not cal.empty else ""


def on_corpus(summary: pd.DataFrame, corpus: str | None = None) -> pd.DataFrame:
    """Evaluate rows measured on `corpus` (default: the study's own) plus the rows that
    belong to no corpus (costs, parameter counts)."""
    corpus = corpus if corpus is not None else main_corpus(summary)
    ev = summary[summary.stage == "evaluate"]
    c = ev.corpus.fillna("")
    return ev[(c == corpus) | (c == "")] if corpus else ev


def evaluate_wide(summary: pd.DataFrame) -> pd.DataFrame:
    """Evaluate rows (the study's corpus) as one row per (model, method, level); level ''
    for dense and unigram."""
    ev = on_corpus(summary).copy()
    if ev.empty:  # a study of the scaling grid only
        return pd.DataFrame(columns=["model", "method", "level"])
    ev["level"] = ev["level"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
    wide = ev.pivot_table(
        index=["model", "method", "level"], columns="metric", values="value", aggfunc="first"
    ).reset_index()
    wide.columns.name = None
    return wide


# the accuracy a task is read by, in this order: the papers report normalized accuracy
# (by the choice's length) where the harness computes it, plain accuracy elsewhere
TASK_METRICS = ("acc_norm", "acc")
MEAN_ACC = "zero_shot_mean"


def task_scores(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method, level, task) an evaluate job ran a zero-shot task on (a
    group's or tag's tasks each their own row): the task's accuracy (`metric`: acc_norm
    where the harness reports it, else acc), its standard error, the items scored, the
    seconds it took (the task named in evaluate.tasks), whether the variant is a
    decomposition (its level is a ratio), and its change against the same model's dense
    score in points (`vs_dense_pts`)."""
    cols = ["model", "method", "level", "task", "metric", "accuracy", "stderr", "items",
            "seconds", "decomposed", "vs_dense_pts"]  # fmt: skip
    ev = on_corpus(summary)
    ev = ev[ev.metric.str.startswith("task_items.")]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    wide = evaluate_wide(summary)
    lowrank = ev[ev.variant.isin(decomposed_variants(summary))]
    decomposed = set(zip(lowrank.model, lowrank.method, strict=True))
    rows = []
    for _, r in wide.iterrows():
        for col in r.index:
            if not col.startswith("task_items.") or pd.isna(r[col]):
                continue
            task = col.removeprefix("task_items.")
            metric = next((m for m in TASK_METRICS if pd.notna(r.get(f"{m}.{task}"))), None)
            if metric is None:
                continue
            rows.append({
                "model": r.model, "method": r.method,
                "level": float(r.level) if r.level != "" else math.nan, "task": task,
                "metric": metric, "accuracy": r[f"{metric}.{task}"],
                "stderr": r.get(f"{metric}_stderr.{task}", math.nan), "items": r[col],
                "seconds": r.get(f"task_s.{task}", math.nan),
                "decomposed": (r.model, r.method) in decomposed,
            })  # fmt: skip
    out = pd.DataFrame(rows, columns=cols[:-1])
    dense = out[out.method == "dense"].set_index(["model", "task"]).accuracy
    key = pd.MultiIndex.from_frame(out[["model", "task"]])
    out["vs_dense_pts"] = 100 * (out.accuracy.to_numpy() - dense.reindex(key).to_numpy())
    return out.sort_values(["model", "task", "method", "level"], na_position="first").reset_index(
        drop=True
    )


def task_columns(scores: pd.DataFrame) -> pd.DataFrame:
    """The tasks as leaderboard columns, one row per (model, method, level): the mean over
    the tasks other than `lastword` (`zero_shot_mean`, the papers' average) first, then
    each task's accuracy (`<metric>.<task>`, sorted), in [0, 1]."""
    if scores.empty:
        return pd.DataFrame(columns=["model", "method", "level"])
    s = scores.assign(
        column=scores.metric + "." + scores.task,
        level=scores.level.map(lambda v: "" if pd.isna(v) else f"{v:g}"),
    )
    wide = s.pivot_table(index=["model", "method", "level"], columns="column", values="accuracy",
                         aggfunc="first").reset_index()  # fmt: skip
    wide.columns.name = None
    harness = s[s.task != LASTWORD]
    if not harness.empty:
        mean = harness.groupby(["model", "method", "level"]).accuracy.mean().rename(MEAN_ACC)
        wide = wide.merge(mean.reset_index(), on=["model", "method", "level"], how="left")
    keys = ["model", "method", "level"]
    tasks = sorted(c for c in wide.columns if c not in (*keys, MEAN_ACC))
    return wide[keys + [c for c in (MEAN_ACC,) if c in wide] + tasks]


def leaderboard(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated (model, method, level): perplexity and fidelity, best first;
    then the zero-shot tasks' accuracies, where the study ran tasks (`task_columns`)."""
    wide = evaluate_wide(summary)
    if wide.empty:
        return pd.DataFrame(columns=["model", "method", "level", "perplexity"])
    cols = [
        c
        for c in (
            "perplexity",
            "hidden_rel_err",
            "hidden_cosine",
            "kl_div",
            "effective_sparsity",
            "flops_ratio",
            "tokens_per_s",
            "decode_ms",
            "decode_speedup",
            "eval_tokens",
        )
        if c in wide
    ]
    board = wide[["model", "method", "level", *cols]].copy()
    dense = board[board.method == "dense"].set_index("model")["perplexity"]
    board.insert(4, "ppl_vs_dense_%", 100 * (board.perplexity / board.model.map(dense) - 1))
    tasks = task_columns(task_scores(summary))
    if len(tasks.columns) > 3:
        board = board.merge(tasks, on=["model", "method", "level"], how="left")
    return board.sort_values("perplexity").reset_index(drop=True)


def sparsity_sweep(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per sparsified variant: level, perplexity increase over the dense model on the
    same tokens, measured effective sparsity, FLOPs ratio, fidelity, and the error of
    achieved against target sparsity in points: over every wrapped module (`err_pts`) and
    in the worst site and layer (`worst_err_pts`)."""
    ev = on_corpus(summary)
    ev = ev[(ev.method != "unigram") & ~ev.variant.isin(decomposed_variants(summary))]
    if ev.empty:
        return pd.DataFrame()
    wide = ev.pivot_table(
        index=["model", "method", "variant"], columns="metric", values="value", aggfunc="first"
    ).reset_index()
    wide.columns.name = None
    levels = ev.dropna(subset=["level"]).groupby("variant")["level"].first()
    dense = wide[wide.method == "dense"].set_index("model").perplexity
    sw = wide[wide.method != "dense"].copy()
    if sw.empty:
        return pd.DataFrame()
    sw.insert(2, "level", sw.variant.map(levels))
    sw["ppl_increase_%"] = 100 * (sw.perplexity / sw.model.map(dense) - 1)
    sw["err_pts"] = 100 * sw["sparsity_err"] if "sparsity_err" in sw else math.nan
    err_cols = [c for c in sw if c.startswith("sparsity_err_max.")]
    sw["worst_err_pts"] = 100 * sw[err_cols].max(axis=1)
    sw["worst_site"] = sw[err_cols].idxmax(axis=1).str.removeprefix("sparsity_err_max.")
    sw["worst_layer"] = [
        r[f"sparsity_err_layer.{site}"]
        for (_, r), site in zip(sw.iterrows(), sw.worst_site, strict=True)
    ]
    cols = [
        "model", "method", "level", "perplexity", "ppl_increase_%", "effective_sparsity",
        "flops_ratio", "kl_div", "hidden_cosine", "err_pts", "worst_err_pts", "worst_site",
        "worst_layer",
    ]  # fmt: skip
    return (
        sw[[c for c in cols if c in sw]]
        .sort_values(["model", "method", "level"])
        .reset_index(drop=True)
    )


def sparsity_frontier(sweep: pd.DataFrame, scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per model and method: the largest evaluated level (and its effective sparsity) whose
    perplexity increase stays within 1% and within 5%; with task `scores`, also the largest
    whose accuracy stays within 1 point of the dense model's (`max_level_acc-1pt`): the
    zero-shot mean over the harness's tasks, or `lastword` where it is the only task."""
    acc = _frontier_accuracy(scores)
    rows = []
    for (model, method), g in sweep.groupby(["model", "method"], sort=True):
        row = {"model": model, "method": method}
        for budget in (1, 5):
            ok = g[g["ppl_increase_%"] <= budget]
            best = ok.loc[ok["level"].idxmax()] if not ok.empty else None
            # NaN: no evaluated level stays within the budget
            row[f"max_level_ppl+{budget}%"] = best["level"] if best is not None else math.nan
            row[f"eff_sparsity_ppl+{budget}%"] = (
                best.effective_sparsity if best is not None else math.nan
            )
        if acc is not None:
            mine = acc[(acc.model == model) & (acc.method == method) & (acc.drop_pts <= 1)]
            row["max_level_acc-1pt"] = mine.level.max() if not mine.empty else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _frontier_accuracy(scores: pd.DataFrame | None) -> pd.DataFrame | None:
    """(model, method, level, drop_pts): the accuracy the frontier reads, in points below
    the same model's dense score."""
    if scores is None or scores.empty:
        return None
    cols = task_columns(scores)
    col = (
        MEAN_ACC
        if MEAN_ACC in cols
        else next((c for c in cols if c.endswith(f".{LASTWORD}")), None)
    )
    if col is None:
        return None
    dense = cols[cols.method == "dense"].set_index("model")[col]
    out = cols[cols.method != "dense"].copy()
    out["level"] = pd.to_numeric(out.level)
    out["drop_pts"] = 100 * (out.model.map(dense) - out[col])
    return out[["model", "method", "level", "drop_pts"]].dropna()


def decomposed_variants(summary: pd.DataFrame) -> set[str]:
    return set(summary[summary.stage == "decompose"].variant)


def lowrank_sweep(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (decomposition, corpus): ratio removed, fraction kept, perplexity and its
    increase over the model it came from on the same corpus and tokens, fidelity, and the
    decompose job's parameter count and errors."""
    dec = summary[summary.stage == "decompose"]
    if dec.empty:
        return pd.DataFrame()
    d = dec.pivot_table(index="variant", columns="metric", values="value", aggfunc="first")
    ev = summary[(summary.stage == "evaluate") & (summary.corpus.fillna("") != "")]
    ev = ev[ev.method != "unigram"]
    wide = ev.pivot_table(
        index=["model", "method", "variant", "corpus"], columns="metric", values="value",
        aggfunc="first",
    ).reset_index()  # fmt: skip
    dense = wide[wide.method == "dense"].set_index(["model", "corpus"]).perplexity
    sw = wide[wide.variant.isin(d.index)].copy()
    if sw.empty:
        return pd.DataFrame()
    sw["ratio_removed"] = sw.variant.map(d.ratio_removed)
    sw["fraction_kept"] = sw.variant.map(d.fraction_kept)
    base = [dense.get((m, c), math.nan) for m, c in zip(sw.model, sw.corpus, strict=True)]
    sw["ppl_increase_%"] = 100 * (sw.perplexity / pd.Series(base, index=sw.index) - 1)
    for col in ("n_params", "params_err_pct", "act_rel_err_mean", "decompose_s"):
        sw[col] = sw.variant.map(d[col]) if col in d else math.nan
    cols = [
        "model", "method", "corpus", "ratio_removed", "fraction_kept", "perplexity",
        "ppl_increase_%", "kl_div", "hidden_cosine", "n_params", "params_err_pct",
        "act_rel_err_mean", "decompose_s",
    ]  # fmt: skip
    return (
        sw[[c for c in cols if c in sw]]  # fidelity columns are absent with fidelity_tokens: 0
        .sort_values(["model", "corpus", "method", "ratio_removed"])
        .reset_index(drop=True)
    )


def predictor_scores(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per predictors job: its rank and held-out scores over every layer (recall,
    precision, FLOPs as % of the block part it predicts for; recall at the top-K used at
    inference and the matching rate, per level)."""
    pr = summary[(summary.stage == "predictors") & (summary.metric != "wall_time_s")].copy()
    if pr.empty:
        return pd.DataFrame()
    pr["key"] = [
        m if pd.isna(lv) else f"{m}@{lv:g}" for m, lv in zip(pr.metric, pr.level, strict=True)
    ]
    wide = pr.pivot_table(
        index=["model", "method"], columns="key", values="value", aggfunc="first"
    ).reset_index()
    wide.columns.name = None
    if "recall" in wide:  # predictors only (the hot/cold report has its own plot)
        wide = wide[wide.recall.notna()]
    first = ["model", "method", "predictor_rank", "recall", "precision", "flops_pct"]
    ranked = [c for c in wide if c.startswith(("recall_at_k@", "matching_rate@"))]
    return wide[[c for c in first + sorted(ranked) if c in wide]]


def predicted_sweep(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation with predicted masks: perplexity next to the oracle's at the
    same level (same windows), the gap, achieved sparsity and FLOPs ratio."""
    ev = on_corpus(summary)
    variants = set(ev[ev.metric == "oracle_perplexity"].variant)
    if not variants:
        return pd.DataFrame()
    ev = ev[ev.variant.isin(variants) & (ev.method != "unigram")]
    wide = ev.pivot_table(
        index=["model", "method", "variant"], columns="metric", values="value", aggfunc="first"
    ).reset_index()
    wide.columns.name = None
    wide.insert(2, "level", wide.variant.map(ev.groupby("variant")["level"].first()))
    cols = ["model", "method", "level", "perplexity", "oracle_perplexity", "oracle_gap_pct",
            "sparsity.all", "oracle_sparsity", "flops_ratio"]  # fmt: skip
    return wide[[c for c in cols if c in wide]].sort_values(["model", "method", "level"])


def claims(summary: pd.DataFrame, context: dict[str, Any]) -> pd.DataFrame:
    """The claims table (actsparse.claims) of a study table; `context`: the plan's
    `claims_context()` (entries, decomposed models, the scaling fit's folder)."""
    fit_dir = context.get("scaling_fit")
    fit = compare = None
    if fit_dir and Path(fit_dir).is_dir():
        fit = read_table(Path(fit_dir) / "scaling_fit.parquet", SCALING_FIT)
        compare = read_table(Path(fit_dir) / "scaling_compare.parquet", SCALING_COMPARE)
    corpus = main_corpus(summary)
    return claims_table(
        Tables(
            sparsity=sparsity_sweep(summary),
            lowrank=lowrank_sweep(summary),
            predictors=predictor_scores(summary),
            entries=context.get("entries", {}),
            decomposed_models=set(context.get("decomposed_models", [])),
            protocols=protocols(summary, corpus),
            main_corpus=corpus,
            scaling_fit=fit,
            scaling_compare=compare,
            tasks=task_scores(summary),
        )
    )
