# Tiny models trained from scratch, resumable (actsparse.stages.train).

rule train:
    priority: PRIORITY["train"]
    input:
        inputs_of("train"),
    output:
        directory(f"{ROOT}/train/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("train"),
    log:
        log_of("train"),
    benchmark:
        benchmark_of("train")
    threads: resource("train", "threads")
    resources:
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
        gpu=resource("train", "gpus"),
    shell:
        stage_cmd("train")
