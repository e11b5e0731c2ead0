"""Helpers shared by the test tiers (importable as `helpers`)."""

from __future__ import annotations

from pathlib import Path


def smoke_plan(tmp: Path, *overrides: str):
    """The smoke study's plan with outputs under `tmp`."""
    from actsparse.config import compose_study
    from actsparse.plan import StudyPlan

    return StudyPlan(compose_study(["experiment=smoke", f"study.output_root={tmp}", *overrides]))
