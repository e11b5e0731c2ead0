"""The claims table: every verdict follows from the measured numbers (change a number, the
verdict changes), what the study did not measure is "not comparable" naming what is
missing, and entries are found by the method they stand for, not by their names."""

from __future__ import annotations

import pandas as pd
import pytest

from actsparse.claims import (
    FAILS,
    HOLDS,
    NOT_COMPARABLE,
    Tables,
    claims_table,
    protocols,
)

ENTRIES = {
    "my_thresh": {"method": "threshold", "site": "ffn_intermediate"},
    "t_uniform": {"method": "teal", "allocation": "uniform"},
    "t_greedy": {"method": "teal", "allocation": "greedy"},
    "t_on_lr": {"method": "teal", "allocation": "uniform"},
    "c": {"method": "cats"},
    "spark_post": {"method": "stat_topk"},
    "a": {"method": "svd"}, "b": {"method": "asvd"}, "w": {"method": "svdllm"},
    "n": {"method": "nsvd"}, "dv": {"method": "dejavu_mlp"},
    "wi": {"method": "wina"}, "la": {"method": "larosa", "form": "residual"},
    "la_online": {"method": "larosa", "form": "online"}, "sc": {"method": "scap"},
    "rs": {"method": "rsparse"}, "v2": {"method": "svdllm_v2"},
    "wu": {"method": "svdllm", "update": True},
}  # fmt: skip


def sweep(rows):
    cols = ["model", "method", "level", "perplexity", "ppl_increase_%", "effective_sparsity"]
    return pd.DataFrame([(*r, *[r[2]] * (len(cols) - len(r))) for r in rows], columns=cols)


def tables(
    sparsity=None, lowrank=None, predictors=None, fit=None, compare=None, tasks=None
) -> Tables:
    return Tables(
        sparsity=sweep(sparsity or []),
        lowrank=pd.DataFrame(
            lowrank or [], columns=["model", "method", "corpus", "ratio_removed", "perplexity"]
        ),
        predictors=pd.DataFrame(
            predictors or [], columns=["model", "method", "predictor_rank", "recall", "flops_pct"]
        ),
        entries=ENTRIES,
        decomposed_models={"m_lr"},
        protocols={"m": "wikitext2 test, window 512"},
        main_corpus="wikitext2",
        scaling_fit=fit,
        scaling_compare=compare,
        tasks=None if tasks is None else task_frame(tasks),
    )


def task_frame(rows) -> pd.DataFrame:
    """results.task_scores rows from (model, entry, level, task, accuracy, stderr)."""
    cols = ["model", "method", "level", "task", "accuracy", "stderr"]
    return pd.DataFrame(rows, columns=cols).assign(metric="acc", items=100, seconds=1.0)


def rows_of(t: Tables, paper: str) -> pd.DataFrame:
    table = claims_table(t)
    return table[table.paper.str.startswith(paper)]


@pytest.mark.parametrize("increase, verdict", [(0.4, HOLDS), (1.5, FAILS)])
def test_dhar_negligible_means_within_one_percent(increase, verdict):
    r = rows_of(tables([("m", "my_thresh", 0.5, 10.0, increase)]), "Dhar").iloc[0]
    assert r.verdict == verdict and r.model == "m" and r.protocol == "wikitext2 test, window 512"
    assert f"{increase:+.2f}%" in r.measured


def test_teal_uses_the_greedy_entry_and_needs_both_levels_to_hold():
    rows = [
        ("m", "t_uniform", 0.4, 10, 0.1), ("m", "t_uniform", 0.5, 10, 0.2),  # ignored: greedy exists
        ("m", "t_greedy", 0.4, 10, 2.0), ("m", "t_greedy", 0.5, 10, 7.0),
        ("m_lr", "t_greedy", 0.5, 10, 1.0),  # a composition: not the claim
    ]  # fmt: skip
    r = rows_of(tables(rows), "TEAL")
    assert len(r) == 1 and r.iloc[0].verdict == FAILS and "over +5% at 50%" in r.iloc[0].reason
    r = rows_of(tables(rows[:3]), "TEAL").iloc[0]
    assert r.verdict == NOT_COMPARABLE and "no evaluation at 50%" in r.reason
    # over budget at one level the claim covers disproves it, the other level missing or not
    r = rows_of(tables(rows[:2] + rows[3:4]), "TEAL").iloc[0]
    assert r.verdict == FAILS and r.reason == "t_greedy: over +5% at 50% (no evaluation at 40%)"


