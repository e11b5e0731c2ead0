"""Config tier: every experiment composes and validates; bad config is refused clearly."""

import shutil

import pytest
import yaml

from actsparse.config import CONF_DIR, ConfigError, compose_study, snakemake_config_to_overrides
from actsparse.plan import StudyPlan

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _plan_as_on_a_cluster(hub_on_but_unreachable):
    """The real-model presets list the hub's zero-shot tasks; with the hub switched off
    they are refused (a test below), so the presets plan here with it on but unreachable."""


def test_the_presets_the_issue_names_exist():
    assert {"smoke", "quickstart", "llama2_7b", "mistral_7b", "opt_6_7b", "scaling",
            "scaling_cluster"} <= set(EXPERIMENTS)  # fmt: skip


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_validates_and_plans(experiment):
    cfg = compose_study([f"experiment={experiment}"])
    assert cfg.study.name == experiment
    plan = StudyPlan(cfg)
    jobs = plan.jobs()
    grid_only = experiment.startswith("scaling")  # the sparse-training grid and its fit
    assert {j.stage for j in jobs} >= ({"data", "train", "scaling"} if grid_only else
                                       {"data", "calibrate", "evaluate"})  # fmt: skip
    assert len({j.out_dir for j in jobs}) == len(jobs)
    grid = {plan.grid_train(*p).out_dir for p in plan.grid_points} if cfg.scaling.sizes else set()
    for j in jobs:
        folder = "scaling/train" if j.out_dir in grid else j.stage
        assert j.out_dir == f"data/{experiment}/{folder}/{j.variant}-{j.hash}"


def test_quickstart_is_the_default():
    assert compose_study([]).study.name == "quickstart"


def test_real_model_preset_uses_the_checkpoint_tokenizer_per_model():
    plan = StudyPlan(compose_study(["experiment=llama2_7b"]))
    assert plan.trained_models == []
    assert plan.data_variants == ["wikitext2.llama2_7b"]
    assert (
        plan.data("wikitext2.llama2_7b").config["tokenizer_from"]["path"]
        == "meta-llama/Llama-2-7b-hf"
    )
    assert plan.calibrate("llama2_7b").inputs["model"] == "meta-llama/Llama-2-7b-hf"


