# Corpus -> tokenizer -> token shards + manifest (actsparse.stages.data).

rule data:
    input:
        inputs_of("data"),  # an extra evaluation corpus reads the study's tokenizer
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
        mem_mb=resource("data", "mem_mb"),
        runtime=resource("data", "runtime"),
        gpu=resource("data", "gpus"),
    shell:
        stage_cmd("data")
