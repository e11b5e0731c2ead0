"""Workflow tier: the smoke study really runs through Snakemake, and reruns are exact.

Runs `snakemake` as a user would, in a temporary working directory holding a copy of the
workflow (Snakefile, conf/, workflow/) so tests can edit the config like a user.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import smoke_plan
from mlflow.tracking import MlflowClient
from smk import SMOKE_BUDGET_JOBS, copy_workflow, planned, snakemake, time_one_job

from actsparse.config import compose_study
from actsparse.methods.lowrank import LOWRANK
from actsparse.methods.predictors import PREDICTORS
from actsparse.methods.sparsity import SPARSITY
from actsparse.models import adapter_for
from actsparse.plan import StudyPlan
from actsparse.sweeps import default_entry
from actsparse.tables import (
    ACHIEVED_SPARSITY,
    ALLOCATION,
    CHANNEL_STATS,
    DATA_MANIFEST,
    DECOMPOSITION,
    HISTOGRAMS,
    HOTCOLD,
    LINEARS,
    LOSS_CURVE,
    METRICS,
    PREDICTOR_METRICS,
    SCALING_COMPARE,
    SCALING_FIT,
    SCALING_POINTS,
    read_table,
)

pytestmark = pytest.mark.workflow
# the smoke experiment's jobs, counted from its plan (conf/experiment/smoke.yaml): what
# the DAG must have made; the plan's own tests pin which jobs a config plans
PLAN = smoke_plan(Path("data"))
N_SPARSE, N_LOWRANK, N_DENSE = (
    len(PLAN.sparse_variants), len(PLAN.decomposed_variants), len(PLAN.models)
)  # fmt: skip
N_ALLOCATE = len(PLAN.allocation_searches)  # TEAL's greedy walk
N_PREDICTORS, N_PREDICTED = len(PLAN.predictor_jobs), len(PLAN.predicted_variants)
N_EVALUATE = N_DENSE + N_LOWRANK + N_SPARSE + N_PREDICTED
N_GRID = len(PLAN.grid_points)  # the scaling grid: fitted points and each variant's
N_JOBS = len(PLAN.jobs())
assert (
    N_JOBS == 2 + 2 + 2 + N_LOWRANK + N_ALLOCATE + N_SPARSE + N_PREDICTORS + N_EVALUATE + N_GRID + 1
)


def job_dirs(root: Path) -> list[Path]:
    """Every finished job folder: `<stage>/<variant>-<hash>`, and the grid's train jobs
    one level deeper (`scaling/train/...`)."""
    return sorted(p for p in [*root.glob("*/*-*"), *root.glob("scaling/train/*-*")] if p.is_dir())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, repo) -> Path:
    return copy_workflow(repo, tmp_path_factory.mktemp("workflow"))


def test_bad_config_stops_before_any_job(workdir):
    for config, message in (
        ("experiment=nope", "unknown experiment 'nope'"),
        ("overrides=[train.lr=-1]", "train.lr: must be in (0, 1)"),
        ("train={nope: 3}", "unknown config key 'train.nope'"),
    ):
        r = snakemake(workdir, "--config", config)
        assert r.returncode != 0
        assert message in r.stdout + r.stderr
        assert "Traceback" not in r.stderr
    assert not (workdir / "data").exists()


def test_a_target_in_the_wrong_folder_is_refused(workdir):
    """A grid point asked for under train/ (where a study model's rule would build it)."""
    point = PLAN.grid_train("w16", "fp", "", 0.0)
    wrong = point.out_dir.replace("/scaling/train/", "/train/")
    r = snakemake(workdir, "-n", wrong, "--config", "experiment=smoke")
    assert r.returncode != 0
    assert f"{wrong} is not planned by the current config (see {point.out_dir})" in r.stdout


def test_smoke_runs_within_budget(smoke_run, mlflow_server):
    """The whole study costs at most SMOKE_BUDGET_JOBS of its own jobs (its dense Llama
    evaluation rerun alone, side by side): a slower machine slows both alike."""
    wd, wall = smoke_run
    (job,) = (wd / "data" / "smoke" / "evaluate").glob("llama_micro.dense-*")
    one_job = time_one_job(wd, job, tracking=mlflow_server)
    print(f"smoke: {wall:.0f} s = {wall / one_job:.1f} jobs of {one_job:.1f} s")
    assert wall / one_job < SMOKE_BUDGET_JOBS, (wall, one_job)


def test_every_output_validates_against_its_schema(smoke_run):
    wd, _ = smoke_run
    root = wd / "data" / "smoke"
    summary = read_table(root / "summary.parquet", METRICS)
    jobs = job_dirs(root)
    stages = [p.parent.name for p in jobs]
    assert (stages.count("sparsify"), stages.count("evaluate")) == (N_SPARSE, N_EVALUATE)
    assert stages.count("decompose") == N_LOWRANK
    assert stages.count("allocate") == N_ALLOCATE
    assert stages.count("predictors") == N_PREDICTORS
    assert (stages.count("train"), stages.count("scaling")) == (2 + N_GRID, 1)
    assert len(jobs) == N_JOBS and not list(root.glob("*/*.partial"))
    for job in jobs:
        assert (job / "config.yaml").is_file()
        run_id = (job / "mlflow_run_id").read_text().strip()
        metrics = read_table(job / "metrics.parquet", METRICS)
        assert set(metrics.mlflow_run_id) == {run_id} and run_id
        assert set(metrics.config_hash) == {job.name.rsplit("-", 1)[1]}
    data = next(root.glob("data/stdlib-*"))
    manifest = read_table(data / "manifest.parquet", DATA_MANIFEST)
    assert set(manifest.split) == {"train", "valid", "test"}
    for train in root.glob("train/*-*"):
        assert len(read_table(train / "loss_curve.parquet", LOSS_CURVE)) == 30
        assert (train / "model" / "model.safetensors").is_file()
    for cal in root.glob("calibrate/*-*"):
        assert len(list((cal / "gram").glob("layer_*.safetensors"))) == 2
        read_table(cal / "channel_stats", CHANNEL_STATS)
        read_table(cal / "histograms", HISTOGRAMS)
        read_table(cal / "linears.parquet", LINEARS)
    for sp in root.glob("sparsify/*-*"):
        allocation = read_table(sp / "allocation.parquet", ALLOCATION)
        assert len(allocation) and allocation.level.between(0, 0.99).all(), sp
        levels = set(allocation.level.round(6))
        cfg = yaml.safe_load((sp / "config.yaml").read_text())["config"]["method"]
        method = cfg["method"]
        if cfg.get("allocation") == "greedy":  # allocates per projection
            assert len(levels) > 1, sp
        elif method == "larosa":  # rotated sites at 0.8 s, the others at 1.2 s
            assert levels == {0.4, 0.6}, sp
        elif method == "rsparse":  # the sparse part drops more; low rank spends the rest
            assert min(levels) >= 0.5 and max(levels) > 0.5, sp
        else:
            assert levels == {0.5}, sp
        assert json.loads((sp / "sparsity.json").read_text())["level"] == 0.5
    # the smoke study exercises every registered low-rank method, and reloads each model
    lowrank = set()
    for d in root.glob("decompose/*-*"):
        manifest = json.loads((d / "model" / "lowrank.json").read_text())
        lowrank.add(manifest["method"])
        table = read_table(d / "decomposition.parquet", DECOMPOSITION)
        assert len(table) == 2 * 7 and len(manifest["modules"]) == 14, d
        assert (table.act_rel_err > 0).all() and (table.act_rel_err < 1).all(), d
    assert lowrank == set(LOWRANK.names())
    ev = summary[summary.stage == "evaluate"]
    ppl = ev[ev.metric == "perplexity"].set_index(["variant", "method"])["value"]
    # calibrated on the stdlib code, every model and decomposition is also evaluated on prose
    corpora = ev[ev.metric == "perplexity"].groupby("variant").corpus.agg(set)
    assert (corpora == {"stdlib", "pydoc"}).all() and len(corpora) == N_EVALUATE
    dense = {
        (v, m)
        for v in ("llama_micro.dense", "opt_micro.dense", "llama_micro_svdllm.dense")
        for m in ("dense", "unigram")
    }
    assert dense <= set(ppl.index) and (ppl > 1).all()
    # the smoke study exercises every registered sparsity method
    methods = {
        json.loads((p / "sparsity.json").read_text())["method"] for p in root.glob("sparsify/*-*")
    }
    assert methods == set(SPARSITY.names())
    sparsified = {p.name.rsplit("-", 1)[0] for p in root.glob("sparsify/*-*")}
    for e in (p for p in root.glob("evaluate/*.s50-*") if p.name.rsplit("-", 1)[0] in sparsified):
        achieved = read_table(e / "achieved_sparsity.parquet", ACHIEVED_SPARSITY)
        reachable = achieved[["target", "natural"]].max(axis=1)  # greedy: per-module targets
        assert (achieved.total > 0).all(), e
        assert ((achieved.achieved - reachable).abs() < 0.15).all(), e  # 2,048-token calibration
    sparse = ev[ev.variant.str.endswith(".s50") & (ev.method != "unigram")]
    assert (sparse.level == 0.5).all()
    eff = sparse[sparse.metric == "effective_sparsity"].set_index("variant").value
    assert ((eff > 0.05) & (eff < 0.8)).all() and len(eff) == N_SPARSE + N_PREDICTED
    assert set(summary.stage) == {
        "data", "train", "calibrate", "decompose", "allocate", "sparsify", "predictors",
        "evaluate", "scaling",
    }  # fmt: skip
    # every registered predictor runs; trained ones are saved per layer and scored
    methods = set()
    for d in root.glob("predictors/*-*"):
        if (d / "hotcold.parquet").is_file():
            methods.add("hotcold")
            hot = read_table(d / "hotcold.parquet", HOTCOLD)
            assert len(hot) == 2 and hot.top50pct_share.between(0.5, 1).all()
            continue
        meta = json.loads((d / "predictors.json").read_text())
        methods.add(meta["method"])
        scores = read_table(d / "predictor_metrics.parquet", PREDICTOR_METRICS)
        assert set(scores.layer) == {-1, 0, 1} and scores.value.notna().all(), d
        assert len(list((d / "weights").glob("layer_*.safetensors"))) == (
            2 if meta["method"] != "spark" else 0
        )
        assert not (d / "labels").exists()  # streamed to disk, removed after training
    assert methods == set(PREDICTORS.names())
    # predicted masks: perplexity next to the oracle's at the same level, on the same windows
    oracle = ev[ev.metric == "oracle_gap_pct"]
    assert len(oracle) == N_PREDICTED and oracle.value.abs().lt(50).all()
    # composition: top-K on the decomposed model, measured against that model
    comp = ev[(ev.variant == "llama_micro_svdllm.topk.s50") & (ev.metric == "sparsity.all")]
    assert abs(comp.value.iloc[0] - 0.5) < 0.01
    assert (root / "benchmarks" / "train").is_dir() and (root / "logs" / "train").is_dir()
    # the scaling grid: every training-time operator, then the fit
    operators = set()
    for g in root.glob("scaling/train/*-*"):
        curve = read_table(g / "loss_curve.parquet", LOSS_CURVE)
        assert len(curve) == 20 and curve.valid_loss.notna().sum() == 2
        if ".s0-" in g.name:
            assert not (g / "sparse_training.json").exists()  # the dense baseline
            continue
        sparse = json.loads((g / "sparse_training.json").read_text())
        operators.add((sparse["operator"], sparse["precision"]))
        achieved = read_table(g / "achieved_sparsity.parquet", ACHIEVED_SPARSITY)
        assert (achieved.total > 0).all(), g
    assert operators == {("topk", "fp"), ("stat_topk", "fp"), ("block_topk", "fp"),
                         ("topk", "b1.58")}  # fmt: skip
    fit = next(root.glob("scaling/fit-*"))
    points = read_table(fit / "scaling_points.parquet", SCALING_POINTS)
    assert len(points) == N_GRID and (points.loss > 0).all()
    law = read_table(fit / "scaling_fit.parquet", SCALING_FIT).set_index("param")
    assert set(law.precision) == {"fp"}
    assert abs(law.estimate["S_star"] - law.estimate["S_star_numeric"]) < 1e-4
    assert law.estimate["N_over_Na"] == pytest.approx(1 / (1 - law.estimate["S_star"]))
    compare = read_table(fit / "scaling_compare.parquet", SCALING_COMPARE)
    # every sparse point; all but the 1.58-bit one have a dense twin (same size, precision)
    assert len(compare) == N_GRID - 2
    assert compare.dense_loss.notna().sum() == N_GRID - 3


def _runs_through_rest(server: str) -> tuple[str, list[dict]]:
    """The smoke experiment's id and runs, read through the MLflow REST API."""

    def post(path, body):
        req = urllib.request.Request(
            f"{server}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    exp = json.load(
        urllib.request.urlopen(
            f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=smoke", timeout=30
        )
    )["experiment"]
    runs = post(
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp["experiment_id"]], "max_results": 1000},
    )
    return exp["experiment_id"], runs.get("runs", [])


