"""Each paper's claim beside what this harness measured: one row per claim, computed from
the study's own tables (never typed in), with a verdict and its reason.

The claims, the papers' numbers and the models they were made on are written here once;
everything measured comes from the frames the report builds from the study table
(`sparsity_sweep`, `lowrank_sweep`, `predictor_scores`, the scaling fit). A claim the study
did not measure (the method, level or corpus is not in it) is "not comparable", saying
what is missing. The tolerances that turn a paper's words into a test are below and in
docs/claims.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from actsparse.schema.stages import LASTWORD

# What the papers' words are taken to mean, as perplexity increases over the dense model on
# the same tokens (in %): "negligible" and "small degradation" / "close to dense".
NEGLIGIBLE_PCT = 1.0
SMALL_PCT = 5.0
# Deja Vu's predictors are "cheap": at most this share of the FFN's FLOPs
LOW_PREDICTOR_COST_PCT = 10.0

HOLDS, FAILS, NOT_COMPARABLE = "holds", "does not hold", "not comparable"
COLUMNS = [
    "claim", "paper", "paper_number", "paper_model", "measured", "model", "protocol",
    "verdict", "reason",
]  # fmt: skip


@dataclass(frozen=True)
class Claim:
    key: str
    paper: str
    text: str
    paper_number: str
    paper_model: str


@dataclass
class Tables:
    """What the claims are computed from (each may be empty)."""

    sparsity: pd.DataFrame  # report.sparsity_sweep
    lowrank: pd.DataFrame  # report.lowrank_sweep
    predictors: pd.DataFrame  # report.predictor_scores
    entries: dict[str, dict]  # study entry name -> its config (method, allocation, ...)
    decomposed_models: set[str]  # models made by a decomposition (compositions, not claims)
    protocols: dict[str, str]  # model -> how its perplexity was measured
    main_corpus: str = ""
    scaling_fit: pd.DataFrame | None = None  # SCALING_FIT rows
    scaling_compare: pd.DataFrame | None = None  # SCALING_COMPARE rows
    tasks: pd.DataFrame | None = None  # results.task_scores: zero-shot accuracy per task

    def entries_of(self, method: str, **options) -> list[str]:
        return [
            name
            for name, e in self.entries.items()
            if e.get("method") == method and all(e.get(k) == v for k, v in options.items())
        ]


Row = dict[str, str]


def _row(claim: Claim, measured: str, model: str, protocol: str, verdict: str, reason: str) -> Row:
    return {
        "claim": claim.text, "paper": claim.paper, "paper_number": claim.paper_number,
        "paper_model": claim.paper_model, "measured": measured, "model": model,
        "protocol": protocol, "verdict": verdict, "reason": reason,
    }  # fmt: skip


def _missing(claim: Claim, what: str) -> list[Row]:
    return [_row(claim, "", "", "", NOT_COMPARABLE, f"not measured in this study: {what}")]


def _pct(v: float) -> str:
    return f"{v:+.2f}%"


def _at(sweep: pd.DataFrame, entries: list[str], level: float) -> pd.DataFrame:
    if sweep.empty:
        return sweep
    return sweep[sweep.method.isin(entries) & ((sweep.level - level).abs() < 1e-9)]


def protocols(summary: pd.DataFrame, corpus: str) -> dict[str, str]:
    """Per model, how its dense perplexity was measured on `corpus` (window, stride, dense
    prefill, tokens scored), from the evaluate job's own rows."""
    ev = summary[(summary.stage == "evaluate") & (summary.method == "dense")]
    ev = ev[ev.corpus == corpus]
    out = {}
    for model, g in ev.groupby("model"):
        v = g.set_index("metric").value
        window = int(v.get("seq_len", 0))
        stride = int(v.get("stride", window))
        prefill = float(v.get("dense_prefill", 0.0))
        text = f"{corpus} test, {int(v.get('eval_tokens', 0)):,} tokens scored, window {window}"
        text += ", non-overlapping" if stride == window else f", stride {stride}"
        if prefill > 0:
            text += f", first {100 * prefill:g}% of each window dense"
        out[str(model)] = text
    return out


# ----------------------------------------------------------------- the claims

