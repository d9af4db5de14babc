"""DER control (OCPP 2.1 block R): storage, superseding, reports, persistence and the mapping to
grid settings. Every payload the module produces is validated against the OCPP 2.1 schemas."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.ocpp.db import open_db
from firmware.ocpp.der import (
    MAX_PER_TYPE,
    DerControls,
    DerControlType,
    EnterServiceBand,
    GridSettings,
    TripPoint,
    active_grid_settings,
    effective_controls,
    parse_datetime,
    start_stop_notifications,
)
from hal.clock import iso

SCHEMAS = Path(ocpp.__file__).parent / "v21" / "schemas"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HOUR = 3600.0


@cache
def _validator(name: str) -> Any:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def valid(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    _validator(name).validate(payload)
    return payload


CURVE_UNITS = {
    "HVMustTrip": "PctEffectiveV", "HVMomCess": "PctEffectiveV", "HVMayTrip": "PctEffectiveV",
    "LVMustTrip": "PctEffectiveV", "LVMomCess": "PctEffectiveV", "LVMayTrip": "PctEffectiveV",
    "HFMustTrip": "Not_Applicable", "HFMayTrip": "Not_Applicable",
    "LFMustTrip": "Not_Applicable",
}
CURVE_POINTS = {
    "HVMustTrip": [(0.16, 120.0), (13.0, 110.0)], "LVMustTrip": [(0.16, 45.0), (2.0, 70.0)],
    "HFMustTrip": [(0.16, 62.0), (300.0, 61.2)], "LFMustTrip": [(0.16, 57.0), (300.0, 58.5)],
}


def setting_for(control_type: str, priority: int, window: tuple[float, float] | None) -> Any:
    """(field, setting) for a valid control of `control_type`; window = (start, duration)."""
    timed: dict[str, Any] = {}
    if window is not None:
        timed = {"startTime": iso(window[0]), "duration": window[1]}
    if control_type == "EnterService":
        return "enterService", {"priority": priority, "highVoltage": 105.0, "lowVoltage": 91.7,
                                "highFreq": 50.1, "lowFreq": 49.9, "delay": 60.0,
                                "randomDelay": 30.0, "rampRate": 300.0}
    if control_type == "Gradients":
        return "gradient", {"priority": priority, "gradient": 10.0, "softGradient": 600.0}
    if control_type in ("FixedPFAbsorb", "FixedPFInject"):
        field = "fixedPFAbsorb" if control_type == "FixedPFAbsorb" else "fixedPFInject"
        return field, {"priority": priority, "displacement": 0.95,
                       "excitation": control_type == "FixedPFAbsorb", **timed}
    if control_type == "FixedVar":
        return "fixedVar", {"priority": priority, "setpoint": -20.0, "unit": "PctMaxVar", **timed}
    if control_type == "FreqDroop":
        return "freqDroop", {"priority": priority, "overFreq": 50.2, "underFreq": 49.8,
                             "overDroop": 5.0, "underDroop": 5.0, "responseTime": 2.0, **timed}
    if control_type == "LimitMaxDischarge":
        return "limitMaxDischarge", {"priority": priority, "pctMaxDischargePower": 40.0, **timed}
    unit = CURVE_UNITS.get(control_type)
    points = CURVE_POINTS.get(control_type) or {
        "PctEffectiveV": CURVE_POINTS["HVMustTrip"],
        "Not_Applicable": CURVE_POINTS["HFMustTrip"]}.get(unit or "", [(90.0, 30.0),
                                                                       (110.0, -30.0)])
    return "curve", {"priority": priority, "yUnit": CURVE_UNITS.get(control_type, "PctMaxVar"),
                     "curveData": [{"x": x, "y": y} for x, y in points], **timed}


def request(control_id: str, control_type: str, *, priority: int = 5, default: bool = True,
            window: tuple[float, float] | None = None, **override: Any) -> dict[str, Any]:
    field, setting = setting_for(control_type, priority, window)
    setting.update(override)
    return valid("SetDERControlRequest", {"isDefault": default, "controlId": control_id,
                                          "controlType": control_type, field: setting})


def scheduled(control_id: str, control_type: str, start: float, duration: float,
              priority: int = 5) -> dict[str, Any]:
    return request(control_id, control_type, priority=priority, default=False,
                   window=(start, duration))


def set_ok(der: DerControls, payload: dict[str, Any], now: float = NOW) -> dict[str, Any]:
    response = valid("SetDERControlResponse", der.set_der_control(payload, now))
    assert response["status"] == "Accepted", response
    return response


def get(der: DerControls, now: float = NOW, **query: Any) -> tuple[dict[str, Any], list[Any]]:
    response, reports = der.get_der_control(valid("GetDERControlRequest",
                                                  {"requestId": 7, **query}), now)
    valid("GetDERControlResponse", response)
    for report in reports:
        valid("ReportDERControlRequest", report)
    return response, reports


def reported(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every reported entry by id."""
    out: dict[str, dict[str, Any]] = {}
    for report in reports:
        for items in report.values():
            if isinstance(items, list):
                for item in items:
                    assert item["id"] not in out
                    out[item["id"]] = item
    return out


