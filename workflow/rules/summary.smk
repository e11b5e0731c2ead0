# Gather every job's metrics.parquet into the long-format study table.

rule summary:
    input:
        [job.out_dir for job in PLAN.jobs()],
    output:
        PLAN.summary_path,
    log:
        f"{ROOT}/logs/summary.log",
    threads: 1
    shell:
        f"{PY} -m actsparse.stages.summary --out {{output:q}} {{input:q}} > {{log:q}} 2>&1"
