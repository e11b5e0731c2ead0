"""The docs' method tables, made from the registries: a registered method is in them.

Each method class carries its row (`paper`, `summary`; a sparsity method's `skips`); its
sites come from its conf file, whether it is calibrated and its file from the code. `actsparse methods`
prints the tables, `actsparse methods --write-docs` writes them into the docs between
their markers, and a test fails when the docs hold another table than this one.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import fields
from pathlib import Path

from actsparse.methods.lowrank import LOWRANK
from actsparse.methods.predictors import PREDICTORS
from actsparse.methods.registry import Registry
from actsparse.methods.sparsity import SPARSITY
from actsparse.sweeps import default_entry


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else "—"


def _named(name: str, impl: type) -> str:
    return f"`{name}`" + (f" ({impl.paper})" if impl.paper else "")


def _file(impl: type) -> str:
    return f"`{Path(inspect.getfile(impl)).name}`"


def sparsity_table() -> str:
    rows = ["| method | sites (default) | rule | calibrated | output rows a kernel may skip |",
            "|---|---|---|---|---|"]  # fmt: skip
    for name in SPARSITY.names():
        impl = SPARSITY.get(name)
        cfg = default_entry("sparsify", name).cfg
        sites = ", ".join(f"`{s}`" for s in cfg.sites_used())
        keys = {f.name for f in fields(cfg)} & {"site", "sites"}
        if keys:
            sites += f" (key `{keys.pop()}`)"
        calibrated = "yes" if impl.needs_calibration or impl.needs_tokens else "no"
        rows.append(
            f"| {_named(name, impl)} | {sites} | {_cell(impl.summary)} | {calibrated} "
            f"| {_cell(impl.skips)} |"
        )
    return "\n".join(rows)


def _file_table(registry: Registry, what: str) -> str:
    rows = [f"| method | file | {what} |", "|---|---|---|"]
    for name in registry.names():
        impl = registry.get(name)
        rows.append(f"| {_named(name, impl)} | {_file(impl)} | {_cell(impl.summary)} |")
    return "\n".join(rows)


def lowrank_table() -> str:
    return _file_table(LOWRANK, "what it computes")


def predictor_table() -> str:
    return _file_table(PREDICTORS, "what it is")


# table name -> (how to make it, the doc it lives in, relative to the repository)
TABLES = {
    "sparsity": (sparsity_table, "docs/sparsity.md"),
    "lowrank": (lowrank_table, "docs/lowrank.md"),
    "predictors": (predictor_table, "docs/predictors.md"),
}


def block(name: str) -> str:
    """The table with its markers, as it stands in its doc."""
    make, _ = TABLES[name]
    return (
        f"<!-- methods:{name} (made from the registry: `actsparse methods --write-docs`) -->\n"
        f"{make()}\n<!-- /methods:{name} -->"
    )


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- methods:{name} .*?<!-- /methods:{name} -->", re.S)


def stale_docs(root: Path) -> list[str]:
    """The docs under `root` whose table is not the registry's (or has no markers)."""
    out = []
    for name, (_, doc) in TABLES.items():
        m = _pattern(name).search((root / doc).read_text())
        if m is None or m.group(0) != block(name):
            out.append(doc)
    return out


def write_docs(root: Path) -> list[str]:
    """Write each table into its doc between its markers; the docs rewritten."""
    changed = []
    for name, (_, doc) in TABLES.items():
        path = root / doc
        text = path.read_text()
        if not _pattern(name).search(text):
            raise ValueError(f"{doc} has no <!-- methods:{name} ... --> markers")
        new = _pattern(name).sub(lambda _m, n=name: block(n), text)
        if new != text:
            path.write_text(new)
            changed.append(doc)
    return changed