def test_the_report_shows_the_leaderboard_and_plots(smoke_run):
    wd, _ = smoke_run
    report = wd / "data" / "smoke" / "report"
    page = (report / "index.html").read_text()
    for name in (
        "loss_curves.png",
        "perplexity.png",
        "natural_sparsity.png",
        "sparsity_vs_perplexity.png",
        "lowrank_vs_perplexity.png",
        "predictor_recall_vs_cost.png",
        "predicted_vs_oracle.png",
        "hot_cold_neurons.png",
        "scaling_loss_vs_n.png",
        "scaling_optimum.png",
        "quality_vs_speed.png",
    ):
        assert f'src="{name}"' in page and (report / name).stat().st_size > 10_000
    board = pd.read_csv(report / "leaderboard.csv")
    # every variant's decode step measured beside the dense model's (speedup 1: itself)
    variants = board[board.method != "unigram"]
    assert variants.decode_speedup.notna().all() and (variants.decode_ms > 0).all()
    plain_dense = variants[
        (variants.method == "dense") & variants.model.isin(["llama_micro", "opt_micro"])
    ]
    assert (plain_dense.decode_speedup == 1.0).all()
    assert {(m, k) for m in ("llama_micro", "opt_micro") for k in ("dense", "unigram")} <= set(
        zip(board.model, board.method, strict=True)
    )
    sweep = pd.read_csv(report / "sparsity_sweep.csv")
    # predicted masks are sparsity methods too: they join the sweep and the frontier
    assert len(sweep) == N_SPARSE + N_PREDICTED and sweep["ppl_increase_%"].notna().all()
    frontier = pd.read_csv(report / "sparsity_frontier.csv")
    assert len(frontier) == N_SPARSE + N_PREDICTED and "max_level_ppl+1%" in frontier
    predictors = pd.read_csv(report / "predictors.csv")
    assert len(predictors) == N_PREDICTORS - 1 and "recall_at_k@0.5" in predictors  # no hotcold
    assert len(pd.read_csv(report / "predicted_vs_oracle.csv")) == N_PREDICTED
    assert (board[board.method == "dense"]["ppl_vs_dense_%"] == 0).all()
    assert "llama_micro" in page and "<table" in page
    lowrank = pd.read_csv(report / "lowrank_sweep.csv")
    assert len(lowrank) == 2 * N_LOWRANK and set(lowrank.corpus) == {"stdlib", "pydoc"}
    assert (lowrank.ratio_removed == 0.3).all() and lowrank["ppl_increase_%"].notna().all()
    law = pd.read_csv(report / "scaling_fit.csv")
    assert {"S_star", "S_star_numeric", "N_over_Na", "converged"} <= set(law.param)