def test_the_lowrank_ordering_at_20_percent():
    def lr(svdllm, asvd, svd):
        return [("m", e, "wikitext2", 0.2, p) for e, p in (("w", svdllm), ("b", asvd), ("a", svd))]

    assert rows_of(tables(lowrank=lr(7.9, 11.1, 2e4)), "SVD-LLM").iloc[0].verdict == HOLDS
    r = rows_of(tables(lowrank=lr(72.3, 2.4e5, 1.1e8)), "SVD-LLM").iloc[0]
    assert r.verdict == HOLDS and "svdllm < asvd < svd" in r.reason
    r = rows_of(tables(lowrank=lr(72.3, 60.0, 1e8)), "SVD-LLM").iloc[0]
    assert r.verdict == FAILS and r.reason == "measured order: asvd < svdllm < svd"


def test_nsvd_out_of_distribution_needs_another_corpus():
    ind = [("m", e, "wikitext2", 0.2, p) for e, p in (("n", 9.0), ("w", 10.0))]
    r = rows_of(tables(lowrank=ind), "NSVD").iloc[0]
    assert r.verdict == NOT_COMPARABLE and "other than the calibration one" in r.reason
    ood = [
        ("m", e, "pydoc", ratio, p)
        for ratio in (0.2, 0.4)
        for e, p in (("n", 22.0), ("w", 25.0 - 10 * ratio))
    ]
    r = rows_of(tables(lowrank=ind + ood), "NSVD").iloc[0]
    assert r.verdict == FAILS and "at 1 of 2 ratios" in r.reason  # 22 < 23 at 20%, 22 > 21 at 40%
    ood = [row for row in ood if row[3] == 0.2]
    assert rows_of(tables(lowrank=ind + ood), "NSVD").iloc[0].verdict == HOLDS


@pytest.mark.parametrize(
    "recall, cost, verdict", [(0.97, 4.0, HOLDS), (0.9, 4.0, FAILS), (0.97, 30.0, FAILS)]
)
def test_deja_vu_recall_and_cost(recall, cost, verdict):
    r = rows_of(tables(predictors=[("opt", "dv", 16, recall, cost)]), "Deja Vu").iloc[0]
    assert r.verdict == verdict and r.model == "opt"


def test_spark_post_hoc_is_not_comparable_and_a_trained_grid_point_is_judged():
    r = rows_of(tables([("m", "spark_post", 0.9, 1e5, 4e5)]), "Spark").iloc[0]
    assert r.verdict == NOT_COMPARABLE and "post hoc" in r.reason and "10% nonzero" in r.measured
    compare = pd.DataFrame(
        [("w16", "fp", "stat_topk", "spark", 0.92, 4.1, 4.0, 0.1, 2.5)],
        columns=[
            "size",
            "precision",
            "operator",
            "group",
            "level",
            "loss",
            "dense_loss",
            "delta",
            "delta_pct",
        ],
    )
    r = rows_of(tables(compare=compare), "Spark").iloc[0]
    assert r.verdict == HOLDS and "trained" in r.model


def test_q_sparse_s_star_holds_when_the_paper_is_inside_the_interval():
    fit = pd.DataFrame(
        [("fp", "S_star", 0.40, 0.30, 0.50), ("b1.58", "S_star", 0.40, 0.30, 0.50)],
        columns=["precision", "param", "estimate", "lo", "hi"],
    )
    r = rows_of(tables(fit=fit), "Q-Sparse")
    assert list(r.verdict) == [HOLDS, FAILS]  # 45.58% inside, 61.25% outside
    assert "61.25% is outside" in r.iloc[1].reason