DHAR = Claim(
    "dhar_ffn50", "Dhar et al. 2024",
    "zeroing the FFN activations below a per-layer magnitude percentile removes ~50% of FFN "
    "reads at negligible perplexity cost", "~50% FFN sparsity, negligible perplexity change",
    "SiLU/GELU LLMs (Llama-2, Mistral 7B)",
)  # fmt: skip
TEAL = Claim(
    "teal_40_50", "TEAL (Liu et al. 2024)",
    "40-50% model-wide activation sparsity (every projection's input) with small degradation",
    "40-50% model-wide, small perplexity increase", "Llama-2/3, Mistral (7B-70B)",
)  # fmt: skip
CATS = Claim(
    "cats_50", "CATS (Lee et al. 2024)",
    "50% FFN activation sparsity (threshold on |SiLU(gate)|) with quality close to dense",
    "50% FFN sparsity, close to dense", "Llama-2-7B, Mistral-7B",
)  # fmt: skip
LOWRANK_ORDER = Claim(
    "lowrank_order_20", "SVD-LLM (Wang et al. 2025), Table 1",
    "at 20% of the parameters removed, perplexity orders SVD-LLM < ASVD < SVD",
    "7.94 < 11.14 < 20061 (WikiText-2)", "LLaMA-7B",
)  # fmt: skip
NSVD_OOD = Claim(
    "nsvd_ood", "NSVD (Lu et al. 2025)",
    "nested decomposition beats SVD-LLM's whitening, most of all on text unlike the "
    "calibration set", "lower perplexity than SVD-LLM at 10-50% removed", "LLaMA-7B",
)  # fmt: skip
DEJAVU = Claim(
    "dejavu_recall", "Deja Vu (Liu et al. 2023)",
    "a low-rank MLP predictor finds the active neurons with recall >= 0.95 at a small "
    "share of the FFN's cost", "recall >= 0.95, cheap predictor", "OPT-175B (ReLU)",
)  # fmt: skip
SPARK = Claim(
    "spark_8pct", "Spark Transformer (You et al. 2025)",
    "statistical top-k keeps 8% of FFN neurons nonzero with quality close to dense",
    "8% nonzero FFN neurons, close to dense", "Gemma-2 2B (trained with it)",
)  # fmt: skip
QSPARSE = {
    "fp": Claim(
        "qsparse_sstar_fp", "Q-Sparse (Wang et al. 2024)",
        "inference-optimal sparsity S* of top-K sparse training, full precision",
        "S* = 45.58%", "scaling-law fit on 300M-7B Llamas",
    ),
    "b1.58": Claim(
        "qsparse_sstar_b158", "Q-Sparse (Wang et al. 2024)",
        "inference-optimal sparsity S* of top-K sparse training, 1.58-bit weights",
        "S* = 61.25%", "scaling-law fit on 300M-7B Llamas",
    ),
}  # fmt: skip
PAPER_SSTAR = {"fp": 0.4558, "b1.58": 0.6125}
WINA = Claim(
    "wina_zeroshot", "WINA (Chen et al. 2026)",
    "weight-informed top-K beats TEAL at equal sparsity", "+2.94 points of average zero-shot "
    "accuracy over TEAL", "Llama-2-7B, Llama-3-8B, Qwen-2.5-7B, Phi-4-14B",
)  # fmt: skip
LAROSA = Claim(
    "larosa_40", "LaRoSA (Liu et al. 2025)",
    "at 40% sparsity, rotated top-K costs little perplexity and beats TEAL",
    "+0.17 perplexity (+3.1%); +1.77 zero-shot points over TEAL", "LLaMA2-7B",
)  # fmt: skip
SCAP = Claim(
    "scap_vs_cats", "SCAP (Chua et al. 2024)",
    "mode-centred thresholds reach more FFN sparsity than CATS at equal quality",
    "48.5% FFN sparsity vs CATS's 33.3%, within 1.5% of dense accuracy", "Llama-2-7B, Mistral-7B",
)  # fmt: skip
RSPARSE = Claim(
    "rsparse_50", "R-Sparse (Zhang et al. 2025)",
    "sparse channels plus a low-rank remainder keep quality comparable to dense at 50% "
    "model-level sparsity", "comparable to dense at 50%", "Llama-2/3, Mistral (7B-8B)",
)  # fmt: skip
SVDLLM_V2 = Claim(
    "svdllm_v2_20", "SVD-LLM V2 (Wang et al. 2025)",
    "ratios allocated by truncation loss lower perplexity below SVD-LLM's at 20% removed",
    "7.94 -> 7.12 (WikiText-2)", "LLaMA-7B",
)  # fmt: skip
SVDLLM_UPDATE = Claim(
    "svdllm_update", "SVD-LLM (Wang et al. 2025), Table 1",
    "updating the factors after truncation lowers perplexity below whitening alone",
    "7.94 -> 7.73 at 20%, 13.73 -> 9.27 at 40% (its LoRA update)", "LLaMA-7B",
)  # fmt: skip


