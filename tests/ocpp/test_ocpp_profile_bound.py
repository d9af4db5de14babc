"""SmartChargingCtrlr.Entries: the number of installed profiles is bounded (each costs composite
time on the loop); replacing an installed id is always allowed."""

from __future__ import annotations

from firmware.ocpp import smart_charging as sc
from firmware.ocpp.db import open_db
from firmware.ocpp.profile_store import ProfileStore

NOW = 1767225600.0


def request(profile_id: int, stack: int) -> dict[str, object]:
    return {"evseId": 1, "chargingProfile": {
        "id": profile_id, "stackLevel": stack, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                              "startSchedule": "2026-01-01T00:00:00Z",
                              "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}]}}


def test_profiles_beyond_the_bound_are_refused_replacements_are_not() -> None:
    store = ProfileStore(open_db(":memory:"))
    ctx = sc.ValidationContext(version="2.0.1", n_evses=1, active_transactions={},
                               max_profiles=3)
    for i in range(3):
        assert sc.set_charging_profile(request(i, i), ctx, store, NOW)["status"] == "Accepted"
    refused = sc.set_charging_profile(request(9, 5), ctx, store, NOW)
    assert refused["status"] == "Rejected"
    assert refused["statusInfo"]["reasonCode"] == "OutOfStorage"
    assert sc.set_charging_profile(request(1, 1), ctx, store, NOW)["status"] == "Accepted"
    assert len(store.all()) == 3
