"""Q-Sparse's scaling law: the fit recovers known constants from noisy synthetic data, the
Lambert-W optimum equals the numerical one, and bad grids are refused or flagged."""

import logging
import math

import numpy as np
import pytest

from actsparse.conf import study_defaults
from actsparse.scaling import Law, bootstrap, check_points, fit_law, interval

TRUE = Law(E=1.5, B=20.0, C=2.0, beta=0.5, alpha=0.3)  # S* = 58.4%


def _grid(law: Law, noise: float, seed: int):
    # 5 sizes x 8 levels; C (the high-sparsity term) needs levels up to 0.85 to pin down
    levels = [0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85]
    n = np.repeat(np.geomspace(1e5, 1e8, 5), len(levels))
    s = np.tile(levels, 5)
    rng = np.random.default_rng(seed)
    return n, s, law.loss(n, s) * np.exp(rng.normal(0.0, noise, len(n)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_constants_and_s_star(seed):
    n, s, loss = _grid(TRUE, noise=0.001, seed=seed)  # 0.1% multiplicative noise
    fit = fit_law(n, s, loss, starts=16, seed=seed)
    assert fit.converged
    for name, true in TRUE.as_dict().items():
        got = getattr(fit.law, name)
        assert abs(got / true - 1) < 0.05, (name, got, true)
    assert abs(fit.law.s_star() - TRUE.s_star()) < 0.01
    assert fit.rmse_log < 0.002


def test_bootstrap_intervals_cover_the_truth_at_their_level():
    """90% intervals of S* over 10 noisy grids: about 9 of 10 must hold the true S*."""
    covered, widths = 0, []
    for seed in range(10):
        n, s, loss = _grid(TRUE, noise=0.002, seed=seed)
        fit = fit_law(n, s, loss, seed=seed)
        boot = bootstrap(n, s, loss, fit, samples=25, seed=seed)
        assert int(boot["failed"][0]) == 0 and len(boot["S_star"]) == 25
        np.testing.assert_allclose(boot["N_over_Na"], 1 / (1 - boot["S_star"]))
        lo, hi = interval(boot["S_star"], 0.9)
        covered += lo < TRUE.s_star() < hi
        widths.append(hi - lo)
    assert covered >= 8 and max(widths) < 0.02


def test_closed_form_equals_numerical_optimum_for_random_constants():
    rng = np.random.default_rng(0)
    checked = dense = 0
    for _ in range(300):
        law = Law(
            E=rng.uniform(0, 3),
            B=10 ** rng.uniform(-2, 3),
            C=10 ** rng.uniform(-2, 3),
            beta=rng.uniform(0.01, 3),
            alpha=rng.uniform(0.05, 1.0),
        )
        closed, numeric = law.s_star(), law.s_star_numeric()
        assert abs(closed - numeric) < 1e-5, (law, closed, numeric)
        checked += 1
        dense += closed == 0.0
        if closed > 0:  # a stationary point: the derivative of log A(S)(1-S)^alpha vanishes
            h = 1e-6
            slope = (law.log_cost(closed + h) - law.log_cost(closed - h)) / (2 * h)
            assert abs(slope) < 1e-3
    assert checked == 300 and 0 < dense < 300  # both regimes were exercised


def test_closed_form_of_the_papers_ratio():
    # N / N_a = 1 / (1 - S*): Q-Sparse's 45.58% is N = 1.84 N_a
    law = Law(E=1.0, B=1.0, C=1.0, beta=0.3, alpha=0.3)
    assert law.total_over_active() == pytest.approx(1 / (1 - law.s_star()))
    assert pytest.approx(1.84, abs=0.005) == 1 / (1 - 0.4558)
    assert pytest.approx(2.58, abs=0.005) == 1 / (1 - 0.6125)


def test_fit_refuses_too_few_points_and_unidentifiable_grids():
    n, s, loss = _grid(TRUE, 0.0, 0)
    with pytest.raises(ValueError, match="5 constants .* at least as many points, got 4"):
        fit_law(n[:4], s[:4], loss[:4])
    one_size = n == n[0]
    with pytest.raises(ValueError, match="at least 2 model sizes"):
        fit_law(n[one_size], s[one_size], loss[one_size])
    two_levels = np.isin(s, [0.0, 0.4])
    with pytest.raises(ValueError, match="at least 3 sparsity levels"):
        fit_law(n[two_levels], s[two_levels], loss[two_levels])
    with pytest.raises(ValueError, match=r"sparsity S must be in \[0, 1\)"):
        check_points(n, np.where(s == 0.8, 1.0, s), loss)
    with pytest.raises(ValueError, match="every L must be finite and > 0"):
        check_points(n, s, np.where(s == 0.8, np.nan, loss))


def test_fit_flags_a_fit_that_did_not_converge(caplog):
    n, s, loss = _grid(TRUE, 0.002, 0)
    with caplog.at_level(logging.WARNING, logger="actsparse.scaling"):
        fit = fit_law(n, s, loss, starts=2, max_nfev=2)
    assert not fit.converged
    assert "did not converge" in caplog.text


def test_s_star_refuses_invalid_constants():
    with pytest.raises(ValueError, match="C, beta, alpha > 0"):
        Law(1.0, 1.0, -1.0, 0.5, 0.3).s_star()
    # B = 0: W0(0) = 0 and S* = 1 - beta / alpha, or dense when that is <= 0
    assert Law(1.0, 0.0, 1.0, 0.15, 0.3).s_star() == pytest.approx(0.5)
    assert Law(1.0, 0.0, 1.0, 0.5, 0.3).s_star() == 0.0
    assert math.isclose(Law(1.0, 0.0, 1.0, 0.15, 0.3).s_star_numeric(), 0.5, abs_tol=1e-6)


def test_the_fit_stage_recovers_s_star_from_grid_folders(tmp_path):
    """The stage end to end on grid-point folders whose losses follow a known law."""
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    from actsparse.schema.training import ScalingFitCfg
    from actsparse.stages.scaling import GridPoint, ScalingJob, run
    from actsparse.tables import (
        ACHIEVED_SPARSITY,
        METRICS,
        SCALING_COMPARE,
        SCALING_FIT,
        read_table,
        write_table,
    )

    sizes = dict(zip(["a", "b", "c", "d", "e"], np.geomspace(1e5, 1e8, 5), strict=True))
    levels = [0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85]
    rng = np.random.default_rng(0)
    points, inputs = {}, {}
    for size, n in sizes.items():
        for level in levels:
            variant = f"{size}.fp.s{round(level * 100)}"
            folder = tmp_path / variant
            folder.mkdir()
            loss = float(TRUE.loss(n, level) * np.exp(rng.normal(0, 0.001)))
            rows = [("final_valid_loss", loss), ("n_linear_params", n)]
            frame = pd.DataFrame(
                [
                    dict(
                        stage="train",
                        method="topk",
                        variant=variant,
                        level=level,
                        model="",
                        corpus="",
                        split="",
                        metric=m,
                        value=v,
                        config_hash="h",
                        mlflow_run_id="",
                    )
                    for m, v in rows
                ]  # fmt: skip
            )
            write_table(frame, folder / "metrics.parquet", METRICS)
            if level > 0:  # what a sparse grid point records: its rule's exact target
                (folder / "model").mkdir()
                save_file({"blk.weight": torch.zeros(4, 4)}, folder / "model" / "model.safetensors")
                achieved = pd.DataFrame(
                    [
                        dict(
                            layer=0,
                            site="ffn_in",
                            module="blk",
                            rule="topk",
                            target=level,
                            zeros=1,
                            total=2,
                            achieved=0.5,
                            natural=0.0,
                        )
                    ]  # fmt: skip
                )
                write_table(achieved, folder / "achieved_sparsity.parquet", ACHIEVED_SPARSITY)
            points[variant] = GridPoint(size, "fp", "", level)
            inputs[f"point.{variant}"] = str(folder)
    out = tmp_path / "study" / "scaling" / "fit-0000"
    out.mkdir(parents=True)
    cfg = ScalingJob(fit=study_defaults(ScalingFitCfg, "scaling.fit", bootstrap=30), points=points)
    result = run(cfg, inputs, out)
    law = read_table(out / "scaling_fit.parquet", SCALING_FIT).set_index("param")
    assert law.estimate["converged"] == 1.0
    assert abs(law.estimate["S_star"] - TRUE.s_star()) < 0.01
    assert law.lo["S_star"] < law.estimate["S_star"] < law.hi["S_star"]
    assert abs(law.estimate["S_star_numeric"] - law.estimate["S_star"]) < 1e-5
    compare = read_table(out / "scaling_compare.parquet", SCALING_COMPARE)
    assert len(compare) == 5 * 7 and (compare.delta > 0).all()  # sparser is worse at equal N
    assert {p.name for p in result.artifacts} >= {"scaling_loss_vs_n.png", "scaling_optimum.png"}
    assert {m.metric for m in result.metrics} >= {"S_star", "N_over_Na", "alpha"}
    # a study of the grid alone: the report shows the fit's plots and tables, no leaderboard
    from actsparse.stages.report import JobFolders, build
    from actsparse.tables import METRICS as M

    rows = pd.concat([read_table(tmp_path / v / "metrics.parquet", M) for v in points])
    write_table(rows, tmp_path / "study" / "summary.parquet", M)
    folders = JobFolders.of(
        {"train": [], "calibrate": [], "predictors": [], "scaling_fit": [str(out)]}
    )
    page = build(tmp_path / "study", tmp_path / "study" / "report", folders).read_text()
    assert 'src="scaling_optimum.png"' in page and "S_star" in page
