"""The study config: Hydra composition, Snakemake's `--config`, and the error report.

`compose_study` composes `conf/study.yaml` with Hydra; `validate` merges the tree onto the
schema (`actsparse.schema`: unknown keys and wrong types fail there) and runs every check
(`actsparse.validation`). Every failure becomes a `ConfigError` that names the dotted key
and the file (or command-line override) that set it, before any job starts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from actsparse.conf import CONF_DIR
from actsparse.schema.study import StudyConfig
from actsparse.validation import study_problems


class ConfigError(ValueError):
    """A bad study configuration; the message names the key and where it was set."""


def snakemake_config_to_overrides(smk_config: dict[str, Any]) -> list[str]:
    """Turn Snakemake's `--config` entries into Hydra overrides.

    `experiment=NAME` selects a preset; `overrides=[a.b=1,c=x]` passes Hydra overrides
    verbatim; any other entry overrides that key, nested mappings by their dotted leaves
    (`--config 'train={steps: 100}'` is `train.steps=100`). Snakemake itself refuses
    dotted keys such as `train.steps=100` on its command line.
    """
    overrides: list[str] = []

    def leaves(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                leaves(f"{prefix}.{k}", v)
        else:
            overrides.append(f"{prefix}={_render(value)}")

    for key, value in smk_config.items():
        if key == "experiment":
            overrides.append(f"experiment={value}")
        elif key == "overrides":
            values = _split_list(value) if isinstance(value, str) else list(value or [])
            overrides += [str(v) for v in values]
        else:
            leaves(key, value)
    return overrides


def _split_list(text: str) -> list[str]:
    """`[a=1,b=[2,3]]` -> ['a=1', 'b=[2,3]']: Snakemake hands over `overrides=[...]` as one
    string when YAML cannot parse it (an override whose value is itself a list)."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return [text]
    parts, depth, current = [], 0, ""
    for ch in text[1:-1]:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def compose_study(
    overrides: list[str] | None = None, conf_dir: Path | str | None = None
) -> StudyConfig:
    """Compose `conf/study.yaml` with Hydra and validate it; raise ConfigError on any problem."""
    conf_dir = Path(conf_dir or CONF_DIR).resolve()
    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            raw = compose("study", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as e:
        raise ConfigError(_missing_option_message(e, conf_dir)) from None
    except (HydraException, OmegaConfBaseException) as e:
        m = re.search(r"Could not override '([^']+)'", str(e))
        if m:
            bad = [o for o in overrides if o.split("=", 1)[0] == m.group(1)]
            raise ConfigError(
                f"unknown config key '{m.group(1)}' in command-line override '{bad[0] if bad else m.group(1)}'"
                f" (see `actsparse config` for the keys that exist)"
            ) from None
        raise ConfigError(f"could not compose the study config from {conf_dir}: {e}") from None
    finally:
        GlobalHydra.instance().clear()
    choices = OmegaConf.to_container(raw.hydra.runtime.choices)
    with open_dict(raw):
        del raw["hydra"]
    return validate(raw, _Sources(conf_dir, choices, overrides))


def validate(raw: DictConfig | dict, sources: _Sources | None = None) -> StudyConfig:
    """Merge `raw` onto the schema and check it; return the typed StudyConfig."""
    sources = sources or _Sources(CONF_DIR, {}, [])
    schema = OmegaConf.structured(StudyConfig)
    try:
        merged = OmegaConf.merge(schema, raw)
        OmegaConf.resolve(merged)
        typed: StudyConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "")
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        if "not in" in msg:
            msg = f"unknown key ({msg})"
        raise ConfigError(f"config error at '{key}' ({sources.where(key)}): {msg}") from None
    problems = study_problems(typed)
    if problems:
        lines = [f"  {key}: {msg}  [{sources.where(key)}]" for key, msg in problems]
        raise ConfigError("invalid study config:\n" + "\n".join(lines))
    return typed


def _missing_option_message(e: Exception, conf_dir: Path) -> str:
    text = str(e)
    m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if m:
        group, option = m.groups()
        options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        what = "experiment" if group == "experiment" else f"option for '{group}'"
        return f"unknown {what} '{option}' (no {conf_dir / group / option}.yaml); available: {', '.join(options)}"
    return f"could not compose the study config: {text.splitlines()[0]}"


class _Sources:
    """Finds which file or command-line override set a dotted key."""

    def __init__(self, conf_dir: Path, choices: dict[str, Any], overrides: list[str]):
        self.conf_dir, self.choices, self.overrides = conf_dir, choices, overrides

    def where(self, key: str) -> str:
        for ov in reversed(self.overrides):
            name = ov.split("=", 1)[0].lstrip("+~")
            if (self.conf_dir / name.split("@")[0]).is_dir():
                continue  # selects a group option (data=wikitext2_local): look in that file
            if key == name or key.startswith(name + ".") or name.startswith(key + "."):
                return f"command-line override '{ov}'"
        candidates: list[tuple[Path, str]] = []
        exp = self.choices.get("experiment")
        if exp:
            path = self.conf_dir / "experiment" / f"{exp}.yaml"
            candidates.append((path, key))
            # the shared files the experiment includes whole (`- /protocol/cluster_7b`)
            candidates += [(self.conf_dir / f"{inc}.yaml", key) for inc in _global_includes(path)]
        candidates.append((self.conf_dir / "study.yaml", key))
        for group, option in self.choices.items():
            if option is None or group.startswith("hydra/") or group == "experiment":
                continue
            base, _, package = group.partition("@")
            package = package or base
            if key == package or key.startswith(package + "."):
                candidates.append(
                    (self.conf_dir / base / f"{option}.yaml", key[len(package) + 1 :])
                )
        for path, sub in candidates:
            if path.is_file() and _yaml_has_key(path, sub):
                return f"set in {path}"
        files = [str(p) for p, _ in candidates if p.is_file()]
        return "default in the schema (actsparse.schema)" if not files else f"from {files[-1]}"


def _global_includes(path: Path) -> list[str]:
    """The files a config's defaults list includes at the top level ("/protocol/x"), as
    paths under conf/ without their suffix, most specific (last listed) first."""
    if not path.is_file():
        return []
    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
    return [d.lstrip("/") for d in reversed(defaults) if isinstance(d, str) and d.startswith("/")]


def _yaml_has_key(path: Path, dotted: str) -> bool:
    node: Any = yaml.safe_load(path.read_text()) or {}
    if not dotted:
        return True
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
