"""The one clock every part of voltpilot reads.

Time is a float of seconds on a UTC-epoch timeline that never jumps backwards: the wall clock is
read once at start and then advanced by the monotonic clock, so an NTP step cannot make a timer
fire twice or never. Virtual time starts at a chosen instant and moves only when told to, which is
what lets a 24-hour scenario run in seconds and repeat exactly.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the UTC epoch on a monotonic timeline."""
        ...


def utc(t: float) -> datetime:
    """The UTC instant of a clock reading (for logs, events and records)."""
    return datetime.fromtimestamp(t, tz=UTC)


def iso(t: float) -> str:
    """ISO 8601 with milliseconds and a Z suffix, the one format our logs and records use."""
    return utc(t).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WallClock:
    def __init__(self) -> None:
        self._epoch = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._epoch + (time.monotonic() - self._mono0)


class VirtualClock:
    # 2026-01-01T00:00:00Z: a fixed default start keeps virtual runs byte-for-byte repeatable.
    DEFAULT_START = 1767225600.0

    def __init__(self, start: float = DEFAULT_START) -> None:
        self.start = start
        self._elapsed = 0.0

    def now(self) -> float:
        return self.start + self._elapsed

    def elapsed(self) -> float:
        """Seconds since start: small numbers keep sub-microsecond precision, which an event
        loop needs to tell a timer that is due from one that is not."""
        return self._elapsed

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("virtual time cannot run backwards")
        self._elapsed += seconds
