# The sparse-training grid (one train job per size x precision x level, each with the
# training-time operators of actsparse.methods.training) and the fit of Q-Sparse's
# inference-optimal scaling law to it (actsparse.stages.scaling).


rule train_grid:
    priority: PRIORITY["train_grid"]
    input:
        inputs_of("train", folder="scaling/train"),
    output:
        directory(f"{ROOT}/scaling/train/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("train", folder="scaling/train"),
    log:
        f"{ROOT}/logs/scaling/train/{{variant}}-{{hash}}.log",
    benchmark:
        f"{ROOT}/benchmarks/scaling/train/{{variant}}-{{hash}}.tsv"
    threads: resource("grid", "threads")
    resources:
        mem_mb=resource("grid", "mem_mb"),
        runtime=resource("grid", "runtime"),
        gpu=resource("grid", "gpus"),
    shell:
        stage_cmd("train")


rule scaling:
    priority: PRIORITY["scaling"]
    input:
        inputs_of("scaling"),
    output:
        directory(f"{ROOT}/scaling/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("scaling"),
    log:
        log_of("scaling"),
    benchmark:
        benchmark_of("scaling")
    threads: resource("scaling", "threads")
    resources:
        mem_mb=resource("scaling", "mem_mb"),
        runtime=resource("scaling", "runtime"),
        gpu=resource("scaling", "gpus"),
    shell:
        stage_cmd("scaling")
