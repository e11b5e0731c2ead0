"""Workflow tier: a study whose config changed keeps its old job folders under their old
hashes. Planted beside the smoke study, such folders (a copy of every folder the report
reads, its numbers changed: S* = 0.123456) reach neither the study table, nor any plot or
table of the report, nor any `actsparse` command's output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from smk import planned, snakemake

from actsparse.cli import main as cli
from actsparse.config import compose_study
from actsparse.plan import StudyPlan
from actsparse.tables import METRICS, SCALING_FIT, read_table, write_table

pytestmark = pytest.mark.workflow

STALE = 0.123456
# sorts after every other hash: the fit a "last in sort order" reader would take
STALE_HASH = "ffffffff"
COMMANDS = ["show", "sparsity", "lowrank", "predictors", "scaling", "claims"]


def plant_stale_copy(job_dir: Path) -> Path:
    """`job_dir` copied under STALE_HASH, every metric (and a fit's S*) set to STALE, and a
    fit's two plots swapped, so that whatever reads the copy shows it."""
    stale = job_dir.with_name(f"{job_dir.name.rsplit('-', 1)[0]}-{STALE_HASH}")
    shutil.copytree(job_dir, stale)
    metrics = read_table(stale / "metrics.parquet", METRICS)
    write_table(metrics.assign(value=STALE, config_hash=STALE_HASH), stale / "metrics.parquet",
                METRICS)  # fmt: skip
    if (stale / "scaling_fit.parquet").is_file():
        law = read_table(stale / "scaling_fit.parquet", SCALING_FIT)
        law.loc[law.param == "S_star", "estimate"] = STALE
        write_table(law, stale / "scaling_fit.parquet", SCALING_FIT)
        a, b = stale / "scaling_loss_vs_n.png", stale / "scaling_optimum.png"
        a_bytes = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(a_bytes)
    return stale


def command_outputs(wd: Path, monkeypatch, capsys) -> dict[str, str]:
    """What each `actsparse` command prints for the smoke study in `wd`."""
    out = {}
    monkeypatch.chdir(wd)
    for command in COMMANDS:
        cli([command, "-e", "smoke"])
        out[command] = capsys.readouterr().out
    return out


def report_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "report").iterdir())}


@pytest.fixture(scope="module")
def stale_study(smoke_run, tmp_path_factory) -> tuple[Path, list[Path]]:
    """A copy of the finished smoke study with a stale copy of every folder its report
    reads, its table and report rebuilt: (working directory, the stale folders)."""
    wd = tmp_path_factory.mktemp("stale_study") / "wd"
    shutil.copytree(smoke_run[0], wd, symlinks=True)  # keeps mtimes: nothing is out of date
    plan = StudyPlan(compose_study(["experiment=smoke"]))
    stale = [plant_stale_copy(wd / d) for ds in plan.report_inputs().values() for d in ds]
    # the stale folders are no job's output or input: only the forced jobs run
    forced = ("--forcerun", "summary", "report", "--config", "experiment=smoke")
    assert planned(snakemake(wd, "-n", *forced)) == {"summary": 1, "report": 1, "all": 1}
    r = snakemake(wd, *forced)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return wd, stale


def test_stale_folders_reach_neither_the_table_nor_the_report(smoke_run, stale_study):
    wd, stale = stale_study
    assert {d.parent.name for d in stale} == {"train", "calibrate", "predictors", "scaling"}
    root, clean = wd / "data" / "smoke", smoke_run[0] / "data" / "smoke"
    summary = read_table(root / "summary.parquet", METRICS)
    assert STALE_HASH not in set(summary.config_hash) and not (summary.value == STALE).any()
    pd.testing.assert_frame_equal(summary, read_table(clean / "summary.parquet", METRICS))
    # every plot, table and the page, byte for byte as the study built them without the
    # stale folders (a report that read them would draw their curves, copy their plots)
    files = report_files(root)
    assert files == report_files(clean) and "scaling_fit.csv" in files
    assert not any(str(STALE) in files[n].decode() for n in files if n.endswith(".csv"))


def test_stale_folders_reach_no_command(smoke_run, stale_study, monkeypatch, capsys):
    outputs = command_outputs(stale_study[0], monkeypatch, capsys)
    assert outputs == command_outputs(smoke_run[0], monkeypatch, capsys)
    assert "S_star" in outputs["scaling"] and "0.12346" not in outputs["scaling"]  # S* to .5g


def test_finished_reads_the_planned_folders_alone(smoke_run, stale_study, monkeypatch, capsys):
    wd = stale_study[0]
    gathered = command_outputs(wd, monkeypatch, capsys)
    for command in ["show", "sparsity", "lowrank", "predictors", "claims"]:
        cli([command, "-e", "smoke", "--finished"])
        out, want = capsys.readouterr().out, gathered[command]
        if command == "show":  # its title names the source
            out, want = out.split("\n", 1)[1], want.split("\n", 1)[1]
        assert out == want, command
    # a study run in part: a missing job is missing from what --finished reads
    plan = StudyPlan(compose_study(["experiment=smoke"]))
    job = next(j for j in plan.jobs() if j.stage == "evaluate" and ".topk." in j.variant)
    away = wd / f"{job.out_dir}.away"
    (wd / job.out_dir).rename(away)
    try:
        cli(["show", "-e", "smoke", "--finished", "--json"])
        rows = json.loads(capsys.readouterr().out.splitlines()[-1])
        jobs = {(r["stage"], r["variant"]) for r in rows}
        assert ("evaluate", job.variant) not in jobs and ("sparsify", job.variant) in jobs
    finally:
        away.rename(wd / job.out_dir)
