"""Each job's hash covers exactly its slice: a change reruns that stage and what depends on it."""

import json

from actsparse.config import compose_study
from actsparse.plan import StudyPlan, config_hash


def _hashes(*overrides):
    plan = StudyPlan(compose_study(["experiment=smoke", *overrides]))
    return {(j.stage, j.variant): j.hash for j in plan.jobs()}


def _changed(a, b):
    return sorted({stage for key, stage in ((k, k[0]) for k in a) if a[key] != b[key]})


def test_hash_is_deterministic_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert _hashes() == _hashes()


def test_an_evaluate_change_touches_only_evaluate_jobs():
    assert _changed(_hashes(), _hashes("evaluate.batch_size=3")) == ["evaluate"]


CALIBRATED = ("threshold", "teal", "teal_greedy", "cats")  # smoke entries reading statistics


def test_a_calibrate_change_touches_calibrate_and_the_calibrated_methods_only():
    a, b = _hashes(), _hashes("calibrate.near_zero_eps=0.01")
    changed = {k for k in a if a[k] != b[k]}
    assert {k for k in changed if k[0] == "calibrate"} == {
        ("calibrate", "llama_micro"),
        ("calibrate", "opt_micro"),
    }
    rest = {k for k in changed if k[0] != "calibrate"}
    assert rest == {
        (stage, v)
        for stage, v in a
        if stage in ("sparsify", "evaluate") and v.split(".")[1] in CALIBRATED
    }
    assert ("sparsify", "llama_micro.topk.s50") not in changed  # top-K needs no statistics
    assert ("evaluate", "llama_micro.dense") not in changed


def test_a_sparsify_change_touches_only_that_entrys_jobs():
    a, b = _hashes(), _hashes("sparsify.methods.cats.calib_tokens=1024")
    changed = sorted(k for k in a if a[k] != b[k])
    assert changed == [("evaluate", "llama_micro.cats.s50"), ("sparsify", "llama_micro.cats.s50")]


def test_a_train_change_touches_train_and_everything_downstream():
    assert _changed(_hashes(), _hashes("train.grad_clip=0.5")) == [
        "calibrate",
        "evaluate",
        "sparsify",
        "train",
    ]


def test_a_seed_change_touches_every_job_but_data():
    assert _changed(_hashes(), _hashes("study.seed=1")) == [
        "calibrate",
        "evaluate",
        "sparsify",
        "train",
    ]


def test_a_data_change_touches_every_job():
    assert _changed(_hashes(), _hashes("data.tokenizer.vocab_size=300")) == [
        "calibrate",
        "data",
        "evaluate",
        "sparsify",
        "train",
    ]


def test_a_model_change_touches_only_that_models_jobs():
    a, b = _hashes(), _hashes("models.opt_micro.arch.intermediate_size=96")
    changed = sorted(k for k in a if a[k] != b[k])
    assert changed == sorted(k for k in a if k[1].split(".")[0] == "opt_micro" and k[0] != "data")


def test_loading_options_do_not_retrain():
    a, b = _hashes(), _hashes("models.llama_micro.dtype=bfloat16")
    changed = sorted(k for k in a if a[k] != b[k])
    assert ("train", "llama_micro") not in changed
    assert changed == sorted(
        k for k in a if k[1].split(".")[0] == "llama_micro" and k[0] not in ("data", "train")
    )


def test_the_study_name_and_output_root_do_not_enter_slices():
    a = _hashes()
    assert a == _hashes("study.output_root=/elsewhere") == _hashes("study.name=other")


def test_spec_carries_slice_inputs_and_output():
    plan = StudyPlan(compose_study(["experiment=smoke"]))
    job = plan.calibrate("llama_micro")
    spec = json.loads(job.spec_json)
    assert spec["output"] == job.out_dir
    assert spec["inputs"]["model"] == plan.train("llama_micro").out_dir + "/model"
    assert spec["inputs"]["data"] == plan.data("stdlib").out_dir
    assert set(spec["config"]) == {"calibrate", "load", "seed"}  # its slice, not the whole config
    assert plan.upstream_dirs(job) == [
        plan.train("llama_micro").out_dir,
        plan.data("stdlib").out_dir,
    ]
