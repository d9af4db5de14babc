"""SQLite store (WAL): session records, their events, and latched faults.

WAL with synchronous=FULL: a commit survives a crash and a power cut (a latched RCD trip is
often followed by someone switching the breaker off). Writes are rare: events, session start and
end, and a checkpoint of an open session every minute. A session that was still open when the
controller died is closed at the next start with the stop reason ``controller_restart``, so no
record is left dangling. Faults whose recovery is a manual reset (a welded contactor, an RCD
trip) are kept here so a reboot cannot clear them.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    connector INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,   -- the last checkpoint: when a crash ends a session, it ended then
    ended_at TEXT,
    energy_wh REAL NOT NULL DEFAULT 0,
    max_power_w REAL NOT NULL DEFAULT 0,
    wakeups INTEGER NOT NULL DEFAULT 0,
    stop_reason TEXT,
    faults TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT,
    connector INTEGER NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id);
CREATE TABLE IF NOT EXISTS latched_faults (
    connector INTEGER NOT NULL,
    code TEXT NOT NULL,
    raised_at TEXT NOT NULL,
    PRIMARY KEY (connector, code)
);
"""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    connector: int
    started_at: str
    ended_at: str | None
    energy_wh: float
    max_power_w: float
    wakeups: int
    stop_reason: str | None
    faults: tuple[str, ...]


class StoreError(Exception):
    pass


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: not a usable voltpilot database: {exc}") from exc
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {row[0]}, this voltpilot reads "
                             f"{SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    # ---- sessions ------------------------------------------------------------------------

    def open_session(self, session_id: str, connector: int, started_at: str) -> None:
        self._db.execute("INSERT INTO sessions (id, connector, started_at, updated_at) "
                         "VALUES (?, ?, ?, ?)", (session_id, connector, started_at, started_at))

    def update_session(self, session_id: str, *, at: str, energy_wh: float, max_power_w: float,
                       wakeups: int, faults: list[str]) -> None:
        self._db.execute(
            "UPDATE sessions SET updated_at=?, energy_wh=?, max_power_w=?, wakeups=?, faults=? "
            "WHERE id=?", (at, energy_wh, max_power_w, wakeups, json.dumps(faults), session_id))

    def close_session(self, session_id: str, *, ended_at: str, stop_reason: str,
                      energy_wh: float, max_power_w: float, wakeups: int,
                      faults: list[str]) -> None:
        self._db.execute(
            "UPDATE sessions SET ended_at=?, stop_reason=?, energy_wh=?, max_power_w=?, "
            "wakeups=?, faults=? WHERE id=?",
            (ended_at, stop_reason, energy_wh, max_power_w, wakeups, json.dumps(faults),
             session_id))

    def close_dangling(self, stop_reason: str) -> list[str]:
        """Close sessions left open by a controller that died, as of their last checkpoint (not
        now: the outage in between was not charging); returns their ids."""
        ids = [r[0] for r in self._db.execute("SELECT id FROM sessions WHERE ended_at IS NULL")]
        self._db.execute("UPDATE sessions SET ended_at=updated_at, stop_reason=? "
                         "WHERE ended_at IS NULL", (stop_reason,))
        return ids

    def sessions(self, limit: int = 100) -> list[SessionRecord]:
        rows = self._db.execute(
            "SELECT id, connector, started_at, ended_at, energy_wh, max_power_w, wakeups, "
            "stop_reason, faults FROM sessions ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (limit,)).fetchall()
        return [SessionRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                              tuple(json.loads(r[8]))) for r in rows]

    # ---- events --------------------------------------------------------------------------

    def add_event(self, session_id: str | None, connector: int, at: str, kind: str,
                  data: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO events (session_id, connector, at, kind, data) VALUES (?, ?, ?, ?, ?)",
            (session_id, connector, at, kind, json.dumps(data, sort_keys=True)))

    def events(self, session_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self._db.execute("SELECT at, kind, data FROM events WHERE session_id=? "
                                "ORDER BY seq", (session_id,)).fetchall()
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    # ---- latched faults ------------------------------------------------------------------

    def latch(self, connector: int, code: str, raised_at: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO latched_faults VALUES (?, ?, ?)",
                         (connector, code, raised_at))

    def unlatch(self, connector: int, codes: list[str] | None = None) -> list[str]:
        held = self.latched(connector)
        gone = held if codes is None else [c for c in held if c in codes]
        self._db.executemany("DELETE FROM latched_faults WHERE connector=? AND code=?",
                             [(connector, c) for c in gone])
        return gone

    def latched(self, connector: int) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT code FROM latched_faults WHERE connector=? ORDER BY code", (connector,))]
