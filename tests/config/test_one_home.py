"""Every default a study starts from has one home (conf/study.yaml states the rule): the
stage groups (conf/<stage>/default.yaml), conf/study.yaml's own sections and each method's
conf/<sweep>/<method>.yaml hold the values, and their dataclasses declare none; so no
default is written twice, and none can drift from a copy of itself. (The options of
conf/data/ and conf/model/ each describe one corpus or model over their dataclass's
shared base: they are choices, not defaults.)
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from omegaconf import MISSING

from actsparse.conf import CONF_DIR, defaults, read_conf
from actsparse.schema.stages import (
    CalibrateCfg,
    DecomposeCfg,
    EvaluateCfg,
    PredictorsCfg,
    ResourcesCfg,
    RuleResources,
    SparsifyCfg,
)
from actsparse.schema.study import StudyCfg, StudyConfig
from actsparse.schema.training import ScalingCfg, ScalingFitCfg, TrainCfg
from actsparse.sweeps import REGISTRIES, default_entry

# the dataclasses whose values live in conf/ (a method's config: every class it inherits)
YAML_HOMES = [CalibrateCfg, EvaluateCfg, TrainCfg, SparsifyCfg, DecomposeCfg, PredictorsCfg,
              RuleResources, StudyCfg, ScalingCfg, ScalingFitCfg]  # fmt: skip
METHOD_CONFIGS = sorted(
    {base for reg in REGISTRIES.values() for name in reg.names()
     for base in reg.get(name).Config.__mro__ if dataclasses.is_dataclass(base)},
    key=lambda c: c.__qualname__,
)  # fmt: skip


def _declared_values(cls: type) -> list[str]:
    """The fields of `cls` that carry a value of their own (a nested dataclass is a
    structure whose own fields are checked, and an empty mapping of entries that presets
    add is no value)."""
    out = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            if not (dataclasses.is_dataclass(f.default_factory) or f.default_factory is dict):
                out.append(f.name)
        elif f.default is not MISSING:
            out.append(f.name)
    return out


@pytest.mark.parametrize("cls", YAML_HOMES + METHOD_CONFIGS, ids=lambda c: c.__qualname__)
def test_a_dataclass_whose_values_live_in_conf_declares_none(cls):
    assert _declared_values(cls) == [], (
        f"{cls.__qualname__} declares values for {_declared_values(cls)}: they belong in "
        "its conf file (or the file's value duplicates them)"
    )


@pytest.mark.parametrize("schema,group", [(CalibrateCfg, "calibrate"), (EvaluateCfg, "evaluate"),
                                          (TrainCfg, "train")])  # fmt: skip
def test_a_stage_group_file_holds_every_key_of_its_dataclass(schema, group):
    cfg = defaults(schema, group)  # a key missing from the file: MissingMandatoryValue
    assert set(read_conf(group, "default")) == {f.name for f in dataclasses.fields(cfg)}


def test_each_method_file_holds_every_key_of_its_method_config():
    for group, registry in REGISTRIES.items():
        for name in registry.names():
            entry = default_entry(group, name)  # parses: no key missing, none unknown
            keys = {f.name for f in dataclasses.fields(entry.cfg)}
            assert set(read_conf(group, name)) == keys, f"conf/{group}/{name}.yaml"


def _file_keys(cls: type) -> set[str]:
    """The keys a file states for `cls`: every field but the mappings of entries that
    presets add (sweep methods, scaling sizes and variants)."""
    return {f.name for f in dataclasses.fields(cls) if f.default_factory is not dict}


def test_the_study_file_holds_its_sections_values():
    study = yaml.safe_load((CONF_DIR / "study.yaml").read_text())
    for section, schema in [("sparsify", SparsifyCfg), ("decompose", DecomposeCfg),
                            ("predictors", PredictorsCfg), ("scaling", ScalingCfg)]:  # fmt: skip
        placed = {"train"} if section == "scaling" else set()  # conf/train, by the defaults list
        assert set(study[section]) == _file_keys(schema) - placed, section
    assert set(study["study"]) == {f.name for f in dataclasses.fields(StudyCfg)}
    rules = {f.name for f in dataclasses.fields(ResourcesCfg)}
    assert set(study["resources"]) == rules
    for rule in rules:  # every rule's request in full
        assert set(study["resources"][rule]) == {f.name for f in dataclasses.fields(RuleResources)}


def test_the_composed_study_has_every_value():
    """No schema value is left unset by the files (a value removed from its home fails the
    composition, naming the key)."""
    from actsparse.config import compose_study

    cfg = compose_study(["experiment=smoke"])
    assert isinstance(cfg, StudyConfig)
    assert cfg.scaling.train.lr == read_conf("train", "default")["lr"]  # the grid starts there


def test_a_value_missing_from_its_home_fails_naming_the_key(tmp_path):
    import shutil

    from actsparse.config import ConfigError, compose_study

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    path = conf / "evaluate" / "default.yaml"
    path.write_text(
        "".join(x for x in path.read_text().splitlines(True) if not x.startswith("batch_size:"))
    )
    with pytest.raises(ConfigError, match=r"evaluate\.batch_size.*[Mm]issing mandatory value"):
        compose_study(["experiment=smoke"], conf_dir=conf)