def _threshold_claim(
    claim: Claim, t: Tables, entries: list[str], levels: tuple[float, ...], budget: float,
    what: str,
) -> list[Row]:  # fmt: skip
    """Holds where every level's perplexity increase is within `budget` %."""
    rows = []
    found = pd.concat([_at(t.sparsity, entries, lv) for lv in levels]) if entries else None
    if found is not None and not found.empty:
        found = found[~found.model.isin(t.decomposed_models)]
    if found is None or found.empty:
        return _missing(claim, f"{what} at {', '.join(f'{100 * v:g}%' for v in levels)}")
    for (model, entry), g in found.groupby(["model", "method"], sort=True):
        g = g.sort_values("level")
        measured = "; ".join(
            f"{100 * r.level:g}%: {_pct(r['ppl_increase_%'])}" for _, r in g.iterrows()
        )
        absent = [lv for lv in levels if not ((g.level - lv).abs() < 1e-9).any()]
        over = g[g["ppl_increase_%"] > budget]
        missing = f"no evaluation at {', '.join(f'{100 * v:g}%' for v in absent)}"
        if not over.empty:  # over budget at a level the claim covers disproves it
            verdict = FAILS
            reason = (
                f"{entry}: over +{budget:g}% at "
                + ", ".join(f"{100 * v:g}%" for v in over.level)
                + (f" ({missing})" if absent else "")
            )
        elif absent:  # within budget where measured, but the claim's range is not covered
            verdict, reason = NOT_COMPARABLE, f"{entry}: {missing}"
        else:
            verdict, reason = HOLDS, f"{entry}: within +{budget:g}% at every level"
        rows.append(_row(claim, measured, model, t.protocols.get(model, ""), verdict, reason))
    return rows


def dhar(t: Tables) -> list[Row]:
    entries = [
        e for e in t.entries_of("threshold") if t.entries[e].get("site") == "ffn_intermediate"
    ]
    return _threshold_claim(
        DHAR, t, entries, (0.5,), NEGLIGIBLE_PCT, "threshold at ffn_intermediate"
    )


def teal(t: Tables) -> list[Row]:
    # TEAL's own method allocates per projection greedily; uniform where greedy is absent
    entries = t.entries_of("teal", allocation="greedy") or t.entries_of("teal")
    return _threshold_claim(TEAL, t, entries, (0.4, 0.5), SMALL_PCT, "teal")


def cats(t: Tables) -> list[Row]:
    return _threshold_claim(CATS, t, t.entries_of("cats"), (0.5,), SMALL_PCT, "cats")


def _lowrank_at(t: Tables, method: str, ratio: float, corpus: str) -> pd.DataFrame:
    lr = t.lowrank
    names = _without_update(t, method)
    return lr[
        lr.method.isin(names) & ((lr.ratio_removed - ratio).abs() < 1e-9) & (lr.corpus == corpus)
    ]


def _without_update(t: Tables, method: str) -> list[str]:
    """Entries of `method` without SVD-LLM's update step (its table's SVD-LLM (W) rows;
    the other methods have no such key)."""
    return [e for e in t.entries_of(method) if not t.entries[e].get("update")]


def _whitening_only(t: Tables) -> list[str]:
    return _without_update(t, "svdllm")


# SVD-LLM's table: its method, then ASVD, then plain SVD, best (lowest perplexity) first
LOWRANK_ORDER_METHODS = ("svdllm", "asvd", "svd")
# Spark's claim is about training with its statistical top-k (a scaling-grid operator)
SPARK_OPERATOR = "stat_topk"


