# Corpus -> tokenizer -> token shards + manifest (actsparse.stages.data).

import re

# the extra evaluation corpora (eval_data) have their own rule: they read the study data
# job's tokenizer, and a rule that depends on itself trips Snakemake's --until (#823)
EVAL_CORPORA = "|".join(re.escape(c) for c in STUDY.eval_data) or "(?!)"


rule data:
    priority: PRIORITY["data"]
    input:
        inputs_of("data"),  # an imported GGUF's folder (its tokenizer), if any
    output:
        directory(f"{ROOT}/data/{{variant}}-{{hash}}"),
    wildcard_constraints:
        variant=rf"(?!(?:{EVAL_CORPORA})[.-])[A-Za-z0-9_.]+",  # not an eval corpus
    params:
        stage="data",
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
        STAGE_CMD


rule eval_data:
    priority: PRIORITY["eval_data"]
    input:
        inputs_of("data"),  # the study data job (its tokenizer)
    output:
        directory(f"{ROOT}/data/{{variant}}-{{hash}}"),
    wildcard_constraints:
        variant=rf"(?:{EVAL_CORPORA})(?:\.[A-Za-z0-9_]+)?",
    params:
        stage="data",
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
        STAGE_CMD
