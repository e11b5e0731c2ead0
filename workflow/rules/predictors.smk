# Predictor training and scoring per (model, predictor entry) (actsparse.stages.predictors).

rule predictors:
    priority: PRIORITY["predictors"]
    input:
        inputs_of("predictors"),
    output:
        directory(f"{ROOT}/predictors/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("predictors"),
    log:
        log_of("predictors"),
    benchmark:
        benchmark_of("predictors")
    threads: resource("predictors", "threads")
    resources:
        mem_mb=resource("predictors", "mem_mb"),
        runtime=resource("predictors", "runtime"),
        gpu=resource("predictors", "gpus"),
    shell:
        stage_cmd("predictors")
