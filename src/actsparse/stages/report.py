"""Report: the study as pictures and one leaderboard, in `<root>/report/index.html`.

Built from files only: the study table and the job folders the plan names
(`StudyPlan.report_inputs`, passed by the report rule), never from a listing of the study
folder, where an earlier config's folders stay under their old hashes. Rebuild it with
`snakemake -c1 --forcerun report --config experiment=NAME`. Plots are PNG files beside
the page. Sections appear as their stages land: now the training curves, the
perplexity of every dense model next to the unigram baseline, the natural activation
sparsity per layer found by calibration, and the sparsity sweep: perplexity against
sparsity (one line per method), the largest level each method reaches within +1% and +5%
perplexity, and how far achieved sparsity landed from its target; the low-rank sweep
(perplexity vs ratio, per corpus); predictors (recall vs cost over rank, predicted masks
vs the oracle, hot and cold neurons); the claims table (each paper's claim beside what the
study measured, `--claims`). The plots and tables are also logged as one MLflow run
(stage `report`).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from actsparse.claims import Tables, claims_table, protocols  # noqa: E402
from actsparse.io import atomic_path, commit_dir, partial_dir, write_text  # noqa: E402
from actsparse.tables import (  # noqa: E402
    CHANNEL_STATS,
    LOSS_CURVE,
    METRICS,
    NEURON_FREQUENCY,
    PREDICTOR_METRICS,
    SCALING_COMPARE,
    SCALING_FIT,
    read_table,
)


@dataclass(frozen=True)
class JobFolders:
    """The job folders the report reads beside the study table: the ones the plan names
    (`StudyPlan.report_inputs`), never found by listing the study folder, where the
    folders of an earlier config stay under their old hashes."""

    train: list[Path]  # the study's trained models: loss curves
    calibrate: list[Path]  # natural sparsity per layer
    predictors: list[Path]  # recall vs cost, hot and cold neurons
    scaling_fit: Path | None  # None: the study has no scaling grid

    @classmethod
    def of(cls, folders: dict[str, list[str]]) -> JobFolders:
        """From the plan's lists of paths; sorted, so plots draw in the same order however
        the caller listed them."""
        fit = folders["scaling_fit"]
        if len(fit) > 1:
            raise ValueError(f"a study has one scaling fit, got {fit}")
        return cls(
            train=sorted(Path(d) for d in folders["train"]),
            calibrate=sorted(Path(d) for d in folders["calibrate"]),
            predictors=sorted(Path(d) for d in folders["predictors"]),
            scaling_fit=Path(fit[0]) if fit else None,
        )


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path.name


def _html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)


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


def leaderboard(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated (model, method, level): perplexity and fidelity, best first."""
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
    return board.sort_values("perplexity").reset_index(drop=True)


def plot_loss_curves(train_dirs: list[Path], out: Path) -> str | None:
    if not train_dirs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for d in train_dirs:
        curve = read_table(d / "loss_curve.parquet", LOSS_CURVE)
        name = d.name.rsplit("-", 1)[0]
        (line,) = ax.plot(curve.tokens, curve.train_loss, lw=0.7, alpha=0.5)
        v = curve.dropna(subset=["valid_loss"])
        ax.plot(v.tokens, v.valid_loss, "o-", color=line.get_color(), label=f"{name} (held-out)")
    ax.set(
        xlabel="training tokens",
        ylabel="cross-entropy (nats/token)",
        title="Training: loss (thin: train)",
    )
    ax.legend()
    return _save(fig, out / "loss_curves.png")


def plot_perplexity(board: pd.DataFrame, out: Path) -> str | None:
    if board.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(board)))
    labels = [
        f"{m} / {k}" + (f" {lv}" if lv else "")
        for m, k, lv in zip(board.model, board.method, board.level, strict=True)
    ]
    colors = ["tab:gray" if k == "unigram" else "tab:blue" for k in board.method]
    ax.barh(labels, board.perplexity, color=colors)
    for y, v in enumerate(board.perplexity):
        ax.text(v, y, f" {v:.1f}", va="center")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set(xlabel="held-out perplexity (log scale; grey: unigram baseline)", title="Perplexity")
    return _save(fig, out / "perplexity.png")


