"""The OCPP device model: Get/SetVariables statuses, persistence, RebootRequired, reports and
their chunking, every produced payload checked against the OCPP 2.0.1 and 2.1 schemas."""

from __future__ import annotations

import io
import itertools
import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import logs
from firmware.ocpp.db import open_db
from firmware.ocpp.device_model import (
    Attribute,
    CallErrorCode,
    Change,
    ChangeSource,
    DataType,
    Declaration,
    DeviceModel,
    Mutability,
    ReportBase,
    RequestTooLargeError,
    UndeclaredVariableError,
    UnsetVariableError,
    VarKey,
    never_lower,
    normalize,
)
from firmware.ocpp.device_model_vars import declarations, station_overrides, var

SCHEMAS = Path(ocpp.__file__).parent
PASSWORD = "s3cret-Passw0rd-xyz"


@cache
def validator(version: str, message: str) -> jsonschema.Draft6Validator:
    schema = json.loads((SCHEMAS / version / "schemas" / f"{message}.json").read_text())
    return jsonschema.Draft6Validator(schema, format_checker=jsonschema.FormatChecker())


def check(message: str, payload: Mapping[str, Any]) -> None:
    """Valid against the schema of both OCPP 2.0.1 and OCPP 2.1."""
    for version in ("v201", "v21"):
        validator(version, message).validate(payload)


def overrides() -> dict[VarKey, str | Mapping[Attribute, str]]:
    return station_overrides(identity="CP-0001", vendor="Acme", model="Wallbox 11",
                             serial="SN-42", phases=3, max_power_w=11040.0, tethered=False)


def make(db: sqlite3.Connection | None = None, decls: tuple[Declaration, ...] | None = None,
         extra: Mapping[VarKey, str | Mapping[Attribute, str]] | None = None) -> DeviceModel:
    given_overrides = overrides() if decls is None else {}
    given_overrides.update(extra or {})
    return DeviceModel(db if db is not None else open_db(":memory:"),
                       declarations() if decls is None else decls, given_overrides)


def cv(component: str, variable: str, *, instance: str | None = None, evse: int | None = None,
       connector: int | None = None, var_instance: str | None = None) -> dict[str, Any]:
    comp: dict[str, Any] = {"name": component}
    if instance is not None:
        comp["instance"] = instance
    if evse is not None:
        comp["evse"] = {"id": evse} | ({} if connector is None else {"connectorId": connector})
    variable_dict: dict[str, Any] = {"name": variable}
    if var_instance is not None:
        variable_dict["instance"] = var_instance
    return {"component": comp, "variable": variable_dict}


def get(dm: DeviceModel, *items: dict[str, Any]) -> list[dict[str, Any]]:
    request = {"getVariableData": list(items)}
    check("GetVariablesRequest", request)
    response = dm.get_variables(request)
    check("GetVariablesResponse", response)
    results: list[dict[str, Any]] = response["getVariableResult"]
    assert len(results) == len(items)  # B06.FR.01
    return results


def set_(dm: DeviceModel, *items: tuple[dict[str, Any], str] | tuple[dict[str, Any], str, str],
         ) -> tuple[list[dict[str, Any]], list[Change]]:
    data = []
    for item in items:
        entry = {**item[0], "attributeValue": item[1]}
        if len(item) == 3:
            entry["attributeType"] = item[2]
        data.append(entry)
    request = {"setVariableData": data}
    check("SetVariablesRequest", request)
    response, changes = dm.set_variables(request)
    check("SetVariablesResponse", response)
    results: list[dict[str, Any]] = response["setVariableResult"]
    assert len(results) == len(items)  # B05.FR.01
    return results, changes


HEARTBEAT = cv("OCPPCommCtrlr", "HeartbeatInterval")
PASSWORD_VAR = cv("SecurityCtrlr", "BasicAuthPassword")
PROFILE = cv("SecurityCtrlr", "SecurityProfile")

