"""One job of the study, as the plan builds it and the stage reads it: the job spec.

The plan (`actsparse.plan`) makes every `JobSpec`; Snakemake passes it to the stage as
JSON (`--spec`), and the stage writes it as `config.yaml` in its output folder, where it
stays the canonical record of what the job was. Only `stage`, `config` and `inputs` enter
the hash that names the output folder; the rest says where the job writes and how its
rows are labelled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any


class SpecError(ValueError):
    """A job spec that is not one the plan writes; the message names the key."""


@dataclass(frozen=True)
class JobSpec:
    study: str
    stage: str
    variant: str  # the job's name within its stage, e.g. `llama_tiny.teal.s50`
    model: str  # the study model it works on ('' for data and scaling-fit jobs)
    method: str  # the study table's `method` of its rows: the entry it runs, else dense
    hash: str  # of stage, config and inputs: names the output folder
    output: str  # `<output_root>/<study>/<folder>/<variant>-<hash>`
    output_root: str  # where the study's folders and the MLflow store sit
    inputs: dict[str, str]  # role -> an upstream job's output folder, a local path or hub id
    config: dict[str, Any]  # the stage's typed config slice, as plain data

    @property
    def out_dir(self) -> str:
        return self.output

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: Any, where: str = "job spec") -> JobSpec:
        """A spec read back from JSON or `config.yaml`; SpecError naming the missing or
        unknown key."""
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: not a mapping")
        names = [f.name for f in fields(cls)]
        for key in names:
            if key not in raw:
                raise SpecError(f"{where} is missing {key!r}")
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise SpecError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}")
        for key in ("inputs", "config"):
            if not isinstance(raw[key], dict):
                raise SpecError(f"{where}: {key!r} must be a mapping")
        return cls(**{k: raw[k] for k in names})
