"""The SQLite store on real files: records survive a restart, dangling sessions are closed,
latched faults persist until unlatched, events stay in order per session."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from firmware.store.db import SessionRecord, Store, StoreError

T0 = "2026-01-01T00:00:00.000Z"
T1 = "2026-01-01T00:10:00.000Z"
T2 = "2026-01-01T00:20:00.000Z"
T3 = "2026-01-01T00:30:00.000Z"


@contextmanager
def opened(path: Path) -> Iterator[Store]:
    store = Store(path)
    try:
        yield store
    finally:
        store.close()


def by_id(store: Store) -> dict[str, SessionRecord]:
    return {rec.id: rec for rec in store.sessions()}


def test_completed_session_survives_close_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "data" / "voltpilot.db"
    with opened(db) as store:
        store.open_session("s1", 1, T0)
        store.update_session("s1", at=T0, energy_wh=500.0, max_power_w=11000.0, wakeups=1,
                             faults=["over_current"])
        store.close_session("s1", ended_at=T1, stop_reason="ev_disconnected", energy_wh=1234.5,
                            max_power_w=11040.0, wakeups=2,
                            faults=["over_current", "meter_lost"])
    assert db.is_file()
    with opened(db) as store:
        assert store.sessions() == [SessionRecord(
            id="s1", connector=1, started_at=T0, ended_at=T1, energy_wh=1234.5,
            max_power_w=11040.0, wakeups=2, stop_reason="ev_disconnected",
            faults=("over_current", "meter_lost"))]


def test_checkpointed_open_session_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "voltpilot.db"
    with opened(db) as store:
        store.open_session("s1", 1, T0)
        store.update_session("s1", at=T1, energy_wh=42.0, max_power_w=3680.0, wakeups=1,
                             faults=[])
    with opened(db) as store:
        rec = by_id(store)["s1"]
    assert (rec.ended_at, rec.stop_reason) == (None, None)
    assert (rec.energy_wh, rec.max_power_w, rec.wakeups, rec.faults) == (42.0, 3680.0, 1, ())


def test_writes_are_committed_at_once(tmp_path: Path) -> None:
    """A controller that dies without closing its store loses nothing already written."""
    db = tmp_path / "voltpilot.db"
    writer = Store(db)
    try:
        writer.open_session("s1", 1, T0)
        writer.latch(1, "rcd_tripped", T0)
        with opened(db) as reader:
            assert [r.id for r in reader.sessions()] == ["s1"]
            assert reader.latched(1) == ["rcd_tripped"]
    finally:
        writer.close()


def test_close_dangling_closes_only_open_sessions(tmp_path: Path) -> None:
    db = tmp_path / "voltpilot.db"
    with opened(db) as store:
        store.open_session("done", 1, T0)
        store.close_session("done", ended_at=T1, stop_reason="ev_disconnected", energy_wh=10.0,
                            max_power_w=1.0, wakeups=0, faults=[])
        store.open_session("open1", 1, T1)
        store.update_session("open1", at=T2, energy_wh=77.0, max_power_w=7000.0, wakeups=1,
                             faults=["meter_lost"])
        store.open_session("open2", 2, T2)
    with opened(db) as store:
        closed = store.close_dangling("controller_restart")
        assert sorted(closed) == ["open1", "open2"]
        assert store.close_dangling("controller_restart") == []
    with opened(db) as store:
        recs = by_id(store)
    assert (recs["done"].ended_at, recs["done"].stop_reason) == (T1, "ev_disconnected")
    # They ended at their last sign of life, not when the controller came back.
    assert (recs["open1"].ended_at, recs["open1"].stop_reason) == (T2, "controller_restart")
    assert (recs["open2"].ended_at, recs["open2"].stop_reason) == (T2, "controller_restart")
    # Closing keeps what the last checkpoint recorded.
    assert (recs["open1"].energy_wh, recs["open1"].wakeups, recs["open1"].faults) == \
        (77.0, 1, ("meter_lost",))


def test_sessions_newest_first_and_limited(tmp_path: Path) -> None:
    with opened(tmp_path / "voltpilot.db") as store:
        for sid, at in (("b", T1), ("a", T0), ("c", T2)):
            store.open_session(sid, 1, at)
        assert [r.id for r in store.sessions()] == ["c", "b", "a"]
        assert [r.id for r in store.sessions(limit=2)] == ["c", "b"]


def test_latched_faults_persist_until_unlatched(tmp_path: Path) -> None:
    db = tmp_path / "voltpilot.db"
    with opened(db) as store:
        store.latch(1, "rcd_tripped", T0)
        store.latch(1, "contactor_welded", T1)
        store.latch(1, "rcd_tripped", T2)  # latching twice keeps one
        store.latch(2, "rcd_self_test_failed", T0)
    with opened(db) as store:
        assert store.latched(1) == ["contactor_welded", "rcd_tripped"]
        assert store.latched(2) == ["rcd_self_test_failed"]
        assert store.unlatch(1, ["rcd_tripped", "over_current"]) == ["rcd_tripped"]
    with opened(db) as store:
        assert store.latched(1) == ["contactor_welded"]
        assert store.unlatch(1) == ["contactor_welded"]
        assert store.unlatch(1) == []
    with opened(db) as store:
        assert store.latched(1) == []
        assert store.latched(2) == ["rcd_self_test_failed"]  # other connector untouched


def test_events_kept_per_session_in_order(tmp_path: Path) -> None:
    db = tmp_path / "voltpilot.db"
    with opened(db) as store:
        store.open_session("s1", 1, T0)
        store.open_session("s2", 2, T0)
        # Same timestamps on purpose: order is the order of writing, not of time strings.
        store.add_event("s1", 1, T1, "plugged", {})
        store.add_event("s2", 2, T1, "plugged", {"x": 1})
        store.add_event(None, 1, T1, "offer_changed", {"amps": 0.0})
        store.add_event("s1", 1, T1, "phase", {"phase": "charging", "amps": 16.0})
        store.add_event("s1", 1, T0, "fault_raised", {"fault": "rcd_tripped"})
        store.add_event("s1", 1, T2, "unplugged", {"stop": "ev_disconnected"})
    with opened(db) as store:
        assert store.events("s1") == [
            (T1, "plugged", {}),
            (T1, "phase", {"phase": "charging", "amps": 16.0}),
            (T0, "fault_raised", {"fault": "rcd_tripped"}),
            (T2, "unplugged", {"stop": "ev_disconnected"}),
        ]
        assert store.events("s2") == [(T1, "plugged", {"x": 1})]
        assert store.events("nosuch") == []


def test_file_that_is_not_sqlite_raises_store_error(tmp_path: Path) -> None:
    db = tmp_path / "voltpilot.db"
    db.write_bytes(b"this is not a database, it is a text file\n" * 100)
    with pytest.raises(StoreError) as info:
        Store(db)
    assert str(db) in str(info.value)


def test_directory_in_place_of_database_raises_store_error(tmp_path: Path) -> None:
    db = tmp_path / "voltpilot.db"
    db.mkdir()
    with pytest.raises(StoreError):
        Store(db)


def test_other_schema_version_raises_store_error(tmp_path: Path) -> None:
    db = tmp_path / "voltpilot.db"
    with opened(db) as store:
        store.open_session("s1", 1, T0)
    raw = sqlite3.connect(db)
    try:
        with raw:
            raw.execute("UPDATE meta SET value='99' WHERE key='schema'")
    finally:
        raw.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(db)