REQUIRED = [
    ("OCPPCommCtrlr", name, None) for name in (
        "ActiveNetworkProfile", "FileTransferProtocols", "HeartbeatInterval",
        "NetworkConfigurationPriority", "NetworkProfileConnectionAttempts", "OfflineThreshold",
        "QueueAllMessages", "UnlockOnEVSideDisconnect", "ResetRetries",
        "RetryBackOffRandomRange", "RetryBackOffRepeatTimes", "RetryBackOffWaitMinimum",
        "WebSocketPingInterval")
] + [
    ("OCPPCommCtrlr", "MessageTimeout", "Default"),
    ("OCPPCommCtrlr", "MessageAttempts", "TransactionEvent"),
    ("OCPPCommCtrlr", "MessageAttemptInterval", "TransactionEvent"),
    ("SmartChargingCtrlr", "Entries", "ChargingProfiles"),
] + [("SecurityCtrlr", name, None) for name in (
    "BasicAuthPassword", "Identity", "OrganizationName", "CertificateEntries", "SecurityProfile",
    "MaxCertificateChainSize", "CertSigningWaitMinimum", "CertSigningRepeatTimes")
] + [("AuthCtrlr", name, None) for name in (
    "Enabled", "AuthorizeRemoteStart", "LocalAuthorizeOffline", "LocalPreAuthorize",
    "OfflineTxForUnknownIdEnabled", "DisableRemoteAuthorization")
] + [("AuthCacheCtrlr", name, None) for name in (
    "Enabled", "Available", "LifeTime", "Storage", "Policy", "DisablePostAuthorize")
] + [("LocalAuthListCtrlr", name, None) for name in (
    "Enabled", "Entries", "Available", "ItemsPerMessage", "BytesPerMessage", "Storage",
    "DisablePostAuthorize")
] + [("TxCtrlr", name, None) for name in (
    "EVConnectionTimeOut", "StopTxOnEVSideDisconnect", "StopTxOnInvalidId",
    "MaxEnergyOnInvalidId", "TxStartPoint", "TxStopPoint")
] + [("SampledDataCtrlr", name, None) for name in (
    "Enabled", "TxEndedMeasurands", "TxEndedInterval", "TxStartedMeasurands",
    "TxUpdatedMeasurands", "TxUpdatedInterval")
] + [("AlignedDataCtrlr", name, None) for name in (
    "Enabled", "Measurands", "Interval", "SendDuringIdle", "TxEndedMeasurands", "TxEndedInterval")
] + [("SmartChargingCtrlr", name, None) for name in (
    "Enabled", "Available", "ACPhaseSwitchingSupported", "ProfileStackLevel", "RateUnit",
    "PeriodsPerSchedule", "ExternalControlSignalsEnabled", "NotifyChargingLimitWithSchedules",
    "Phases3to1", "LimitChangeSignificance")
] + [("DeviceDataCtrlr", name, message) for name in ("BytesPerMessage", "ItemsPerMessage")
     for message in ("GetReport", "GetVariables", "SetVariables")
] + [("DeviceDataCtrlr", name, None) for name in (
    "ConfigurationValueSize", "ReportingValueSize", "ValueSize")
] + [("ClockCtrlr", "DateTime", None), ("ClockCtrlr", "TimeSource", None)] + [
    ("ChargingStation", name, None) for name in ("AvailabilityState", "Available",
                                                 "SupplyPhases")]


def test_every_required_variable_is_declared_once_with_a_valid_default() -> None:
    decls = declarations()
    keys = {(d.key.component, d.key.variable, d.key.variable_instance) for d in decls}
    assert [r for r in REQUIRED if r not in keys] == []
    for evse_var in ("AvailabilityState", "Available", "Power", "SupplyPhases"):
        assert any(d.key == VarKey("EVSE", evse_var, evse=1) for d in decls)
    for connector_var in ("AvailabilityState", "Available", "ConnectorType", "SupplyPhases"):
        assert any(d.key == VarKey("Connector", connector_var, evse=1, connector=1)
                   for d in decls)
    for decl in decls:
        if decl.default is not None:
            assert normalize(decl, decl.default) == decl.default, decl.key
    with pytest.raises(ValueError, match="declared twice"):
        make(decls=(*declarations(), declarations()[0]))


def test_declaration_rules_are_enforced() -> None:
    with pytest.raises(ValueError, match="secret"):
        var("X", "Y", DataType.STRING, Mutability.READ_WRITE, None, secret=True)
    with pytest.raises(ValueError, match="values_list"):
        var("X", "Y", DataType.OPTION_LIST, Mutability.READ_WRITE, None)
    with pytest.raises(ValueError, match="reboot_required"):
        var("X", "Y", DataType.INTEGER, Mutability.READ_ONLY, "1", reboot=True)
    with pytest.raises(ValueError, match="constant"):
        var("X", "Y", DataType.INTEGER, Mutability.READ_WRITE, "1", constant=True)
    with pytest.raises(ValueError, match="connector id"):
        VarKey("Connector", "Y", connector=1)
    with pytest.raises(ValueError, match="override"):
        make(extra={VarKey("NoSuchCtrlr", "X"): "1"})
    with pytest.raises(ValueError, match="not an integer"):
        make(extra={VarKey("OCPPCommCtrlr", "HeartbeatInterval"): "soon"})


def test_get_variables_answers_each_status() -> None:
    dm = make()
    results = get(
        dm,
        HEARTBEAT,
        PASSWORD_VAR,
        cv("NoSuchCtrlr", "HeartbeatInterval"),
        cv("OCPPCommCtrlr", "NoSuchVariable"),
        {**HEARTBEAT, "attributeType": "Target"},
        cv("OCPPCommCtrlr", "MessageAttempts"),
        cv("OCPPCommCtrlr", "MessageAttempts", var_instance="transactionevent"),
        cv("ocppcommctrlr", "HEARTBEATINTERVAL"),
        cv("EVSE", "Power"),
        {**cv("EVSE", "Power", evse=1), "attributeType": "MaxSet"},
        cv("Connector", "ConnectorType", evse=1, connector=1),
        cv("Connector", "ConnectorType", evse=1, connector=2),
    )
    statuses = [r["attributeStatus"] for r in results]
    assert statuses == ["Accepted", "Rejected", "UnknownComponent", "UnknownVariable",
                        "NotSupportedAttributeType", "UnknownVariable", "Accepted", "Accepted",
                        "UnknownComponent", "Accepted", "Accepted", "UnknownComponent"]
    assert results[0]["attributeValue"] == "300"
    assert results[0]["attributeType"] == "Actual"  # B06.FR.11
    assert "attributeValue" not in results[1]  # B06.FR.09: WriteOnly
    assert results[1]["attributeStatusInfo"]["reasonCode"] == "WriteOnly"
    assert all("attributeValue" not in r for r in results[2:6])
    assert results[4]["attributeType"] == "Target"  # B06.FR.03
    assert results[6]["attributeValue"] == "3"
    assert results[7]["component"] == {"name": "ocppcommctrlr"}  # echoed as asked
    assert results[9]["attributeValue"] == "11040.0"
    assert results[10]["attributeValue"] == "sType2"


