# Streaming activation statistics per layer and site (actsparse.stages.calibrate).

rule calibrate:
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
    threads: 2
    resources:
        mem_mb=32000,
        runtime=240,
        gpu=needs_gpu,
    shell:
        stage_cmd("calibrate")
