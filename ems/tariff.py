"""Price plans: the price per kWh over time, as a dynamic tariff publishes it.

A plan is a tuple of sorted, non-overlapping slots ``[start, end)`` in clock seconds (the Unix
timeline, UTC) with one currency. Gaps are allowed and mean "price unknown". Plans come from a
CSV file or from a JSON payload (MQTT); both loaders check everything and raise
``ConfigError`` naming the file (or ``mqtt:<topic>``), the line or item and what was expected.

CSV, with a header naming one of two layouts (``#`` lines and blank lines are skipped)::

    start,end,price                       start,price
    2025-06-21T00:00:00Z,2025-06-21T00:15:00Z,0.2156      2025-06-21T00:00:00Z,0.2156

The ``start,price`` layout gives every slot the same length (``slot_s``, 15 minutes unless
told). Timestamps are ISO 8601 with an explicit offset (``Z`` or ``+00:00``; other offsets are
converted): a timestamp without one is refused rather than guessed.

JSON: a list of ``{"start": ..., "end": ..., "price": ...}`` where times are ISO 8601 strings
as above or Unix seconds (numbers; milliseconds are refused by the range check).
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ems.config_error import ConfigError

MAX_SLOTS = 10_000          # 104 days of 15-minute slots; more is a broken feed, not a tariff
# The range a Unix time in seconds may take: a 13-digit millisecond stamp falls outside it.
EARLIEST = 946_684_800.0    # 2000-01-01T00:00:00Z
LATEST = 4_102_444_800.0    # 2100-01-01T00:00:00Z
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£"}
_TIME = "an ISO 8601 timestamp with an offset, like 2025-06-21T00:00:00Z"


@dataclass(frozen=True, slots=True)
class Slot:
    start: float
    end: float
    price: float    # per kWh, in the plan's currency


@dataclass(frozen=True, slots=True)
class PricePlan:
    slots: tuple[Slot, ...]
    currency: str = "EUR"   # ISO 4217

    def __post_init__(self) -> None:
        if not _CURRENCY.match(self.currency):
            raise ValueError(f"currency must be an ISO 4217 code like EUR, got {self.currency!r}")
        previous_end = -math.inf
        for slot in self.slots:
            if not (math.isfinite(slot.start) and math.isfinite(slot.end)
                    and math.isfinite(slot.price)):
                raise ValueError(f"slot values must be finite, got {slot}")
            if slot.end <= slot.start or slot.start < previous_end:
                raise ValueError(f"slots must be sorted, non-empty and not overlap, got {slot}")
            previous_end = slot.end


def price_at(plan: PricePlan, t: float) -> float | None:
    """The price at clock time ``t``, or None when no slot holds it."""
    slot = _slot_at(plan, t)
    return None if slot is None else slot.price


def covers(plan: PricePlan, t0: float, t1: float) -> bool:
    """Whether the plan knows the price at every instant of ``[t0, t1)`` (True when empty)."""
    cursor = t0
    while cursor < t1:
        slot = _slot_at(plan, cursor)
        if slot is None:
            return False
        cursor = slot.end
    return True


def price_text(price: float | None, currency: str) -> str:
    """``0.21 €/kWh`` — how a price reads in a reason."""
    if price is None:
        return "price unknown"
    return f"{price:.2f} {_SYMBOLS.get(currency, currency)}/kWh"


def money_text(amount: float, currency: str) -> str:
    symbol = _SYMBOLS.get(currency)
    return f"{amount:.2f} {symbol}" if symbol else f"{amount:.2f} {currency}"


def _slot_at(plan: PricePlan, t: float) -> Slot | None:
    i = bisect.bisect_right(plan.slots, t, key=lambda s: s.start) - 1
    if i >= 0 and t < plan.slots[i].end:
        return plan.slots[i]
    return None


def load_csv(path: Path, *, slot_s: float = 900.0, currency: str = "EUR") -> PricePlan:
    """A plan from a CSV file (layouts in the module docstring)."""
    file = str(path)
    if not (math.isfinite(slot_s) and slot_s > 0):
        raise ValueError(f"slot_s must be a positive number of seconds, got {slot_s}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "(file)", "a readable UTF-8 CSV file", str(exc)) from None
    rows: list[tuple[int, list[str]]] = []
    try:
        for lineno, fields in enumerate(csv.reader(text.splitlines()), start=1):
            cells = [c.strip() for c in fields]
            if not any(cells) or cells[0].startswith("#"):
                continue
            rows.append((lineno, cells))
    except csv.Error as exc:
        raise ConfigError(file, "(file)", "CSV text", str(exc)) from None
    if not rows:
        raise ConfigError(file, "header", "'start,end,price' or 'start,price'", "")
    header_line, header = rows[0]
    if header == ["start", "end", "price"]:
        with_end = True
    elif header == ["start", "price"]:
        with_end = False
    else:
        raise ConfigError(file, f"line {header_line} (header)",
                          "'start,end,price' or 'start,price'", ",".join(header))
    slots: list[Slot] = []
    for lineno, cells in rows[1:]:
        if len(cells) != len(header):
            raise ConfigError(file, f"line {lineno}",
                              f"{len(header)} fields {','.join(header)} "
                              "(a dot for decimals, no thousands separator)", ",".join(cells))
        key = f"line {lineno} ({{}})".format
        start = _iso(cells[0], file, key("start"))
        end = _iso(cells[1], file, key("end")) if with_end else start + slot_s
        price = _price(cells[-1], file, key("price"))
        slots.append(_checked_slot(slots, start, end, price, file, key))
        if len(slots) > MAX_SLOTS:
            break
    return _plan(slots, currency, file)


def parse_json(payload: str | bytes, source: str, *, currency: str = "EUR") -> PricePlan:
    """A plan from a JSON payload (a list of {start, end, price}); ``source`` names it in
    errors, e.g. ``mqtt:home/tariff``."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(source, "(payload)", "JSON", str(exc)[:200]) from None
    if not isinstance(data, list):
        raise ConfigError(source, "(payload)", "a JSON list of {start, end, price}",
                          type(data).__name__)
    slots: list[Slot] = []
    for i, item in enumerate(data):
        where = f"[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(source, where, "an object {start, end, price}", item)
        if set(item) != {"start", "end", "price"}:
            raise ConfigError(source, where, "exactly the keys start, end, price",
                              sorted(str(k) for k in item))
        key = f"{where}.{{}}".format
        start = _time_value(item["start"], source, key("start"))
        end = _time_value(item["end"], source, key("end"))
        price = _finite(item["price"])
        if price is None:
            raise ConfigError(source, key("price"), "a finite number (per kWh)", item["price"])
        slots.append(_checked_slot(slots, start, end, price, source, key))
        if len(slots) > MAX_SLOTS:
            break
    return _plan(slots, currency, source)


