"""Benchmarks of the controller against its latency, memory and speed targets (`make bench`).

Latencies are measured on a real asyncio loop on wall-clock time; the subprocess benchmarks run
the installed ``voltpilot`` command exactly as a user would.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
# The console script of the interpreter running the benchmark, so a venv benchmarks itself.
VOLTPILOT = str(Path(sys.executable).with_name("voltpilot"))


@dataclass(frozen=True)
class Spec:
    name: str    # the --only key
    title: str   # the table's row
    target: str


@dataclass
class Result:
    spec: Spec
    result: str                # what was measured, for humans
    met: bool
    values: dict[str, Any] = field(default_factory=dict)  # the numbers, for --json
    notes: list[str] = field(default_factory=list)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: a value that was actually measured, never an interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def ms(value: float) -> str:
    return f"{value:.2f} ms"
