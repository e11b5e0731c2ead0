"""Where and when a benchmark row was measured (every results row carries these)."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def provenance() -> dict[str, str]:
    return {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "date": dt.date.today().isoformat(),
    }
