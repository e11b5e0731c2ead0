"""Zero-shot tasks through lm-evaluation-harness on a model already in memory.

The harness's `HFLM` wraps the very model object an evaluate job built, so what it
scores is the variant itself: its sparsity wrappers, predictors and low-rank factors act
on every request (nothing is reloaded from disk, which would drop them). Each task runs
as its own `simple_evaluate` call, so its time is measured alone.

Tasks defined by local YAML files (`task_paths`, and the job's `lastword`) are looked up
without the harness's own index (reading it takes ~8 s); a task that is not local is
looked up in the harness's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger("actsparse.downstream")
# Bootstrap resamples for the standard error of metrics that are not means (a mean's, such
# as acc's, is exact): the harness's default of 100k takes minutes on LAMBADA's perplexity
BOOTSTRAP_ITERS = 1000


@dataclass
class TaskScore:
    task: str  # as named in evaluate.tasks
    # per task the harness reports (a group's subtasks too): metric -> value, the metric
    # named `<metric>` for the harness's "none" filter and `<metric>@<filter>` otherwise;
    # standard errors are `<metric>_stderr`
    results: dict[str, dict[str, float]]
    items: dict[str, int]  # items scored per reported task (a group or tag: summed)
    seconds: float
    defined_in: str  # the local YAML file (a tag: its folders), or "lm-eval <version>"


def _numbers(raw: dict) -> dict[str, float]:
    out = {}
    for key, value in raw.items():
        if "," not in key or isinstance(value, str) or value is None:
            continue  # "alias", and "N/A" standard errors
        metric, filt = key.split(",", 1)
        out[metric if filt == "none" else f"{metric}@{filt}"] = float(value)
    return out


def run_tasks(
    model,
    tokenizer,
    names: list[str],
    *,
    limit: int | None,
    batch_size: int,
    local_paths: list[str | Path],
    seed: int = 0,
) -> list[TaskScore]:
    """Each of `names` on `model` (any state: sparsified, decomposed), zero-shot (a task's
    own `num_fewshot` is overridden), the first `limit` items of each (None: all)."""
    from importlib.metadata import version

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in local_paths]
    local = TaskManager(include_path=paths, include_defaults=False) if paths else None
    harness = None
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    scores = []
    for name in tqdm(names, desc="tasks", unit="task"):
        if local is not None and name in local.task_index:
            tm, where = local, str(local.task_index[name].yaml_path or ", ".join(paths))
        else:
            harness = harness or TaskManager()
            tm, where = harness, f"lm-eval {version('lm_eval')}"
        start = time.perf_counter()
        res = simple_evaluate(
            model=lm, tasks=[name], num_fewshot=0, limit=limit, task_manager=tm, log_samples=False,
            bootstrap_iters=BOOTSTRAP_ITERS, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed, verbosity="WARNING",
        )  # fmt: skip
        seconds = time.perf_counter() - start
        results = {task: _numbers(r) for task, r in res["results"].items()}
        items = {task: int(s["effective"]) for task, s in res.get("n-samples", {}).items()}
        items.setdefault(name, sum(items.values()))  # a group or tag: its tasks' items
        log.info("%s: %s on %d items in %.1f s", name, results.get(name, results), items[name],
                 seconds)  # fmt: skip
        scores.append(TaskScore(name, results, items, seconds, where))
    return scores
