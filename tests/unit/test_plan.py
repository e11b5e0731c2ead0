"""Each job's hash covers exactly its slice: a change reruns that stage and what depends on it."""

import json

from actsparse.config import compose_study
from actsparse.plan import StudyPlan, config_hash


def _hashes(*overrides):
    plan = StudyPlan(compose_study(["experiment=smoke", *overrides]))
    return {(j.stage, j.variant): j.hash for j in plan.jobs()}


def _changed(a, b):
    return sorted({stage for key, stage in ((k, k[0]) for k in a) if a[key] != b[key]})


def _changed_jobs(a, b):
    return sorted(k for k in a if a[k] != b[k])


def test_hash_is_deterministic_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert _hashes() == _hashes()


def test_an_evaluate_change_touches_only_evaluate_jobs():
    assert _changed(_hashes(), _hashes("evaluate.batch_size=3")) == ["evaluate"]


CALIBRATED = (
    "threshold",
    "teal",
    "teal_greedy",
    "cats",
    "larosa",
)  # smoke entries reading statistics


def test_a_calibrate_change_touches_calibrate_and_what_reads_statistics_only():
    a, b = _hashes(), _hashes("calibrate.near_zero_eps=0.01")
    changed = {k for k in a if a[k] != b[k]}
    composed = {k for k in a if k[1].startswith("llama_micro_svdllm")}  # built on a decomposition
    decomposed = {k for k in a if k[0] in ("decompose", "evaluate") and ".r30" in k[1]}
    calibrated = {
        (stage, v)
        for stage, v in a
        if stage in ("allocate", "sparsify", "evaluate") and v.split(".")[1] in CALIBRATED
    }
    assert changed == {
        ("calibrate", "llama_micro"), ("calibrate", "opt_micro"), *composed, *decomposed, *calibrated
    }  # fmt: skip
    assert len([k for k in decomposed if k[0] == "decompose"]) == 6  # every low-rank entry
    assert ("sparsify", "llama_micro.topk.s50") not in changed  # top-K needs no statistics
    assert ("evaluate", "llama_micro.dense") not in changed


def test_a_greedy_entry_searches_once_for_all_its_levels():
    """One allocate job per (model, greedy entry), over the entry's nonzero levels; each
    level's sparsify job reads it, and a greedy key reruns the search and every level."""
    plan = StudyPlan(compose_study(["experiment=smoke", "sparsify.levels=[0.0,0.5,0.7]"]))
    search = plan.allocate("llama_micro", "teal_greedy")
    assert plan.allocation_searches == [
        ("llama_micro", "teal_greedy"),
        ("llama_micro", "wina_greedy"),
    ]
    assert search.config["levels"] == [0.5, 0.7]
    assert search.out_dir.endswith(f"/allocate/llama_micro.teal_greedy-{search.hash}")
    for level in (0.5, 0.7):
        job = plan.sparsify("llama_micro", "teal_greedy", level)
        assert job.inputs["allocation"] == search.out_dir
        assert plan.upstream_dirs(job)[-1] == search.out_dir
    assert "allocation" not in plan.sparsify("llama_micro", "teal_greedy", 0.0).inputs
    assert "allocation" not in plan.sparsify("llama_micro", "teal", 0.5).inputs
    a, b = _hashes(), _hashes("sparsify.methods.teal_greedy.greedy_step=0.2")
    assert {k for k in a if a[k] != b[k]} == {
        ("allocate", "llama_micro.teal_greedy"),
        ("sparsify", "llama_micro.teal_greedy.s50"),
        ("evaluate", "llama_micro.teal_greedy.s50"),
    }


def test_a_decompose_change_touches_that_entry_and_what_is_built_on_it():
    a, b = _hashes(), _hashes("decompose.methods.svdllm.ridge_eps=1e-8")
    changed = sorted(k for k in a if a[k] != b[k])
    assert changed == sorted(
        [("decompose", "llama_micro.svdllm.r30"), ("evaluate", "llama_micro.svdllm.r30")]
        + [k for k in a if k[1].startswith("llama_micro_svdllm")]
    )


