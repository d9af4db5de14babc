"""Installed charging profiles, persisted in the OCPP store so they survive a restart.

Each row keeps the chargingProfile JSON as received, the EVSE it is on and who installed it
(CSO for the CSMS; EMS, SO or Other for profiles the station adds itself, such as a configured
offline fallback). The profiles are also held in memory, parsed, so that evaluating limits never
touches the disk; every change is written through before it is visible.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from firmware import logs
from firmware.ocpp.db import transaction
from firmware.ocpp.smart_charging import (
    ChargingProfile,
    Purpose,
    parse_profile,
)

log = logs.get("ocpp.profile_store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profile_store_profiles (
    id INTEGER PRIMARY KEY,
    evse_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    body TEXT NOT NULL
)
"""


class ProfileStore:
    """The installed profiles of one station, by profile id (ids are unique per station)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.execute(_SCHEMA)
        self._profiles: dict[int, ChargingProfile] = {}
        for pid, evse_id, source, body in self._db.execute(
                "SELECT id, evse_id, source, body FROM profile_store_profiles ORDER BY id"):
            try:
                self._profiles[pid] = parse_profile(json.loads(body), evse_id=evse_id,
                                                    source=source)
            except ValueError as exc:
                # A row this version cannot read must not stop the station from starting.
                logs.log(log, "profile_unreadable", id=pid, error=str(exc))

    def put(self, profile: ChargingProfile) -> None:
        """Install ``profile``, replacing any profile with the same id (K01.FR.05)."""
        self._db.execute(
            "INSERT OR REPLACE INTO profile_store_profiles (id, evse_id, source, body) "
            "VALUES (?, ?, ?, ?)",
            (profile.id, profile.evse_id, str(profile.source),
             json.dumps(profile.raw, separators=(",", ":"))))
        self._profiles[profile.id] = profile

    def remove(self, ids: Iterable[int]) -> list[int]:
        """Remove the profiles with these ids; the ids that were installed."""
        present = sorted({i for i in ids if i in self._profiles})
        if not present:
            return []
        with transaction(self._db):
            self._db.executemany("DELETE FROM profile_store_profiles WHERE id = ?",
                                 [(i,) for i in present])
        for i in present:
            del self._profiles[i]
        return present

    def get(self, profile_id: int) -> ChargingProfile | None:
        return self._profiles.get(profile_id)

    def all(self) -> list[ChargingProfile]:
        return list(self._profiles.values())

    def for_evse(self, evse_id: int) -> list[ChargingProfile]:
        """The profiles installed on exactly this EVSE (0: the station-wide ones)."""
        return [p for p in self._profiles.values() if p.evse_id == evse_id]

    def drop_expired(self, now: float) -> list[int]:
        """Remove the profiles whose validTo has passed."""
        removed = self.remove(p.id for p in self._profiles.values()
                              if p.valid_to is not None and p.valid_to <= now)
        if removed:
            logs.log(log, "profiles_expired", ids=removed)
        return removed

    def on_transaction_ended(self, transaction_id: str) -> list[int]:
        """Remove the TxProfiles of a transaction that has ended: a TxProfile ceases to be
        valid when its transaction ends (ChargingProfilePurposeEnumType, TxProfile)."""
        removed = self.remove(p.id for p in self._profiles.values()
                              if p.purpose is Purpose.TX
                              and p.transaction_id == transaction_id)
        if removed:
            logs.log(log, "tx_profiles_removed", transaction=transaction_id, ids=removed)
        return removed
