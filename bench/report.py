"""How bench scripts print and keep their figures: a small table on stdout, JSON in bench/results/."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

#: Where results go: bench/results/, or ``BENCH_RESULTS`` (the smoke test points it elsewhere).
RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def write_result(name: str, figures: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"bench": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.node(), **figures}
    path.write_text(json.dumps(payload, indent=2))
    return path


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(key) for key, _ in rows)
    print(f"\n{title}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
