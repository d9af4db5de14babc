"""Price plans (ems/tariff.py): the CSV and JSON loaders, their errors, price_at and covers."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ems.config_error import ConfigError
from ems.tariff import (
    MAX_SLOTS,
    PricePlan,
    Slot,
    covers,
    load_csv,
    parse_json,
    price_at,
    price_text,
)

T0 = datetime(2025, 6, 21, tzinfo=UTC).timestamp()
TOPIC = "mqtt:home/tariff"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_start_end_price(tmp_path: Path) -> None:
    path = write(tmp_path, "# day-ahead, EUR\nstart,end,price\n"
                           "2025-06-21T00:00:00Z,2025-06-21T01:00:00Z,0.25\n\n"
                           "2025-06-21T01:00:00+00:00,2025-06-21T01:15:00+00:00,-0.02\n"
                           "2025-06-21T03:15:00+02:00,2025-06-21T03:00:00Z,0.31\n")
    plan = load_csv(path, currency="EUR")
    assert plan.slots == (Slot(T0, T0 + 3600, 0.25), Slot(T0 + 3600, T0 + 4500, -0.02),
                          Slot(T0 + 4500, T0 + 3 * 3600, 0.31))
    assert plan.currency == "EUR"


def test_csv_offsets_are_converted_to_utc(tmp_path: Path) -> None:
    path = write(tmp_path, "start,end,price\n"
                           "2025-06-21T02:00:00+02:00,2025-06-21T03:00:00+02:00,0.25\n")
    assert load_csv(path).slots == (Slot(T0, T0 + 3600, 0.25),)


def test_csv_with_start_price_uses_the_slot_length(tmp_path: Path) -> None:
    path = write(tmp_path, "start,price\n2025-06-21T00:00:00Z,0.2\n2025-06-21T00:15:00Z,0.3\n")
    plan = load_csv(path)
    assert plan.slots == (Slot(T0, T0 + 900, 0.2), Slot(T0 + 900, T0 + 1800, 0.3))
    hourly = write(tmp_path, "start,price\n2025-06-21T00:00:00Z,0.2\n2025-06-21T01:00:00Z,0.3\n")
    assert load_csv(hourly, slot_s=3600).slots[1] == Slot(T0 + 3600, T0 + 7200, 0.3)


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("", "header", "'start,end,price' or 'start,price'"),
    ("time,price\n2025-06-21T00:00:00Z,0.2\n", "line 1 (header)", "'start,end,price'"),
    ("start,end,price\n", "(slots)", "at least one price slot"),
    ("start,end,price\n2025-06-21T00:00:00Z,2025-06-21T00:15:00Z,0,21\n", "line 2",
     "3 fields start,end,price (a dot for decimals"),
    ("start,price\n2025-06-21 00:00,0.2\n", "line 2 (start)", "ISO 8601 timestamp with an offset"),
    ("start,price\n21.06.2025 00:00,0.2\n", "line 2 (start)", "ISO 8601"),
    ("start,price\n1999-06-21T00:00:00Z,0.2\n", "line 2 (start)", "between 2000 and 2100"),
    ("start,end,price\n2025-06-21T00:00:00Z,noon,0.2\n", "line 2 (end)", "ISO 8601"),
    ("start,price\n2025-06-21T00:00:00Z,cheap\n", "line 2 (price)", "a finite number (per kWh)"),
    ("start,price\n2025-06-21T00:00:00Z,nan\n", "line 2 (price)", "a finite number"),
    ("start,price\n2025-06-21T00:00:00Z,inf\n", "line 2 (price)", "a finite number"),
    ("start,end,price\n2025-06-21T01:00:00Z,2025-06-21T00:00:00Z,0.2\n", "line 2 (end)",
     "after the start 2025-06-21T01:00:00Z"),
    ("start,price\n2025-06-21T00:00:00Z,0.2\n2025-06-21T00:10:00Z,0.3\n", "line 3 (start)",
     "at or after the previous slot's end 2025-06-21T00:15:00Z"),
    ("start,price\n2025-06-21T01:00:00Z,0.2\n2025-06-21T00:00:00Z,0.3\n", "line 3 (start)",
     "sorted by time"),
    ("start,price\n2025-06-21T00:00:00Z,0.2\x00\n", "line 2 (price)", "a finite number"),
    ("start,price\n" + "x" * 200_000 + "\n", "(file)", "CSV text"),
])
def test_csv_errors_name_file_line_and_expectation(tmp_path: Path, text: str, key: str,
                                                   expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_csv(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert expected in err.value.expected
    assert str(path) in str(err.value) and key in str(err.value)


def test_csv_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.csv: \(file\): expected a readable"):
        load_csv(tmp_path / "missing.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"start,price\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_csv(binary)


def test_csv_too_many_slots(tmp_path: Path) -> None:
    lines = ["start,price"] + [
        datetime.fromtimestamp(T0 + 900 * i, tz=UTC).isoformat() + ",0.2"
        for i in range(MAX_SLOTS + 1)]
    with pytest.raises(ConfigError, match=f"at most {MAX_SLOTS} slots"):
        load_csv(write(tmp_path, "\n".join(lines)))


def test_json_payload() -> None:
    payload = json.dumps([
        {"start": "2025-06-21T00:00:00Z", "end": "2025-06-21T00:15:00Z", "price": 0.2},
        {"start": T0 + 900, "end": T0 + 1800, "price": 1},
    ])
    plan = parse_json(payload.encode(), TOPIC, currency="CHF")
    assert plan == PricePlan((Slot(T0, T0 + 900, 0.2), Slot(T0 + 900, T0 + 1800, 1.0)), "CHF")


@pytest.mark.parametrize(("payload", "key", "expected"), [
    ("{not json", "(payload)", "JSON"),
    ('{"start": 1}', "(payload)", "a JSON list of {start, end, price}"),
    ("[]", "(slots)", "at least one price slot"),
    ("[1]", "[0]", "an object {start, end, price}"),
    ('[{"start": "2025-06-21T00:00:00Z", "end": "2025-06-21T00:15:00Z"}]', "[0]",
     "exactly the keys start, end, price"),
    ('[{"start": "2025-06-21T00:00:00Z", "end": "2025-06-21T00:15:00Z", "price": 0.2, '
     '"level": "cheap"}]', "[0]", "exactly the keys"),
    ('[{"start": 1750464000000, "end": 1750464900000, "price": 0.2}]', "[0].start",
     "Unix seconds between 2000 and 2100"),
    ('[{"start": true, "end": 1750464900, "price": 0.2}]', "[0].start", "ISO 8601"),
    ('[{"start": "2025-06-21T00:00:00", "end": 1750464900, "price": 0.2}]', "[0].start",
     "with an offset"),
    ('[{"start": 1750464000, "end": 1750464900, "price": "0.2"}]', "[0].price",
     "a finite number"),
    ('[{"start": 1750464000, "end": 1750464900, "price": false}]', "[0].price",
     "a finite number"),
    ('[{"start": 1750464000, "end": 1750464900, "price": NaN}]', "[0].price", "a finite number"),
    ('[{"start": 1750464000, "end": 1750464000, "price": 0.2}]', "[0].end", "after the start"),
    ('[{"start": 1750464000, "end": 1750464900, "price": 1' + "0" * 400 + '}]', "[0].price",
     "a finite number"),
    ('[{"start": 1' + "0" * 400 + ', "end": 1750464900, "price": 0.2}]', "[0].start",
     "Unix seconds"),
    ('[{"start": 1750464000, "end": 1750464900, "price": 0.2},'
     ' {"start": 1750464000, "end": 1750465800, "price": 0.2}]', "[1].start",
     "previous slot's end"),
    ("[" * 100_000 + "]" * 100_000, "(payload)", "JSON"),
])
def test_json_errors_name_topic_item_and_expectation(payload: str, key: str,
                                                     expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_json(payload, TOPIC)
    assert err.value.file == TOPIC
    assert err.value.key == key
    assert expected in err.value.expected
    assert str(err.value).startswith(f"{TOPIC}: {key}: expected")


def test_json_bad_currency_and_bytes() -> None:
    with pytest.raises(ConfigError, match="currency: expected an ISO 4217 code"):
        parse_json('[{"start": 1750464000, "end": 1750464900, "price": 0.2}]', TOPIC,
                   currency="euro")
    with pytest.raises(ConfigError, match=r"\(payload\): expected JSON"):
        parse_json(b"\xff\xfe", TOPIC)


PLAN = PricePlan((Slot(T0, T0 + 900, 0.2), Slot(T0 + 900, T0 + 1800, 0.3),
                  Slot(T0 + 3600, T0 + 4500, 0.1)))


@pytest.mark.parametrize(("offset", "price"), [
    (-1, None), (0, 0.2), (899.9, 0.2), (900, 0.3), (1799, 0.3), (1800, None), (3599, None),
    (3600, 0.1), (4499, 0.1), (4500, None),
])
def test_price_at(offset: float, price: float | None) -> None:
    assert price_at(PLAN, T0 + offset) == price


@pytest.mark.parametrize(("t0", "t1", "covered"), [
    (0, 1800, True), (100, 1700, True), (0, 1801, False), (-1, 100, False),
    (1700, 3700, False), (3600, 4500, True), (3600, 4501, False), (2000, 2000, True),
    (5000, 4000, True),
])
def test_covers(t0: float, t1: float, covered: bool) -> None:
    assert covers(PLAN, T0 + t0, T0 + t1) is covered


def test_plan_rejects_overlap_and_bad_values() -> None:
    with pytest.raises(ValueError, match="not overlap"):
        PricePlan((Slot(T0, T0 + 900, 0.2), Slot(T0 + 800, T0 + 1800, 0.3)))
    with pytest.raises(ValueError, match="finite"):
        PricePlan((Slot(T0, T0 + 900, float("nan")),))
    with pytest.raises(ValueError, match="ISO 4217"):
        PricePlan((), "€")


def test_price_text() -> None:
    assert price_text(0.2134, "EUR") == "0.21 €/kWh"
    assert price_text(-0.05, "CHF") == "-0.05 CHF/kWh"
    assert price_text(None, "EUR") == "price unknown"


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 5), st.integers(-50, 100)),
                min_size=1, max_size=20),
       st.floats(-100, 6000))
def test_price_at_matches_a_scan(parts: list[tuple[int, int, int]], t: float) -> None:
    slots, cursor = [], T0
    for gap, length, cents in parts:
        start = cursor + gap * 60
        slots.append(Slot(start, start + length * 60, cents / 100))
        cursor = start + length * 60
    plan = PricePlan(tuple(slots))
    at = T0 + t
    expected = next((s.price for s in slots if s.start <= at < s.end), None)
    assert price_at(plan, at) == expected
    for a, b in itertools.pairwise(slots):
        assert covers(plan, a.start, b.end) is (a.end == b.start)
