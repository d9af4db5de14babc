"""SetChargingProfile validation (K01), Clear/GetChargingProfiles (K10, K09),
GetCompositeSchedule (K08) as messages, and the profile store: every response and every
ReportChargingProfiles payload is checked against the OCPP 2.0.1 and 2.1 JSON schemas."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest

from firmware.ocpp.db import open_db
from firmware.ocpp.profile_store import ProfileStore
from firmware.ocpp.smart_charging import (
    BIDIRECTIONAL_MODES,
    ChargingLimitSource,
    OcppVersion,
    ProfileFormatError,
    Purpose,
    RateUnit,
    TxContext,
    ValidationContext,
    clear_charging_profile,
    get_charging_profiles,
    get_composite_schedule,
    parse_profile,
    parse_time,
    set_charging_profile,
)
from hal.clock import iso

T0 = 1767225600.0            # 2026-01-01T00:00:00Z
H = 3600
SCHEMAS = Path(ocpp.__file__).parent
VERSIONS = (OcppVersion.V201, OcppVersion.V21)


@functools.cache
def _validator(version: OcppVersion, name: str) -> jsonschema.protocols.Validator:
    folder = "v201" if version is OcppVersion.V201 else "v21"
    schema = json.loads((SCHEMAS / folder / "schemas" / f"{name}.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def check(name: str, payload: dict[str, Any], versions: tuple[OcppVersion, ...] = VERSIONS,
          ) -> None:
    for version in versions:
        _validator(version, name).validate(payload)


def raw(pid: int = 1, *, purpose: str = "TxDefaultProfile", stack: int = 0,
        kind: str = "Absolute", unit: str = "A", periods: Any = ((0, 16.0),),
        start: float | None = T0, duration: int | None = None, recurrency: str | None = None,
        valid_from: float | None = None, valid_to: float | None = None,
        tx: str | None = None) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "id": pid, "chargingRateUnit": unit,
        "chargingSchedulePeriod": [
            p if isinstance(p, dict) else {"startPeriod": p[0], "limit": p[1]}
            for p in periods]}
    if start is not None and kind != "Relative":
        schedule["startSchedule"] = iso(start)
    if duration is not None:
        schedule["duration"] = duration
    out: dict[str, Any] = {"id": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
                           "chargingProfileKind": kind, "chargingSchedule": [schedule]}
    if recurrency is not None:
        out["recurrencyKind"] = recurrency
    if valid_from is not None:
        out["validFrom"] = iso(valid_from)
    if valid_to is not None:
        out["validTo"] = iso(valid_to)
    if tx is not None:
        out["transactionId"] = tx
    return out


def period(**fields: Any) -> dict[str, Any]:
    return {"startPeriod": 0, **fields}


def edit(profile: dict[str, Any], *, schedule: dict[str, Any] | None = None,
         **fields: Any) -> dict[str, Any]:
    profile.update(fields)
    profile["chargingSchedule"][0].update(schedule or {})
    return profile


CTX = ValidationContext(version=OcppVersion.V21, n_evses=1, active_transactions={1: "tx-1"})
# what the station passes: the device model's strings
STRINGS = ValidationContext(version="2.0.1", n_evses=1, active_transactions={},
                            rate_units=frozenset({"A"}))
BIDI = replace(CTX, bidirectional=True, operation_modes=BIDIRECTIONAL_MODES)
V201 = replace(CTX, version=OcppVersion.V201)


def store_with(*installed: tuple[dict[str, Any], int, str]) -> ProfileStore:
    store = ProfileStore(open_db(":memory:"))
    for profile, evse, source in installed:
        store.put(parse_profile(profile, evse_id=evse, source=source))
    return store


def set_profile(profile: dict[str, Any], *, evse: int = 1, ctx: ValidationContext = CTX,
                store: ProfileStore | None = None) -> dict[str, Any]:
    payload = {"evseId": evse, "chargingProfile": profile}
    store = store if store is not None else store_with()
    response = set_charging_profile(payload, ctx, store, T0)
    check("SetChargingProfileResponse", response)
    return response


Installed = tuple[tuple[dict[str, Any], int, str], ...]
_DEFAULT_EVSE0 = (raw(5, stack=1), 0, "CSO")

REJECTIONS: list[tuple[str, int, Callable[[], dict[str, Any]], ValidationContext, Installed,
                       str]] = [
    ("first startPeriod not 0 (K01.FR.31)", 1, lambda: raw(periods=((10, 16.0),)), CTX, (),
     "InvalidSchedule"),
    ("startPeriods not increasing (K01.FR.35)", 1,
     lambda: raw(periods=((0, 16.0), (600, 10.0), (600, 8.0))), CTX, (), "InvalidSchedule"),
    ("TxProfile without a transaction (K01.FR.09)", 1,
     lambda: raw(purpose="TxProfile", tx="tx-1"), replace(CTX, active_transactions={}), (),
     "TxNotFound"),
    ("TxProfile of another transaction (K01.FR.33)", 1,
     lambda: raw(purpose="TxProfile", tx="tx-9"), CTX, (), "TxNotFound"),
    ("TxProfile without transactionId (K01.FR.03)", 1, lambda: raw(purpose="TxProfile"), CTX,
     (), "MissingParam"),
    ("TxProfile on EVSE 0 (K01.FR.16)", 0, lambda: raw(purpose="TxProfile", tx="tx-1"), CTX,
     (), "InvalidValue"),
    ("station maximum on an EVSE", 1, lambda: raw(purpose="ChargingStationMaxProfile"), CTX,
     (), "InvalidValue"),
    ("station maximum Relative (K01.FR.38)", 0,
     lambda: raw(purpose="ChargingStationMaxProfile", kind="Relative"), CTX, (),
     "InvalidValue"),
    ("external constraints from the CSMS (K01.FR.22)", 0,
     lambda: raw(purpose="ChargingStationExternalConstraints"), CTX, (), "InvalidValue"),
    ("same stack, purpose and EVSE, overlapping (K01.FR.06)", 1, lambda: raw(6),
     CTX, ((raw(5), 1, "CSO"),), "DuplicateProfile"),
    ("TxDefault on EVSE 0 and 1 at one stack (K01.FR.52/53)", 1, lambda: raw(6, stack=1),
     CTX, (_DEFAULT_EVSE0,), "DuplicateProfile"),
    ("TxProfile stack and transaction taken (K01.FR.39)", 1,
     lambda: raw(6, purpose="TxProfile", stack=2, tx="tx-1"), CTX,
     ((raw(5, purpose="TxProfile", stack=2, tx="tx-1"), 1, "CSO"),), "DuplicateProfile"),
    ("stackLevel above ProfileStackLevel", 1, lambda: raw(stack=9), CTX, (),
     "InvalidStackLevel"),
    ("more periods than PeriodsPerSchedule", 1,
     lambda: raw(periods=((0, 6.0), (60, 7.0), (120, 8.0))),
     replace(CTX, periods_per_schedule=2), (), "TooManyElements"),
    ("unsupported rate unit (K01.FR.26)", 1, lambda: raw(unit="W"),
     replace(CTX, rate_units=frozenset({RateUnit.A})), (), "UnsupportedRateUnit"),
    ("unsupported rate unit, units as strings", 1, lambda: raw(unit="W"), STRINGS, (),
     "UnsupportedRateUnit"),
    ("negative limit, version as a string", 1, lambda: raw(periods=((0, -10.0),)),
     replace(STRINGS, bidirectional=True), (), "ValuePositiveOnly"),
    ("Recurring without startSchedule (K01.FR.40)", 1,
     lambda: raw(kind="Recurring", recurrency="Daily", start=None), CTX, (),
     "InvalidSchedule"),
    ("Recurring without recurrencyKind", 1, lambda: raw(kind="Recurring"), CTX, (),
     "MissingParam"),
    ("Absolute without startSchedule (K01.FR.40)", 1, lambda: raw(start=None), CTX, (),
     "InvalidSchedule"),
    ("Relative with startSchedule (K01.FR.41)", 1,
     lambda: edit(raw(kind="Relative"), schedule={"startSchedule": iso(T0)}), CTX, (),
     "InvalidSchedule"),
    ("validTo before validFrom", 1, lambda: raw(valid_from=T0 + H, valid_to=T0 + 60), CTX, (),
     "InvalidValue"),
    ("validTo passed", 1, lambda: raw(valid_to=T0 - 1), CTX, (), "InvalidValue"),
    ("negative limit on a unidirectional EVSE", 1, lambda: raw(periods=((0, -10.0),)), CTX,
     (), "ValuePositiveOnly"),
    ("negative limit in 2.0.1", 1, lambda: raw(periods=((0, -10.0),)),
     replace(V201, bidirectional=True), (), "ValuePositiveOnly"),
    ("negative limit on a cap", 0,
     lambda: raw(purpose="ChargingStationMaxProfile", periods=((0, -10.0),)), BIDI, (),
     "ValuePositiveOnly"),
    ("dischargeLimit on a unidirectional EVSE", 1,
     lambda: raw(periods=(period(limit=16.0, dischargeLimit=-5.0),)), CTX, (),
     "ValuePositiveOnly"),
    ("setpoint mode on a unidirectional EVSE (K01.FR.115)", 1,
     lambda: raw(periods=(period(operationMode="CentralSetpoint", setpoint=10.0),)), CTX, (),
     "InvalidOperationMode"),
    ("frequency mode not supported (K01.FR.115)", 1,
     lambda: raw(periods=(period(limit=16.0, operationMode="CentralFrequency"),)), BIDI, (),
     "InvalidOperationMode"),
    ("PriorityCharging not ChargingOnly (K01.FR.71)", 1,
     lambda: raw(purpose="PriorityCharging",
                 periods=(period(limit=16.0, operationMode="ExternalLimits"),)), CTX, (),
     "InvalidOperationMode"),
    ("station maximum Idle (K01.FR.111)", 0,
     lambda: raw(purpose="ChargingStationMaxProfile", periods=(period(operationMode="Idle"),)),
     CTX, (), "InvalidOperationMode"),
    ("phaseToUse with three phases (K01.FR.19)", 1,
     lambda: raw(periods=(period(limit=16.0, numberPhases=3, phaseToUse=1),)),
     replace(CTX, phase_switching=True), (), "InvalidValue"),
    ("phaseToUse without phase switching (K01.FR.20)", 1,
     lambda: raw(periods=(period(limit=16.0, numberPhases=1, phaseToUse=2),)), CTX, (),
     "UnsupportedParam"),
    ("numberPhases 0 on AC", 1, lambda: raw(periods=(period(limit=16.0, numberPhases=0),)),
     CTX, (), "InvalidValue"),
    ("limit_L2 (K01.FR.144)", 1, lambda: raw(periods=(period(limit=16.0, limit_L2=10.0),)),
     CTX, (), "PhaseConflict"),
    ("reactive setpoint", 1,
     lambda: raw(periods=(period(limit=16.0, setpointReactive=100.0),)), CTX, (),
     "UnsupportedParam"),
    ("unknown EVSE (K01.FR.28)", 2, raw, CTX, (), "UnknownEvse"),
    ("2.1 purpose in 2.0.1", 1, lambda: raw(purpose="PriorityCharging"), V201, (),
     "UnsupportedPurpose"),
    ("unsupported additional purpose (K01.FR.120)", 1, lambda: raw(purpose="LocalGeneration"),
     replace(CTX, additional_purposes=frozenset()), (), "UnsupportedPurpose"),
    ("Dynamic not supported (K01.FR.121)", 1, lambda: raw(kind="Dynamic", start=None), CTX, (),
     "UnsupportedKind"),
    ("dynUpdateInterval without Dynamic (K01.FR.122)", 1,
     lambda: edit(raw(), dynUpdateInterval=60), CTX, (), "InvalidProfile"),
    ("Dynamic with two periods", 1,
     lambda: raw(kind="Dynamic", start=None, periods=((0, 16.0), (60, 8.0))),
     replace(CTX, dynamic_profiles=True), (), "InvalidSchedule"),
    ("PriorityCharging with a duration (K01.FR.70)", 1,
     lambda: raw(purpose="PriorityCharging", duration=600), CTX, (), "InvalidSchedule"),
    ("randomizedDelay not supported (K01.FR.124)", 1,
     lambda: edit(raw(), schedule={"randomizedDelay": 60}), CTX, (), "InvalidSchedule"),
    ("randomizedDelay on a cap (K01.FR.95)", 0,
     lambda: edit(raw(purpose="ChargingStationMaxProfile"), schedule={"randomizedDelay": 60}),
     CTX, (), "InvalidSchedule"),
    ("useLocalTime not supported (K01.FR.123)", 1,
     lambda: edit(raw(), schedule={"useLocalTime": True}), CTX, (), "InvalidSchedule"),
    ("limitAtSoC not supported (K01.FR.125)", 1,
     lambda: edit(raw(), schedule={"limitAtSoC": {"soc": 80, "limit": 6.0}}), CTX, (),
     "InvalidSchedule"),
    ("evseSleep while charging (K01.FR.126)", 1,
     lambda: raw(periods=(period(limit=16.0, evseSleep=True),)), CTX, (), "InvalidSchedule"),
    ("transactionId on a TxDefaultProfile", 1, lambda: raw(tx="tx-1"), CTX, (),
     "InvalidValue"),
    ("id reserved for external constraints (K01.FR.81)", 1, lambda: raw(50),
     replace(CTX, max_external_constraints_id=100), (), "InvalidProfileId"),
    ("id of external constraints (K01.FR.05)", 1, lambda: raw(7), CTX,
     ((raw(7, purpose="ChargingStationExternalConstraints"), 0, "EMS"),), "DuplicateProfile"),
    ("phaseToUse conflicting with another profile (K01.FR.141)", 1,
     lambda: raw(6, stack=2, periods=(period(limit=16.0, numberPhases=1, phaseToUse=3),)),
     replace(CTX, phase_switching=True),
     ((raw(5, periods=(period(limit=16.0, numberPhases=1, phaseToUse=1),)), 0, "CSO"),),
     "PhaseConflict"),
    ("ChargingOnly without limit", 1, lambda: raw(periods=(period(),)), CTX, (),
     "MissingParam"),
    ("CentralSetpoint without setpoint", 1,
     lambda: raw(periods=(period(limit=16.0, operationMode="CentralSetpoint"),)), BIDI, (),
     "MissingParam"),
    ("unreadable dateTime", 1, lambda: edit(raw(), validFrom="yesterday"), CTX, (),
     "InvalidValue"),
]


@pytest.mark.parametrize(("evse", "make", "ctx", "installed", "reason"),
                         [case[1:] for case in REJECTIONS], ids=[case[0] for case in REJECTIONS])
def test_set_charging_profile_rejects(evse: int, make: Callable[[], dict[str, Any]],
                                      ctx: ValidationContext, installed: Installed,
                                      reason: str) -> None:
    profile = make()
    if ctx.version == OcppVersion.V21 or profile["chargingProfilePurpose"] not in (
            "PriorityCharging", "LocalGeneration"):
        check("SetChargingProfileRequest", {"evseId": evse, "chargingProfile": profile},
              (OcppVersion(ctx.version),))
    store = store_with(*installed)
    before = store.all()
    response = set_profile(profile, evse=evse, ctx=ctx, store=store)
    assert response["status"] == "Rejected"
    assert response["statusInfo"]["reasonCode"] == reason, response
    assert store.all() == before


ACCEPTED: list[tuple[str, int, Callable[[], dict[str, Any]], ValidationContext, Installed]] = [
    ("TxDefaultProfile", 1, raw, CTX, ()),
    ("same id replaces (K01.FR.05)", 1, lambda: raw(5, periods=((0, 8.0),)), CTX,
     ((raw(5), 1, "CSO"),)),
    ("same stack, validity apart", 1, lambda: raw(6, valid_from=T0 + H, valid_to=T0 + 2 * H),
     CTX, ((raw(5, valid_from=T0, valid_to=T0 + H), 1, "CSO"),)),
    ("TxProfile of the running transaction", 1, lambda: raw(purpose="TxProfile", tx="tx-1"),
     CTX, ()),
    ("station maximum in W", 0, lambda: raw(purpose="ChargingStationMaxProfile", unit="W"),
     V201, ()),
    ("version and units as strings", 0, lambda: raw(purpose="ChargingStationMaxProfile"),
     STRINGS, ()),
    ("Recurring weekly", 1,
     lambda: raw(kind="Recurring", recurrency="Weekly", periods=((0, 6.0), (H, 16.0))), V201,
     ()),
    ("Relative", 1, lambda: raw(kind="Relative", periods=((0, 6.0), (H, 16.0))), CTX, ()),
    ("discharge on a bidirectional EVSE", 1,
     lambda: raw(purpose="TxProfile", tx="tx-1", unit="W", periods=(
         period(limit=7000.0, operationMode="CentralSetpoint", setpoint=-3000.0,
                dischargeLimit=-5000.0),)), BIDI, ()),
    ("legacy negative limit on a bidirectional EVSE", 1, lambda: raw(periods=((0, -10.0),)),
     BIDI, ()),
    ("more numberPhases than the board has (K01.FR.45)", 1,
     lambda: raw(periods=(period(limit=16.0, numberPhases=3),)), replace(CTX, phases=1), ()),
    ("phaseToUse with phase switching", 1,
     lambda: raw(periods=(period(limit=16.0, numberPhases=1, phaseToUse=2),)),
     replace(CTX, phase_switching=True), ()),
    ("Dynamic when supported", 1, lambda: raw(kind="Dynamic", start=None),
     replace(CTX, dynamic_profiles=True), ()),
    ("LocalGeneration from the CSMS", 0, lambda: raw(purpose="LocalGeneration", unit="W"), CTX,
     ()),
    ("Idle", 1, lambda: raw(periods=(period(operationMode="Idle", evseSleep=True),)), CTX, ()),
]


@pytest.mark.parametrize(("evse", "make", "ctx", "installed"),
                         [case[1:] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_set_charging_profile_accepts(evse: int, make: Callable[[], dict[str, Any]],
                                      ctx: ValidationContext, installed: Installed) -> None:
    profile = make()
    check("SetChargingProfileRequest", {"evseId": evse, "chargingProfile": profile},
          (OcppVersion(ctx.version),))
    store = store_with(*installed)
    assert set_profile(profile, evse=evse, ctx=ctx, store=store) == {"status": "Accepted"}
    stored = store.get(profile["id"])
    assert stored is not None and stored.raw == profile and stored.evse_id == evse
    assert stored.source == "CSO"
    assert len(store.all()) == len({p[0]["id"] for p in installed} | {profile["id"]})


def test_parse_time_reads_what_peers_send() -> None:
    for text in ("2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00",
                 "2026-01-01T00:00:00.000000000Z", "2025-12-31T19:00:00.000-05:00"):
        assert parse_time(text) == T0, text
    assert parse_time("2026-01-01T00:00:00.25Z") == T0 + 0.25
    with pytest.raises(ProfileFormatError):
        parse_time("1 January")


# ---- ClearChargingProfile (K10) -------------------------------------------------------------


def _installed() -> ProfileStore:
    return store_with(
        (raw(1, stack=0), 1, "CSO"),
        (raw(2, stack=1), 1, "CSO"),
        (raw(3, stack=0, purpose="ChargingStationMaxProfile"), 0, "CSO"),
        (raw(4, stack=2), 0, "CSO"),
        (raw(-5, purpose="ChargingStationExternalConstraints"), 0, "EMS"),
        (raw(6, stack=7), 1, "Other"),      # the station's own offline fallback
        (raw(8, purpose="LocalGeneration", unit="W"), 0, "CSO"),
    )


@pytest.mark.parametrize(("request_", "status", "left"), [
    ({"chargingProfileId": 2}, "Accepted", [-5, 1, 3, 4, 6, 8]),
    ({"chargingProfileId": 99}, "Unknown", [-5, 1, 2, 3, 4, 6, 8]),
    ({"chargingProfileId": -5}, "Unknown", [-5, 1, 2, 3, 4, 6, 8]),
    ({"chargingProfileId": 6}, "Unknown", [-5, 1, 2, 3, 4, 6, 8]),
    ({"chargingProfileCriteria": {"evseId": 1}}, "Accepted", [-5, 3, 4, 6, 8]),
    ({"chargingProfileCriteria": {"chargingProfilePurpose": "TxDefaultProfile",
                                  "stackLevel": 0}}, "Accepted", [-5, 2, 3, 4, 6, 8]),
    ({"chargingProfileCriteria": {"evseId": 0, "stackLevel": 0}}, "Accepted",
     [-5, 1, 2, 4, 6, 8]),
    ({"chargingProfileCriteria": {"stackLevel": 5}}, "Unknown", [-5, 1, 2, 3, 4, 6, 8]),
    ({"chargingProfileCriteria": {"chargingProfilePurpose":
                                  "ChargingStationExternalConstraints"}}, "Unknown",
     [-5, 1, 2, 3, 4, 6, 8]),
    ({"chargingProfileCriteria": {"chargingProfilePurpose": "LocalGeneration"}}, "Unknown",
     [-5, 1, 2, 3, 4, 6, 8]),
    ({}, "Accepted", [-5, 6, 8]),
])
def test_clear_charging_profile(request_: dict[str, Any], status: str, left: list[int]) -> None:
    versions = VERSIONS if "LocalGeneration" not in json.dumps(request_) else (
        OcppVersion.V21,)
    check("ClearChargingProfileRequest", request_, versions)
    store = _installed()
    response = clear_charging_profile(request_, store)
    check("ClearChargingProfileResponse", response)
    assert response["status"] == status
    assert sorted(p.id for p in store.all()) == left


# ---- GetChargingProfiles (K09) --------------------------------------------------------------


def _report_ids(reports: list[dict[str, Any]]) -> list[tuple[int, str, list[int], bool]]:
    return [(r["evseId"], r["chargingLimitSource"], [p["id"] for p in r["chargingProfile"]],
             r["tbc"]) for r in reports]


@pytest.mark.parametrize(("request_", "expected"), [
    ({"requestId": 7, "chargingProfile": {}},
     [(0, "CSO", [3, 4, 8], True), (0, "EMS", [-5], True), (1, "CSO", [1, 2], True),
      (1, "Other", [6], False)]),
    ({"requestId": 7, "evseId": 1, "chargingProfile": {"chargingProfilePurpose":
                                                       "TxDefaultProfile"}},
     [(1, "CSO", [1, 2], True), (1, "Other", [6], False)]),
    ({"requestId": 7, "chargingProfile": {"chargingProfileId": [2, 3, 77]}},
     [(0, "CSO", [3], True), (1, "CSO", [2], False)]),
    ({"requestId": 7, "chargingProfile": {"chargingLimitSource": ["EMS", "Other"]}},
     [(0, "EMS", [-5], True), (1, "Other", [6], False)]),
    ({"requestId": 7, "chargingProfile": {"stackLevel": 0, "chargingLimitSource": ["CSO"]}},
     [(0, "CSO", [3, 8], True), (1, "CSO", [1], False)]),
    ({"requestId": 7, "evseId": 0, "chargingProfile": {"chargingProfilePurpose": "TxProfile"}},
     []),
])
def test_get_charging_profiles(request_: dict[str, Any],
                               expected: list[tuple[int, str, list[int], bool]]) -> None:
    check("GetChargingProfilesRequest", request_)
    response, reports = get_charging_profiles(request_, _installed(), version=OcppVersion.V21)
    check("GetChargingProfilesResponse", response)
    assert response["status"] == ("Accepted" if expected else "NoProfiles")
    assert _report_ids(reports) == expected
    for report in reports:
        assert report["requestId"] == 7
        check("ReportChargingProfilesRequest", report, (OcppVersion.V21,))


def test_reports_in_201_leave_out_what_201_cannot_say() -> None:
    store = _installed()
    store.put(parse_profile(raw(9, stack=3, periods=(period(limit=16.0,
                                                            operationMode="ExternalLimits"),)),
                            evse_id=1))
    store.put(parse_profile(raw(10, stack=4, periods=(period(operationMode="Idle"),)),
                            evse_id=1))
    store.put(parse_profile(raw(11, stack=5), evse_id=1, source="Grid operator"))
    response, reports = get_charging_profiles({"requestId": 1, "chargingProfile": {}}, store,
                                              version=OcppVersion.V201)
    assert response == {"status": "Accepted"}
    for report in reports:
        check("ReportChargingProfilesRequest", report, (OcppVersion.V201,))
    assert _report_ids(reports) == [
        (0, "CSO", [3, 4], True), (0, "EMS", [-5], True), (1, "CSO", [1, 2, 9], True),
        (1, "Other", [6, 11], False)]
    (nine,) = [p for r in reports for p in r["chargingProfile"] if p["id"] == 9]
    assert nine["chargingSchedule"][0]["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 16.0}]


# ---- GetCompositeSchedule (K08) -------------------------------------------------------------


def _composite(request_: dict[str, Any], store: ProfileStore, *,
               units: tuple[str, ...] = ("A", "W"), tx: TxContext | None = None,
               version: OcppVersion | None = None) -> dict[str, Any]:
    check("GetCompositeScheduleRequest", request_)
    response = get_composite_schedule(request_, store=store, now=T0 + 0.7, tx=tx, phases=3,
                                      voltage_v=230.0, n_evses=1, units=units, rating_a=32.0,
                                      version=version)
    check("GetCompositeScheduleResponse", response,
          VERSIONS if version is not OcppVersion.V21 else (OcppVersion.V21,))
    return response


def test_get_composite_schedule_reports_the_schedule() -> None:
    store = store_with((raw(1, periods=((0, 16.0), (H, 10.0))), 1, "CSO"),
                       (raw(2, purpose="TxProfile", tx="tx-1", start=T0 + 2 * H, duration=H,
                            periods=((0, 20.0),)), 1, "CSO"),
                       (raw(3, purpose="ChargingStationMaxProfile", valid_from=T0 + 4 * H,
                            periods=((0, 8.0),)), 0, "CSO"))
    tx = TxContext(transaction_id="tx-1", started_at=T0)
    response = _composite({"evseId": 1, "duration": 6 * H, "chargingRateUnit": "W"}, store,
                          tx=tx)
    assert response["status"] == "Accepted"
    assert response["schedule"] == {
        "evseId": 1, "duration": 6 * H, "scheduleStart": "2026-01-01T00:00:00.000Z",
        "chargingRateUnit": "W", "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 11040.0, "numberPhases": 3},
            {"startPeriod": H, "limit": 6900.0, "numberPhases": 3},
            {"startPeriod": 2 * H, "limit": 13800.0, "numberPhases": 3},
            {"startPeriod": 3 * H, "limit": 6900.0, "numberPhases": 3},
            {"startPeriod": 4 * H, "limit": 5520.0, "numberPhases": 3}]}
    # EVSE 0 of a one-EVSE station is that EVSE; without a unit, amps
    station = _composite({"evseId": 0, "duration": H}, store, tx=tx)
    assert station["schedule"]["evseId"] == 0
    assert station["schedule"]["chargingRateUnit"] == "A"
    assert station["schedule"]["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 16.0, "numberPhases": 3}]


def test_get_composite_schedule_without_profiles_reports_the_rating() -> None:
    response = _composite({"evseId": 1, "duration": 300}, store_with(),
                          version=OcppVersion.V21)
    assert response["schedule"]["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 32.0, "numberPhases": 3}]


@pytest.mark.parametrize(("request_", "units", "reason"), [
    ({"evseId": 2, "duration": 60}, ("A", "W"), "UnknownEvse"),
    ({"evseId": 1, "duration": 60, "chargingRateUnit": "W"}, ("A",), "UnsupportedRateUnit"),
])
def test_get_composite_schedule_rejects(request_: dict[str, Any], units: tuple[str, ...],
                                        reason: str) -> None:
    response = _composite(request_, store_with(), units=units)
    assert response["status"] == "Rejected"
    assert response["statusInfo"]["reasonCode"] == reason


# ---- the store ------------------------------------------------------------------------------


def test_profiles_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ocpp.sqlite"
    store = ProfileStore(open_db(path))
    set_charging_profile({"evseId": 1, "chargingProfile": raw(1, valid_to=T0 + H)}, CTX,
                         store, T0)
    store.put(parse_profile(raw(-2, purpose="ChargingStationExternalConstraints"), evse_id=0,
                            source=ChargingLimitSource.EMS))
    store.put(parse_profile(raw(3, purpose="TxProfile", tx="tx-1"), evse_id=1))
    again = ProfileStore(open_db(path))
    assert {p.id: (p.evse_id, p.source, p.purpose) for p in again.all()} == {
        1: (1, "CSO", Purpose.TX_DEFAULT), -2: (0, "EMS", Purpose.EXTERNAL),
        3: (1, "CSO", Purpose.TX)}
    before, after = store.get(1), again.get(1)
    assert before is not None and after is not None
    assert after == before and after.raw == before.raw
    assert [p.id for p in again.for_evse(0)] == [-2]
    assert again.drop_expired(T0 + H - 1) == []
    assert again.drop_expired(T0 + H) == [1]
    assert again.on_transaction_ended("tx-2") == []
    assert again.on_transaction_ended("tx-1") == [3]
    assert [p.id for p in ProfileStore(open_db(path)).all()] == [-2]


def test_an_unreadable_row_does_not_stop_the_station(tmp_path: Path) -> None:
    path = tmp_path / "ocpp.sqlite"
    store = ProfileStore(open_db(path))
    store.put(parse_profile(raw(1), evse_id=1))
    db = open_db(path)
    db.execute("INSERT INTO profile_store_profiles VALUES (2, 1, 'CSO', '{\"id\": 2}')")
    assert [p.id for p in ProfileStore(open_db(path)).all()] == [1]