def test_get_variables_returns_empty_for_a_supported_attribute_without_value() -> None:
    dm = make(decls=(var("EVSE", "Power", DataType.DECIMAL, Mutability.READ_ONLY, "0", evse=1,
                         extra=(Attribute.MAX_SET,)),))
    result = get(dm, {**cv("EVSE", "Power", evse=1), "attributeType": "MaxSet"})[0]
    assert result["attributeStatus"] == "Accepted"  # B06.FR.13
    assert result["attributeValue"] == ""


def test_set_variables_answers_each_status_and_persists_before_returning() -> None:
    db = open_db(":memory:")
    dm = make(db)
    results, changes = set_(
        dm,
        (HEARTBEAT, "600"),
        (cv("NoSuchCtrlr", "HeartbeatInterval"), "1"),
        (cv("OCPPCommCtrlr", "NoSuchVariable"), "1"),
        (HEARTBEAT, "60", "MaxSet"),
        (cv("DeviceDataCtrlr", "ItemsPerMessage", var_instance="GetVariables"), "5"),
        (HEARTBEAT, "often"),
        (PROFILE, "2"),
        (PASSWORD_VAR, PASSWORD),
    )
    assert [r["attributeStatus"] for r in results] == [
        "Accepted", "UnknownComponent", "UnknownVariable", "NotSupportedAttributeType",
        "Rejected", "Rejected", "RebootRequired", "Accepted"]
    assert [r["attributeType"] for r in results] == [
        "Actual", "Actual", "Actual", "MaxSet", "Actual", "Actual", "Actual", "Actual"]
    assert results[4]["attributeStatusInfo"]["reasonCode"] == "ReadOnly"
    assert results[5]["attributeStatusInfo"]["reasonCode"] == "InvalidValue"
    assert [(c.key.variable, c.old, c.new, c.pending, c.source) for c in changes] == [
        ("HeartbeatInterval", "300", "600", False, ChangeSource.CSMS),
        ("SecurityProfile", "1", "2", True, ChangeSource.CSMS),
        ("BasicAuthPassword", None, PASSWORD, False, ChangeSource.CSMS)]
    assert dm.get_int("OCPPCommCtrlr", "HeartbeatInterval") == 600
    assert dm.get_str("SecurityCtrlr", "BasicAuthPassword") == PASSWORD
    stored = dict(db.execute("SELECT var, value FROM device_model_value").fetchall())
    assert sorted(stored.values()) == sorted(["600", PASSWORD])


@pytest.mark.parametrize(("item", "value", "reason"), [
    (HEARTBEAT, "0", "ValueZeroNotAllowed"),
    (HEARTBEAT, "-5", "ValuePositiveOnly"),
    (HEARTBEAT, "86401", "ValueOutOfRange"),
    (HEARTBEAT, "1.5", "InvalidValue"),
    (HEARTBEAT, "", "InvalidValue"),
    (HEARTBEAT, "1_000", "InvalidValue"),
    (cv("SmartChargingCtrlr", "LimitChangeSignificance"), "nan", "InvalidValue"),
    (cv("SmartChargingCtrlr", "LimitChangeSignificance"), "1e400", "InvalidValue"),
    (cv("SmartChargingCtrlr", "LimitChangeSignificance"), "100.5", "ValueOutOfRange"),
    (cv("AuthCtrlr", "Enabled"), "yes", "InvalidValue"),
    (cv("TxCtrlr", "TxStartPoint"), "", "InvalidValue"),
    (cv("TxCtrlr", "TxStartPoint"), "ParkingBayOccupancy", "InvalidValue"),
    (cv("TxCtrlr", "TxStopPoint"), "EVConnected,EVConnected", "InvalidValue"),
    (cv("OCPPCommCtrlr", "NetworkConfigurationPriority"), "1,4", "InvalidValue"),
    (cv("ClockCtrlr", "TimeSource"), "GPS", "InvalidValue"),
    (cv("SecurityCtrlr", "OrganizationName"), "x" * 65, "TooLargeElement"),
    (cv("SecurityCtrlr", "OrganizationName"), "x" * 1000, "TooLargeElement"),
    (PASSWORD_VAR, "short", "InvalidValue"),
])
def test_set_variables_rejects_invalid_values_and_keeps_the_old_one(
        item: dict[str, Any], value: str, reason: str) -> None:
    dm = make()
    before = get(dm, item)[0]
    result = set_(dm, (item, value))[0][0]
    assert result["attributeStatus"] == "Rejected"
    assert result["attributeStatusInfo"]["reasonCode"] == reason
    assert get(dm, item)[0] == before


