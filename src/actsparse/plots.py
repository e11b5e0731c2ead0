"""The report's figures: each `plot_*` draws one PNG into a folder and returns its file
name, or None when the study has nothing to draw for it.

Inputs are the views of `actsparse.results` and the job folders the plan names
(`StudyPlan.report_inputs`); nothing here lists a study folder.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from actsparse.io import atomic_path  # noqa: E402
from actsparse.tables import (  # noqa: E402
    CHANNEL_STATS,
    LOSS_CURVE,
    NEURON_FREQUENCY,
    PREDICTOR_METRICS,
    read_table,
)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path.name


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


def _level_label(level) -> str:
    v = pd.to_numeric(level, errors="coerce")
    return f"{v:.0%}" if pd.notna(v) else str(level)


# where a point's label may go, in points from it: right, then left, above, then below
_LABEL_OFFSETS = [(4, 3), (4, -9), (-4, 3), (-4, -9), (4, 11), (4, -17), (-4, 11), (-4, -17)]


def _place_labels(ax, labels: list[tuple[float, float, str, object]]) -> None:
    """Label each point at the first of `_LABEL_OFFSETS` whose box overlaps no label
    placed before (the least-overlapping one when all do), so a cluster stays readable."""
    ax.figure.canvas.draw()  # the axes' final limits, so data maps to display points
    to_points = 72.0 / ax.figure.dpi
    placed: list[tuple[float, float, float, float]] = []

    def overlap(a, b) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return max(w, 0.0) * max(h, 0.0)

    for x, y, text, color in labels:
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        width, height = 4.2 * len(text), 7.0  # fontsize 7
        best, best_cost = None, float("inf")
        for dx, dy in _LABEL_OFFSETS:
            x0 = px + dx if dx >= 0 else px + dx - width
            box = (x0, py + dy, x0 + width, py + dy + height)
            cost = sum(overlap(box, b) for b in placed)
            if cost < best_cost:
                best, best_cost = ((dx, dy), box), cost
            if cost == 0:
                break
        (dx, dy), box = best  # type: ignore[misc]
        placed.append(box)
        ax.annotate(
            text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, color=color,
            ha="left" if dx >= 0 else "right",
        )  # fmt: skip


def plot_quality_vs_speed(board: pd.DataFrame, out: Path) -> str | None:
    """Per model: perplexity (log scale: a variant that breaks the model sits orders of
    magnitude above one that does not) against the measured decode-step speedup over the
    dense model (batch 1, the variant's sparse linears on the sparse kernels), one line per
    method, each point labelled with its level in the method's colour."""
    board = board[board.method != "unigram"]
    if "decode_speedup" not in board or board.decode_speedup.isna().all():
        return None
    board = board.dropna(subset=["decode_speedup"])
    models = sorted(board.model.unique())
    methods = sorted(board.method.unique())
    # tab20 and a marker cycle: a study has more methods than the default ten colours
    color = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    marker = {m: "osD^vPX<>"[i % 9] for i, m in enumerate(methods)}
    # one model per row, the legend beside it: a dozen methods do not fit inside the axes
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 6.5 * len(models)), squeeze=False)
    for ax, model in zip(axes.flat, models, strict=True):
        g = board[board.model == model]
        labels: list[tuple[float, float, str, object]] = []
        for method, m in g.groupby("method", sort=True):
            m = m.assign(lv=pd.to_numeric(m.level, errors="coerce")).sort_values("lv")
            dense = method == "dense"
            c = "k" if dense else color[method]
            ax.plot(
                m.decode_speedup, m.perplexity, ls="none" if dense else "-", lw=1,
                marker="*" if dense else marker[method], color=c, label=method,
                ms=11 if dense else 5,
            )  # fmt: skip
            labels += [
                (r.decode_speedup, r.perplexity, _level_label(r.level), c)
                for r in m.itertuples()
                if pd.notna(r.level) and r.level != ""  # the dense model has no level
            ]
        ax.axvline(1.0, color="gray", lw=0.6, ls="--")
        ax.set_yscale("log")
        _place_labels(ax, labels)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
        ax.set(
            xlabel="measured decode speedup over dense (x; right of the dashed line: faster)",
            ylabel="perplexity (log scale)",
            title=model,
        )
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Quality vs measured decode speed (batch 1; labels: sparsity level)")
    return _save(fig, out / "quality_vs_speed.png")


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


def plot_task_accuracy(scores: pd.DataFrame, out: Path) -> str | None:
    """Zero-shot accuracy vs sparsity level: one panel per (model, task), one line per
    sparsity method with the harness's standard error as bars, the dense score as a dashed
    line in a band of its standard error. Decompositions (ratios, not levels) are left out."""
    sparse = scores[(scores.method != "dense") & ~scores.decomposed].dropna(subset=["level"])
    if sparse.empty:
        return None
    panels = sorted(set(zip(sparse.model, sparse.task, strict=True)))
    color = {m: f"C{i}" for i, m in enumerate(sorted(sparse.method.unique()))}
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    for ax, (model, task) in zip(axes.flat, panels, strict=False):
        g = sparse[(sparse.model == model) & (sparse.task == task)]
        for method, m in g.groupby("method", sort=True):
            m = m.sort_values("level")
            ax.errorbar(m.level, 100 * m.accuracy, yerr=100 * m.stderr.fillna(0), fmt="o-",
                        ms=3, capsize=2, label=method, color=color[method])  # fmt: skip
        dense = scores[(scores.model == model) & (scores.task == task) & (scores.method == "dense")]
        if not dense.empty:
            d = dense.iloc[0]
            ax.axhline(100 * d.accuracy, color="k", lw=0.8, ls="--")
            if pd.notna(d.stderr):
                ax.axhspan(100 * (d.accuracy - d.stderr), 100 * (d.accuracy + d.stderr),
                           color="k", alpha=0.08)  # fmt: skip
        metric = g.metric.iloc[0]
        items = int(g["items"].max())
        ax.set(title=f"{model}: {task} ({items} items)", xlabel="sparsity level",
               ylabel=f"{metric} (%)")  # fmt: skip
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle("Zero-shot accuracy vs sparsity (bars: standard error; dashed: dense, band: "
                 "its standard error)")  # fmt: skip
    return _save(fig, out / "task_accuracy.png")


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
