# One allocation search per (model, sparsity entry) that searches its per-module levels
# for all of its levels at once, e.g. TEAL's greedy walk (actsparse.stages.allocate).

rule allocate:
    priority: PRIORITY["allocate"]
    input:
        inputs_of("allocate"),
    output:
        directory(f"{ROOT}/allocate/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("allocate"),
    log:
        log_of("allocate"),
    benchmark:
        benchmark_of("allocate")
    threads: resource("allocate", "threads")
    resources:
        mem_mb=resource("allocate", "mem_mb"),
        runtime=resource("allocate", "runtime"),
        gpu=resource("allocate", "gpus"),
    shell:
        stage_cmd("allocate")