def plot_quality_vs_speed(board: pd.DataFrame, out: Path) -> str | None:
    """Per model: perplexity against the measured decode-step speedup over the dense model
    (batch 1, the variant's sparse linears on the input-sparse GEMV), one line per method."""
    board = board[board.method != "unigram"]
    if "decode_speedup" not in board or board.decode_speedup.isna().all():
        return None
    board = board.dropna(subset=["decode_speedup"])
    models = sorted(board.model.unique())
    methods = sorted(board.method.unique())
    # tab20 and a marker cycle: a study has more methods than the default ten colours
    color = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    marker = {m: "osD^vPX<>"[i % 9] for i, m in enumerate(methods)}
    ncol = min(2, len(models))
    nrow = -(-len(models) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.5 * ncol, 3.8 * nrow), squeeze=False)
    for ax, model in zip(axes.flat, models, strict=False):
        g = board[board.model == model]
        for method, m in g.groupby("method", sort=True):
            m = m.assign(lv=pd.to_numeric(m.level, errors="coerce")).sort_values("lv")
            dense = method == "dense"
            ax.plot(
                m.decode_speedup, m.perplexity, ls="none" if dense else "-",
                marker="*" if dense else marker[method], color="k" if dense else color[method],
                label=method, ms=10 if dense else 5,
            )  # fmt: skip
            for _, r in m.iterrows():
                if r.level:
                    ax.annotate(r.level, (r.decode_speedup, r.perplexity), fontsize=6, alpha=0.7)
        ax.axvline(1.0, color="gray", lw=0.6, ls="--")
        ax.set(xlabel="measured decode speedup over dense (x)", ylabel="perplexity", title=model)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(models) :]:
        ax.axis("off")
    fig.suptitle("Quality vs measured decode speed (batch 1; labels: level)")
    return _save(fig, out / "quality_vs_speed.png")


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


