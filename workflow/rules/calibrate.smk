# Streaming activation statistics per layer and site (actsparse.stages.calibrate).

rule calibrate:
    priority: PRIORITY["calibrate"]
    input:
        inputs_of("calibrate"),
    output:
        directory(f"{ROOT}/calibrate/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("calibrate"),
    log:
        log_of("calibrate"),
    benchmark:
        benchmark_of("calibrate")
    threads: resource("calibrate", "threads")
    resources:
        mem_mb=resource("calibrate", "mem_mb"),
        runtime=resource("calibrate", "runtime"),
        gpu=resource("calibrate", "gpus"),
    shell:
        stage_cmd("calibrate")