@pytest.mark.parametrize(
    ("experiment", "model", "path"),
    [
        ("llama2_7b", "llama2_7b", "meta-llama/Llama-2-7b-hf"),
        ("mistral_7b", "mistral_7b", "mistralai/Mistral-7B-v0.1"),
        ("opt_6_7b", "opt_6_7b", "facebook/opt-6.7b"),
    ],
)
def test_real_model_presets_calibrate_on_c4_and_evaluate_on_wikitext2(experiment, model, path):
    plan = StudyPlan(compose_study([f"experiment={experiment}"]))
    c4 = plan.data(f"c4.{model}")  # C4 from the hub, tokenized by the checkpoint's tokenizer
    assert c4.config["data"]["hf"]["path"] == "allenai/c4"
    assert c4.config["tokenizer_from"]["path"] == path
    assert plan.calibrate(model).inputs["data"] == c4.out_dir
    assert plan.calibrate(model).config["calibrate"]["split"] == "train"
    wikitext2 = plan.data(f"wikitext2.{model}").out_dir
    dense = plan.evaluate(model).inputs
    assert dense["data"] == wikitext2 and dense["data.c4"] == c4.out_dir
    assert plan.predictors(model, "dejavu_mlp").inputs["data"] == wikitext2
    # `calibrate.corpus=null` switches back to WikiText-2 (SVD-LLM's calibration corpus)
    back = StudyPlan(compose_study([f"experiment={experiment}", "calibrate.corpus=null"]))
    assert back.calibrate(model).inputs["data"] == wikitext2


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["experiment=nope"], r"unknown experiment 'nope'.*available: .*quickstart"),
        (["train.lr=-1"], r"train\.lr: must be in \(0, 1\).*command-line override 'train.lr=-1'"),
        (["train.lr=fast"], r"'train\.lr'.*could not be converted"),
        (["train.steps=2.5"], r"'train\.steps'"),
        (["train.nope=1"], r"unknown config key 'train\.nope'"),
        (["+train.nope=1"], r"'train\.nope'.*unknown key"),
        (["calibrate.hist_bins=0"], r"calibrate\.hist_bins: must be >= 16"),
        (["evaluate.split=dev"], r"evaluate\.split: must be train, valid or test"),
        (["data.tokenizer.vocab_size=10"], r"data\.tokenizer\.vocab_size"),
        (
            ["data=wikitext2_local", "data.files.test=/nowhere/test.txt"],
            r"data\.files\.test: corpus file not found: /nowhere/test.txt",
        ),
        (["study.name=a/b"], r"study\.name: must be a plain folder name"),
        (
            ["+models.big.source=pretrained", "+models.big.path=/tmp"],
            r"models\.big\.path: not a model: /tmp has no config\.json",
        ),
        (
            ["+models.big.source=pretrained", "+models.big.path=./no/such/model"],
            r"models\.big\.path: model path not found",
        ),
        (
            ["+models.x.source=train", "+models.x.family=gpt9"],
            r"models\.x\.family: must be one of llama, opt",
        ),
        (["train.seq_len=100000"], r"train\.seq_len: 100000 exceeds"),
        (
            ["experiment=smoke", "calibrate.seq_len=65"],
            r"calibrate\.seq_len: 65 exceeds models\.llama_micro",
        ),
        (["experiment=smoke", "evaluate.seq_len=128"], r"evaluate\.seq_len: 128 exceeds"),
        (
            ["experiment=smoke", "evaluate.max_tokens=10"],
            r"evaluate\.max_tokens: 10 does not fill one window of 64",
        ),
        (["data.name=wiki-text"], r"data\.name: may use only letters, digits and _"),
        (
            ["experiment=llama2_7b", "evaluate.seq_len=null"],
            r"evaluate\.seq_len: must be set for pretrained models",
        ),
        (
            ["sparsify.levels=[0.5,1.0]"],
            r"sparsify\.levels: sparsity levels must be in \[0, 1\), got 1\.0",
        ),
        (["sparsify.levels=[-0.1]"], r"sparsify\.levels: .*got -0\.1"),
        (
            ["sparsify.methods.teal.levels=[0.3,1.2]"],
            r"sparsify\.methods\.teal\.levels: sparsity levels must be in \[0, 1\), got 1\.2",
        ),
        (
            ["sparsify.methods.cats.models=null"],
            r"sparsify\.methods\.cats\.models: sparsity method 'cats' on model 'opt_tiny': "
            r"model family 'opt' has no site 'gate'",
        ),
        (
            ["sparsify.methods.topk.sites=[attn_in,gatez]"],
            r"sparsify\.methods\.topk\.sites: unknown site",
        ),
        (
            ["sparsify.methods.teal.allocation=best"],
            r"sparsify\.methods\.teal\.allocation: must be",
        ),
        (
            ["+sparsify.methods.x.method=magic"],
            r"sparsify\.methods\.x\.method: unknown sparsity method 'magic'",
        ),
        (["sparsify.methods.teal.nope=1"], r"sparsify\.methods\.teal\.nope"),
        (
            ["sparsify.methods.cats.models=[gpt5]"],
            r"sparsify\.methods\.cats\.models: unknown model 'gpt5'",
        ),
        (
            ["experiment=smoke", "decompose.ratios=[0.2,1.0]"],
            r"decompose\.ratios: compression ratios \(fraction of parameters removed\) must be in "
            r"\(0, 1\), got 1\.0",
        ),
        (
            ["experiment=smoke", "decompose.methods.svd.ratios=[0]"],
            r"decompose\.methods\.svd\.ratios: .*got 0",
        ),
        (
            ["experiment=smoke", "+decompose.methods.x.method=pca"],
            r"decompose\.methods\.x\.method: unknown low-rank method 'pca'",
        ),
        (
            ["experiment=smoke", "decompose.methods.svdllm.whitening=qr"],
            r"decompose\.methods\.svdllm\.whitening: must be one of",
        ),
        (
            ["experiment=smoke", "decompose.methods.nsvd.k1_fraction=1.5"],
            r"decompose\.methods\.nsvd\.k1_fraction: must be in \[0, 1\]",
        ),
        (
            ["experiment=smoke", "decompose.methods.asvd.targets=[mlp]"],
            r"decompose\.methods\.asvd\.targets: must be a non-empty subset",
        ),
        (
            ["experiment=smoke", "models.llama_micro_svdllm.base=gpt5"],
            r"models\.llama_micro_svdllm\.base: must name a trained or pretrained model",
        ),
        (
            ["experiment=smoke", "models.llama_micro_svdllm.entry=pca"],
            r"models\.llama_micro_svdllm\.entry: unknown decompose entry 'pca'",
        ),
        (
            ["experiment=smoke", "models.llama_micro_svdllm.ratio=1.2"],
            r"models\.llama_micro_svdllm\.ratio: must be in \(0, 1\)",
        ),
        (
            ["experiment=smoke", "decompose.methods.svd.models=[llama_micro_svdllm]"],
            r"decompose\.methods\.svd\.models: 'llama_micro_svdllm' is not a trained",
        ),
        (
            ["experiment=smoke", "eval_data.pydoc.name=stdlib"],
            r"eval_data\.pydoc\.name: 'stdlib' is the study's corpus",
        ),
        (
            ["experiment=smoke", "eval_data.pydoc.name=prose"],
            r"eval_data\.pydoc\.name: must equal its key 'pydoc', got 'prose'",
        ),
        (
            ["experiment=smoke", "+decompose.methods.topk.method=svd"],
            r"decompose\.methods: entry names also used by sparsify\.methods: \['topk'\]",
        ),
        (
            ["experiment=smoke", "predictors.methods.dejavu_mlp.rank=0"],
            r"predictors\.methods\.dejavu_mlp\.rank: ranks must be >= 1, got 0",
        ),
        (
            ["experiment=smoke", "+predictors.methods.x.method=oracle"],
            r"predictors\.methods\.x\.method: unknown predictor method 'oracle'",
        ),
        (
            ["experiment=smoke", "predictors.methods.spark.label=sign"],
            r"predictors\.methods\.spark\.label: must be one of auto, positive, topk, threshold",
        ),
        (
            ["experiment=smoke", "predictors.methods.hotcold.models=[gpt]"],
            r"predictors\.methods\.hotcold\.models: unknown model 'gpt'",
        ),
        (
            ["experiment=smoke", "predictors.levels=[1.5]"],
            r"predictors\.levels: sparsity levels must be in \[0, 1\), got 1\.5",
        ),
        (
            ["experiment=smoke", "+predictors.methods.topk.method=spark"],
            r"predictors\.methods: entry names also used by sparsify\.methods: \['topk'\]",
        ),
        (
            ["experiment=smoke", "evaluate.eval_data_max_tokens=10"],
            r"evaluate\.eval_data_max_tokens: 10 does not fill one window of 64",
        ),
        (
            ["experiment=smoke", "scaling.levels=[0.0,0.4]"],
            r"scaling\.levels: the fit of 5 constants needs >= 2 sizes, >= 3 levels",
        ),
        (
            ["experiment=smoke", "scaling.operator=stat_topk"],
            r"scaling\.operator: the fitted operator is one of topk, block_topk",
        ),
        (
            ["experiment=smoke", "scaling.levels=[0.0,0.4,1.0]"],
            r"scaling\.levels: must be in \[0, 1\), got 1\.0",
        ),
        (
            ["experiment=smoke", "scaling.precisions=[fp,int4]"],
            r"scaling\.precisions: must be among fp, b1\.58; got 'int4'",
        ),
        (
            ["experiment=smoke", "scaling.variants.spark.sizes=[w99]"],
            r"scaling\.variants\.spark\.sizes: unknown size 'w99'; sizes: w16, w32",
        ),
        (
            ["experiment=smoke", "+scaling.variants.spark.sites=[attn_in]"],
            r"scaling\.variants\.spark\.sites: operator 'stat_topk' acts at gate",
        ),
        (
            ["experiment=smoke", "scaling.sizes.w16.hidden_size=15"],
            r"scaling\.sizes\.w16\.hidden_size: must be divisible by num_attention_heads",
        ),
        (
            ["experiment=smoke", "scaling.hidden_act=tanh"],
            r"scaling\.hidden_act: must be one of silu, gelu, relu, relu2",
        ),
        (
            ["experiment=smoke", "scaling.family=opt", "scaling.hidden_act=relu"],
            r"scaling\.family: block_topk groups sequences, and OPT flattens the batch",
        ),
        (
            ["experiment=smoke", "scaling.variants.block.block=0"],
            r"scaling\.variants\.block\.block: must be >= 1, got 0",
        ),
        (
            ["experiment=smoke", "scaling.fit.bootstrap=-1"],
            r"scaling\.fit\.bootstrap: must be >= 0",
        ),
        (
            ["experiment=smoke", "evaluate.tasks=[lastword]", "evaluate.task_limit=0"],
            r"evaluate\.task_limit: must be >= 1 or null \(every item\), got 0",
        ),
        (
            ["experiment=smoke", "evaluate.tasks=[hellaswagg]"],
            r"evaluate\.tasks: unknown task 'hellaswagg': .*did you mean 'hellaswag'",
        ),
        (
            ["experiment=smoke", "evaluate.tasks=[lastword,lastword]"],
            r"evaluate\.tasks: lists lastword more than once",
        ),
        (
            ["experiment=smoke", "evaluate.tasks=[lastword]", "evaluate.task_paths=[no/such]"],
            r"evaluate\.task_paths: no such folder: no/such",
        ),
    ],
)
def test_bad_config_is_refused_naming_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        compose_study(overrides)