def lowrank_order(t: Tables) -> list[Row]:
    claim = LOWRANK_ORDER
    order = LOWRANK_ORDER_METHODS
    if t.lowrank.empty:
        return _missing(claim, f"{', '.join(order)} at 20% removed")
    picks = {m: _lowrank_at(t, m, 0.2, t.main_corpus) for m in order}
    absent = [m for m, g in picks.items() if g.empty]
    if absent:
        return _missing(claim, f"{', '.join(absent)} at 20% removed on {t.main_corpus}")
    rows = []
    for model in sorted(set.intersection(*(set(g.model) for g in picks.values()))):
        ppl = {m: float(g[g.model == model].perplexity.iloc[0]) for m, g in picks.items()}
        measured = " / ".join(f"{m} {ppl[m]:.4g}" for m in order)
        ok = all(ppl[a] < ppl[b] for a, b in itertools.pairwise(order))
        got = " < ".join(sorted(ppl, key=ppl.get))
        rows.append(_row(claim, measured, model, t.protocols.get(model, ""),
                         HOLDS if ok else FAILS, f"measured order: {got}"))  # fmt: skip
    return rows


def nsvd_ood(t: Tables) -> list[Row]:
    claim = NSVD_OOD
    lr = t.lowrank
    if lr.empty:
        return _missing(claim, "nsvd and svdllm")
    nsvd, svdllm = t.entries_of("nsvd"), _whitening_only(t)
    other = sorted(c for c in set(lr.corpus) if c != t.main_corpus)
    if not nsvd or not svdllm or not other:
        return _missing(
            claim, "nsvd and svdllm evaluated on a corpus other than the calibration one"
        )
    rows = []
    for corpus in other:
        for model in sorted(set(lr.model)):
            g = lr[(lr.corpus == corpus) & (lr.model == model)]
            a = g[g.method.isin(nsvd)].set_index("ratio_removed").perplexity
            b = g[g.method.isin(svdllm)].set_index("ratio_removed").perplexity
            both = sorted(set(a.index) & set(b.index))
            if not both:
                continue
            wins = [r for r in both if a[r] < b[r]]
            measured = "; ".join(f"{100 * r:g}%: {a[r]:.4g} vs {b[r]:.4g}" for r in both)
            verdict = HOLDS if len(wins) == len(both) else FAILS
            reason = (f"NSVD lower on {corpus} (not the calibration text) at {len(wins)} of "
                      f"{len(both)} ratios")  # fmt: skip
            rows.append(_row(claim, f"nsvd vs svdllm ppl, {measured}", model,
                             t.protocols.get(model, ""), verdict, reason))  # fmt: skip
    return rows or _missing(claim, "nsvd and svdllm at the same ratio on one model")


def dejavu(t: Tables) -> list[Row]:
    claim = DEJAVU
    p = t.predictors
    names = t.entries_of("dejavu_mlp")
    if p.empty or not names or p[p.method.isin(names)].empty:
        return _missing(claim, "a dejavu_mlp predictor")
    rows = []
    for _, r in p[p.method.isin(names)].iterrows():
        cost = r.get("flops_pct", math.nan)
        measured = f"recall {r.recall:.3f} at rank {r.get('predictor_rank', math.nan):g}, {cost:.1f}% of the FFN's FLOPs"
        ok = r.recall >= 0.95 and cost <= LOW_PREDICTOR_COST_PCT
        reason = (f"recall {'>=' if r.recall >= 0.95 else '<'} 0.95, cost "
                  f"{'<=' if cost <= LOW_PREDICTOR_COST_PCT else '>'} {LOW_PREDICTOR_COST_PCT:g}%")  # fmt: skip
        rows.append(_row(claim, measured, r.model, "held-out tokens (predictors stage)",
                         HOLDS if ok else FAILS, reason))  # fmt: skip
    return rows