def test_every_job_is_an_mlflow_run_on_the_server(smoke_run, mlflow_server):
    wd, _ = smoke_run
    _, runs = _runs_through_rest(mlflow_server)
    by_id = {
        r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        | {"_status": r["info"]["status"]}
        for r in runs
    }
    root = wd / "data" / "smoke"
    for job in job_dirs(root):
        tags = by_id[(job / "mlflow_run_id").read_text().strip()]
        assert tags["_status"] == "FINISHED"
        assert tags["stage"] == job.parent.name
        variant, config_hash = job.name.rsplit("-", 1)
        assert tags["variant"] == variant and tags["config_hash"] == config_hash
        assert tags["git_commit"]
    stages = sorted(t["stage"] for t in by_id.values())
    assert stages == sorted([job.stage for job in PLAN.jobs()] + ["report"])
    report = next(i for i, t in by_id.items() if t["stage"] == "report")
    assert "sparsity_vs_perplexity.png" in {
        a.path for a in MlflowClient(mlflow_server).list_artifacts(report)
    }
    client = MlflowClient(mlflow_server)
    train = next(i for i, t in by_id.items() if t["stage"] == "train")
    assert {a.path for a in client.list_artifacts(train)} >= {
        "metrics.parquet",
        "config.yaml",
        "loss_curve.png",
    }


