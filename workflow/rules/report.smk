# The study as pictures and one leaderboard: <root>/report/index.html (actsparse.stages.report).


rule report:
    input:
        summary=PLAN.summary_path,
    output:
        directory(f"{ROOT}/report"),
    log:
        f"{ROOT}/logs/report.log",
    threads: 1
    shell:
        f"{PY} -m actsparse.stages.report --root {ROOT} --out {{output:q}} > {{log:q}} 2>&1"