def spark(t: Tables) -> list[Row]:
    claim = SPARK
    cmp_ = t.scaling_compare
    trained = (
        cmp_[(cmp_.operator == SPARK_OPERATOR)]
        if cmp_ is not None and not cmp_.empty
        else pd.DataFrame()
    )
    rows = []
    for _, r in trained.iterrows():
        ok = r.delta_pct <= SMALL_PCT
        rows.append(_row(
            claim, f"{100 * (1 - r.level):g}% nonzero: loss {_pct(r.delta_pct)} over dense",
            f"grid {r['size']} ({r.precision}), trained with it", "held-out loss (scaling grid)",
            HOLDS if ok else FAILS,
            f"trained from scratch as Spark is; loss within +{SMALL_PCT:g}%: {'yes' if ok else 'no'}",
        ))  # fmt: skip
    posthoc = t.entries_of("stat_topk")
    sw = t.sparsity
    if posthoc and not sw.empty:
        g = sw[sw.method.isin(posthoc)]
        for (model, entry), m in g.groupby(["model", "method"], sort=True):
            top = m.loc[m.level.idxmax()]
            rows.append(_row(
                claim, f"{100 * (1 - top.level):g}% nonzero post hoc: perplexity {_pct(top['ppl_increase_%'])}",
                model, t.protocols.get(model, ""), NOT_COMPARABLE,
                f"{entry} is applied post hoc to a model trained without it (Spark trains with "
                "the soft threshold in place)",
            ))  # fmt: skip
    return rows or _missing(claim, "stat_topk (post hoc) or a stat_topk scaling-grid variant")


def qsparse(t: Tables) -> list[Row]:
    fit = t.scaling_fit
    rows = []
    for precision, claim in QSPARSE.items():
        f = fit[(fit.precision == precision) & (fit.param == "S_star")] if fit is not None else None
        if f is None or f.empty:
            rows += _missing(claim, f"a scaling-grid fit at precision {precision}")
            continue
        r = f.iloc[0]
        paper = PAPER_SSTAR[precision]
        inside = r.lo <= paper <= r.hi
        rows.append(_row(
            claim, f"S* = {100 * r.estimate:.2f}% [{100 * r.lo:.2f}, {100 * r.hi:.2f}]",
            "the study's scaling grid", "held-out loss of each grid point",
            HOLDS if inside else FAILS,
            f"the paper's {100 * paper:.2f}% is {'inside' if inside else 'outside'} the "
            "bootstrap interval of the fit (the grid's sizes are far below the paper's)",
        ))  # fmt: skip
    return rows


def _beside(t: Tables, mine: list[str], theirs: list[str]) -> pd.DataFrame:
    """Perplexity increases of two groups of sparsity entries at the levels both ran, per
    model (columns `mine`, `theirs`, `eff_mine`, `eff_theirs`), compositions left out."""
    sw = t.sparsity
    if sw.empty or not mine or not theirs:
        return pd.DataFrame()
    sw = sw[~sw.model.isin(t.decomposed_models)]
    cols = ["ppl_increase_%", "effective_sparsity"]
    a = sw[sw.method.isin(mine)].groupby(["model", "level"])[cols].min()
    b = sw[sw.method.isin(theirs)].groupby(["model", "level"])[cols].min()
    both = a.join(b, lsuffix="_mine", rsuffix="_theirs", how="inner").reset_index()
    return both.rename(
        columns={"ppl_increase_%_mine": "mine", "ppl_increase_%_theirs": "theirs",
                 "effective_sparsity_mine": "eff_mine", "effective_sparsity_theirs": "eff_theirs"}
    )  # fmt: skip


def _vs_line(g: pd.DataFrame, me: str, them: str) -> str:
    return "; ".join(
        f"{100 * r.level:g}%: {me} {_pct(r.mine)} vs {them} {_pct(r.theirs)}"
        for r in g.itertuples()
    )


def _zero_shot_beside(t: Tables, mine: list[str], theirs: list[str]) -> pd.DataFrame:
    """Per (model, level) both ran: the zero-shot mean (in points, over the harness's tasks,
    `lastword` left out) of the best entry of `mine` and of `theirs`, and the standard
    error of their difference (the tasks' errors taken as independent)."""
    s = t.tasks
    if s is None or s.empty or not mine or not theirs:
        return pd.DataFrame()
    s = s[(s.task != LASTWORD) & ~s.model.isin(t.decomposed_models)]
    per = s.groupby(["model", "method", "level"]).agg(
        acc=("accuracy", "mean"), var=("stderr", lambda x: float((x**2).sum())),
        n=("task", "nunique"),
    )  # fmt: skip
    per["se"] = per["var"] ** 0.5 / per["n"]
    per = per.reset_index()

    def best(entries: list[str]) -> pd.DataFrame:
        g = per[per.method.isin(entries)]
        return g.loc[g.groupby(["model", "level"]).acc.idxmax()].set_index(["model", "level"])

    a, b = best(mine), best(theirs)
    both = a.join(b, lsuffix="_mine", rsuffix="_theirs", how="inner").reset_index()
    both["diff_pts"] = 100 * (both.acc_mine - both.acc_theirs)
    both["se_pts"] = 100 * (both.se_mine**2 + both.se_theirs**2) ** 0.5
    return both