def test_the_runs_page_shows_every_run(smoke_run, mlflow_server, chromium, tmp_path):
    """Headless Chromium renders the experiment's runs page: every run's name is on it."""
    exp_id, runs = _runs_through_rest(mlflow_server)
    url = f"{mlflow_server}/#/experiments/{exp_id}/runs"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,4000",  # tall: every run row renders
        "--virtual-time-budget=20000",
    ]
    shot = tmp_path / "runs.png"
    subprocess.run(
        [chromium, *flags, f"--user-data-dir={tmp_path / 'p1'}", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=180,
    )
    dom = subprocess.run(
        [chromium, *flags, f"--user-data-dir={tmp_path / 'p2'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    names = [r["info"]["run_name"] for r in runs]
    assert len(names) == N_JOBS + 1  # and the report
    missing = [n for n in names if n not in dom]
    assert not missing, f"runs not rendered on {url}: {missing}"
    assert shot.is_file() and shot.stat().st_size > 20_000
    shutil.copy(shot, smoke_run[0] / "mlflow_runs_page.png")


def _edit(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))
    return text


def test_reruns_follow_config_changes(smoke_run):
    wd, _ = smoke_run
    assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {}

    evaluate = wd / "conf" / "evaluate" / "default.yaml"
    original = _edit(evaluate, "batch_size: 8", "batch_size: 5")
    try:
        assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {
            "evaluate": N_EVALUATE,
            "summary": 1,
            "report": 1,
            "all": 1,
        }
    finally:
        evaluate.write_text(original)

    smoke = wd / "conf" / "experiment" / "smoke.yaml"
    original = _edit(smoke, "fit: {starts: 4, bootstrap: 20}", "fit: {starts: 4, bootstrap: 21}")
    try:  # the fit alone reruns: no grid point retrains
        assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {
            "scaling": 1,
            "summary": 1,
            "report": 1,
            "all": 1,
        }
    finally:
        smoke.write_text(original)

    # the one home of the training schedule: the study's models and the scaling grid (which
    # starts from it, the smoke preset changing some keys) retrain, and all downstream
    train = wd / "conf" / "train" / "default.yaml"
    original = _edit(train, "grad_clip: 1.0", "grad_clip: 0.5")
    try:
        assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {
            "train": 2,
            "train_grid": N_GRID,
            "scaling": 1,
            "calibrate": 2,
            "decompose": N_LOWRANK,
            "allocate": N_ALLOCATE,
            "sparsify": N_SPARSE,
            "predictors": N_PREDICTORS,
            "evaluate": N_EVALUATE,
            "summary": 1,
            "report": 1,
            "all": 1,
        }
    finally:
        train.write_text(original)

    teal = wd / "conf" / "sparsify" / "teal.yaml"  # the teal and teal_greedy entries
    original = _edit(teal, "max_level: 0.99", "max_level: 0.98")
    try:
        assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {
            "allocate": 1,  # the greedy walk
            "sparsify": 2,
            "evaluate": 2,
            "summary": 1,
            "report": 1,
            "all": 1,
        }
    finally:
        teal.write_text(original)

    nsvd = wd / "conf" / "decompose" / "nsvd.yaml"
    original = _edit(nsvd, "k1_fraction: 0.95", "k1_fraction: 0.9")
    try:
        assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {
            "decompose": 1,
            "evaluate": 1,
            "summary": 1,
            "report": 1,
            "all": 1,
        }
    finally:
        nsvd.write_text(original)

    heads = wd / "conf" / "predictors" / "dejavu_heads.yaml"
    original = _edit(heads, "stop_recall: 0.99", "stop_recall: 0.98")
    try:
        assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {
            "predictors": 1,
            "evaluate": 1,
            "summary": 1,
            "report": 1,
            "all": 1,
        }
    finally:
        heads.write_text(original)
    assert planned(snakemake(wd, "-n", "--config", "experiment=smoke")) == {}


def runs_on(family: str, method_cfg) -> bool:
    """Whether a sparsity method's default sites exist in a model family."""
    return set(method_cfg.sites_used()) <= set(adapter_for(family).sites)


def rule_counts(plan: StudyPlan) -> dict[str, int]:
    """Jobs per Snakemake rule, as the plan lays them out (an extra corpus's data job runs
    under rule eval_data, a grid point's train job under train_grid)."""
    eval_data = {variant for _, variant in plan.eval_data_variants}
    counts: dict[str, int] = {}
    for job in plan.jobs():
        rule = job.stage
        if job.stage == "data" and job.variant in eval_data:
            rule = "eval_data"
        elif job.stage == "train" and job.out_dir.startswith(f"{plan.root}/scaling/"):
            rule = "train_grid"
        counts[rule] = counts.get(rule, 0) + 1
    return {**counts, "summary": 1, "report": 1, "all": 1}


MODEL_TYPE = {"llama2_7b": "llama", "mistral_7b": "mistral", "opt_6_7b": "opt"}


@pytest.mark.parametrize("experiment", list(MODEL_TYPE))
def test_real_model_presets_plan_without_downloading(workdir, experiment, monkeypatch):
    """The full sweep of each 7B preset, planned without the network: Snakemake's DAG holds
    exactly the plan's jobs, and every registered method whose sites the model has is in it.
    (How long planning takes is measured by benchmarks/plan_time.py, not here.)"""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # the hub's tasks plan as on a cluster
        monkeypatch.delenv(var, raising=False)
    cfg = compose_study([f"experiment={experiment}"])
    methods = {g: {e["method"] for e in getattr(cfg, g).methods.values() if e["models"] != []}
               for g in ("sparsify", "decompose", "predictors")}  # fmt: skip
    family = MODEL_TYPE[experiment]  # a hub checkpoint's family is known once it loads
    assert methods["sparsify"] == {
        m for m in SPARSITY.names() if runs_on(family, default_entry("sparsify", m).cfg)
    }
    assert methods["decompose"] == set(LOWRANK.names())
    gated = {"spark"}  # reads the gate branch's weights
    has_gate = adapter_for(family).gated
    assert methods["predictors"] == set(PREDICTORS.names()) - (set() if has_gate else gated)
    assert cfg.calibrate.corpus == "c4" and set(cfg.eval_data) == {"c4"}
    # the hub not switched off (the presets' zero-shot tasks read their data from it, as on a
    # cluster) but at an address that refuses every connection: planning reaches no network
    unreachable = {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
                   "HF_ENDPOINT": "http://127.0.0.1:9"}  # fmt: skip
    result = snakemake(workdir, "-n", "--config", f"experiment={experiment}", env=unreachable)
    assert planned(result) == rule_counts(StudyPlan(cfg))
    assert not (workdir / "data" / experiment).exists()  # planned, nothing fetched or run
    if experiment != "llama2_7b":  # the presets share their task list and its check
        return
    # with the hub off, the tasks that need it stop the DAG before any job, named
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HOME": str(workdir / "empty-hf-cache")}  # fmt: skip
    result = snakemake(workdir, "-n", "--config", f"experiment={experiment}", env=offline)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "evaluate.tasks: task 'piqa' reads dataset" in said
    assert not (workdir / "data" / experiment).exists()
