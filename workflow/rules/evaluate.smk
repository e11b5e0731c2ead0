# Perplexity, fidelity and speed on held-out text (actsparse.stages.evaluate).

rule evaluate:
    priority: PRIORITY["evaluate"]
    input:
        inputs_of("evaluate"),
    output:
        directory(f"{ROOT}/evaluate/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("evaluate"),
    log:
        log_of("evaluate"),
    benchmark:
        benchmark_of("evaluate")
    threads: resource("evaluate", "threads")
    resources:
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
        gpu=resource("evaluate", "gpus"),
    shell:
        stage_cmd("evaluate")
