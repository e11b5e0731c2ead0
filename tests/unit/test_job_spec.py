"""The typed job spec: what the plan builds, Snakemake passes as JSON and the stage reads
back (and writes as config.yaml) is one `JobSpec`; a spec missing a key, or carrying one
the plan never writes, is refused naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import smoke_plan

from actsparse.schema.job import JobSpec, SpecError
from actsparse.stages.job import load_spec


def test_every_planned_spec_round_trips_through_json_and_yaml(tmp_path):
    plan = smoke_plan(tmp_path)
    for job in plan.jobs():
        assert JobSpec.from_dict(json.loads(job.json)) == job
        assert load_spec(job.json) == job
        path = tmp_path / f"{job.stage}-{job.variant}.yaml"
        path.write_text(yaml.safe_dump(job.to_dict()))
        assert load_spec(str(path)) == job
        assert job.output_root == plan.cfg.study.output_root
        assert job.out_dir.startswith(f"{plan.root}/")


def test_each_job_carries_the_method_its_rows_are_labelled_with(tmp_path):
    plan = smoke_plan(tmp_path)
    assert plan.sparsify("llama_micro", "teal_greedy", 0.5).method == "teal_greedy"
    assert plan.allocate("llama_micro", "teal_greedy").method == "teal_greedy"
    assert plan.evaluate_sparse("llama_micro", "topk", 0.5).method == "topk"
    assert plan.decompose("llama_micro", "svdllm", 0.3).method == "svdllm"
    assert plan.predictors("opt_micro", "dejavu_heads").method == "dejavu_heads"
    assert {plan.evaluate("llama_micro").method, plan.train("llama_micro").method} == {"dense"}


def test_a_bad_spec_is_refused_naming_the_key(tmp_path):
    good = smoke_plan(tmp_path).calibrate("llama_micro").to_dict()
    missing = {k: v for k, v in good.items() if k != "output_root"}
    with pytest.raises(SpecError, match="is missing 'output_root'"):
        JobSpec.from_dict(missing)
    with pytest.raises(SpecError, match="unknown key\\(s\\) 'extra'"):
        JobSpec.from_dict({**good, "extra": 1})
    with pytest.raises(SpecError, match="'inputs' must be a mapping"):
        JobSpec.from_dict({**good, "inputs": ["a"]})
    with pytest.raises(SystemExit, match="error: job spec is missing 'output_root'"):
        load_spec(json.dumps(missing))
    path = tmp_path / "config.yaml"
    path.write_text("- not a mapping\n")
    with pytest.raises(SystemExit, match="not a mapping"):
        load_spec(str(path))


def test_a_finished_job_reruns_beside_the_study_with_out(smoke_outputs, tmp_path, monkeypatch):
    """`python -m actsparse.stages.<stage> <job>/config.yaml --out DIR`: the same job written
    into DIR and tracked as '<study>-rerun', the study's folder left as it was; an existing
    DIR is refused (finishing would replace it)."""
    from mlflow.tracking import MlflowClient

    from actsparse.stages import data

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    job = smoke_outputs.data("stdlib")
    before = {p.name: p.stat().st_mtime_ns for p in Path(job.out_dir).rglob("*")}
    out = tmp_path / "again"
    data.main(
        "data", data.DataJob, data.run, argv=[f"{job.out_dir}/config.yaml", "--out", str(out)]
    )
    again = load_spec(str(out / "config.yaml"))
    assert (again.output, again.study, again.hash) == (str(out), f"{job.study}-rerun", job.hash)
    shards = sorted(p.name for p in (out / "tokens").rglob("*.npy"))
    assert shards and shards == sorted(
        p.name for p in (Path(job.out_dir) / "tokens").rglob("*.npy")
    )
    assert {p.name: p.stat().st_mtime_ns for p in Path(job.out_dir).rglob("*")} == before
    run = MlflowClient(uri).get_run((out / "mlflow_run_id").read_text().strip())
    assert MlflowClient(uri).get_experiment(run.info.experiment_id).name == f"{job.study}-rerun"
    with pytest.raises(SystemExit, match=f"--out {out} exists; give a new folder"):
        data.main(
            "data", data.DataJob, data.run, argv=[f"{job.out_dir}/config.yaml", "--out", str(out)]
        )
