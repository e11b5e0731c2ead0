"""Report: the study as pictures and one leaderboard, in `<root>/report/index.html`.

Built from the files only (the study table and the job folders), so it can be rebuilt at
any time: `python -m actsparse.stages.report --root data/quickstart`. Plots are PNG files
beside the page. Sections appear as their stages land: now the training curves, the
perplexity of every model and method next to the unigram baseline, and the natural
activation sparsity per layer found by calibration.
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from actsparse.io import atomic_path, commit_dir, partial_dir, write_text  # noqa: E402
from actsparse.tables import CHANNEL_STATS, LOSS_CURVE, METRICS, read_table  # noqa: E402


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path.name


def leaderboard(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated (model, method): perplexity and fidelity, best first."""
    ev = summary[summary.stage == "evaluate"]
    wide = ev.pivot_table(
        index=["model", "method"], columns="metric", values="value", aggfunc="first"
    )
    cols = [
        c
        for c in (
            "perplexity",
            "hidden_rel_err",
            "hidden_cosine",
            "kl_div",
            "tokens_per_s",
            "eval_tokens",
        )
        if c in wide
    ]
    board = wide[cols].reset_index()
    board.columns.name = None
    dense = board[board.method == "dense"].set_index("model")["perplexity"]
    board.insert(3, "ppl_vs_dense_%", 100 * (board.perplexity / board.model.map(dense) - 1))
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
    labels = [f"{m} / {k}" for m, k in zip(board.model, board.method, strict=True)]
    colors = ["tab:gray" if k == "unigram" else "tab:blue" for k in board.method]
    ax.barh(labels, board.perplexity, color=colors)
    for y, v in enumerate(board.perplexity):
        ax.text(v, y, f" {v:.1f}", va="center")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set(xlabel="held-out perplexity (log scale; grey: unigram baseline)", title="Perplexity")
    return _save(fig, out / "perplexity.png")


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


def build(root: Path, out: Path) -> Path:
    summary = read_table(root / "summary.parquet", METRICS)
    staging = partial_dir(out)
    staging.mkdir(parents=True, exist_ok=True)
    board = leaderboard(summary)
    train_dirs = sorted(
        p for p in (root / "train").glob("*-*") if p.is_dir() and not p.name.endswith(".partial")
    )
    cal_dirs = sorted(
        p
        for p in (root / "calibrate").glob("*-*")
        if p.is_dir() and not p.name.endswith(".partial")
    )
    figures = [
        ("Training", plot_loss_curves(train_dirs, staging)),
        ("Perplexity", plot_perplexity(board, staging)),
        ("Natural activation sparsity", plot_natural_sparsity(cal_dirs, staging)),
    ]
    board.to_csv(staging / "leaderboard.csv", index=False)
    table = board.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)
    sections = "\n".join(
        f'<h2>{html.escape(title)}</h2>\n<img src="{name}" alt="{html.escape(title)}">'
        for title, name in figures
        if name
    )
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
    return out / "index.html"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m actsparse.stages.report", description=__doc__.splitlines()[0]
    )
    p.add_argument("--root", required=True, help="the study folder, e.g. data/quickstart")
    p.add_argument("--out", help="the report folder (default: <root>/report)")
    args = p.parse_args(argv)
    root = Path(args.root)
    page = build(root, Path(args.out) if args.out else root / "report")
    print(f"wrote {page}", file=sys.stderr)


if __name__ == "__main__":
    main()