COMMONSENSE = [
    "piqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "boolq",
    "openbookqa",
]


@pytest.mark.parametrize("experiment", ["smollm2", "llama2_7b", "mistral_7b", "opt_6_7b"])
def test_real_model_presets_list_the_seven_commonsense_tasks(experiment):
    e = compose_study([f"experiment={experiment}"]).evaluate
    assert set(COMMONSENSE) <= set(e.tasks) and "lastword" in e.tasks
    # a laptop runs the first 100 items of each; a cluster every item
    assert e.task_limit == (100 if experiment == "smollm2" else None)


def test_a_hub_task_while_the_hub_is_off_is_refused_unless_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(
        ConfigError,
        match=r"evaluate\.tasks: task 'arc_easy' reads dataset "
        r"'allenai/ai2_arc' \(ARC-Easy\) from the Hugging Face hub, which is off",
    ):
        compose_study(["experiment=smoke", "evaluate.tasks=[lastword,arc_easy]"])
    (tmp_path / "hf" / "hub" / "datasets--allenai--ai2_arc").mkdir(parents=True)  # cached
    assert compose_study(["experiment=smoke", "evaluate.tasks=[arc_easy]"]).evaluate.tasks
    # a preset's tasks, set in the protocol file it includes: that file is named
    with pytest.raises(
        ConfigError, match=r"task 'piqa' reads dataset .*set in \S*/conf/protocol/cluster_7b\.yaml"
    ):
        compose_study(["experiment=llama2_7b"])


