# One low-rank decomposition per (model, method, ratio) (actsparse.stages.decompose).

rule decompose:
    priority: PRIORITY["decompose"]
    input:
        inputs_of("decompose"),
    output:
        directory(f"{ROOT}/decompose/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("decompose"),
    log:
        log_of("decompose"),
    benchmark:
        benchmark_of("decompose")
    threads: resource("decompose", "threads")
    resources:
        mem_mb=resource("decompose", "mem_mb"),
        runtime=resource("decompose", "runtime"),
        gpu=resource("decompose", "gpus"),
    shell:
        stage_cmd("decompose")
