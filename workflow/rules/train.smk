# Tiny models trained from scratch, resumable (actsparse.stages.train).

rule train:
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
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,

    shell:
        stage_cmd("train")
