"""The method entries of a study's three sweeps, parsed and checked by the registries.

The schema (`actsparse.schema.stages`) keeps each sweep's `methods` entries raw: an
entry's typed config is its method's own dataclass, which only the method registries
know. This module sits above the registries and turns entries into those configs.
"""

from __future__ import annotations

import re
from typing import Any

from actsparse.conf import read_conf
from actsparse.methods.lowrank import LOWRANK
from actsparse.methods.predictors import PREDICTORS
from actsparse.methods.registry import MethodEntry, Registry
from actsparse.methods.sparsity import SPARSITY
from actsparse.schema.stages import DecomposeCfg, PredictorsCfg, SparsifyCfg
from actsparse.schema.study import StudyConfig

# config group -> the registry its `methods` entries name
REGISTRIES: dict[str, Registry] = {
    "sparsify": SPARSITY,
    "decompose": LOWRANK,
    "predictors": PREDICTORS,
}


def _entries(group: str, methods: dict[str, Any]) -> dict[str, MethodEntry]:
    registry = REGISTRIES[group]
    return {
        name: MethodEntry.parse(registry, name, raw, f"{group}.methods.{name}")
        for name, raw in methods.items()
    }


def sparsify_entries(sweep: SparsifyCfg) -> dict[str, MethodEntry]:
    """entry name -> the parsed sparsity entry (checked by `entry_problems` first)."""
    return _entries("sparsify", sweep.methods)


def decompose_entries(sweep: DecomposeCfg) -> dict[str, MethodEntry]:
    """entry name -> the parsed low-rank entry."""
    return _entries("decompose", sweep.methods)


def predictor_entries(sweep: PredictorsCfg) -> dict[str, MethodEntry]:
    """entry name -> the parsed predictor entry."""
    return _entries("predictors", sweep.methods)


def default_entry(group: str, method: str, **changes: Any) -> MethodEntry:
    """A method as its conf file has it (`conf/<group>/<method>.yaml`), with `changes`, as
    an entry of the same name: e.g. `default_entry("sparsify", "teal").cfg.sites`."""
    raw = {**read_conf(group, method), **changes}
    return MethodEntry.parse(REGISTRIES[group], method, raw, f"{group}.methods.{method}")


def sweep_problems(cfg: StudyConfig) -> list[tuple[str, str]]:
    """(dotted key, message) for every entry of the three sweeps that names no registered
    method or whose config is invalid."""
    out = [
        (f"{group}.{key}", msg)
        for group in REGISTRIES
        for key, msg in entry_problems(REGISTRIES[group], getattr(cfg, group).methods, group)
    ]
    if not out:  # each sparsity entry at the levels it runs (its own or the sweep's)
        for name, entry in sparsify_entries(cfg.sparsify).items():
            levels = entry.levels if entry.levels is not None else cfg.sparsify.levels
            out += [(f"sparsify.methods.{name}.{k}", m) for k, m in entry.cfg.problems_at(levels)]
    return out


def entry_problems(
    registry: Registry, methods: dict[str, Any], group: str
) -> list[tuple[str, str]]:
    """(key, message) for each method entry of a sweep that names no registered method or
    whose config is invalid."""
    out = []
    for name, raw in methods.items():
        key = f"methods.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            out.append((key, "entry names may use only letters, digits and _"))
        if not isinstance(raw, dict) or "method" not in raw:
            out.append((f"{key}.method", "is required (which registered method to run)"))
            continue
        if not isinstance(raw["method"], str) or raw["method"] not in registry:
            out.append(
                (
                    f"{key}.method",
                    f"unknown {registry.family} method {raw['method']!r}; registered: "
                    f"{', '.join(registry.names())}",
                )
            )
            continue
        try:
            entry = MethodEntry.parse(registry, name, raw, f"{group}.{key}")
        except ValueError as e:
            out.append((key, str(e)))
            continue
        out += [(f"{key}.{k}", m) for k, m in entry.cfg.problems()]
    return out