def test_decomposed_variants_read_calibration_and_are_judged_against_their_base():
    plan = StudyPlan(compose_study(["experiment=smoke"]))
    dec = plan.decompose("llama_micro", "nsvd", 0.3)
    assert dec.inputs == {
        "model": plan.model_path("llama_micro"),
        "calibration": plan.calibrate("llama_micro").out_dir,
    }
    assert dec.config["method"]["k1_fraction"] == 0.95
    ev = plan.evaluate_decomposed("llama_micro", "nsvd", 0.3)
    assert ev.inputs["model"] == f"{dec.out_dir}/model"
    assert ev.inputs["reference"] == plan.model_path("llama_micro")
    assert ev.config["level"] == 0.3
    # the eval corpus is tokenized with the study data job's BPE
    pydoc = plan.data("pydoc")
    assert pydoc.inputs == {"tokenizer": plan.data("stdlib").out_dir}
    assert ev.inputs["data.pydoc"] == pydoc.out_dir
    # composition: the decomposed model is a model of the study
    assert plan.model_path("llama_micro_svdllm") == (
        f"{plan.decompose('llama_micro', 'svdllm', 0.3).out_dir}/model"
    )
    sp = plan.sparsify("llama_micro_svdllm", "topk", 0.5)
    assert sp.inputs == {"model": plan.model_path("llama_micro_svdllm")}
    # a decomposed model is calibrated only when a calibrated method runs on it
    assert plan.calibrated_models == ["llama_micro", "opt_micro"]
    plan = StudyPlan(
        compose_study(["experiment=smoke", "sparsify.methods.teal.models=[llama_micro_svdllm]"])
    )
    assert plan.calibrated_models == ["llama_micro", "opt_micro", "llama_micro_svdllm"]
    sp = plan.sparsify("llama_micro_svdllm", "teal", 0.5)
    assert sp.inputs["calibration"] == plan.calibrate("llama_micro_svdllm").out_dir
    assert plan.calibrate("llama_micro_svdllm").inputs["model"] == plan.model_path(
        "llama_micro_svdllm"
    )


def test_a_sparsify_change_touches_only_that_entrys_jobs():
    a, b = _hashes(), _hashes("sparsify.methods.cats.calib_tokens=1024")
    changed = sorted(k for k in a if a[k] != b[k])
    assert changed == [("evaluate", "llama_micro.cats.s50"), ("sparsify", "llama_micro.cats.s50")]


def test_a_predictor_change_touches_that_entrys_jobs_only():
    a, b = _hashes(), _hashes("predictors.methods.dejavu_heads.epochs=2")
    assert sorted(k for k in a if a[k] != b[k]) == [
        ("evaluate", "opt_micro.dejavu_heads.s50"),
        ("predictors", "opt_micro.dejavu_heads"),
    ]


def test_predicted_masks_are_evaluated_per_level_with_the_predictors_as_input():
    plan = StudyPlan(compose_study(["experiment=smoke", "predictors.levels=[0.5,0.9]"]))
    assert ("opt_micro", "dejavu_heads", 0.9) in plan.predicted_variants
    assert not any(e == "hotcold" for _, e, _ in plan.predicted_variants)  # a report
    job = plan.evaluate_predicted("opt_micro", "dejavu_heads", 0.9)
    assert job.inputs["predictors"] == plan.predictors("opt_micro", "dejavu_heads").out_dir
    assert job.variant == "opt_micro.dejavu_heads.s90" and job.config["level"] == 0.9
    # the recall-at-K levels are part of the predictors job, so they rerun it
    assert plan.predictors("opt_micro", "dejavu_heads").config["levels"] == [0.5, 0.9]
    pred = plan.predictors("opt_micro", "dejavu_heads").inputs
    assert set(pred) == {"model", "data"}  # norm-ranked labels read no statistics
    thr = StudyPlan(compose_study(["experiment=smoke", "predictors.methods.spark.label=threshold"]))
    assert thr.predictors("llama_micro", "spark").inputs["calibration"] == (
        thr.calibrate("llama_micro").out_dir
    )
    none = StudyPlan(compose_study(["experiment=smoke", "predictors.methods.spark.models=[]"]))
    assert ("llama_micro", "spark") not in none.predictor_jobs  # []: no model


def test_a_train_change_touches_train_and_everything_downstream():
    assert _changed(_hashes(), _hashes("train.grad_clip=0.5")) == [
        "allocate",
        "calibrate",
        "decompose",
        "evaluate",
        "predictors",
        "sparsify",
        "train",
    ]


def test_a_seed_change_touches_every_job_but_data():
    a = _hashes()
    assert _changed_jobs(a, _hashes("study.seed=1")) == sorted(k for k in a if k[0] != "data")


def test_a_data_change_touches_every_job():
    a = _hashes()
    assert _changed_jobs(a, _hashes("data.tokenizer.vocab_size=300")) == sorted(a)