def _plan(slots: Sequence[Slot], currency: str, file: str) -> PricePlan:
    if not _CURRENCY.match(currency):
        raise ConfigError(file, "currency", "an ISO 4217 code like EUR", currency)
    if not slots:
        raise ConfigError(file, "(slots)", "at least one price slot", 0)
    if len(slots) > MAX_SLOTS:
        raise ConfigError(file, "(slots)", f"at most {MAX_SLOTS} slots", len(slots))
    return PricePlan(tuple(slots), currency)


def _checked_slot(previous: Sequence[Slot], start: float, end: float, price: float, file: str,
                  key: Callable[[str], str]) -> Slot:
    if end <= start:
        raise ConfigError(file, key("end"), f"after the start {_iso_text(start)}",
                          _iso_text(end))
    if previous and start < previous[-1].end:
        raise ConfigError(file, key("start"),
                          f"at or after the previous slot's end {_iso_text(previous[-1].end)} "
                          "(slots sorted by time, not overlapping)", _iso_text(start))
    return Slot(start, end, price)


def _iso(text: str, file: str, key: str) -> float:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(file, key, _TIME, text) from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise ConfigError(file, key, _TIME, text)
    t = at.timestamp()
    if not EARLIEST <= t < LATEST:
        raise ConfigError(file, key, "a time between 2000 and 2100", text)
    return t


def _time_value(value: object, file: str, key: str) -> float:
    if isinstance(value, str):
        return _iso(value, file, key)
    t = _finite(value)
    if t is not None and EARLIEST <= t < LATEST:
        return t
    raise ConfigError(file, key, f"{_TIME}, or Unix seconds between 2000 and 2100", value)


def _finite(value: object) -> float | None:
    """A JSON number as a finite float (not a bool; an int too big for a float is None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _price(text: str, file: str, key: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(file, key, "a finite number (per kWh)", text) from None
    if not math.isfinite(value):
        raise ConfigError(file, key, "a finite number (per kWh)", text)
    return value


def _iso_text(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
