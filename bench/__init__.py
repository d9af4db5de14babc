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


# The station the OCPP benchmarks run, as the CSMS knows it.
OCPP_IDENTITY = "bench-cs"
OCPP_PASSWORD = "bench-password-0123456789"


def ocpp_settings_file(path: Path, port: int) -> Path:
    """`voltpilot run --ocpp` settings for a CSMS on 127.0.0.1:port."""
    path.write_text(f'[ocpp]\ncsms_url = "ws://127.0.0.1:{port}/ocpp"\n'
                    f'identity = "{OCPP_IDENTITY}"\npassword = "{OCPP_PASSWORD}"\n',
                    encoding="utf-8")
    return path
