"""OCPP dateTime values (RFC 3339) as seconds since the UTC epoch: one parser for every module."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DATETIME = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:[.,](\d+))?"
                       r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?")


def parse_datetime(text: str) -> float:
    """'Z' or a numeric offset, any number of fraction digits (peers send nanoseconds, which
    Python's own parser refuses); a time without a zone is taken as UTC. Raises ValueError."""
    match = _DATETIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an ISO 8601 date-time: {text[:40]!r}")
    date, clock_time, fraction, _z, sign, hours, minutes = match.groups()
    base = datetime.fromisoformat(f"{date}T{clock_time}").replace(tzinfo=UTC).timestamp()
    offset = 0.0 if sign is None else (int(hours) * 3600 + int(minutes) * 60) * (
        1 if sign == "+" else -1)
    return base + (float(f"0.{fraction}") if fraction else 0.0) - offset