@pytest.fixture
def der() -> DerControls:
    return DerControls(open_db(":memory:"), capable=True)


def test_r_not_supported_without_der_capability() -> None:
    der = DerControls(open_db(":memory:"), capable=False)
    responses = [
        valid("SetDERControlResponse", der.set_der_control(request("a", "HVMustTrip"), NOW)),
        valid("ClearDERControlResponse",
              der.clear_der_control(valid("ClearDERControlRequest", {"isDefault": True}))),
    ]
    get_response, reports = get(der)
    for response in [*responses, get_response]:
        assert response["status"] == "NotSupported"
        assert response["statusInfo"]["reasonCode"] == "UnsupportedRequest"
        assert "DER" in response["statusInfo"]["additionalInfo"]
    assert reports == []
    assert der.controls() == ()


def test_r_every_control_type_is_accepted_stored_and_reported(der: DerControls) -> None:
    for control_type in DerControlType:
        set_ok(der, request(f"id-{control_type.value}", control_type.value))
    response, reports = get(der)
    assert response == {"status": "Accepted"}
    assert [r["tbc"] for r in reports] == [False]
    items = reported(reports)
    assert set(items) == {f"id-{t.value}" for t in DerControlType}
    assert items["id-VoltVar"]["curveType"] == "VoltVar"
    assert items["id-FixedPFInject"]["fixedPF"]["displacement"] == 0.95
    assert "isDefault" not in items["id-EnterService"]


def test_r_unsupported_type_on_a_partly_capable_board() -> None:
    der = DerControls(open_db(":memory:"), capable=True,
                      supported={DerControlType.HV_MUST_TRIP, DerControlType.LV_MUST_TRIP})
    response = valid("SetDERControlResponse", der.set_der_control(request("v", "VoltVar"), NOW))
    assert (response["status"], response["statusInfo"]["reasonCode"]) == (
        "NotSupported", "UnsupportedParam")
    set_ok(der, request("hv", "HVMustTrip"))


@pytest.mark.parametrize(("payload", "reason"), [
    ({"isDefault": True, "controlId": "x", "controlType": "FreqDroop"}, "MissingParam"),
    ({"isDefault": True, "controlId": "x", "controlType": "Gradients",
      "gradient": {"priority": 1, "gradient": 1, "softGradient": 1},
      "fixedVar": {"priority": 1, "setpoint": 1, "unit": "PctMaxVar"}}, "InvalidValue"),
    (request("x", "FixedVar", default=False), "MissingParam"),
    (request("x", "FixedVar", window=(NOW, HOUR)), "InvalidValue"),
    (scheduled("x", "FixedVar", NOW, 0), "InvalidValue"),
    (scheduled("x", "FixedVar", NOW - 2 * HOUR, HOUR), "InvalidValue"),
    (request("x", "FixedPFInject", displacement=1.5), "ValueOutOfRange"),
    (request("x", "FixedVar", setpoint=150.0), "ValueOutOfRange"),
    (request("x", "FreqDroop", overFreq=49.0), "InvalidValue"),
    (request("x", "EnterService", lowVoltage=110.0), "InvalidValue"),
    (request("x", "LimitMaxDischarge", pctMaxDischargePower=120.0), "ValueOutOfRange"),
    (request("x", "HVMustTrip", yUnit="PctMaxW"), "InvalidValue"),
    (request("x", "HFMustTrip", yUnit="PctEffectiveV"), "InvalidValue"),
    (request("x", "LVMustTrip", curveData=[{"x": 2.0, "y": 70.0}, {"x": 0.1, "y": 45.0}]),
     "InvalidValue"),
    (request("x", "LFMustTrip", curveData=[{"x": -1.0, "y": 57.0}]), "ValueOutOfRange"),
])
def test_r_invalid_controls_are_rejected_with_a_reason(der: DerControls, payload: dict[str, Any],
                                                       reason: str) -> None:
    response = valid("SetDERControlResponse", der.set_der_control(valid(
        "SetDERControlRequest", payload), NOW))
    assert response["status"] == "Rejected"
    assert response["statusInfo"]["reasonCode"] == reason
    assert der.controls() == ()


