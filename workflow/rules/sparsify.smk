# One method's sparsity plan per (model, method, level) (actsparse.stages.sparsify).

rule sparsify:
    priority: PRIORITY["sparsify"]
    input:
        inputs_of("sparsify"),
    output:
        directory(f"{ROOT}/sparsify/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("sparsify"),
    log:
        log_of("sparsify"),
    benchmark:
        benchmark_of("sparsify")
    threads: resource("sparsify", "threads")
    resources:
        mem_mb=resource("sparsify", "mem_mb"),
        runtime=resource("sparsify", "runtime"),
        gpu=resource("sparsify", "gpus"),
    shell:
        stage_cmd("sparsify")
