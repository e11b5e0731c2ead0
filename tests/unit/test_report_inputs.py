"""The report and the `actsparse` commands read the outputs the current config plans, and
nothing an earlier config left beside them. (The whole study, with stale folders planted
beside it: tests/workflow/test_stale_folders.py.)"""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import smoke_plan

from actsparse.cli import main as cli
from actsparse.stages.report import JobFolders
from actsparse.tables import METRICS, write_table


def test_the_report_reads_planned_folders_only(tmp_path):
    plan = smoke_plan(tmp_path)
    folders = plan.report_inputs()
    planned = {(j.stage, j.out_dir) for j in plan.jobs()}
    for role, stage in (("train", "train"), ("calibrate", "calibrate"),
                        ("predictors", "predictors"), ("scaling_fit", "scaling")):  # fmt: skip
        assert folders[role], role  # the smoke study has each kind
        assert {(stage, d) for d in folders[role]} <= planned, role
    # the study models' training curves, not the scaling grid's points
    assert len(folders["train"]) == len(plan.trained_models)
    assert folders["scaling_fit"] == [plan.scaling_fit().out_dir]
    assert smoke_plan(tmp_path, "~scaling.sizes").report_inputs()["scaling_fit"] == []


def test_job_folders_hold_one_fit_at_most():
    folders = JobFolders.of(
        {"train": ["t/b-2", "t/a-1"], "calibrate": [], "predictors": [], "scaling_fit": []}
    )
    assert [p.name for p in folders.train] == ["a-1", "b-2"] and folders.scaling_fit is None
    with pytest.raises(ValueError, match="one scaling fit"):
        JobFolders.of(
            {"train": [], "calibrate": [], "predictors": [], "scaling_fit": ["s/fit-1", "s/fit-2"]}
        )


def _study_table(plan, hashes: list[str]) -> None:
    """A study table with one perplexity row per config hash."""
    rows = pd.DataFrame(
        [
            dict(stage="evaluate", method="dense", variant="llama_micro.dense", level=None,
                 model="llama_micro", corpus="stdlib", split="test", metric="perplexity",
                 value=10.0 + i, config_hash=h, mlflow_run_id="")
            for i, h in enumerate(hashes)
        ]
    )  # fmt: skip
    write_table(rows, plan.summary_path, METRICS)


@pytest.mark.parametrize("command", ["show", "sparsity", "lowrank", "predictors", "claims"])
def test_commands_refuse_a_study_table_of_another_config(tmp_path, command):
    """A table gathered before the config changed holds jobs of other hashes: the commands
    would show them beside this config's outputs, so they refuse it."""
    plan = smoke_plan(tmp_path)
    _study_table(plan, [plan.evaluate("llama_micro").hash, "ffffffff"])
    with pytest.raises(SystemExit, match="1 jobs that the current config does not plan"):
        cli([command, "-e", "smoke", f"study.output_root={tmp_path}"])


def test_show_reads_a_table_of_planned_jobs(tmp_path, capsys):
    plan = smoke_plan(tmp_path)
    _study_table(plan, [plan.evaluate("llama_micro").hash])
    cli(["show", "-e", "smoke", f"study.output_root={tmp_path}"])
    assert "llama_micro" in capsys.readouterr().out