def test_r_defaults_supersede_by_priority_and_arrival(der: DerControls) -> None:
    assert "supersededIds" not in set_ok(der, request("a", "HVMustTrip", priority=5))
    assert set_ok(der, request("b", "HVMustTrip", priority=3))["supersededIds"] == ["a"]
    assert "supersededIds" not in set_ok(der, request("c", "HVMustTrip", priority=7))
    # Equal priority: the later control wins.
    assert set_ok(der, request("d", "HVMustTrip", priority=3))["supersededIds"] == ["a", "b", "c"]
    # Another type, or a scheduled control, does not compete with these defaults.
    assert "supersededIds" not in set_ok(der, request("e", "LVMustTrip", priority=0))
    assert "supersededIds" not in set_ok(der, scheduled("f", "HVMustTrip", NOW, HOUR, 0))
    items = reported(get(der)[1])
    assert {i: items[i]["isSuperseded"] for i in items} == {
        "a": True, "b": True, "c": True, "d": False, "e": False, "f": False}


def test_r_scheduled_controls_supersede_only_where_windows_overlap(der: DerControls) -> None:
    set_ok(der, scheduled("s1", "LimitMaxDischarge", NOW, 2 * HOUR, priority=2))
    assert set_ok(der, scheduled("s2", "LimitMaxDischarge", NOW + HOUR, 2 * HOUR,
                                 priority=1))["supersededIds"] == ["s1"]
    assert "supersededIds" not in set_ok(der, scheduled("s3", "LimitMaxDischarge",
                                                        NOW + 3 * HOUR, HOUR, priority=0))
    # s1 still governs the hour before s2 starts, and again nothing after s2.
    effective = effective_controls(der.controls(), NOW + 0.5 * HOUR)
    assert effective[DerControlType.LIMIT_MAX_DISCHARGE].control_id == "s1"
    effective = effective_controls(der.controls(), NOW + 1.5 * HOUR)
    assert effective[DerControlType.LIMIT_MAX_DISCHARGE].control_id == "s2"
    # Replacing s2 by a lower-priority version under the same id hands the overlap back to s1.
    set_ok(der, scheduled("s2", "LimitMaxDischarge", NOW + HOUR, 2 * HOUR, priority=9))
    items = reported(get(der)[1])
    assert (items["s1"]["isSuperseded"], items["s2"]["isSuperseded"]) == (False, True)


def test_r_get_filters_and_not_found(der: DerControls) -> None:
    set_ok(der, request("a", "HVMustTrip"))
    set_ok(der, scheduled("b", "HVMustTrip", NOW, HOUR))
    set_ok(der, request("c", "FreqDroop"))
    assert set(reported(get(der, controlType="HVMustTrip")[1])) == {"a", "b"}
    assert set(reported(get(der, isDefault=False)[1])) == {"b"}
    assert set(reported(get(der, controlId="c")[1])) == {"c"}
    for query in ({"controlId": "zz"}, {"controlType": "VoltVar"},
                  {"controlType": "FreqDroop", "isDefault": False}):
        response, reports = get(der, **query)
        assert (response["status"], reports) == ("NotFound", [])
    # An expired scheduled control is no longer reported.
    assert set(reported(get(der, NOW + 2 * HOUR)[1])) == {"a", "c"}