def test_an_empty_study_says_what_is_missing_for_every_claim():
    table = claims_table(tables())
    assert len(table) == 15 and set(table.verdict) == {NOT_COMPARABLE}
    assert all(r.startswith("not measured in this study: ") for r in table.reason)


def test_the_protocol_comes_from_the_dense_jobs_rows():
    rows = [
        ("evaluate", "dense", "m", "wikitext2", metric, value)
        for metric, value in (("seq_len", 2048), ("stride", 512), ("dense_prefill", 0.5), ("eval_tokens", 1000))
    ]  # fmt: skip
    summary = pd.DataFrame(rows, columns=["stage", "method", "model", "corpus", "metric", "value"])
    assert protocols(summary, "wikitext2") == {
        "m": "wikitext2 test, 1,000 tokens scored, window 2048, stride 512, first 50% of each "
        "window dense"
    }


def test_wina_is_not_comparable_on_perplexity_and_shows_teal_beside_it():
    r = rows_of(tables([("m", "wi", 0.5, 10, 3.0), ("m", "t_uniform", 0.5, 10, 4.0)]), "WINA").iloc[
        0
    ]
    assert r.verdict == NOT_COMPARABLE and "zero-shot" in r.reason
    assert r.measured == "50%: wina +3.00% vs teal +4.00%"


@pytest.mark.parametrize(
    "mine, theirs, verdict", [(3.0, 4.0, HOLDS), (4.5, 4.0, FAILS), (6.0, 9.0, FAILS)]
)
def test_larosa_at_40_percent_must_be_small_and_below_uniform_teal(mine, theirs, verdict):
    rows = [("m", "la", 0.4, 10, mine, 0.37), ("m", "t_uniform", 0.4, 10, theirs, 0.4),
            ("m", "t_greedy", 0.4, 10, 0.1)]  # fmt: skip
    r = rows_of(tables(rows), "LaRoSA").iloc[0]
    assert r.verdict == verdict and "0.370 vs 0.400" in r.reason


def test_wina_is_judged_on_the_zero_shot_mean_beside_the_best_teal():
    ppl = [("m", "wi", 0.5, 10, 3.0), ("m", "t_uniform", 0.5, 10, 4.0)]
    acc = [("m", "wi", 0.5, "piqa", 0.70, 0.03), ("m", "wi", 0.5, "boolq", 0.60, 0.04),
           ("m", "wi", 0.5, "lastword", 0.10, 0.03),  # left out of the mean
           ("m", "t_uniform", 0.5, "piqa", 0.66, 0.03), ("m", "t_uniform", 0.5, "boolq", 0.61, 0.04),
           ("m", "t_greedy", 0.5, "piqa", 0.60, 0.03), ("m", "t_greedy", 0.5, "boolq", 0.60, 0.04),
           ("m", "t_uniform", 0.5, "lastword", 0.50, 0.03)]  # fmt: skip
    r = rows_of(tables(ppl, tasks=acc), "WINA").iloc[0]
    # 65.0 vs 63.5 (the best TEAL entry); se = sqrt(2) * sqrt(0.03^2 + 0.04^2) / 2 = 3.5 pts
    assert r.measured == "50%: wina 65.0 vs teal 63.5 (+1.5 +/- 3.5 pts)"
    assert "+1.50 points (paper +2.94), over 2 tasks" in r.reason
    assert r.verdict == NOT_COMPARABLE and "within twice its standard error (3.5)" in r.reason
    acc[0] = ("m", "wi", 0.5, "piqa", 0.85, 0.03)  # 72.5 vs 63.5: +9.0 > 2 x 3.5
    assert rows_of(tables(ppl, tasks=acc), "WINA").iloc[0].verdict == HOLDS
    acc[0] = ("m", "wi", 0.5, "piqa", 0.45, 0.03)  # 52.5 vs 63.5
    assert rows_of(tables(ppl, tasks=acc), "WINA").iloc[0].verdict == FAILS