def test_values_are_stored_in_their_canonical_spelling() -> None:
    dm = make()
    results, _ = set_(dm, (cv("AuthCtrlr", "Enabled"), "FALSE"),
                      (cv("TxCtrlr", "TxStopPoint"), " evconnected , EnergyTransfer"),
                      (cv("SampledDataCtrlr", "TxEndedMeasurands"), ""))
    assert {r["attributeStatus"] for r in results} == {"Accepted"}
    assert dm.get_bool("AuthCtrlr", "Enabled") is False
    assert dm.get_str("TxCtrlr", "TxStopPoint") == "EVConnected,EnergyTransfer"
    assert dm.get_list("TxCtrlr", "TxStopPoint") == ["EVConnected", "EnergyTransfer"]
    assert dm.get_list("SampledDataCtrlr", "TxEndedMeasurands") == []


def test_configuration_value_size_limits_set_values() -> None:
    dm = make(extra={VarKey("DeviceDataCtrlr", "ConfigurationValueSize"): "10"})
    result = set_(dm, (cv("SecurityCtrlr", "OrganizationName"), "x" * 11))[0][0]
    assert result["attributeStatusInfo"]["reasonCode"] == "TooLargeElement"


def test_values_persist_across_reopening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "ocpp.sqlite"
    db = open_db(path)
    dm = make(db)
    set_(dm, (HEARTBEAT, "900"), (PASSWORD_VAR, PASSWORD),
         (cv("SampledDataCtrlr", "TxUpdatedMeasurands"), "Energy.Active.Import.Register"))
    dm.set_internal("ChargingStation", "AvailabilityState", "Unavailable")
    dm.set_internal("EVSE", "Power", "7200", evse=1)
    dm.set_internal("LocalAuthListCtrlr", "Entries", "12")
    db.close()

    again = make(open_db(path))
    assert again.get_int("OCPPCommCtrlr", "HeartbeatInterval") == 900
    assert again.get_str("SecurityCtrlr", "BasicAuthPassword") == PASSWORD
    assert again.get_list("SampledDataCtrlr", "TxUpdatedMeasurands") == [
        "Energy.Active.Import.Register"]
    assert again.get_str("ChargingStation", "AvailabilityState") == "Unavailable"
    # Non-persistent values start from their default at every boot.
    assert again.get_float("EVSE", "Power", evse=1) == 0.0
    assert again.get_int("LocalAuthListCtrlr", "Entries") == 0
    # Board facts come from the overrides, never from the store.
    assert again.get_str("ChargingStation", "SerialNumber") == "SN-42"


def test_a_stored_value_the_declarations_no_longer_accept_is_dropped() -> None:
    db = open_db(":memory:")
    set_(make(db), (HEARTBEAT, "900"))
    narrower = tuple(
        var("OCPPCommCtrlr", "HeartbeatInterval", DataType.INTEGER, Mutability.READ_WRITE, "300",
            low=1, high=600) if d.key.variable == "HeartbeatInterval" else d
        for d in declarations())
    assert make(db, decls=narrower).get_int("OCPPCommCtrlr", "HeartbeatInterval") == 300


def test_reboot_required_values_wait_for_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "ocpp.sqlite"
    dm = make(open_db(path))
    results, changes = set_(dm, (PROFILE, "2"),
                            (cv("OCPPCommCtrlr", "NetworkConfigurationPriority"), "2,1"))
    assert [r["attributeStatus"] for r in results] == ["RebootRequired", "RebootRequired"]
    assert all(c.pending for c in changes)
    assert dm.get_int("SecurityCtrlr", "SecurityProfile") == 1
    assert get(dm, PROFILE)[0]["attributeValue"] == "1"
    assert dm.pending() == {VarKey("SecurityCtrlr", "SecurityProfile"): "2",
                            VarKey("OCPPCommCtrlr", "NetworkConfigurationPriority"): "2,1"}
    # Setting the value in effect again withdraws the pending change.
    assert set_(dm, (cv("OCPPCommCtrlr", "NetworkConfigurationPriority"), "1"))[0][0][
        "attributeStatus"] == "Accepted"

    rebooted = make(open_db(path))
    assert rebooted.get_int("SecurityCtrlr", "SecurityProfile") == 2
    assert rebooted.get_list("OCPPCommCtrlr", "NetworkConfigurationPriority") == ["1"]
    assert rebooted.pending() == {}
    assert make(open_db(path)).get_int("SecurityCtrlr", "SecurityProfile") == 2


def test_security_profile_can_be_raised_but_never_lowered() -> None:
    db = open_db(":memory:")
    set_(make(db), (PROFILE, "2"))
    dm = make(db)
    dm.add_validator("SecurityCtrlr", "SecurityProfile", never_lower)
    lower, same, higher = set_(dm, (PROFILE, "1"), (PROFILE, "2"), (PROFILE, "3"))[0]
    assert lower["attributeStatus"] == "Rejected"
    assert lower["attributeStatusInfo"]["reasonCode"] == "ValueTooLow"
    assert same["attributeStatus"] == "Accepted"
    assert higher["attributeStatus"] == "RebootRequired"
    assert dm.get_int("SecurityCtrlr", "SecurityProfile") == 2