def sparsity_frontier(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per model and method: the largest evaluated level (and its effective sparsity) whose
    perplexity increase stays within 1% and within 5%."""
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
        rows.append(row)
    return pd.DataFrame(rows)


def plot_sparsity_sweep(sweep: pd.DataFrame, out: Path) -> str | None:
    if sweep.empty:
        return None
    models = sorted(sweep.model.unique())
    color = {m: f"C{i}" for i, m in enumerate(sorted(sweep.method.unique()))}  # same in every panel
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.6 * len(models)), squeeze=False)
    for row, model in zip(axes, models, strict=True):
        g = sweep[sweep.model == model]
        for method, m in g.groupby("method", sort=True):
            m = m.sort_values("level")
            y = m["ppl_increase_%"].clip(lower=1e-3)
            row[0].plot(m["level"], y, "o-", label=method, color=color[method])
            row[1].plot(m.effective_sparsity, y, "o-", label=method, color=color[method])
        for ax, xlabel in zip(
            row,
            ("target level (at each method's sites)", "effective sparsity (weight reads skipped)"),
            strict=True,
        ):
            ax.set_yscale("log")
            ax.axhline(1, color="gray", lw=0.6, ls="--")
            ax.axhline(5, color="gray", lw=0.6, ls=":")
            ax.set(xlabel=xlabel, ylabel="perplexity increase over dense (%)", title=model)
        row[0].legend(fontsize=8)
    fig.suptitle("Sparsity vs perplexity (held-out split; dashed: +1%, dotted: +5%)")
    return _save(fig, out / "sparsity_vs_perplexity.png")


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


def plot_lowrank_sweep(sweep: pd.DataFrame, out: Path) -> str | None:
    """Perplexity against the ratio removed, one line per method; a column per corpus (the
    study's, on which it was calibrated, and each eval_data corpus), a row per model."""
    if sweep.empty:
        return None
    models, corpora = sorted(sweep.model.unique()), sorted(sweep.corpus.unique())
    color = {m: f"C{i}" for i, m in enumerate(sorted(sweep.method.unique()))}
    fig, axes = plt.subplots(
        len(models), len(corpora), figsize=(5.5 * len(corpora), 3.8 * len(models)), squeeze=False
    )
    for ax, (model, corpus) in zip(
        axes.flat, [(m, c) for m in models for c in corpora], strict=True
    ):
        g = sweep[(sweep.model == model) & (sweep.corpus == corpus)]
        if g.empty:
            ax.set_visible(False)
            continue
        for method, m in g.groupby("method", sort=True):
            m = m.sort_values("ratio_removed")
            ax.plot(m.ratio_removed, m.perplexity, "o-", label=method, color=color[method])
        dense = (g.perplexity / (1 + g["ppl_increase_%"] / 100)).iloc[0]
        ax.axhline(dense, color="gray", lw=0.8, ls="--", label="undecomposed")
        ax.set_yscale("log")
        ax.set(xlabel="fraction of parameters removed (R)", ylabel="perplexity (log)",
               title=f"{model} on {corpus}")  # fmt: skip
        ax.legend(fontsize=8)
    fig.suptitle(
        "Low-rank decomposition: perplexity vs compression (calibrated on the study corpus)"
    )
    return _save(fig, out / "lowrank_vs_perplexity.png")


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


def plot_predictor_cost(pred_dirs: list[Path], out: Path) -> str | None:
    """Recall (threshold, and at the inference top-K of each level) against the predictor's
    cost, one line per (model, predictor) over its ranks: the recall-vs-cost curve."""
    frames = []
    for d in pred_dirs:
        if (d / "predictor_metrics.parquet").is_file():
            f = read_table(d / "predictor_metrics.parquet", PREDICTOR_METRICS)
            frames.append(f[f.layer == -1].assign(job=d.name.rsplit("-", 1)[0]))
    if not frames:
        return None
    allm = pd.concat(frames, ignore_index=True)
    levels = sorted(allm.level.dropna().unique())
    fig, axes = plt.subplots(1, 1 + len(levels), figsize=(5 * (1 + len(levels)), 4), squeeze=False)
    for i, (job, g) in enumerate(allm.groupby("job", sort=True)):
        cost = g[g.metric == "flops_pct"].set_index("rank").value
        panels = [("recall", None)] + [("recall_at_k", lv) for lv in levels]
        for ax, (metric, lv) in zip(axes[0], panels, strict=True):
            m = g[(g.metric == metric) & ((g.level == lv) if lv is not None else g.level.isna())]
            m = m.set_index("rank").value.sort_index()
            if m.empty:
                continue
            ax.plot(cost.loc[m.index], m.values, "o-", color=f"C{i}", label=job)
            for r, y in m.items():
                ax.annotate(f"r={r}", (cost.loc[r], y), fontsize=6, alpha=0.7)
    for ax, title in zip(axes[0], ["recall (logit > 0)"] + [f"recall at top-K, level {lv:g}"
                                                           for lv in levels], strict=True):  # fmt: skip
        ax.set(xlabel="predictor FLOPs (% of the block part predicted)", ylabel="recall",
               title=title)  # fmt: skip
        ax.axhline(0.95, color="gray", lw=0.6, ls="--")
        ax.axvline(10, color="gray", lw=0.6, ls=":")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Predictors: recall vs cost on held-out tokens (dashed: 0.95, dotted: 10%)")
    return _save(fig, out / "predictor_recall_vs_cost.png")


def plot_predicted_vs_oracle(sweep: pd.DataFrame, out: Path) -> str | None:
    if sweep.empty:
        return None
    models = sorted(sweep.model.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        g = sweep[sweep.model == model]
        for i, (method, m) in enumerate(g.groupby("method", sort=True)):
            m = m.sort_values("level")
            ax.plot(m.level, m.perplexity, "o-", color=f"C{i}", label=f"{method} (predicted)")
            ax.plot(m.level, m.oracle_perplexity, "x--", color=f"C{i}", label=f"{method}: oracle")
        ax.set_yscale("log")
        ax.set(xlabel="sparsity level (top-K kept: 1 - level)", ylabel="perplexity (log)",
               title=model)  # fmt: skip
        ax.legend(fontsize=7)
    fig.suptitle("Predicted masks vs the oracle at the same level (same windows)")
    return _save(fig, out / "predicted_vs_oracle.png")


def plot_hotcold(pred_dirs: list[Path], out: Path) -> str | None:
    """Neuron activation frequency against its rank (log-log), one line per layer."""
    dirs = [d for d in pred_dirs if (d / "neuron_frequency.parquet").is_file()]
    if not dirs:
        return None
    fig, axes = plt.subplots(1, len(dirs), figsize=(5.5 * len(dirs), 4), squeeze=False)
    for ax, d in zip(axes[0], dirs, strict=True):
        f = read_table(d / "neuron_frequency.parquet", NEURON_FREQUENCY)
        for layer, g in f.groupby("layer"):
            g = g.sort_values("rank")
            ax.loglog(g["rank"], g.frequency.clip(lower=1e-6), lw=1, label=f"layer {layer}")
        ax.set(xlabel="neuron rank (most active first)", ylabel="activation frequency",
               title=d.name.rsplit("-", 1)[0])  # fmt: skip
        ax.legend(fontsize=7)
    fig.suptitle("Hot and cold FFN neurons (training split; a power law is a straight line)")
    return _save(fig, out / "hot_cold_neurons.png")


def plot_natural_sparsity(calibrate_dirs: list[Path], out: Path) -> str | None:
    if not calibrate_dirs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for d in calibrate_dirs:
        stats = read_table(d / "channel_stats", CHANNEL_STATS)
        ffn = (
            stats[stats.site == "ffn_intermediate"]
            .groupby("layer")[["frac_zero", "frac_near_zero"]]
            .mean()
        )
        name = d.name.rsplit("-", 1)[0]
        axes[0].plot(ffn.index, ffn.frac_zero, "o-", label=name)
        axes[1].plot(ffn.index, ffn.frac_near_zero, "o-", label=name)
    axes[0].set(
        xlabel="layer", ylabel="fraction of FFN intermediate activations", title="exactly zero"
    )
    axes[1].set(xlabel="layer", title="near zero (|x| <= eps)")
    axes[0].legend()
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Natural activation sparsity (calibration split)")
    return _save(fig, out / "natural_sparsity.png")


def scaling_section(fit_dir: Path | None, out: Path) -> tuple[list[tuple[str, str]], str]:
    """The scaling-law fit's plots (copied) and tables: the fitted constants and S* with
    their intervals per precision, and every sparse point against dense. `fit_dir`: the
    planned fit's folder (None: the study has no scaling grid)."""
    if fit_dir is None:
        return [], ""
    figures = []
    for title, name in (
        ("Scaling law: loss vs N per sparsity, fitted", "scaling_loss_vs_n.png"),
        ("Scaling law: loss vs sparsity at a fixed active budget, with S*", "scaling_optimum.png"),
    ):
        if (fit_dir / name).is_file():
            shutil.copyfile(fit_dir / name, out / name)
            figures.append((title, name))
    law = read_table(fit_dir / "scaling_fit.parquet", SCALING_FIT)
    compare = read_table(fit_dir / "scaling_compare.parquet", SCALING_COMPARE)
    law.to_csv(out / "scaling_fit.csv", index=False)
    compare.to_csv(out / "scaling_compare.csv", index=False)
    html_tables = (
        "\n<h2>Scaling law per precision: L(N, S) = E + (B + C exp(beta / (1 - S))) N^-alpha; "
        "S* (closed form and numerical), N/N_a = 1/(1 - S*); lo/hi: bootstrap interval</h2>\n"
        + _html(law)
        + "\n<h2>Sparse training against dense at the same size and precision</h2>\n"
        + _html(compare)
    )
    return figures, html_tables


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
        )
    )


def build(
    root: Path, out: Path, folders: JobFolders, context: dict[str, Any] | None = None
) -> Path:
    """The report of the study at `root`, from its table and the job `folders` the plan
    names (`StudyPlan.report_inputs`), written to `out`."""
    summary = read_table(root / "summary.parquet", METRICS)
    staging = partial_dir(out)
    staging.mkdir(parents=True, exist_ok=True)
    board = leaderboard(summary)
    sweep = sparsity_sweep(summary)
    lowrank = lowrank_sweep(summary)
    predictors = predictor_scores(summary)
    predicted = predicted_sweep(summary)
    figures = [
        ("Training", plot_loss_curves(folders.train, staging)),
        ("Perplexity", plot_perplexity(board[board.method.isin(["dense", "unigram"])], staging)),
        ("Natural activation sparsity", plot_natural_sparsity(folders.calibrate, staging)),
        ("Sparsity vs perplexity", plot_sparsity_sweep(sweep, staging)),
        ("Low-rank decomposition vs perplexity", plot_lowrank_sweep(lowrank, staging)),
        ("Predictors: recall vs cost", plot_predictor_cost(folders.predictors, staging)),
        ("Predicted masks vs the oracle", plot_predicted_vs_oracle(predicted, staging)),
        ("Hot and cold neurons", plot_hotcold(folders.predictors, staging)),
        ("Quality vs measured decode speed", plot_quality_vs_speed(board, staging)),
    ]
    scaling_figures, scaling_tables = scaling_section(folders.scaling_fit, staging)
    figures += scaling_figures
    board.to_csv(staging / "leaderboard.csv", index=False)
    table = _html(board)
    tables = ""
    if not sweep.empty:
        frontier = sparsity_frontier(sweep)
        sweep.to_csv(staging / "sparsity_sweep.csv", index=False)
        frontier.to_csv(staging / "sparsity_frontier.csv", index=False)
        tables = (
            "<h2>Sparsity: the largest level within a perplexity budget</h2>\n"
            + _html(frontier)
            + "\n<h2>Sparsity sweep (err_pts: |achieved - target| over every wrapped module; "
            "worst_err_pts: in the worst site and layer; on the evaluation tokens)</h2>\n"
            + _html(sweep)
        )
    if not lowrank.empty:
        lowrank.to_csv(staging / "lowrank_sweep.csv", index=False)
        tables += (
            "\n<h2>Low-rank sweep (ratio_removed: fraction of the target linears' parameters "
            "removed; perplexity on each corpus against the undecomposed model)</h2>\n"
            + _html(lowrank)
        )
    if not predictors.empty:
        predictors.to_csv(staging / "predictors.csv", index=False)
        tables += (
            "\n<h2>Predictors on held-out tokens (recall_at_k@s: recall of the top-K kept at "
            "level s; matching_rate@s: share of that top-K the oracle keeps too)</h2>\n"
            + _html(predictors)
        )
    if not predicted.empty:
        predicted.to_csv(staging / "predicted_vs_oracle.csv", index=False)
        tables += (
            "\n<h2>Predicted masks vs the oracle (oracle_gap_pct: perplexity with predicted "
            "masks over the oracle's at the same level, in %)</h2>\n" + _html(predicted)
        )
    sections = "\n".join(
        f'<h2>{html.escape(title)}</h2>\n<img src="{name}" alt="{html.escape(title)}">'
        for title, name in figures
        if name
    )
    if context is not None:
        # the claims read the fit that the scaling section shows: the one the report was given
        claim_rows = claims(summary, {**context, "scaling_fit": folders.scaling_fit})
        claim_rows.to_csv(staging / "claims.csv", index=False)
        tables += (
            "\n<h2>Claims: each paper's claim beside what this study measured "
            "(docs/claims.md: definitions and tolerances)</h2>\n" + _html(claim_rows)
        )
    sections += "\n" + tables + scaling_tables
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>actsparse study {html.escape(root.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}}</style>
</head><body>
<h1>Study <code>{html.escape(root.name)}</code></h1>
<p>Every number comes from <code>{html.escape(str(root / "summary.parquet"))}</code>
({len(summary)} rows from {summary.config_hash.nunique()} jobs).</p>
<h2>Leaderboard</h2>
{table}
{sections}
</body></html>
"""
    write_text(staging / "index.html", page)
    commit_dir(staging, out)
    _track(root, out, summary, [name for _, name in figures if name])
    return out / "index.html"


def _track(root: Path, out: Path, summary: pd.DataFrame, plots: list[str]) -> None:
    """The report's plots and tables as one MLflow run (stage 'report') of the study."""
    # imported here: the plan loads torch (through the method registries) and tracking
    # loads mlflow, which the report's tables and plots do not need
    from actsparse.plan import config_hash
    from actsparse.tracking import JobRun

    h = config_hash(sorted(summary.config_hash.unique()))
    run = JobRun(root.name, "report", "report", h, root.parent)
    run.start({"jobs": summary.config_hash.nunique()})
    files = [out / p for p in plots] + [p for p in out.glob("*.csv")] + [out / "index.html"]
    run.finish({}, files)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m actsparse.stages.report", description=__doc__.splitlines()[0]
    )
    p.add_argument("--root", required=True, help="the study folder, e.g. data/quickstart")
    p.add_argument("--out", help="the report folder (default: <root>/report)")
    p.add_argument("--claims", help="the plan's claims context as JSON (adds the claims table)")
    # the job folders to read (StudyPlan.report_inputs); required, even when empty, so a
    # report is never built from a guess at which folders belong to the study
    for role in ("train", "calibrate", "predictors", "scaling-fit"):
        p.add_argument(f"--{role}", nargs="*", required=True, metavar="DIR",
                       help=f"the planned {role} job folders")  # fmt: skip
    args = p.parse_args(argv)
    root = Path(args.root)
    context = json.loads(args.claims) if args.claims else None
    folders = JobFolders.of(
        {role: getattr(args, role) for role in ("train", "calibrate", "predictors", "scaling_fit")}
    )
    page = build(root, Path(args.out) if args.out else root / "report", folders, context)
    print(f"wrote {page}", file=sys.stderr)


if __name__ == "__main__":
    main()