def _pts_line(g: pd.DataFrame, me: str, them: str) -> str:
    return "; ".join(
        f"{100 * r.level:g}%: {me} {100 * r.acc_mine:.1f} vs {them} {100 * r.acc_theirs:.1f} "
        f"({r.diff_pts:+.1f} +/- {r.se_pts:.1f} pts)"
        for r in g.itertuples()
    )


def wina(t: Tables) -> list[Row]:
    acc = _zero_shot_beside(t, t.entries_of("wina"), t.entries_of("teal"))
    if not acc.empty:
        rows = []
        for model, g in acc.groupby("model"):
            gain = float(g.diff_pts.mean())
            # every level scores the same items: the levels' errors are not independent, so
            # the mean's is taken as their mean (not divided by sqrt(levels))
            se = float(g.se_pts.mean())
            reason = (f"mean zero-shot gain over the levels both ran: {gain:+.2f} points (paper "
                      f"+2.94), over {int(g.n_mine.min())} tasks")  # fmt: skip
            if abs(gain) < 2 * se:
                verdict = NOT_COMPARABLE
                reason += (f"; within twice its standard error ({se:.1f}): the study's items "
                           "cannot tell (more items: evaluate.task_limit)")  # fmt: skip
            else:
                verdict = HOLDS if gain > 0 else FAILS
            rows.append(_row(WINA, _pts_line(g, "wina", "teal"), model,
                             t.protocols.get(model, ""), verdict, reason))  # fmt: skip
        return rows
    both = _beside(t, t.entries_of("wina"), t.entries_of("teal"))
    if both.empty:
        return _missing(WINA, "wina and teal at the same levels")
    return [
        _row(WINA, _vs_line(g, "wina", "teal"), model, t.protocols.get(model, ""), NOT_COMPARABLE,
             "the claim is zero-shot accuracy, which this study did not measure "
             "(evaluate.tasks); perplexity increases beside TEAL shown")
        for model, g in both.groupby("model")
    ]  # fmt: skip


def larosa(t: Tables) -> list[Row]:
    teal_uniform = [e for e in t.entries_of("teal") if t.entries[e].get("allocation") != "greedy"]
    # the paper's form where the study has it
    mine = t.entries_of("larosa", form="residual") or t.entries_of("larosa")
    both = _beside(t, mine, teal_uniform)
    both = both[(both.level - 0.4).abs() < 1e-9] if not both.empty else both
    if both.empty:
        return _missing(LAROSA, "larosa and teal at 40%")
    acc = _zero_shot_beside(t, mine, teal_uniform)
    acc = acc.set_index(["model", "level"]) if not acc.empty else acc
    rows = []
    for r in both.itertuples():
        ok = r.mine <= SMALL_PCT and r.mine < r.theirs
        reason = (f"within +{SMALL_PCT:g}%: {'yes' if r.mine <= SMALL_PCT else 'no'}; below "
                  f"TEAL's {_pct(r.theirs)}: {'yes' if r.mine < r.theirs else 'no'} (effective "
                  f"sparsity {r.eff_mine:.3f} vs {r.eff_theirs:.3f})")  # fmt: skip
        measured = f"40%: {_pct(r.mine)}"
        if (r.model, r.level) in acc.index:  # the zero-shot part: above TEAL too
            z = acc.loc[(r.model, r.level)]
            measured += f"; zero-shot {z.diff_pts:+.1f} +/- {z.se_pts:.1f} pts over TEAL"
            if abs(z.diff_pts) < 2 * z.se_pts:
                reason += "; zero-shot: within twice its standard error, not counted"
            else:
                ok = ok and z.diff_pts > 0
                reason += f"; zero-shot above TEAL's: {'yes' if z.diff_pts > 0 else 'no'}"
        else:
            reason += "; the zero-shot part was not measured (evaluate.tasks)"
        rows.append(_row(LAROSA, measured, r.model, t.protocols.get(r.model, ""),
                         HOLDS if ok else FAILS, reason))  # fmt: skip
    return rows


