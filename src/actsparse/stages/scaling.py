"""Scaling stage: fit Q-Sparse's inference-optimal scaling law to the sparse-training grid.

Reads every grid point's train job (final held-out loss, `N` = parameters of the block
linears) and, per precision, fits `L(N, S) = E + (B + C exp(beta / (1 - S))) N^(-alpha)`
(`actsparse.scaling`): the constants with bootstrap intervals, `S*` from the Lambert-W
closed form beside the numerical optimum, and `N / N_a = 1 / (1 - S*)`.

Outputs: `scaling_points.parquet`, `scaling_fit.parquet`, `scaling_compare.parquet` (each
sparse point against the dense one of its size and precision), `scaling_loss_vs_n.png`,
`scaling_optimum.png`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from actsparse.io import atomic_path
from actsparse.scaling import PARAMS, Fit, bootstrap, fit_law, interval
from actsparse.schema.training import ScalingFitCfg
from actsparse.stages.job import Metric, StageResult, main
from actsparse.tables import (
    ACHIEVED_SPARSITY,
    METRICS,
    SCALING_COMPARE,
    SCALING_FIT,
    SCALING_POINTS,
    read_table,
    write_table,
)

log = logging.getLogger("actsparse.scaling")


@dataclass
class GridPoint:
    size: str = ""
    precision: str = "fp"
    variant: str = ""  # '' : the fitted grid; else an extra variant (not fitted)
    level: float = 0.0


@dataclass
class ScalingJob:
    fit: ScalingFitCfg = field(default_factory=ScalingFitCfg)
    operator: str = "topk"
    points: dict[str, GridPoint] = field(default_factory=dict)
    seed: int = 0


def exact_sparsity(folder: Path) -> float:
    """The fraction of linear inputs a grid point's rule zeroes, weighted by each linear's
    parameters: top-K keeps `int((1 - S) d)` of `d`, so at small widths it differs from S
    (d = 16, S = 0.2 keeps 12: 0.25). Weights come from the saved model's header."""
    from safetensors import safe_open

    achieved = read_table(folder / "achieved_sparsity.parquet", ACHIEVED_SPARSITY)
    with safe_open(folder / "model" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        sizes = []
        for module in achieved.module:
            key = f"{module}.weight"
            if key not in keys:
                raise ValueError(f"{folder}/model has no tensor {key!r} for {module}")
            sizes.append(float(np.prod(f.get_slice(key).get_shape())))
    w = np.asarray(sizes)
    return float((achieved.target.to_numpy() * w).sum() / w.sum())


def gather(cfg: ScalingJob, inputs: dict[str, str]) -> pd.DataFrame:
    """One row per grid point from its train job's metrics (schema `SCALING_POINTS`)."""
    rows = []
    for variant, p in cfg.points.items():
        folder = Path(inputs[f"point.{variant}"])
        m = read_table(folder / "metrics.parquet", METRICS)
        values = dict(zip(m.metric, m.value, strict=False))
        for key in ("final_valid_loss", "n_linear_params"):
            if key not in values:
                raise ValueError(f"{folder}/metrics.parquet has no {key!r}: not a grid train job")
        op = "none" if p.level == 0 else cfg.operator
        if p.variant:
            sparse = folder / "sparse_training.json"
            op = json.loads(sparse.read_text())["operator"] if sparse.is_file() else "none"
        n = float(values["n_linear_params"])
        # the fitted grid's rules sit at linear inputs; a variant (not fitted) keeps its level
        sparsity = exact_sparsity(folder) if p.level > 0 and not p.variant else p.level
        rows.append(
            {
                "variant": variant,
                "size": p.size,
                "precision": p.precision,
                "operator": op,
                "group": p.variant,
                "level": p.level,
                "sparsity": sparsity,
                "achieved": values.get("achieved_sparsity", np.nan),
                "n_params": n,
                "n_active": (1 - sparsity) * n,
                "loss": float(values["final_valid_loss"]),
            }
        )
    return pd.DataFrame(rows, columns=SCALING_POINTS.names)


def fit_precision(points: pd.DataFrame, cfg: ScalingJob) -> tuple[Fit, pd.DataFrame]:
    """The law fitted to one precision's grid, with its bootstrap intervals (long rows)."""
    n, s, loss = (points[c].to_numpy(float) for c in ("n_params", "sparsity", "loss"))
    kw = {"robust": cfg.fit.robust, "f_scale": cfg.fit.f_scale}
    fit = fit_law(n, s, loss, starts=cfg.fit.starts, seed=cfg.seed, **kw)
    boot = bootstrap(n, s, loss, fit, samples=cfg.fit.bootstrap, seed=cfg.seed, **kw)
    estimates = {
        **fit.law.as_dict(),
        "S_star": fit.law.s_star(),
        "S_star_numeric": fit.law.s_star_numeric(),
        "N_over_Na": fit.law.total_over_active(),
    }
    rows = []
    for param, value in estimates.items():
        lo, hi = interval(boot.get(param, np.array([])), cfg.fit.ci)  # none: the cross-check
        rows.append({"param": param, "estimate": value, "lo": lo, "hi": hi})
    diagnostics = {
        "converged": float(fit.converged),
        "rmse_log": fit.rmse_log,
        "n_points": float(fit.n_points),
        "bootstrap_refits": float(len(boot["S_star"])),
        "bootstrap_failed": float(boot["failed"][0]),
    }
    rows += [
        {"param": k, "estimate": v, "lo": np.nan, "hi": np.nan} for k, v in diagnostics.items()
    ]
    return fit, pd.DataFrame(rows)


def compare(points: pd.DataFrame) -> pd.DataFrame:
    """Every sparse point against the dense point of the same size and precision."""
    dense = points[(points.level == 0) & (points.group == "")].set_index(["size", "precision"]).loss
    rows = []
    for r in points[points.level > 0].itertuples():
        d = dense.get((r.size, r.precision), np.nan)
        rows.append(
            {
                "size": r.size,
                "precision": r.precision,
                "operator": r.operator,
                "group": r.group,
                "level": r.level,
                "loss": r.loss,
                "dense_loss": d,
                "delta": r.loss - d,
                "delta_pct": 100 * (r.loss - d) / d,
            }
        )
    return pd.DataFrame(rows, columns=SCALING_COMPARE.names)


def run(cfg: ScalingJob, inputs: dict[str, str], out: Path) -> StageResult:
    points = gather(cfg, inputs)
    write_table(points, out / "scaling_points.parquet", SCALING_POINTS)
    grid = points[points.group == ""]
    fits: dict[str, Fit] = {}
    tables, metrics = [], []
    for precision in sorted(grid.precision.unique()):
        fit, table = fit_precision(grid[grid.precision == precision], cfg)
        fits[precision] = fit
        tables.append(table.assign(precision=precision))
        est = table.set_index("param").estimate
        log.info(
            "%s: S* = %.4f (numerical %.4f), N/N_a = %.3f, converged %s, rmse(log L) %.4f",
            precision, est.S_star, est.S_star_numeric, est.N_over_Na, fit.converged,
            fit.rmse_log,
        )  # fmt: skip
        metrics += [
            Metric(name, float(est[name]), method=f"scaling_{precision}")
            for name in (
                *PARAMS,
                "S_star",
                "S_star_numeric",
                "N_over_Na",
                "converged",
                "rmse_log",
            )  # fmt: skip
        ]
    fit_table = pd.concat(tables, ignore_index=True)[SCALING_FIT.names]
    write_table(fit_table, out / "scaling_fit.parquet", SCALING_FIT)
    comparison = compare(points)
    write_table(comparison, out / "scaling_compare.parquet", SCALING_COMPARE)
    plots = [
        plot_loss_vs_n(grid, fits, out / "scaling_loss_vs_n.png"),
        plot_optimum(grid, fits, fit_table, out / "scaling_optimum.png"),
    ]
    files = [out / f"{t}.parquet" for t in ("scaling_points", "scaling_fit", "scaling_compare")]
    return StageResult(metrics, [*files, *plots])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    _pyplot().close(fig)
    return path


def plot_loss_vs_n(grid: pd.DataFrame, fits: dict[str, Fit], path: Path) -> Path:
    """Held-out loss against N, one colour per sparsity, the fitted law as lines."""
    plt = _pyplot()
    precisions = sorted(fits)
    fig, axes = plt.subplots(1, len(precisions), figsize=(5.5 * len(precisions), 4), squeeze=False)
    levels = sorted(grid.level.unique())
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(levels)))
    for ax, precision in zip(axes[0], precisions, strict=True):
        sub, law = grid[grid.precision == precision], fits[precision].law
        ns = np.geomspace(sub.n_params.min() / 1.5, sub.n_params.max() * 1.5, 100)
        for level, color in zip(levels, colors, strict=True):
            pts = sub[sub.level == level].sort_values("n_params")
            ax.plot(pts.n_params, pts.loss, "o", color=color, label=f"S = {level:g}")
            ax.plot(ns, law.loss(ns, level), "-", color=color, lw=1)  # (points: S up to rounding)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="N (parameters of the block linears)",
               ylabel="final held-out loss (nats/token)",
               title=f"{precision}: points and fitted L(N, S)")  # fmt: skip
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_optimum(grid: pd.DataFrame, fits: dict[str, Fit], table: pd.DataFrame, path: Path) -> Path:
    """Fitted loss against S at a fixed active-parameter budget, with S* and its interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    s = np.linspace(0, 0.95, 400)
    n_active = float(grid[grid.level == 0].n_params.median())
    shown = []  # the curves up to a little past S*: the rest climbs steeply
    for precision, color in zip(sorted(fits), ("C0", "C3", "C2"), strict=False):
        law = fits[precision].law
        row = table[(table.precision == precision) & (table.param == "S_star")].iloc[0]
        curve = law.loss_at_active(n_active, s)
        ax.plot(s, curve, color=color, label=f"{precision}")
        shown.append(curve[s <= min(0.95, max(row.estimate, 0.5) + 0.1)])
        ax.axvline(row.estimate, color=color, ls="--", lw=1,
                   label=f"S* = {100 * row.estimate:.1f}% ({precision})")  # fmt: skip
        if np.isfinite(row.lo):
            ax.axvspan(row.lo, row.hi, color=color, alpha=0.12)
    lo, hi = min(c.min() for c in shown), max(c.max() for c in shown)
    ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9))
    ax.set(xlabel="sparsity S", ylabel="fitted loss at fixed N_a (nats/token)",
           title=f"Loss at N_a = {n_active:.3g} active parameters (S* is budget-free)")  # fmt: skip
    ax.legend(fontsize=8)
    return _save(fig, path)


if __name__ == "__main__":
    main("scaling", ScalingJob, run)