def test_a_validator_explanation_becomes_additional_info() -> None:
    dm = make()
    dm.add_validator("SecurityCtrlr", "Identity",
                     lambda new, _old: "a colon breaks HTTP Basic auth" if ":" in new else None)
    bad, good = set_(dm, (cv("SecurityCtrlr", "Identity"), "CP:1"),
                     (cv("SecurityCtrlr", "Identity"), "CP-2"))[0]
    assert bad["attributeStatusInfo"] == {"reasonCode": "InvalidValue",
                                          "additionalInfo": "a colon breaks HTTP Basic auth"}
    assert good["attributeStatus"] == "RebootRequired"


@pytest.mark.parametrize("message", ["GetVariables", "SetVariables", "GetReport"])
def test_requests_over_the_device_data_limits_are_call_errors(message: str) -> None:
    dm = make(extra={VarKey("DeviceDataCtrlr", "ItemsPerMessage", variable_instance=message): "2",
                     VarKey("DeviceDataCtrlr", "BytesPerMessage", variable_instance=message):
                         "400"})
    item = {**HEARTBEAT, "attributeValue": "300"} if message == "SetVariables" else HEARTBEAT

    def call(items: list[dict[str, Any]], frame_bytes: int | None = None) -> None:
        if message == "GetVariables":
            dm.get_variables({"getVariableData": items}, frame_bytes=frame_bytes)
        elif message == "SetVariables":
            dm.set_variables({"setVariableData": items}, frame_bytes=frame_bytes)
        else:
            dm.get_report({"requestId": 1, "componentVariable": items},
                          frame_bytes=frame_bytes)

    call([item, item])
    with pytest.raises(RequestTooLargeError) as too_many:
        call([item, item, item])
    assert too_many.value.code is CallErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION  # B06.FR.16
    with pytest.raises(RequestTooLargeError) as too_big:
        call([{**item, "component": {"name": "x" * 200}}] * 2)
    assert too_big.value.code is CallErrorCode.FORMAT_VIOLATION  # B06.FR.17
    with pytest.raises(RequestTooLargeError):
        call([item], frame_bytes=401)


def full_inventory_keys(dm: DeviceModel, base: ReportBase) -> list[tuple[str, str]]:
    return [(i["component"]["name"], i["variable"]["name"]) for i in dm.base_report(base)]


def check_report(items: list[dict[str, Any]]) -> None:
    check("NotifyReportRequest", {"requestId": 1, "generatedAt": "2025-01-01T00:00:00Z",
                                  "seqNo": 0, "reportData": items})


def test_base_reports() -> None:
    dm = make()
    dm.set_internal("SecurityCtrlr", "BasicAuthPassword", PASSWORD)
    full = dm.base_report(ReportBase.FULL_INVENTORY)
    check_report(full)
    assert len(full) == len(declarations())
    password = next(i for i in full if i["variable"]["name"] == "BasicAuthPassword")
    assert password["variableAttribute"] == [{"type": "Actual", "mutability": "WriteOnly",
                                              "persistent": True, "constant": False}]
    assert PASSWORD not in json.dumps(full)
    power = next(i for i in full if i["variable"]["name"] == "Power")
    assert [a["type"] for a in power["variableAttribute"]] == ["Actual", "MaxSet"]
    assert power["component"] == {"name": "EVSE", "evse": {"id": 1}}
    heartbeat = next(i for i in full if i["variable"]["name"] == "HeartbeatInterval")
    assert heartbeat["variableCharacteristics"] == {
        "dataType": "integer", "supportsMonitoring": False, "unit": "s", "minLimit": 1,
        "maxLimit": 86400}

    configuration = dm.base_report(ReportBase.CONFIGURATION_INVENTORY)
    check_report(configuration)
    assert {a["mutability"] for i in configuration for a in i["variableAttribute"]} == {
        "ReadWrite", "WriteOnly"}

    summary = full_inventory_keys(dm, ReportBase.SUMMARY_INVENTORY)
    assert summary == [("ChargingStation", "AvailabilityState"), ("EVSE", "AvailabilityState"),
                       ("Connector", "AvailabilityState")]
    dm.set_internal("ChargingStation", "Problem", "true")
    assert ("ChargingStation", "Problem") in full_inventory_keys(dm, ReportBase.SUMMARY_INVENTORY)


def test_get_base_report_statuses() -> None:
    dm = make()
    for base in ReportBase:
        response, items = dm.get_base_report({"requestId": 3, "reportBase": base.value})
        check("GetBaseReportResponse", response)
        assert response == {"status": "Accepted"}
        assert items
    assert dm.get_base_report({"requestId": 3, "reportBase": "FullInventory"}, busy=True) == (
        {"status": "Rejected"}, [])
    assert dm.get_base_report({"requestId": 3, "reportBase": "Everything"}) == (
        {"status": "NotSupported"}, [])
    read_only = make(decls=(var("X", "Y", DataType.INTEGER, Mutability.READ_ONLY, "1"),))
    assert read_only.get_base_report(
        {"requestId": 3, "reportBase": "ConfigurationInventory"}) == (
        {"status": "EmptyResultSet"}, [])


def report_keys(dm: DeviceModel, request: dict[str, Any]) -> tuple[str, list[str]]:
    check("GetReportRequest", request)
    response, items = dm.get_report(request)
    check("GetReportResponse", response)
    if items:
        check_report(items)
    return response["status"], [
        f"{i['component']['name']}.{i['variable']['name']}"
        + (f"[{i['variable']['instance']}]" if "instance" in i["variable"] else "")
        for i in items]