def test_larosa_must_also_beat_teal_in_zero_shot_accuracy_where_measured():
    rows = [("m", "la", 0.4, 10, 3.0, 0.37), ("m", "t_uniform", 0.4, 10, 4.0, 0.4)]
    acc = [("m", "la", 0.4, "piqa", 0.50, 0.02), ("m", "t_uniform", 0.4, "piqa", 0.62, 0.02)]
    r = rows_of(tables(rows, tasks=acc), "LaRoSA").iloc[0]
    assert r.verdict == FAILS and r.measured == "40%: +3.00%; zero-shot -12.0 +/- 2.8 pts over TEAL"
    acc[0] = ("m", "la", 0.4, "piqa", 0.70, 0.02)
    assert rows_of(tables(rows, tasks=acc), "LaRoSA").iloc[0].verdict == HOLDS
    acc[0] = ("m", "la", 0.4, "piqa", 0.60, 0.02)  # -2 +/- 2.8: not counted, perplexity decides
    r = rows_of(tables(rows, tasks=acc), "LaRoSA").iloc[0]
    assert r.verdict == HOLDS and "within twice its standard error, not counted" in r.reason


def test_larosa_stands_for_its_paper_in_the_residual_form():
    rows = [("m", "la", 0.4, 10, 6.0, 0.28), ("m", "la_online", 0.4, 10, 3.0, 0.19),
            ("m", "t_uniform", 0.4, 10, 4.0, 0.4)]  # fmt: skip
    r = rows_of(tables(rows), "LaRoSA").iloc[0]
    assert r.verdict == FAILS and r.measured == "40%: +6.00%"


def test_scap_compares_the_sparsest_variant_within_budget_with_cats():
    rows = [("m", "sc", 0.5, 10, 2.0, 0.2), ("m", "sc", 0.7, 10, 4.0, 0.28),
            ("m", "c", 0.5, 10, 3.0, 0.22), ("m", "c", 0.7, 10, 8.0, 0.3)]  # fmt: skip
    r = rows_of(tables(rows), "SCAP").iloc[0]
    assert r.verdict == HOLDS and "scap 28.0% at level 0.7, cats 22.0% at level 0.5" in r.measured
    rows[1] = ("m", "sc", 0.7, 10, 6.0, 0.28)  # now over budget: 20% < 22%
    assert rows_of(tables(rows), "SCAP").iloc[0].verdict == FAILS


@pytest.mark.parametrize("increase, verdict", [(4.0, HOLDS), (7.0, FAILS)])
def test_rsparse_comparable_to_dense_at_50_percent(increase, verdict):
    assert rows_of(tables([("m", "rs", 0.5, 10, increase)]), "R-Sparse").iloc[0].verdict == verdict


def test_svdllm_v2_and_the_update_against_whitening_alone():
    lowrank = [("m", "w", "wikitext2", 0.2, 67.0), ("m", "v2", "wikitext2", 0.2, 68.0),
               ("m", "wu", "wikitext2", 0.2, 65.0), ("m", "w", "wikitext2", 0.4, 140.0),
               ("m", "wu", "wikitext2", 0.4, 125.0), ("m", "wu", "pydoc", 0.4, 999.0)]  # fmt: skip
    v2 = rows_of(tables(lowrank=lowrank), "SVD-LLM V2").iloc[0]
    assert v2.verdict == FAILS and v2.measured == "20%: 68 vs 67"
    up = claims_table(tables(lowrank=lowrank))
    up = up[up.claim.str.startswith("updating")].iloc[0]
    assert up.verdict == HOLDS and up.measured == "20%: 65 vs 67; 40%: 125 vs 140"
    # the update entry is not SVD-LLM (W) in the low-rank ordering
    lowrank += [("m", "a", "wikitext2", 0.2, 2e4), ("m", "b", "wikitext2", 0.2, 80.0)]
    order = claims_table(tables(lowrank=lowrank))
    order = order[order.claim.str.startswith("at 20% of the parameters")].iloc[0]
    assert order.measured == "svdllm 67 / asvd 80 / svd 2e+04" and order.verdict == HOLDS
