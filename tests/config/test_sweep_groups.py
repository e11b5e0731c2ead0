"""A new method is its module, its conf file and its test: the registry finds the module,
the sweep groups (conf/sweep/) put it in every preset that takes them, and the docs'
method tables are made from the registry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from actsparse import cards
from actsparse.conf import CONF_DIR, read_conf
from actsparse.config import compose_study
from actsparse.sweeps import REGISTRIES

REPO = Path(__file__).resolve().parents[2]
SWEEP_FILE = {"sparsify": "sparsity", "decompose": "lowrank", "predictors": "predictors"}


def _group_entries(sweep: str) -> dict[str, str]:
    """entry -> conf option of a sweep group's defaults list."""
    entries = {}
    for item in yaml.safe_load((CONF_DIR / "sweep" / f"{sweep}.yaml").read_text())["defaults"]:
        ((target, option),) = item.items()
        entries[target.rsplit(".", 1)[1]] = option
    return entries


@pytest.mark.parametrize("group", list(REGISTRIES))
def test_each_registered_method_has_its_conf_file(group):
    files = {p.stem for p in (CONF_DIR / group).glob("*.yaml")}
    assert files == set(REGISTRIES[group].names())
    for name in files:
        assert read_conf(group, name)["method"] == name


@pytest.mark.parametrize("group", list(REGISTRIES))
def test_a_sweep_group_lists_every_registered_method(group):
    options = set(_group_entries(SWEEP_FILE[group]).values())
    assert options == set(REGISTRIES[group].names()), (
        f"conf/sweep/{SWEEP_FILE[group]}.yaml lists {sorted(options)}; registered: "
        f"{REGISTRIES[group].names()}"
    )


def test_a_preset_taking_the_sweeps_runs_every_method():
    cfg = compose_study(["experiment=smoke"])
    for group, registry in REGISTRIES.items():
        methods = {e["method"] for e in getattr(cfg, group).methods.values()}
        assert methods == set(registry.names())


def test_the_docs_method_tables_are_the_registrys():
    assert cards.stale_docs(REPO) == [], "run `actsparse methods --write-docs`"


def test_a_hand_edited_method_table_is_found_and_rewritten(tmp_path):
    (tmp_path / "docs").mkdir()
    for _, doc in cards.TABLES.values():
        shutil.copy(REPO / doc, tmp_path / doc)
    path = tmp_path / "docs" / "lowrank.md"
    path.write_text(path.read_text().replace("| `svd` |", "| `svd` (renamed) |"))
    assert cards.stale_docs(tmp_path) == ["docs/lowrank.md"]
    assert cards.write_docs(tmp_path) == ["docs/lowrank.md"]
    assert cards.stale_docs(tmp_path) == []
    assert (tmp_path / "docs" / "lowrank.md").read_text() == (
        REPO / "docs" / "lowrank.md"
    ).read_text()


def test_a_doc_without_markers_is_refused_naming_it(tmp_path):
    (tmp_path / "docs").mkdir()
    for _, doc in cards.TABLES.values():
        shutil.copy(REPO / doc, tmp_path / doc)
    (tmp_path / "docs" / "sparsity.md").write_text("# no table here\n")
    assert "docs/sparsity.md" in cards.stale_docs(tmp_path)
    with pytest.raises(ValueError, match=r"docs/sparsity.md has no <!-- methods:sparsity"):
        cards.write_docs(tmp_path)
