"""Shared code never asks which method it runs: outside `actsparse/methods/`, no string
comparison names a registered method (sparsity, low-rank, predictor) or a training-time
operator. What differs between methods is a property or a hook of the method (its
registry entry, its config class, `TRAIN_OPERATORS`), so a new method needs no edit there.
A method's name as data (a claim naming the paper's method) is not a comparison."""

from __future__ import annotations

import ast
from pathlib import Path

from actsparse.methods.lowrank import LOWRANK
from actsparse.methods.predictors import PREDICTORS
from actsparse.methods.sparsity import SPARSITY
from actsparse.schema.training import TRAIN_OPERATORS

SRC = Path(__file__).resolve().parents[2] / "src" / "actsparse"
NAMES = (
    set(SPARSITY.names()) | set(LOWRANK.names()) | set(PREDICTORS.names()) | set(TRAIN_OPERATORS)
) - {"none"}


def _strings(node: ast.AST) -> list[str]:
    """String constants of a comparison operand: a literal or a tuple/list/set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _strings(elt)]
    return []


def method_name_comparisons(source: str, where: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                hits = sorted(set(_strings(operand)) & NAMES)
                if hits:
                    out.append(f"{where}:{node.lineno}: {hits}")
    return out


def shared_modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "methods" not in p.relative_to(SRC).parts)


def test_shared_code_compares_no_method_names():
    assert len(NAMES) > 10 and "teal" in NAMES and "stat_topk" in NAMES
    found = [
        hit
        for p in shared_modules()
        for hit in method_name_comparisons(p.read_text(), str(p.relative_to(SRC.parent)))
    ]
    assert found == []


def test_the_check_sees_each_form_of_comparison():
    source = (
        'if plan.method == "stat_topk" or entry in ("svd", "x") or "teal" != m:\n'
        '    label = "threshold"  # an assignment is data, not a comparison\n'
    )
    assert method_name_comparisons(source, "bad.py") == [
        "bad.py:1: ['stat_topk']",
        "bad.py:1: ['svd']",
        "bad.py:1: ['teal']",
    ]
