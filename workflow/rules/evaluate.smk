# Perplexity, fidelity and speed on held-out text (actsparse.stages.evaluate).

rule evaluate:
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
    threads: 2
    resources:
        mem_mb=32000,
        runtime=120,
        gpu=needs_gpu,
    shell:
        stage_cmd("evaluate")