def test_r_reports_are_chunked_with_tbc(der: DerControls) -> None:
    for n in range(MAX_PER_TYPE):
        set_ok(der, request(f"hv{n:02}", "HVMustTrip", priority=n))
    for n in range(6):
        set_ok(der, scheduled(f"fv{n}", "FixedVar", NOW + n * HOUR, HOUR))
    reports = get(der)[1]
    assert [r["tbc"] for r in reports] == [True, False]
    assert all(r["requestId"] == 7 for r in reports)
    assert len(reported(reports)) == MAX_PER_TYPE + 6
    full = valid("SetDERControlResponse", der.set_der_control(request("hv99", "HVMustTrip"), NOW))
    assert (full["status"], full["statusInfo"]["reasonCode"]) == ("Rejected", "OutOfStorage")


def test_r_clear_by_id_or_by_type(der: DerControls) -> None:
    set_ok(der, request("a", "HVMustTrip"))
    set_ok(der, request("b", "HVMustTrip"))
    set_ok(der, scheduled("c", "HVMustTrip", NOW, HOUR))
    set_ok(der, request("d", "LVMustTrip"))

    def clear(**query: Any) -> str:
        payload = valid("ClearDERControlRequest", query)
        status: str = valid("ClearDERControlResponse", der.clear_der_control(payload))["status"]
        return status

    assert clear(isDefault=False, controlId="a") == "NotFound"
    assert clear(isDefault=True, controlId="a") == "Accepted"
    assert clear(isDefault=True, controlId="a") == "NotFound"
    assert clear(isDefault=True, controlType="HVMustTrip") == "Accepted"
    assert {c.control_id for c in der.controls()} == {"c", "d"}
    assert clear(isDefault=True) == "Accepted"
    assert clear(isDefault=False) == "Accepted"
    assert der.controls() == ()


def test_r_controls_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ocpp.db"
    db = open_db(path)
    der = DerControls(db, capable=True)
    set_ok(der, request("a", "LimitMaxDischarge", priority=1))
    set_ok(der, scheduled("b", "HVMustTrip", NOW + HOUR, HOUR))
    before = der.controls()
    db.close()

    db = open_db(path)
    der = DerControls(db, capable=True)
    assert der.controls() == before
    assert set(reported(get(der)[1])) == {"a", "b"}
    # Arrival order carries over: an equal-priority control set after the restart wins.
    assert set_ok(der, request("c", "LimitMaxDischarge", priority=1))["supersededIds"] == ["a"]
    db.close()


def test_r_prune_drops_ended_controls_after_their_stop_is_reported(der: DerControls) -> None:
    set_ok(der, scheduled("s", "FixedVar", NOW, HOUR))
    set_ok(der, request("d", "FixedVar"))
    stops = start_stop_notifications(der.controls(), NOW + HOUR - 1, NOW + HOUR)
    assert [(n["controlId"], n["started"]) for n in stops] == [("s", False)]
    assert der.prune(NOW + HOUR) == ("s",)
    assert [c.control_id for c in der.controls()] == ["d"]


def test_r_start_stop_notifications(der: DerControls) -> None:
    set_ok(der, scheduled("low", "LimitMaxDischarge", NOW, 3 * HOUR, priority=4))
    set_ok(der, scheduled("high", "LimitMaxDischarge", NOW + HOUR, HOUR, priority=1))
    set_ok(der, request("default", "LimitMaxDischarge"))
    notes = [valid("NotifyDERStartStopRequest", n)
             for n in start_stop_notifications(der.controls(), NOW - 1, NOW + 3 * HOUR)]
    assert [(n["controlId"], n["started"], n.get("supersededIds")) for n in notes] == [
        ("low", True, None), ("high", True, ["low"]), ("high", False, None),
        ("low", False, None)]
    assert notes[1]["timestamp"] == iso(NOW + HOUR)
    assert start_stop_notifications(der.controls(), NOW, NOW + 0.5 * HOUR) == []