def test_a_local_task_is_found_in_task_paths_and_its_data_checked(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    task = {"task": "mine", "dataset_path": "json", "output_type": "multiple_choice",
            "dataset_kwargs": {"data_files": {"test": str(tmp_path / "mine.jsonl")}},
            "test_split": "test", "doc_to_text": "{{q}}", "doc_to_choice": "{{c}}",
            "doc_to_target": "label"}  # fmt: skip
    (folder / "mine.yaml").write_text(yaml.safe_dump(task))
    over = ["experiment=smoke", f"evaluate.task_paths=[{folder}]", "evaluate.tasks=[mine]"]
    with pytest.raises(
        ConfigError, match=rf"task 'mine' .*reads {tmp_path}/mine.jsonl, which does not exist"
    ):
        compose_study(over)
    (tmp_path / "mine.jsonl").write_text('{"q": "a", "c": ["b", "c"], "label": 0}\n')
    assert compose_study(over).evaluate.tasks == ["mine"]
    task["task"] = "lastword"
    (folder / "mine.yaml").write_text(yaml.safe_dump(task))
    with pytest.raises(
        ConfigError, match=r"evaluate\.task_paths: .*defines a task named 'lastword'"
    ):
        compose_study(over)
    # a file the harness cannot read (its index would skip it, and the harness's own task
    # of that name would run instead): named
    (folder / "mine.yaml").write_text("include: /nowhere/piqa.yaml\ntask: piqa\n")
    with pytest.raises(
        ConfigError, match=rf"evaluate\.task_paths: {folder}/mine\.yaml cannot be read"
    ):
        compose_study([*over[:2], "evaluate.tasks=[piqa]"])


def test_a_bad_value_in_a_yaml_file_names_that_file(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    path = conf / "evaluate" / "default.yaml"
    path.write_text(path.read_text().replace("\nbatch_size: 8", "\nbatch_size: -3"))
    with pytest.raises(ConfigError, match=rf"evaluate\.batch_size: must be >= 1.*set in {path}"):
        compose_study([], conf_dir=conf)
    path.write_text(path.read_text().replace("\nbatch_size: -3", "\nbatch_size: 8\nbatchsize: 4"))
    with pytest.raises(ConfigError, match=rf"'evaluate\.batchsize'.*{path}.*unknown key"):
        compose_study([], conf_dir=conf)


def test_a_value_set_by_the_experiment_names_the_experiment_file(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    path = conf / "experiment" / "smoke.yaml"
    path.write_text(path.read_text().replace("steps: 30", "steps: 0"))
    with pytest.raises(ConfigError, match=rf"train\.steps: must be >= 1.*set in {path}"):
        compose_study(["experiment=smoke"], conf_dir=conf)


def test_snakemake_config_becomes_hydra_overrides():
    got = snakemake_config_to_overrides(
        {
            "experiment": "smoke",
            "train": {"steps": 10, "lr": 0.01},
            "overrides": ["evaluate.batch_size=2"],
            "x": {"flag": True, "v": None, "l": [1, 2]},
        }
    )
    assert got == [
        "experiment=smoke",
        "train.steps=10",
        "train.lr=0.01",
        "evaluate.batch_size=2",
        "x.flag=true",
        "x.v=null",
        "x.l=[1, 2]",
    ]
    cfg = compose_study(
        snakemake_config_to_overrides({"experiment": "smoke", "train": {"steps": 10}})
    )
    assert cfg.train.steps == 10
    # list-valued overrides: YAML cannot parse them, Snakemake passes the raw string
    nested = "[sparsify.levels=[],sparsify.methods.topk.levels=[0.5, 0.7]]"
    assert snakemake_config_to_overrides({"overrides": nested}) == [
        "sparsify.levels=[]",
        "sparsify.methods.topk.levels=[0.5, 0.7]",
    ]
    assert snakemake_config_to_overrides({"overrides": "train.steps=3"}) == ["train.steps=3"]
    cfg = compose_study(snakemake_config_to_overrides({"experiment": "smoke", "overrides": nested}))
    assert cfg.sparsify.levels == [] and cfg.sparsify.methods["topk"]["levels"] == [0.5, 0.7]
