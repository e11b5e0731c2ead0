# The stage rules: each runs `python -m actsparse.stages.<stage> --spec <job spec JSON>` on
# one planned job. They differ only in the table below; what a job reads, writes and asks
# a cluster for comes from the plan (actsparse.plan) and `resources.<key>` in the config.
#
#   rule          stage        output folder    resources key   one job per
STAGE_RULES = {
    "import_gguf": ("import_gguf", "import_gguf", "import_gguf"),  # model with source gguf
    "train": ("train", "train", "train"),  # model trained here (resumable)
    "calibrate": ("calibrate", "calibrate", "calibrate"),  # model: statistics per layer
    "decompose": ("decompose", "decompose", "decompose"),  # model x entry x ratio
    "allocate": ("allocate", "allocate", "allocate"),  # model x entry searching its allocation
    "sparsify": ("sparsify", "sparsify", "sparsify"),  # model x entry x level: the plan
    "predictors": ("predictors", "predictors", "predictors"),  # model x predictor entry
    "evaluate": ("evaluate", "evaluate", "evaluate"),  # every variant of every model
    "train_grid": ("train", "scaling/train", "grid"),  # scaling grid point
    "scaling": ("scaling", "scaling", "scaling"),  # the scaling-law fit over the grid
}

for _rule, (_stage, _folder, _res) in STAGE_RULES.items():

    rule:
        name:
            _rule
        priority: PRIORITY[_rule]
        input:
            inputs_of(_stage, folder=_folder),
        output:
            directory(f"{ROOT}/{_folder}/{{variant}}-{{hash}}"),
        params:
            stage=_stage,
            spec=spec_of(_stage, folder=_folder),
        log:
            f"{ROOT}/logs/{_folder}/{{variant}}-{{hash}}.log",
        benchmark:
            f"{ROOT}/benchmarks/{_folder}/{{variant}}-{{hash}}.tsv"
        threads: resource(_res, "threads")
        resources:
            mem_mb=resource(_res, "mem_mb"),
            runtime=resource(_res, "runtime"),
            gpu=resource(_res, "gpus"),
        shell:
            STAGE_CMD