def test_get_report_filters() -> None:
    dm = make(decls=declarations({1: (1, 2), 2: (1,)}), extra=overrides() | station_overrides(
        identity="CP-0001", vendor="Acme", model="W", serial=None, phases=1,
        max_power_w=3680.0, tethered=True, evses={1: (1, 2), 2: (1,)}))
    status, keys = report_keys(dm, {"requestId": 1, "componentVariable": [
        {"component": {"name": "DeviceDataCtrlr"}, "variable": {"name": "ItemsPerMessage"}}]})
    assert (status, keys) == ("Accepted", [
        "DeviceDataCtrlr.ItemsPerMessage[GetReport]",
        "DeviceDataCtrlr.ItemsPerMessage[GetVariables]",
        "DeviceDataCtrlr.ItemsPerMessage[SetVariables]"])
    _, keys = report_keys(dm, {"requestId": 1, "componentVariable": [
        {"component": {"name": "devicedatactrlr"},
         "variable": {"name": "ItemsPerMessage", "instance": "SetVariables"}}]})
    assert keys == ["DeviceDataCtrlr.ItemsPerMessage[SetVariables]"]
    _, keys = report_keys(dm, {"requestId": 1, "componentVariable": [
        {"component": {"name": "ClockCtrlr"}}]})
    assert keys == ["ClockCtrlr.DateTime", "ClockCtrlr.TimeSource"]
    _, keys = report_keys(dm, {"requestId": 1, "componentVariable": [
        {"component": {"name": "Connector", "evse": {"id": 1}},
         "variable": {"name": "ConnectorType"}}]})
    assert keys == ["Connector.ConnectorType", "Connector.ConnectorType"]
    _, items = dm.get_report({"requestId": 1, "componentVariable": [
        {"component": {"name": "Connector", "evse": {"id": 1, "connectorId": 2}},
         "variable": {"name": "ConnectorType"}}]})
    assert [(i["component"], i["variableAttribute"][0]["value"]) for i in items] == [
        ({"name": "Connector", "evse": {"id": 1, "connectorId": 2}}, "cType2")]

    _, enabled = report_keys(dm, {"requestId": 1, "componentCriteria": ["Enabled"]})
    assert {k.split(".")[0] for k in enabled} == {
        "AuthCtrlr", "AuthCacheCtrlr", "LocalAuthListCtrlr", "SampledDataCtrlr",
        "AlignedDataCtrlr", "SmartChargingCtrlr"}
    set_(dm, (cv("AlignedDataCtrlr", "Enabled"), "false"))
    _, enabled = report_keys(dm, {"requestId": 1, "componentCriteria": ["Enabled"],
                                  "componentVariable": [{"component": {"name": "AlignedDataCtrlr"}},
                                                        {"component": {"name": "TxCtrlr"}}]})
    assert enabled == []
    assert report_keys(dm, {"requestId": 1, "componentCriteria": ["Problem"]}) == (
        "EmptyResultSet", [])
    dm.set_internal("ChargingStation", "Problem", "true")
    _, problems = report_keys(dm, {"requestId": 1, "componentCriteria": ["Problem", "Active"]})
    assert "ChargingStation.AvailabilityState" in problems
    assert report_keys(dm, {"requestId": 1, "componentVariable": [
        {"component": {"name": "NoSuchCtrlr"}}]}) == ("EmptyResultSet", [])
    _, everything = report_keys(dm, {"requestId": 1})
    assert len(everything) == len(declarations({1: (1, 2), 2: (1,)}))
    assert dm.get_report({"requestId": 1}, busy=True) == ({"status": "Rejected"}, [])


def frame_size(payload: Mapping[str, Any]) -> int:
    return len(json.dumps([2, "f" * 36, "NotifyReport", payload], separators=(",", ":")))


@pytest.mark.parametrize(("items_per_message", "bytes_per_message"),
                         [(10, 100_000), (1000, 3000), (7, 2500), (1, 1500)])