@pytest.mark.parametrize("text", ["2026-01-01T00:00:00Z", "2026-01-01T02:00:00+02:00",
                                  "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.0000001Z",
                                  "2026-01-01T00:00:00"])
def test_r_start_times_parse_with_any_offset_or_fraction(text: str) -> None:
    assert parse_datetime(text) == pytest.approx(NOW, abs=1e-3)


def grid(der: DerControls, now: float) -> GridSettings:
    return active_grid_settings(der.controls(now), now, rated_discharge_w=11_000,
                                nominal_voltage_v=230)


def test_r_grid_settings_mapping(der: DerControls) -> None:
    assert grid(der, NOW) == GridSettings()
    set_ok(der, request("cap", "LimitMaxDischarge"))                      # 40 %
    set_ok(der, request("peak", "LimitMaxDischarge", priority=0, default=False,
                        window=(NOW + HOUR, HOUR), pctMaxDischargePower=10.0))
    for control_type in ("HVMustTrip", "LVMustTrip", "HFMustTrip", "LFMustTrip",
                         "EnterService", "VoltVar"):
        set_ok(der, request(control_type, control_type))

    settings = grid(der, NOW)
    assert settings.discharge_limit_w == pytest.approx(4400)
    assert [p.threshold for p in settings.over_voltage_trip] == pytest.approx([276.0, 253.0])
    assert [p.clear_time_s for p in settings.over_voltage_trip] == [0.16, 13.0]
    assert settings.under_voltage_trip[0].threshold == pytest.approx(103.5)
    assert settings.over_frequency_trip == (TripPoint(62.0, 0.16), TripPoint(61.2, 300.0))
    assert settings.under_frequency_trip == (TripPoint(57.0, 0.16), TripPoint(58.5, 300.0))
    band = settings.enter_service
    assert isinstance(band, EnterServiceBand)
    assert (band.voltage_min_v, band.voltage_max_v) == pytest.approx((210.91, 241.5))
    assert (band.frequency_min_hz, band.frequency_max_hz) == (49.9, 50.1)
    assert (band.delay_s, band.random_delay_s, band.ramp_s) == (60.0, 30.0, 300.0)
    assert settings.control_ids == ("EnterService", "HFMustTrip", "HVMustTrip", "LFMustTrip",
                                    "LVMustTrip", "cap")
    # The scheduled cap governs its window only; the default comes back after it.
    assert grid(der, NOW + 1.5 * HOUR).discharge_limit_w == pytest.approx(1100)
    assert grid(der, NOW + 2 * HOUR).discharge_limit_w == pytest.approx(4400)


def test_r_limit_max_discharge_without_a_percentage_sets_no_cap(der: DerControls) -> None:
    set_ok(der, valid("SetDERControlRequest", {
        "isDefault": True, "controlId": "m", "controlType": "LimitMaxDischarge",
        "limitMaxDischarge": {"priority": 0}}))
    assert grid(der, NOW).discharge_limit_w is None


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.booleans(),
                          st.integers(0, 3), st.integers(0, 4), st.integers(1, 3)),
                max_size=12),
       st.integers(0, 6))
def test_r_effective_control_is_never_superseded_at_its_moment(
        ops: list[tuple[str, bool, int, int, int]], probe: int) -> None:
    """Whatever sequence of controls arrives, every response and report is schema-valid, and
    the control in effect outranks every other control of its kind in its window."""
    der = DerControls(open_db(":memory:"), capable=True)
    for control_id, default, priority, start_h, hours in ops:
        payload = (request(control_id, "VoltWatt", priority=priority) if default else
                   scheduled(control_id, "VoltWatt", NOW + start_h * HOUR, hours * HOUR,
                             priority))
        valid("SetDERControlResponse", der.set_der_control(payload, NOW))
    get(der)
    now = NOW + probe * HOUR + 1
    chosen = effective_controls(der.controls(), now).get(DerControlType.VOLT_WATT)
    live = [c for c in der.controls() if c.in_window(now)]
    if chosen is None:
        assert live == []
        return
    rivals = [c for c in live
              if c.is_default == chosen.is_default and c.control_id != chosen.control_id]
    assert all(chosen.outranks(c) for c in rivals)
    assert chosen.is_default == all(c.is_default for c in live)
