# The study as pictures and one leaderboard: <root>/report/index.html (actsparse.stages.report).

import json


rule report:
    input:
        summary=PLAN.summary_path,
        # every job folder the report reads, named by the plan (train, calibrate,
        # predictors, scaling_fit): an earlier config's folders beside them stay out
        **PLAN.report_inputs(),
    output:
        directory(f"{ROOT}/report"),
    params:
        # which method each entry name stands for, and the scaling fit: the claims table
        claims=json.dumps(PLAN.claims_context(), sort_keys=True),
    log:
        f"{ROOT}/logs/report.log",
    threads: 1
    shell:
        f"{PY} -m actsparse.stages.report --root {ROOT} --out {{output:q}} "
        "--train {input.train:q} --calibrate {input.calibrate:q} "
        "--predictors {input.predictors:q} --scaling-fit {input.scaling_fit:q} "
        "--claims {params.claims:q} > {log:q} 2>&1"