def test_chunk_report(items_per_message: int, bytes_per_message: int) -> None:
    items = make().base_report(ReportBase.FULL_INVENTORY)
    messages = DeviceModel.chunk_report(items, request_id=99, generated_at="2025-01-01T00:00Z",
                                        items_per_message=items_per_message,
                                        bytes_per_message=bytes_per_message)
    for message in messages:
        check("NotifyReportRequest", message)
        assert frame_size(message) <= bytes_per_message
        assert len(message["reportData"]) <= items_per_message
        assert message["requestId"] == 99  # B07.FR.04
    assert [m["seqNo"] for m in messages] == list(range(len(messages)))
    assert [m["tbc"] for m in messages] == [True] * (len(messages) - 1) + [False]
    assert [i for m in messages for i in m["reportData"]] == items
    if items_per_message == 10:
        assert len(messages) == -(-len(items) // 10)
    else:
        # Greedy: a message is only closed when the next item would not fit.
        for message, following in itertools.pairwise(messages):
            grown = {**message, "reportData": [*message["reportData"],
                                               following["reportData"][0]]}
            assert (frame_size(grown) > bytes_per_message
                    or len(grown["reportData"]) > items_per_message)


def test_chunk_report_edge_cases() -> None:
    assert DeviceModel.chunk_report([], request_id=1, generated_at="2025-01-01T00:00:00Z",
                                    items_per_message=5, bytes_per_message=1000) == []
    items = make().base_report(ReportBase.FULL_INVENTORY)
    with pytest.raises(ValueError, match="does not fit"):
        DeviceModel.chunk_report(items, request_id=1, generated_at="2025-01-01T00:00:00Z",
                                 items_per_message=5, bytes_per_message=200)
    with pytest.raises(ValueError, match="at least 1"):
        DeviceModel.chunk_report(items, request_id=1, generated_at="2025-01-01T00:00:00Z",
                                 items_per_message=0, bytes_per_message=200)


def test_reporting_value_size_truncates_values() -> None:
    dm = make(extra={VarKey("DeviceDataCtrlr", "ReportingValueSize"): "4"})
    set_(dm, (cv("SecurityCtrlr", "OrganizationName"), "Acme Charging"))
    assert get(dm, cv("SecurityCtrlr", "OrganizationName"))[0]["attributeValue"] == "Acme"
    report = dm.get_report({"requestId": 1, "componentVariable": [
        {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "OrganizationName"}}]})[1]
    assert report[0]["variableAttribute"][0]["value"] == "Acme"
    assert dm.get_str("SecurityCtrlr", "OrganizationName") == "Acme Charging"


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()

    class Fixed:
        def now(self) -> float:
            return 0.0

    root = logging.getLogger(logs.ROOT)
    saved = (list(root.handlers), root.level, root.propagate)
    logs.setup(Fixed(), stream, logging.DEBUG)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    root.propagate = saved[2]


def test_secrets_are_never_logged_reported_or_shown(captured_logs: io.StringIO) -> None:
    dm = make()
    results, changes = set_(dm, (PASSWORD_VAR, PASSWORD), (HEARTBEAT, "120"))
    dm.publish(changes)
    dm.set_internal("SecurityCtrlr", "BasicAuthPassword", PASSWORD + "2")
    assert PASSWORD not in repr(changes)
    assert "120" in repr(changes)
    response = dm.get_variables({"getVariableData": [PASSWORD_VAR]})
    reports = [dm.base_report(base) for base in ReportBase]
    output = captured_logs.getvalue()
    assert '"event": "dm_set_variable"' in output
    assert '"value": "120"' in output
    for text in (output, json.dumps(results), json.dumps(response), json.dumps(reports)):
        assert PASSWORD not in text


def test_subscribers_hear_of_changes_in_effect() -> None:
    dm = make()
    heard: list[Change] = []
    dm.subscribe(heard.append)

    def second(change: Change) -> None:
        heard.append(change)

    stop_second = dm.subscribe(second)

    def broken(change: Change) -> None:
        raise RuntimeError("subscriber bug")

    dm.subscribe(broken)
    change = dm.set_internal("OCPPCommCtrlr", "ActiveNetworkProfile", "2")
    assert change is not None and change.source is ChangeSource.STATION
    assert heard == [change, change]
    assert dm.set_internal("OCPPCommCtrlr", "ActiveNetworkProfile", "2") is None
    stop_second()

    _, changes = set_(dm, (HEARTBEAT, "30"), (PROFILE, "3"))
    assert len(heard) == 2  # nothing until the response is out
    dm.publish(changes)
    assert [(c.key.variable, c.new) for c in heard[2:]] == [("HeartbeatInterval", "30")]


def test_set_internal_guards() -> None:
    dm = make()
    with pytest.raises(ValueError, match="cannot be set"):
        dm.set_internal("ChargingStation", "SupplyPhases", "1")
    with pytest.raises(ValueError, match="invalid value"):
        dm.set_internal("ChargingStation", "AvailabilityState", "Sleeping")
    with pytest.raises(ValueError, match="cannot be set"):
        dm.set_internal("OCPPCommCtrlr", "HeartbeatInterval", "1", attribute=Attribute.TARGET)
    dm.set_internal("EVSE", "Power", "22000", evse=1, attribute=Attribute.MAX_SET)
    assert dm.get("EVSE", "Power", evse=1, attribute=Attribute.MAX_SET) == "22000"


def test_date_time_is_read_from_the_registered_source() -> None:
    dm = make()
    dm.add_source("ClockCtrlr", "DateTime", lambda: "2025-03-01T12:00:00.000Z")
    assert get(dm, cv("ClockCtrlr", "DateTime"))[0]["attributeValue"] == (
        "2025-03-01T12:00:00.000Z")
    result = set_(dm, (cv("ClockCtrlr", "DateTime"), "2025-03-01T12:00:00Z"))[0][0]
    assert result["attributeStatusInfo"]["reasonCode"] == "ReadOnly"
    with pytest.raises(ValueError, match="ReadOnly"):
        dm.add_source("OCPPCommCtrlr", "HeartbeatInterval", lambda: "1")