def _frontier(t: Tables, entries: list[str], model: str) -> tuple[float, float] | None:
    """(level, effective sparsity) of the sparsest variant within +SMALL_PCT, or None."""
    sw = t.sparsity
    g = sw[sw.method.isin(entries) & (sw.model == model) & (sw["ppl_increase_%"] <= SMALL_PCT)]
    if g.empty:
        return None
    top = g.loc[g.effective_sparsity.idxmax()]
    return float(top.level), float(top.effective_sparsity)


def scap(t: Tables) -> list[Row]:
    mine, theirs = t.entries_of("scap"), t.entries_of("cats")
    sw = t.sparsity
    if sw.empty or not mine or not theirs:
        return _missing(SCAP, "scap and cats")
    rows = []
    models = set(sw[sw.method.isin(mine)].model) & set(sw[sw.method.isin(theirs)].model)
    for model in sorted(models - t.decomposed_models):
        a, b = _frontier(t, mine, model), _frontier(t, theirs, model)
        show = lambda f: "none within" if f is None else f"{100 * f[1]:.1f}% at level {f[0]:g}"  # noqa: E731
        measured = f"effective sparsity within +{SMALL_PCT:g}%: scap {show(a)}, cats {show(b)}"
        if a is None or b is None:
            verdict = FAILS if a is None and b is not None else NOT_COMPARABLE
            reason = "no level of one of them is within the budget (add lower levels)"
        else:
            verdict = HOLDS if a[1] > b[1] else FAILS
            reason = (f"perplexity within +{SMALL_PCT:g}% stands for the paper's 1.5% accuracy; "
                      "the sparsity is the model-wide share of weight reads skipped")  # fmt: skip
        rows.append(_row(SCAP, measured, model, t.protocols.get(model, ""), verdict, reason))
    return rows or _missing(SCAP, "scap and cats on one model")


def rsparse(t: Tables) -> list[Row]:
    return _threshold_claim(RSPARSE, t, t.entries_of("rsparse"), (0.5,), SMALL_PCT, "rsparse")


def _lowrank_pair(t: Tables, claim: Claim, mine: list[str], theirs: list[str], ratios) -> list[Row]:
    """Holds where `mine` has lower perplexity than `theirs` at every ratio both ran."""
    lr = t.lowrank
    if lr.empty or not mine or not theirs:
        return _missing(claim, "both entries")
    lr = lr[lr.corpus == t.main_corpus]
    rows = []
    for model, g in lr.groupby("model"):
        a = g[g.method.isin(mine)].groupby("ratio_removed").perplexity.min()
        b = g[g.method.isin(theirs)].groupby("ratio_removed").perplexity.min()
        both = [r for r in sorted(set(a.index) & set(b.index)) if ratios is None or r in ratios]
        if not both:
            continue
        wins = [r for r in both if a[r] < b[r]]
        measured = "; ".join(f"{100 * r:g}%: {a[r]:.4g} vs {b[r]:.4g}" for r in both)
        verdict = HOLDS if len(wins) == len(both) else FAILS
        rows.append(_row(claim, measured, model, t.protocols.get(model, ""), verdict,
                         f"lower at {len(wins)} of {len(both)} ratios"))  # fmt: skip
    return rows or _missing(claim, "both entries at one ratio on one model")


def svdllm_v2(t: Tables) -> list[Row]:
    return _lowrank_pair(t, SVDLLM_V2, t.entries_of("svdllm_v2"), _whitening_only(t), None)


def svdllm_update(t: Tables) -> list[Row]:
    updated = [e for e in t.entries_of("svdllm") if t.entries[e].get("update")]
    return _lowrank_pair(t, SVDLLM_UPDATE, updated, _whitening_only(t), None)


CLAIMS: tuple[Callable[[Tables], list[Row]], ...] = (
    dhar, teal, cats, lowrank_order, nsvd_ood, dejavu, spark, qsparse,
    wina, larosa, scap, rsparse, svdllm_v2, svdllm_update,
)  # fmt: skip


def claims_table(t: Tables) -> pd.DataFrame:
    """One row per claim (and per model it was measured on)."""
    return pd.DataFrame([row for claim in CLAIMS for row in claim(t)], columns=COLUMNS)
