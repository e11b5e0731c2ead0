# Corpus -> tokenizer -> token shards + manifest (actsparse.stages.data).

rule data:
    output:
        directory(f"{ROOT}/data/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("data"),
    log:
        log_of("data"),
    benchmark:
        benchmark_of("data")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,

    shell:
        stage_cmd("data")