def test_typed_getters() -> None:
    dm = make()
    assert dm.get_int("OCPPCommCtrlr", "MessageAttempts", instance="TransactionEvent") == 3
    assert dm.get_int("DeviceDataCtrlr", "ItemsPerMessage", instance="getvariables") == 50
    assert dm.get_float("SmartChargingCtrlr", "LimitChangeSignificance") == 5.0
    assert dm.get_bool("OCPPCommCtrlr", "UnlockOnEVSideDisconnect") is True
    assert dm.get_list("SmartChargingCtrlr", "RateUnit") == ["A", "W"]
    assert dm.get_str("Connector", "ConnectorType", evse=1, connector=1) == "sType2"
    assert dm.get_int("EVSE", "SupplyPhases", evse=1) == 3
    with pytest.raises(UnsetVariableError):
        dm.get_str("SecurityCtrlr", "BasicAuthPassword")
    with pytest.raises(UndeclaredVariableError):
        dm.get_int("OCPPCommCtrlr", "MessageAttempts")
    with pytest.raises(UndeclaredVariableError):
        dm.get_int("OCPPCommCtrlr", "NoSuchVariable")


@pytest.mark.parametrize(("value", "ok"), [
    ("2025-01-01T00:00:00Z", True), ("2025-01-01T00:00:00.123+02:00", True),
    ("2025-01-01T00:00:00", False), ("2025-01-01", False), ("yesterday", False)])
def test_date_time_values(value: str, ok: bool) -> None:
    decl = var("X", "Y", DataType.DATE_TIME, Mutability.READ_WRITE, None)
    assert (normalize(decl, value) == value) is ok


# ---- properties over every writable variable -----------------------------------------------

WRITABLE = [d for d in declarations() if d.writable]


def valid_values(decl: Declaration) -> st.SearchStrategy[str]:
    low, high = decl.min_limit, decl.max_limit
    match decl.data_type:
        case DataType.INTEGER:
            return st.integers(int(low) if low is not None else -10**9,
                               int(high) if high is not None else 10**9).map(str)
        case DataType.DECIMAL:
            return st.floats(low, high, allow_nan=False, allow_infinity=False).map(repr)
        case DataType.BOOLEAN:
            return st.sampled_from(["true", "false"])
        case DataType.OPTION_LIST:
            return st.sampled_from(decl.values_list)
        case DataType.MEMBER_LIST | DataType.SEQUENCE_LIST:
            return st.lists(st.sampled_from(decl.values_list), unique=True,
                            min_size=0 if decl.allow_empty else 1).map(",".join)
        case DataType.STRING:
            return st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF),
                           min_size=int(low or 0), max_size=int(min(high or 100, 1000)))
        case DataType.DATE_TIME:
            return st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat())


def invalid_values(decl: Declaration) -> st.SearchStrategy[str]:
    low, high = decl.min_limit, decl.max_limit
    match decl.data_type:
        case DataType.INTEGER | DataType.DECIMAL:
            outside = [st.sampled_from(["", "abc", "1,5", "0x10", "nan", "--1"])]
            if low is not None:
                outside.append(st.integers(max_value=int(low) - 1).map(str))
            if high is not None:
                outside.append(st.integers(min_value=int(high) + 1).map(str))
            if decl.data_type is DataType.INTEGER:
                outside.append(st.sampled_from(["1.5", "2e3"]))
            return st.one_of(outside)
        case DataType.BOOLEAN:
            return st.sampled_from(["", "yes", "1", "tru"])
        case DataType.OPTION_LIST | DataType.MEMBER_LIST | DataType.SEQUENCE_LIST:
            return st.one_of(st.just("NotAMember"),
                             st.sampled_from(decl.values_list).map(lambda v: f"{v},{v}"))
        case DataType.STRING:
            return st.text(min_size=int(high or 1000) + 1, max_size=int(high or 1000) + 20)
        case DataType.DATE_TIME:
            return st.sampled_from(["", "2025-01-01", "2025-01-01T00:00:00"])


def read_back(dm: DeviceModel, decl: Declaration) -> str | None:
    key = decl.key
    return dm.get(key.component, key.variable, instance=key.variable_instance,
                  component_instance=key.component_instance, evse=key.evse,
                  connector=key.connector)


def as_item(decl: Declaration) -> dict[str, Any]:
    return {"component": decl.key.component_dict(), "variable": decl.key.variable_dict()}


@given(st.data())
def test_set_then_get_round_trips_every_writable_variable(data: st.DataObject) -> None:
    decl = data.draw(st.sampled_from(WRITABLE))
    value = data.draw(valid_values(decl))
    db = open_db(":memory:")
    dm = make(db)
    result = set_(dm, (as_item(decl), value))[0][0]
    if decl.reboot_required:
        assert result["attributeStatus"] in ("RebootRequired", "Accepted")
        dm = make(db)
    else:
        assert result["attributeStatus"] == "Accepted"
    assert read_back(dm, decl) == value
    if decl.readable:
        assert get(dm, as_item(decl))[0]["attributeValue"] == value
    assert read_back(make(db), decl) == value  # and it survives a restart


@given(st.data())
def test_invalid_values_are_rejected_and_change_nothing(data: st.DataObject) -> None:
    decl = data.draw(st.sampled_from(WRITABLE))
    value = data.draw(invalid_values(decl))
    db = open_db(":memory:")
    dm = make(db)
    before = read_back(dm, decl)
    result, changes = set_(dm, (as_item(decl), value))
    assert result[0]["attributeStatus"] == "Rejected"
    assert changes == []
    assert read_back(dm, decl) == before
    assert read_back(make(db), decl) == before
