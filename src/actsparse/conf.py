"""Where the config tree is, and the values one of its files holds.

Every value a study starts from has one home (`conf/study.yaml` explains the rule): the
stage groups' `default.yaml` and each method's `conf/<sweep>/<method>.yaml` hold the
values, their dataclasses only the types and checks. `defaults(schema, group)` reads a
stage group's values onto its dataclass, and `study_defaults(schema, key)` a section of
`conf/study.yaml`, for code and tests that need them outside a composed study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
C = TypeVar("C")


def read_conf(group: str, option: str, conf_dir: Path | None = None) -> dict[str, Any]:
    """The mapping `conf/<group>/<option>.yaml` holds (its `defaults` list dropped)."""
    path = (conf_dir or CONF_DIR) / group / f"{option}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config file {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("defaults", None)
    return raw


def defaults(schema: type[C], group: str, option: str = "default", **changes: Any) -> C:
    """`schema` filled from `conf/<group>/<option>.yaml`, then `changes`: e.g.
    `defaults(EvaluateCfg, "evaluate", seq_len=64)`."""
    merged = OmegaConf.merge(OmegaConf.structured(schema), read_conf(group, option), changes)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def study_defaults(schema: type[C], key: str, **changes: Any) -> C:
    """`schema` filled from the section `key` (dotted) of `conf/study.yaml`, then `changes`:
    e.g. `study_defaults(ScalingFitCfg, "scaling.fit", bootstrap=30)`."""
    node: Any = yaml.safe_load((CONF_DIR / "study.yaml").read_text())
    for part in key.split("."):
        node = node[part]
    merged = OmegaConf.merge(OmegaConf.structured(schema), node, changes)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