def test_a_model_change_touches_only_that_models_jobs():
    a, b = _hashes(), _hashes("models.opt_micro.arch.intermediate_size=96")
    changed = sorted(k for k in a if a[k] != b[k])
    assert changed == sorted(k for k in a if k[1].split(".")[0] == "opt_micro" and k[0] != "data")


def test_loading_options_do_not_retrain():
    a, b = _hashes(), _hashes("models.llama_micro.dtype=bfloat16")
    changed = sorted(k for k in a if a[k] != b[k])
    assert ("train", "llama_micro") not in changed
    # its decompositions and the model built on one load with the same dtype
    assert changed == sorted(
        k
        for k in a
        if k[1].split(".")[0] in ("llama_micro", "llama_micro_svdllm")
        and k[0] not in ("data", "train")
    )


def test_the_study_name_and_output_root_do_not_enter_slices():
    a = _hashes()
    assert a == _hashes("study.output_root=/elsewhere") == _hashes("study.name=other")


def test_spec_carries_slice_inputs_and_output():
    plan = StudyPlan(compose_study(["experiment=smoke"]))
    job = plan.calibrate("llama_micro")
    spec = json.loads(job.json)
    assert spec["output"] == job.out_dir
    assert spec["inputs"]["model"] == plan.train("llama_micro").out_dir + "/model"
    assert spec["inputs"]["data"] == plan.data("stdlib").out_dir
    assert set(spec["config"]) == {"calibrate", "load", "seed"}  # its slice, not the whole config
    assert plan.upstream_dirs(job) == [
        plan.train("llama_micro").out_dir,
        plan.data("stdlib").out_dir,
    ]


def test_the_scaling_grid_is_one_train_job_per_point_and_one_fit():
    plan = StudyPlan(compose_study(["experiment=smoke"]))
    grid = [plan.grid_train(*p) for p in plan.grid_points]
    assert [j.variant for j in grid] == [
        "w16.fp.s0", "w16.fp.s40", "w16.fp.s80", "w32.fp.s0", "w32.fp.s40", "w32.fp.s80",
        "w16.fp.spark.s92", "w16.fp.block.s40", "w16.b158.ternary.s40",
    ]  # fmt: skip
    sparse = {j.variant: j.config["sparse"] for j in grid}
    assert sparse["w16.fp.s0"]["operator"] == "none"  # level 0 is the dense baseline
    assert sparse["w16.fp.s40"] == {
        "operator": "topk", "level": 0.4, "sites": None, "rescale": True, "block": 4,
        "precision": "fp",
    }  # fmt: skip
    assert sparse["w16.fp.spark.s92"]["operator"] == "stat_topk"
    assert sparse["w16.b158.ternary.s40"]["precision"] == "b1.58"
    assert all(j.out_dir.startswith(f"{plan.root}/scaling/train/") for j in grid)
    assert grid[0].config["model"]["arch"]["hidden_act"] == "relu2"
    fit = plan.scaling_fit()
    assert fit.out_dir == f"{plan.root}/scaling/fit-{fit.hash}"
    assert set(plan.upstream_dirs(fit)) == {j.out_dir for j in grid}
    assert fit.config["points"]["w16.fp.spark.s92"] == {
        "size": "w16", "precision": "fp", "variant": "spark", "level": 0.92,
    }  # fmt: skip
    assert plan.job("scaling", "fit") == fit and plan.job("train", "w32.fp.s80") == grid[5]


def test_scaling_changes_touch_only_the_grid_and_the_fit():
    a = _hashes()
    assert _changed(a, _hashes("scaling.fit.starts=3")) == ["scaling"]
    b = _hashes("scaling.train.steps=21")
    changed = {k for k in a if a[k] != b[k]}
    assert {s for s, _ in changed} == {"train", "scaling"}
    assert ("train", "llama_micro") not in changed  # the study's own models are untouched
    assert len(changed) == 9 + 1


def test_an_option_a_grid_point_does_not_use_leaves_its_hash_alone():
    a = _hashes()
    # block: only Block Q-Sparse points read it
    assert _changed(a, _hashes("scaling.block=8")) == []
    b = _hashes("scaling.variants.block.block=3")
    assert {k for k in a if a[k] != b[k]} == {("train", "w16.fp.block.s40"), ("scaling", "fit")}
    # rescale: the top-K points read it, the dense (S = 0) points do not
    b = _hashes("scaling.rescale=false")
    changed = {k for k in a if a[k] != b[k]}
    assert changed == {
        ("train", "w16.fp.s40"), ("train", "w16.fp.s80"), ("train", "w32.fp.s40"),
        ("train", "w32.fp.s80"), ("scaling", "fit"),
    }  # fmt: skip


def test_hidden_act_enters_a_study_models_slice_only_as_set():
    plan = StudyPlan(compose_study(["experiment=smoke"]))
    assert plan.train("llama_micro").config["model"]["arch"]["hidden_act"] is None
    relu2 = StudyPlan(
        compose_study(["experiment=smoke", "+models.llama_micro.arch.hidden_act=relu2"])
    )
    assert relu2.train("llama_micro").config["model"]["arch"]["hidden_act"] == "relu2"
    assert relu2.train("llama_micro").hash != plan.train("llama_micro").hash


def test_a_calibration_corpus_changes_calibrate_its_input_and_what_reads_statistics():
    plan = StudyPlan(compose_study(["experiment=smoke", "calibrate.corpus=pydoc"]))
    default = StudyPlan(compose_study(["experiment=smoke"]))
    pydoc = plan.data("pydoc").out_dir  # the eval_data corpus, with the study's BPE
    for model in ("llama_micro", "opt_micro"):
        job = plan.calibrate(model)
        assert job.inputs["data"] == pydoc != default.calibrate(model).inputs["data"]
        assert job.config["calibrate"]["corpus"] == "pydoc"
        assert job.hash != default.calibrate(model).hash
        assert pydoc in plan.upstream_dirs(job)  # Snakemake waits for that data job
    # sequential threshold calibration reads the same corpus as the statistics
    assert plan.sparsify("llama_micro", "teal", 0.5).inputs["data"] == pydoc
    assert "data" not in plan.sparsify("llama_micro", "topk", 0.5).inputs
    # evaluation and predictor labels stay on the study corpus
    assert plan.evaluate("llama_micro").inputs["data"] == plan.data("stdlib").out_dir
    pred = plan.predictors("opt_micro", "dejavu_heads").inputs["data"]
    assert pred == plan.data("stdlib").out_dir
    # a change of any calibrate key reruns calibrate and its readers; the corpus also
    # reruns what reads its tokens alone (SCAP: no statistics)
    a, b = _hashes(), _hashes("calibrate.corpus=pydoc")
    c = _hashes("calibrate.near_zero_eps=0.01")
    smoke = StudyPlan(compose_study(["experiment=smoke"]))
    reads_tokens_only = [  # SCAP, R-Sparse, WINA greedy: calibration tokens, no statistics
        name
        for name, e in smoke.sparsity_entries.items()
        if e.method_instance().needs_tokens_for(e.cfg) and not e.impl.needs_calibration
    ]
    assert sorted(reads_tokens_only) == ["rsparse", "scap", "wina_greedy"]
    tokens_only = {
        k for k in a if k[0] != "data" and any(f".{n}." in f"{k[1]}." for n in reads_tokens_only)
    }
    assert tokens_only and not tokens_only & {k for k in a if a[k] != c[k]}
    assert {k for k in a if a[k] != b[k]} == {k for k in a if a[k] != c[k]} | tokens_only
    assert ("data", "pydoc") in a and a[("data", "pydoc")] == b[("data", "pydoc")]


def test_the_perplexity_protocol_is_part_of_every_evaluate_slice():
    plan = StudyPlan(compose_study(["experiment=smoke"]))
    evaluate = plan.evaluate("llama_micro").config["evaluate"]
    assert (evaluate["stride"], evaluate["dense_prefill"]) == (None, 0.0)
    a = _hashes()
    assert _changed(a, _hashes("evaluate.stride=16")) == ["evaluate"]
    assert _changed(a, _hashes("evaluate.dense_prefill=0.5")) == ["evaluate"]


def test_a_checkpoints_corpus_is_tokenized_with_its_own_tokenizer_beside_the_study_bpe(tmp_path):
    """A hub or local checkpoint in a BPE study gets a data job of its own (`<corpus>.<model>`)
    that takes its tokenizer; the models trained here keep the study's BPE job, unchanged."""
    before = StudyPlan(compose_study(["experiment=smoke"]))
    plan = StudyPlan(
        compose_study(
            ["experiment=smoke", "+models.hub.source=pretrained",
             "+models.hub.path=org/some-model", "evaluate.seq_len=64"]
        )
    )  # fmt: skip
    assert plan.data_variants == ["stdlib", "stdlib.hub"]
    assert plan.data("stdlib").hash == before.data("stdlib").hash
    job = plan.data("stdlib.hub")
    assert job.config["tokenizer_from"]["path"] == "org/some-model"
    assert job.config["data"]["tokenizer"]["kind"] == "model"
    assert plan.evaluate("hub").inputs["data"] == job.out_dir
