"""Fuzzing the station's OCPP-J layer from the CSMS side, over the real websocket of the station
rig: every malformed or mutated frame gets exactly one answer, with the CALLERROR code OCPP-J
2.0.1 part 4 (4.2.3) and firmware/ocpp/rpc.py give it, and the station never falls over.

The frames are mutations of valid CSMS requests, drawn by a seeded generator (the seed, the
frame's index and the frame itself are in every failure message, so a failure replays exactly):

- schema mutations, guided by the official JSON schema of the request: a required field
  dropped (OccurrenceConstraintViolation), a value of the wrong JSON type
  (TypeConstraintViolation), a string outside its enumeration, too long, or a number outside
  its bounds (PropertyConstraintViolation), too few or too many array items
  (OccurrenceConstraintViolation), a property the schema does not allow (FormatViolation);
- values JSON or the OCPP data types cannot carry: NaN and Infinity, integers beyond any
  storage, lone UTF-16 surrogates, unreadable date-times;
- frame mutations: truncated JSON, bytes that are not UTF-8, frames that are not arrays,
  unknown message type ids, message ids that are not strings, wrong element counts, actions
  that are not strings, payloads that are not objects, unknown actions, actions of the other
  OCPP version or of the other direction, nesting deeper than any parser recurses, huge and
  odd message ids, and CALLRESULT / CALLERROR frames nobody asked for (these get no answer).

Where the mutation determines the code, the test asserts exactly that code; where the value is
merely beyond what the station can use (a 10^30 integer), a CALLRESULT that validates is fine
too, but an InternalError (a handler that choked) never is. Afterwards the station must still
work: the connection was never dropped, a GetVariables round-trip answers, the controller runs,
the connector has no faults, nothing was logged at error level, and it restarts cleanly (no
poisoned state was persisted). A handler that computes without end cannot be stopped by an
asyncio timeout, so a SIGALRM watchdog interrupts any frame that takes seconds of wall-clock time.

`make test` runs a bounded number of frames per OCPP version; `make soak` runs the long one
(VOLTPILOT_FUZZ_SEED picks another seed). Frames that once broke the station are kept below as
cases of their own, and two websocket-level ones (a text frame that is not UTF-8, a frame over
the size limit) must cost a reconnection, nothing more.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any

import ocpp
import pytest
from jsonschema import Draft6Validator
from ocpp_station_rig import IDENTITY, StationRig

Payload = dict[str, Any]
JsonPath = tuple[str | int, ...]

SCHEMA_DIR = Path(ocpp.__file__).parent
UNKNOWN_ID = "-1"  # the messageId of an answer to a frame too broken to read one (OCPP-J 4.2.3)

FORMAT = "FormatViolation"
OCCURRENCE = "OccurrenceConstraintViolation"
PROPERTY = "PropertyConstraintViolation"
TYPE = "TypeConstraintViolation"
NOT_IMPLEMENTED = "NotImplemented"
NOT_SUPPORTED = "NotSupported"
RPC_FRAMEWORK = "RpcFrameworkError"
MESSAGE_TYPE = "MessageTypeNotSupported"

BOUNDED_FRAMES = 400  # per OCPP version in `make test`
SOAK_FRAMES = 10_000  # per OCPP version in `make soak`
SEED = int(os.environ.get("VOLTPILOT_FUZZ_SEED", "20260101"))
ANSWER_TIMEOUT_S = 30.0  # virtual seconds; the loop only gets there when nothing answers
# Wall-clock seconds one frame may take. A handler that computes without end never yields to
# the loop, so no asyncio timeout can fire: SIGALRM interrupts it instead.
HANG_S = 5.0
# At 3 bytes a character still below the station's 128 KiB frame limit (which closes the socket).
MAX_FRAME_CHARS = 40_000


# ---- the requests the mutations start from ------------------------------------------------------
#
# Each is harmless when a mutation happens to leave it valid: Reset names an EVSE we do not
# have, RequestStartTransaction likewise, and no car is plugged in while the profiles change.

_PROFILE: Payload = {
    "id": 901, "stackLevel": 3, "chargingProfilePurpose": "ChargingStationMaxProfile",
    "chargingProfileKind": "Absolute",
    "chargingSchedule": [{
        "id": 1, "chargingRateUnit": "A", "startSchedule": "2025-01-01T00:00:00Z",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 30.0, "numberPhases": 3},
                                   {"startPeriod": 3600, "limit": 28.5}]}]}

_BASES: tuple[tuple[str, Payload], ...] = (
    ("GetVariables", {"getVariableData": [
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
        {"component": {"name": "EVSE", "evse": {"id": 1}},
         "variable": {"name": "AvailabilityState"}, "attributeType": "Actual"}]}),
    ("SetVariables", {"setVariableData": [
        {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedInterval"},
         "attributeValue": "60", "attributeType": "Actual"},
        {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "OrganizationName"},
         "attributeValue": "voltpilot"}]}),
    ("GetBaseReport", {"requestId": 11, "reportBase": "SummaryInventory"}),
    ("GetReport", {"requestId": 12, "componentCriteria": ["Active"], "componentVariable": [
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
    ("Reset", {"type": "OnIdle", "evseId": 3}),
    ("RequestStartTransaction", {
        "evseId": 2, "remoteStartId": 5, "idToken": {"idToken": "FUZZ-1", "type": "Central"},
        "chargingProfile": {**copy.deepcopy(_PROFILE), "id": 905,
                            "chargingProfilePurpose": "TxProfile"}}),
    ("RequestStopTransaction", {"transactionId": "no-such-transaction"}),
    ("GetTransactionStatus", {"transactionId": "no-such-transaction"}),
    ("ChangeAvailability", {"operationalStatus": "Operative",
                            "evse": {"id": 1, "connectorId": 1}}),
    ("UnlockConnector", {"evseId": 1, "connectorId": 1}),
    ("TriggerMessage", {"requestedMessage": "StatusNotification",
                        "evse": {"id": 1, "connectorId": 1}}),
    ("DataTransfer", {"vendorId": "org.voltpilot.fuzz", "messageId": "m1",
                      "data": {"a": [1, 2.5, "x"]}}),
    ("SetChargingProfile", {"evseId": 0, "chargingProfile": copy.deepcopy(_PROFILE)}),
    ("SetChargingProfile", {"evseId": 1, "chargingProfile": {
        "id": 902, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Recurring", "recurrencyKind": "Daily",
        "validFrom": "2025-01-01T00:00:00Z", "validTo": "2035-01-01T00:00:00Z",
        "chargingSchedule": [{"id": 2, "chargingRateUnit": "W", "duration": 86400,
                              "startSchedule": "2025-01-01T22:00:00Z",
                              "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 20000.0},
                                                         {"startPeriod": 28800,
                                                          "limit": 21000.0}]}]}}),
    ("ClearChargingProfile", {"chargingProfileId": 999, "chargingProfileCriteria": {
        "evseId": 0, "chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 9}}),
    ("GetChargingProfiles", {"requestId": 3, "evseId": 0, "chargingProfile": {
        "chargingProfilePurpose": "ChargingStationMaxProfile", "stackLevel": 3}}),
    ("GetCompositeSchedule", {"duration": 600, "evseId": 0, "chargingRateUnit": "W"}),
    ("ClearCache", {}),
    ("SendLocalList", {"versionNumber": 4, "updateType": "Differential",
                       "localAuthorizationList": [{
                           "idToken": {"idToken": "FUZZCARD", "type": "ISO14443"},
                           "idTokenInfo": {"status": "Accepted",
                                           "cacheExpiryDateTime": "2035-01-01T00:00:00Z"}}]}),
    ("GetLocalListVersion", {}),
    ("GetInstalledCertificateIds", {"certificateType": ["CSMSRootCertificate"]}),
    ("DeleteCertificate", {"certificateHashData": {
        "hashAlgorithm": "SHA256", "issuerNameHash": "aa", "issuerKeyHash": "bb",
        "serialNumber": "01"}}),
    ("InstallCertificate", {"certificateType": "CSMSRootCertificate", "certificate":
                            "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----"}),
    ("CertificateSigned", {"certificateType": "ChargingStationCertificate", "certificateChain":
                           "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----"}),
    ("GetLog", {"logType": "DiagnosticsLog", "requestId": 5, "retries": 0,
                "log": {"remoteLocation": "http://127.0.0.1:9/upload",
                        "oldestTimestamp": "2025-01-01T00:00:00Z"}}),
    ("UpdateFirmware", {"requestId": 6, "retries": 0, "firmware": {
        "location": "http://127.0.0.1:9/fw.bin", "retrieveDateTime": "2025-01-01T00:00:00Z",
        "signingCertificate": "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----",
        "signature": "bm9wZQ=="}}),
)

_BASES_21: tuple[tuple[str, Payload], ...] = (
    ("SetDERControl", {"isDefault": False, "controlId": "fuzz-1", "controlType": "FixedPFAbsorb",
                       "fixedPFAbsorb": {"priority": 1, "displacement": 0.9,
                                         "excitation": True}}),
    ("GetDERControl", {"requestId": 8, "isDefault": False}),
    ("ClearDERControl", {"isDefault": False, "controlId": "fuzz-1"}),
)

# Requests a charging station sends and never answers (NotSupported in either version).
_STATION_TO_CSMS = ("Authorize", "BootNotification", "FirmwareStatusNotification", "Heartbeat",
                    "LogStatusNotification", "MeterValues", "NotifyChargingLimit", "NotifyEvent",
                    "NotifyReport", "ReportChargingProfiles", "SecurityEventNotification",
                    "SignCertificate", "StatusNotification", "TransactionEvent",
                    "ClearedChargingLimit", "NotifyEVChargingNeeds")
# OCPP 2.1 messages without a 2.0.1 schema: NotImplemented on a 2.0.1 connection.
_ONLY_21 = ("SetDERControl", "GetDERControl", "ClearDERControl", "AFRRSignal", "GetTariffs",
            "SetDefaultTariff", "ClearTariffs", "ChangeTransactionTariff", "UsePriorityCharging",
            "UpdateDynamicSchedule", "NotifyAllowedEnergyTransfer", "RequestBatterySwap",
            "NotifyWebPaymentStarted", "AdjustPeriodicEventStream", "GetPeriodicEventStream")
# 2.1 messages a station receives on 2.1 but that we do not implement.
_UNHANDLED_21 = ("AFRRSignal", "GetTariffs", "SetDefaultTariff", "ClearTariffs",
                 "ChangeTransactionTariff", "UsePriorityCharging", "RequestBatterySwap",
                 "NotifyWebPaymentStarted")
# Names no OCPP version has. The NUL byte and the path are aimed at a lookup that opens a file
# named after the action.
_UNKNOWN_ACTIONS = ("FooBar", "", " ", "getVariables", "GetVariables ", "GETVARIABLES",
                    "Reset\u0000", "Get\u0000Variables", "../../v21/schemas/SetDERControl",
                    "../v201/schemas/GetVariables", "/etc/passwd", "Rése t", "\ud800",
                    "GetVariablesRequest", "GetVariablesResponse", "A" * 300, "A" * 20_000)


def bases(version: str) -> tuple[tuple[str, Payload], ...]:
    return _BASES + _BASES_21 if version == "2.1" else _BASES


# ---- the official schemas ------------------------------------------------------------------------

@cache
def schema(version: str, name: str) -> Payload:
    path = SCHEMA_DIR / f"v{version.replace('.', '')}" / "schemas" / f"{name}.json"
    loaded: Payload = json.loads(path.read_text(encoding="utf-8-sig"))
    return loaded


@cache
def validator(version: str, name: str) -> Draft6Validator:
    # Draft 6 is what the schemas declare; the station validates with draft 4 (the `ocpp`
    # library's choice), so this is a second opinion, not the station's own check again.
    return Draft6Validator(schema(version, name))


def resolve(node: Payload, root: Payload) -> Payload:
    while "$ref" in node:
        node = root["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    return node


@dataclass(frozen=True, slots=True)
class Node:
    """One value in a payload with the (resolved) schema that governs it."""

    path: JsonPath
    schema: Payload
    required: bool


def walk(value: Any, node_schema: Payload, root: Payload, path: JsonPath = (),
         required: bool = False) -> Iterator[Node]:
    node_schema = resolve(node_schema, root)
    yield Node(path, node_schema, required)
    if isinstance(value, dict):
        props = node_schema.get("properties", {})
        needed = set(node_schema.get("required", ()))
        for key, sub in value.items():
            if key in props:
                yield from walk(sub, props[key], root, (*path, key), key in needed)
    elif isinstance(value, list) and isinstance(node_schema.get("items"), dict):
        for index, sub in enumerate(value):
            yield from walk(sub, node_schema["items"], root, (*path, index))


def get_at(doc: Any, path: JsonPath) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def set_at(doc: Any, path: JsonPath, value: Any) -> None:
    get_at(doc, path[:-1])[path[-1]] = value


def drop_at(doc: Any, path: JsonPath) -> None:
    del get_at(doc, path[:-1])[path[-1]]


# ---- cases -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Expect:
    """The answers a frame may get: CALLERRORs as (messageId, code), a CALLRESULT with
    ``result_id`` (validated against ``action``'s response schema), or none at all."""

    errors: frozenset[tuple[str, str]] = frozenset()
    result_id: str | None = None
    silent: bool = False


def error(message_id: str, *codes: str) -> Expect:
    return Expect(errors=frozenset((message_id, code) for code in codes))


def result_or_error(message_id: str, *codes: str) -> Expect:
    return Expect(errors=frozenset((message_id, code) for code in codes), result_id=message_id)


@dataclass(frozen=True, slots=True)
class Case:
    kind: str
    action: str | None
    raw: str | bytes
    expect: Expect

    def describe(self) -> str:
        text = self.raw if isinstance(self.raw, str) else repr(self.raw)
        if len(text) > 240:
            text = f"{text[:200]}...({len(text)} chars)...{text[-30:]}"
        return f"{self.kind} {self.action or ''}: {text}"


# Placeholder for a literal json.dumps cannot write (1e999, NaN inside a string position...).
_LITERAL = "\u0001fuzz-literal\u0001"


def frame_text(frame: list[Any], literal: str | None = None) -> str:
    text = json.dumps(frame, separators=(",", ":"))
    if literal is not None:
        text = text.replace(json.dumps(_LITERAL), literal, 1)
    return text


_WRONG_TYPE: dict[str, tuple[Any, ...]] = {
    "string": (17, 0, True, None, [], {}, ["x"], 1.5),
    "integer": ("1", 1.5, True, None, [], {}, "", -0.5),
    "number": ("1.0", "NaN", True, False, None, [], {}),
    "boolean": ("true", 1, 0, None, [], {}, "false"),
    "object": ("x", 1, [], None, True, [{}]),
    "array": ({}, "x", 1, None, True, {"0": 1}),
}


class Mutator:
    """Draws cases for one OCPP version ("2.0.1" or "2.1") from a seeded generator."""

    def __init__(self, rng: random.Random, version: str) -> None:
        self.rng = rng
        self.version = version
        self.bases = bases(version)
        schema_kinds: list[Callable[[str, str, Payload], Case | None]] = [
            self.drop_required, self.wrong_type, self.bad_enum, self.too_long,
            self.out_of_range, self.item_count, self.extra_property, self.non_finite,
            self.huge_integer, self.lone_surrogate, self.bad_date_time, self.deep_custom_data,
            self.unchanged]
        frame_kinds: list[Callable[[str, str, Payload], Case | None]] = [
            self.truncated, self.not_utf8, self.not_a_call, self.message_type,
            self.unasked_answer, self.bad_message_id, self.wrong_length, self.action_not_string,
            self.payload_not_object, self.unknown_action, self.foreign_action, self.too_deep,
            self.odd_message_id]
        self.kinds = schema_kinds * 3 + frame_kinds * 2

    def case(self, message_id: str) -> Case:
        while True:
            action, payload = self.rng.choice(self.bases)
            made = self.rng.choice(self.kinds)(message_id, action, copy.deepcopy(payload))
            if made is not None and len(made.raw) <= MAX_FRAME_CHARS:
                return made

    def nodes(self, action: str, payload: Payload, where: Callable[[Node], bool]) -> list[Node]:
        root = schema(self.version, f"{action}Request")
        return [n for n in walk(payload, root, root) if where(n)]

    def pick(self, action: str, payload: Payload, where: Callable[[Node], bool]) -> Node | None:
        found = self.nodes(action, payload, where)
        return self.rng.choice(found) if found else None

    def call(self, kind: str, mid: str, action: str, payload: Any, expect: Expect,
             literal: str | None = None) -> Case:
        return Case(kind, action, frame_text([2, mid, action, payload], literal), expect)

    # ---- schema mutations ------------------------------------------------------------------

    def drop_required(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: n.required and bool(n.path))
        if node is None:
            return None
        drop_at(payload, node.path)
        return self.call("drop_required", mid, action, payload, error(mid, OCCURRENCE))

    def wrong_type(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: bool(n.path) and n.schema.get("type")
                         in _WRONG_TYPE)
        if node is None:
            return None
        set_at(payload, node.path, self.rng.choice(_WRONG_TYPE[node.schema["type"]]))
        return self.call("wrong_type", mid, action, payload, error(mid, TYPE))

    def bad_enum(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: "enum" in n.schema)
        if node is None:
            return None
        value = str(get_at(payload, node.path))
        set_at(payload, node.path, self.rng.choice(
            [value.lower(), value.upper(), f" {value}", value + "X", "", "Unknown", "\u00e9"]))
        if get_at(payload, node.path) in node.schema["enum"]:
            return None
        return self.call("bad_enum", mid, action, payload, error(mid, PROPERTY))

    def too_long(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: "maxLength" in n.schema
                         and n.schema.get("type") == "string")
        if node is None:
            return None
        limit = int(node.schema["maxLength"])
        size = self.rng.choice([limit + 1, limit + 2, 2 * limit, limit + self.rng.randint(
            1, 5000), self.rng.randint(20_000, 40_000)])
        set_at(payload, node.path, self.rng.choice("aZ9é€") * size)
        return self.call("too_long", mid, action, payload, error(mid, PROPERTY))

    def out_of_range(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: "minimum" in n.schema
                         or "maximum" in n.schema)
        if node is None:
            return None
        integer = node.schema.get("type") == "integer"
        step: float = 1 if integer else self.rng.choice([0.5, 1e-6, 1000.0])
        if "minimum" in node.schema and ("maximum" not in node.schema or self.rng.random() < .5):
            value: float = node.schema["minimum"] - step
        else:
            value = node.schema["maximum"] + step
        set_at(payload, node.path, int(value) if integer else value)
        return self.call("out_of_range", mid, action, payload, error(mid, PROPERTY))

    def item_count(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: n.schema.get("type") == "array" and (
            n.schema.get("minItems", 0) >= 1 or n.schema.get("maxItems", 10**9) <= 64))
        if node is None:
            return None
        items = get_at(payload, node.path)
        if node.schema.get("minItems", 0) >= 1 and (
                node.schema.get("maxItems", 10**9) > 64 or self.rng.random() < 0.5):
            set_at(payload, node.path, [])
        else:
            set_at(payload, node.path, [items[0]] * (node.schema["maxItems"] + 1))
        return self.call("item_count", mid, action, payload, error(mid, OCCURRENCE))

    def extra_property(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: n.schema.get("type") == "object"
                         and n.schema.get("additionalProperties") is False)
        if node is None:
            return None
        target = get_at(payload, node.path)
        name = self.rng.choice(["fuzzExtra", "ID", "Type", "__proto__", "constructor", "",
                                "customdata", "é"])
        if name in target or name in node.schema.get("properties", {}):
            return None
        target[name] = self.rng.choice([1, "x", None, {}, [], True])
        return self.call("extra_property", mid, action, payload, error(mid, FORMAT))

    def non_finite(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: n.schema.get("type") == "number")
        if node is None:
            return None
        # NaN and Infinity are not JSON (RFC 8259); 1e999 is, but no OCPP decimal holds it.
        literal = self.rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
        set_at(payload, node.path, _LITERAL)
        return self.call("non_finite", mid, action, payload, Expect(errors=frozenset(
            {(mid, TYPE), (mid, PROPERTY), (mid, FORMAT), (UNKNOWN_ID, RPC_FRAMEWORK)})),
            literal)

    def huge_integer(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: n.schema.get("type") == "integer")
        if node is None:
            return None
        set_at(payload, node.path, self.rng.choice(
            [2**63, -(2**63) - 1, 10**30, -(10**30), 2**64 + 1, 10**300]))
        return self.call("huge_integer", mid, action, payload,
                         result_or_error(mid, TYPE, PROPERTY))

    def lone_surrogate(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: n.schema.get("type") == "string"
                         and "enum" not in n.schema and bool(n.path))
        if node is None:
            return None
        set_at(payload, node.path, self.rng.choice(["\ud800", "a\udfffb", "\udc00\ud800"]))
        return self.call("lone_surrogate", mid, action, payload,
                         result_or_error(mid, FORMAT, PROPERTY, TYPE))

    def bad_date_time(self, mid: str, action: str, payload: Payload) -> Case | None:
        node = self.pick(action, payload, lambda n: n.schema.get("format") == "date-time")
        if node is None:
            return None
        set_at(payload, node.path, self.rng.choice(
            ["yesterday", "", "2025-13-45T99:00:00Z", "2025-01-01", "0000-00-00T00:00:00Z",
             "9999-12-31T23:59:59.999999999+14:00", "2025-01-01T00:00:00+25:00", "1e9"]))
        return self.call("bad_date_time", mid, action, payload, result_or_error(mid, PROPERTY))

    def deep_custom_data(self, mid: str, action: str, payload: Payload) -> Case | None:
        # CustomDataType allows any extra property: a deep (but parseable) value is valid,
        # at the top or in any object that has customData.
        node = self.pick(action, payload, lambda n: "customData" in n.schema.get(
            "properties", {}))
        if node is None:
            return None
        get_at(payload, node.path)["customData"] = {"vendorId": "org.voltpilot.fuzz",
                                                    "deep": _LITERAL}
        depth = self.rng.randint(10, 400)
        literal = "[" * depth + "1" + "]" * depth
        return self.call("deep_custom_data", mid, action, payload, Expect(result_id=mid),
                         literal)

    def unchanged(self, mid: str, action: str, payload: Payload) -> Case | None:
        return self.call("unchanged", mid, action, payload, Expect(result_id=mid))

    # ---- frame mutations -------------------------------------------------------------------

    def truncated(self, mid: str, action: str, payload: Payload) -> Case | None:
        text = frame_text([2, mid, action, payload])
        cut = self.rng.choice([text[: self.rng.randint(0, len(text) - 1)], text + "]",
                               text[:-1] + ",]", "\ufeff" + text, text.replace(",", ";", 1),
                               text.replace('"', "'"), text + " trailing"])
        return Case("truncated", action, cut, error(UNKNOWN_ID, RPC_FRAMEWORK))

    def not_utf8(self, mid: str, action: str, payload: Payload) -> Case | None:
        text = frame_text([2, mid, action, payload]).encode()
        at = self.rng.randint(0, len(text))
        bad = self.rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        return Case("not_utf8", action, text[:at] + bad + text[at:],
                    error(UNKNOWN_ID, RPC_FRAMEWORK))

    def not_a_call(self, mid: str, action: str, payload: Payload) -> Case | None:
        raw = self.rng.choice(['{"messageTypeId":2}', "42", '"[2]"', "null", "true", "[]",
                               "{}", "[[]]", "-1"])
        return Case("not_a_call", None, raw, error(UNKNOWN_ID, RPC_FRAMEWORK))

    def message_type(self, mid: str, action: str, payload: Payload) -> Case | None:
        kind = self.rng.choice([0, 1, 5, 6, -2, 99, 2**70, "2", "CALL", None, True, False, 2.5,
                                [2], {"id": 2}])
        return Case("message_type", action, frame_text([kind, mid, action, payload]),
                    error(mid, MESSAGE_TYPE))

    def unasked_answer(self, mid: str, action: str, payload: Payload) -> Case | None:
        frame: list[Any] = self.rng.choice([[3, mid, payload], [3, mid], [3, mid, None],
                                 [4, mid, "GenericError", "", {}], [4, mid],
                                 [4, mid, 5, None, []]])
        return Case("unasked_answer", None, frame_text(frame), Expect(silent=True))

    def bad_message_id(self, mid: str, action: str, payload: Payload) -> Case | None:
        frame: list[Any] = self.rng.choice([
            [2, 123, action, payload], [2, None, action, payload], [2, 1.5, action, payload],
            [2, [mid], action, payload], [2, {"id": mid}, action, payload],
            [2, True, action, payload], [2], [2, action, payload]])
        if frame[1:2] == [action]:
            # [2, action, payload]: the action is read as the id, the payload as the action.
            return Case("bad_message_id", action, frame_text(frame), error(action,
                                                                           RPC_FRAMEWORK))
        return Case("bad_message_id", action, frame_text(frame), error(UNKNOWN_ID,
                                                                       RPC_FRAMEWORK))

    def wrong_length(self, mid: str, action: str, payload: Payload) -> Case | None:
        frame: list[Any] = self.rng.choice([[2, mid], [2, mid, action],
                                            [2, mid, action, payload, {}],
                                            [2, mid, action, payload, payload, payload]])
        return Case("wrong_length", action, frame_text(frame), error(mid, RPC_FRAMEWORK))

    def action_not_string(self, mid: str, action: str, payload: Payload) -> Case | None:
        name = self.rng.choice([7, None, True, [action], {"action": action}, 2.0])
        return Case("action_not_string", None, frame_text([2, mid, name, payload]),
                    error(mid, RPC_FRAMEWORK))

    def payload_not_object(self, mid: str, action: str, payload: Payload) -> Case | None:
        body = self.rng.choice([[], [payload], "{}", 0, None, True, 1.5])
        return self.call("payload_not_object", mid, action, body, error(mid, FORMAT))

    def unknown_action(self, mid: str, action: str, payload: Payload) -> Case | None:
        name = self.rng.choice(_UNKNOWN_ACTIONS)
        return Case("unknown_action", name, frame_text([2, mid, name, payload]),
                    error(mid, NOT_IMPLEMENTED))

    def foreign_action(self, mid: str, action: str, payload: Payload) -> Case | None:
        if self.version == "2.0.1" and self.rng.random() < 0.5:
            name, code = self.rng.choice(_ONLY_21), NOT_IMPLEMENTED
        elif self.version == "2.1" and self.rng.random() < 0.5:
            name, code = self.rng.choice(_UNHANDLED_21), NOT_SUPPORTED
        else:
            name, code = self.rng.choice(_STATION_TO_CSMS), NOT_SUPPORTED
        # The payload does not matter: an action we cannot handle is answered as such.
        body = self.rng.choice([{}, payload])
        return Case("foreign_action", name, frame_text([2, mid, name, body]), error(mid, code))

    def too_deep(self, mid: str, action: str, payload: Payload) -> Case | None:
        depth = self.rng.choice([5_000, 50_000, 300_000])
        nested = "[" * depth + "]" * depth
        raw = self.rng.choice([
            nested, f'[2,"{mid}","{action}",{{"customData":{{"vendorId":"x","d":{nested}}}}}]',
            f'[2,"{mid}","{action}",{nested}]'])
        return Case("too_deep", action, raw, error(UNKNOWN_ID, RPC_FRAMEWORK))

    def odd_message_id(self, mid: str, action: str, payload: Payload) -> Case | None:
        # Strings all, so readable ids: answered under that id as the request deserves.
        odd = self.rng.choice(["", " ", "-1", mid * 2, "é€\U0001f50c", "\ud800", "x" * 37,
                               "y" * self.rng.randint(1000, 200_000), '"];[4,"', "\u0000"])
        return self.call("odd_message_id", odd, action, payload, Expect(result_id=odd))


class StationHungError(BaseException):
    """Raised into whatever the main thread is running when a frame takes longer than HANG_S
    of wall-clock time. A BaseException, so the station's `except Exception` does not eat it."""


class Watchdog:
    """``arm(what)`` before each frame: HANG_S of wall-clock time later, StationHungError is
    raised in the main thread, inside the station's handler if that is where it is stuck."""

    def __init__(self) -> None:
        self.what = ""
        self.fired: str | None = None
        self._previous: Any = None

    def arm(self, what: str) -> None:
        self.what = what
        signal.setitimer(signal.ITIMER_REAL, HANG_S)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        self.fired = f"more than {HANG_S} s of wall-clock time on {self.what}"
        raise StationHungError(self.fired)

    def __enter__(self) -> Watchdog:
        self._previous = signal.signal(signal.SIGALRM, self._fire)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)


# ---- running against the station -------------------------------------------------------------

class Answers:
    """The station's answers (CALLRESULT / CALLERROR frames) as the CSMS records them, in order."""

    def __init__(self, rig: StationRig) -> None:
        self.csms = rig.csms
        self.cursor = 0

    def _next(self) -> list[Any] | None:
        frames = self.csms.frames
        while self.cursor < len(frames):
            _, frame = frames[self.cursor]
            self.cursor += 1
            if frame[0] in (3, 4):
                return frame
        return None

    async def next(self, timeout: float = ANSWER_TIMEOUT_S) -> list[Any] | None:
        found: list[list[Any]] = []

        def ready() -> bool:
            answer = self._next()
            if answer is not None:
                found.append(answer)
            return bool(found)

        try:
            await self.csms.wait_for(ready, timeout)
        except TimeoutError:
            return None
        return found[0]

    def rest(self) -> list[list[Any]]:
        out = []
        while (answer := self._next()) is not None:
            out.append(answer)
        return out


def judge(case: Case, answer: list[Any], version: str) -> str | None:
    """What is wrong with ``answer`` to ``case``; None when it is one the case allows."""
    expect = case.expect
    try:
        json.dumps(answer, allow_nan=False)
    except ValueError:
        return f"the answer is not JSON (NaN or Infinity in it): {answer!r:.300}"
    if answer[0] == 3:
        if expect.result_id is None or answer[1] != expect.result_id:
            return f"CALLRESULT {answer!r:.300} where an error was due"
        assert case.action is not None
        problems = list(validator(version, f"{case.action}Response").iter_errors(answer[2]))
        if problems:
            return f"invalid {case.action} response: {problems[0].message}"
        return None
    if len(answer) != 5 or not isinstance(answer[3], str) or not isinstance(answer[4], dict):
        return f"malformed CALLERROR {answer!r:.300}"
    if (answer[1], answer[2]) not in expect.errors:
        wanted = sorted(expect.errors) + ([(expect.result_id, "CALLRESULT")]
                                          if expect.result_id is not None else [])
        return (f"got ({answer[1]!r:.60}, {answer[2]}: {answer[3]!r:.120}), "
                f"expected one of {wanted!r:.200}")
    return None


@dataclass
class Report:
    seed: int
    version: str
    problems: list[str] = field(default_factory=list)

    def add(self, index: int, case: Case, problem: str) -> None:
        self.problems.append(f"#{index} {case.describe()}\n      -> {problem}")

    def text(self) -> str:
        head = (f"{len(self.problems)} wrong answer(s), OCPP {self.version}, seed {self.seed} "
                f"(VOLTPILOT_FUZZ_SEED replays it):")
        return "\n".join([head, *self.problems[:25]])


HEALTH_REQUEST: Payload = {"getVariableData": [
    {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}


async def assert_healthy(rig: StationRig, answers: Answers, connections: int) -> None:
    """The station answers, runs, has no fault, and was not reconnected; nothing it sent since
    the last answer looked at was an answer nobody asked for."""
    csms = rig.csms
    assert answers.rest() == [], "answers nobody asked for"
    # A raw frame rather than csms.request(): the `ocpp` library's ChargePoint looks for its
    # answer recursively through every unclaimed answer queued, and the fuzz leaves thousands.
    await csms.cps[IDENTITY]._connection.send(
        frame_text([2, "health", "GetVariables", HEALTH_REQUEST]))
    got = await answers.next()
    assert got is not None and got[:2] == [3, "health"], got
    assert got[2]["getVariableResult"][0]["attributeStatus"] == "Accepted"
    assert rig.task is not None and not rig.task.done()
    status = rig.status()
    assert status["faults"] == []
    assert status["session"] is None or status["session"]["faults"] == []
    assert len(csms.connections) == connections, "the station's connection was dropped"


async def booted_again(rig: StationRig) -> None:
    csms = rig.csms
    await csms.wait_for(lambda: len(csms.calls("BootNotification")) >= 2, timeout=120)


def error_lines(rig: StationRig) -> list[str]:
    """The structured log's error-level records (the rig logs to the controller's file)."""
    path = next(p for p in (rig.data_dir / "voltpilot.log", rig.tmp_path / "test.log")
                if p.exists())
    text = path.read_text(encoding="utf-8")
    return [line[:400] for line in text.splitlines() if '"level": "error"' in line]


async def fuzz(rig: StationRig, answers: Answers, watchdog: Watchdog, version: str,
               seed: int, count: int) -> Report:
    csms = rig.csms
    await csms.next_call("StatusNotification")
    assert csms.connections[-1][1] == f"ocpp{version}"
    mutator = Mutator(random.Random(f"{seed}/{version}"), version)
    report = Report(seed, version)
    for index in range(count):
        case = mutator.case(f"fz-{index}")
        connection = csms.cps[IDENTITY]._connection
        watchdog.arm(f"#{index} {case.describe()}")
        await connection.send(case.raw)
        if case.expect.silent:
            # Nothing must come back: a request behind it is answered first instead.
            await connection.send(frame_text([2, f"probe-{index}", "GetLocalListVersion", {}]))
        answer = await answers.next()
        if answer is None:
            alive = rig.task is not None and not rig.task.done()
            pytest.fail(f"{report.text()}\n#{index} {case.describe()}\n      -> no answer "
                        f"within {ANSWER_TIMEOUT_S} s (controller running: {alive}, "
                        f"connections so far: {len(csms.connections)}, "
                        f"hung: {watchdog.fired or 'no'})")
        if case.expect.silent:
            if answer[:2] != [3, f"probe-{index}"]:
                report.add(index, case, f"answered {answer!r:.200}, expected no answer")
        elif (problem := judge(case, answer, version)) is not None:
            report.add(index, case, problem)
        if len(csms.connections) != 1:
            pytest.fail(f"{report.text()}\n#{index} {case.describe()}\n"
                        "      -> the connection dropped")
    await assert_healthy(rig, answers, connections=1)
    return report


def run_fuzz(tmp_path: Path, version: str, seed: int, count: int) -> None:
    async def body(rig: StationRig) -> None:
        answers = Answers(rig)
        with Watchdog() as watchdog:
            report = await fuzz(rig, answers, watchdog, version, seed, count)
        assert not report.problems, report.text()
        assert error_lines(rig) == []
        # Nothing persisted may stop the next start (a stored profile, a variable...).
        await rig.restart()
        await booted_again(rig)
        await assert_healthy(rig, answers, connections=2)
        assert error_lines(rig) == []

    StationRig.run(tmp_path, body, versions=(f"ocpp{version}",))


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
def test_mutated_frames_get_the_right_callerror(tmp_path: Path, version: str) -> None:
    run_fuzz(tmp_path, version, SEED, BOUNDED_FRAMES)


@pytest.mark.soak
@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
def test_mutated_frames_soak(tmp_path: Path, version: str) -> None:
    run_fuzz(tmp_path, version, SEED + 1, SOAK_FRAMES)


def test_the_seed_requests_are_valid() -> None:
    for version in ("2.0.1", "2.1"):
        for action, payload in bases(version):
            problems = [e.message for e in validator(version, f"{action}Request")
                        .iter_errors(payload)]
            assert problems == [], (version, action, problems)


def test_the_generator_covers_every_kind_and_replays() -> None:
    for version in ("2.0.1", "2.1"):
        first = Mutator(random.Random(1), version)
        again = Mutator(random.Random(1), version)
        cases = [first.case(f"fz-{i}") for i in range(BOUNDED_FRAMES)]
        assert cases == [again.case(f"fz-{i}") for i in range(BOUNDED_FRAMES)]
        kinds = {c.kind for c in cases}
        assert len(kinds) >= 24, sorted(kinds)


# ---- frames that each found a fault, kept as their own cases -----------------------------------

def _scp(limit: str, profile_id: str = "7") -> str:
    return ('[2,"scp","SetChargingProfile",{"evseId":0,"chargingProfile":{"id":' + profile_id
            + ',"stackLevel":0,"chargingProfilePurpose":"ChargingStationMaxProfile",'
            '"chargingProfileKind":"Absolute","chargingSchedule":[{"id":1,'
            '"chargingRateUnit":"A","startSchedule":"2025-01-01T00:00:00Z",'
            '"chargingSchedulePeriod":[{"startPeriod":0,"limit":' + limit + '}]}]}}]')


def _daily() -> str:
    """A daily TxDefaultProfile with no end of validity."""
    request = copy.deepcopy(dict(_BASES)["SetChargingProfile"])
    request["chargingProfile"] = copy.deepcopy(_BASES[13][1]["chargingProfile"])
    del request["chargingProfile"]["validFrom"], request["chargingProfile"]["validTo"]
    return frame_text([2, "daily", "SetChargingProfile", {**request, "evseId": 1}])


_DAILY = _daily()
# Far deeper than the JSON parser follows, within the 128 KiB frame limit.
_DEEP = "[" * 50_000 + "]" * 50_000
_NOT_A_NUMBER = frozenset({("scp", TYPE), ("scp", PROPERTY), ("scp", FORMAT),
                           (UNKNOWN_ID, RPC_FRAMEWORK)})


@dataclass(frozen=True, slots=True)
class Regression:
    case: Case
    before: tuple[str, ...] = ()  # valid requests sent first (each must get a CALLRESULT)


_REGRESSIONS = {r.case.kind: r for r in (
    # Found: ValueError ("embedded null byte") escaped the schema lookup, which opens a file
    # named after the action; it ended Rpc.serve(), the session and the Link task, so the
    # station stayed offline until restarted. A lone surrogate (UnicodeEncodeError) likewise.
    Regression(Case("nul_in_action", "Reset", '[2,"n1","Reset\\u0000",{"type":"Immediate"}]',
                    error("n1", NOT_IMPLEMENTED))),
    Regression(Case("surrogate_in_action", "Reset", '[2,"n2","\\ud800Reset",{}]',
                    error("n2", NOT_IMPLEMENTED))),
    # Found: json.loads on bytes decodes with "surrogatepass", so a binary frame with an
    # encoded surrogate reached the same lookup.
    Regression(Case("encoded_surrogate_in_binary_frame", "ClearCache",
                    b'[2,"n3","\xed\xa0\x80ClearCache",{}]', error(UNKNOWN_ID, RPC_FRAMEWORK))),
    # Found: RecursionError escaped json.loads, with the same outcome.
    Regression(Case("deep_frame", None, _DEEP, error(UNKNOWN_ID, RPC_FRAMEWORK))),
    Regression(Case("deep_payload", "GetVariables", '[2,"d1","GetVariables",' + _DEEP + "]",
                    error(UNKNOWN_ID, RPC_FRAMEWORK))),
    # Found: another version's schema directory was read, and the call answered NotSupported
    # as though "../../v21/schemas/SetDERControl" were an OCPP action.
    Regression(Case("path_as_action", "SetDERControl",
                    '[2,"p1","../../v21/schemas/SetDERControl",{}]',
                    error("p1", NOT_IMPLEMENTED))),
    # Found: NaN was accepted and stored (the composite schedule then said NaN); Infinity and
    # 1e999 were stored before the arbiter refused them, so the answer was InternalError and
    # the stored profile failed every later apply_profiles(), the one at start-up included.
    Regression(Case("nan_limit", "SetChargingProfile", _scp("NaN"),
                    Expect(errors=_NOT_A_NUMBER))),
    Regression(Case("infinite_limit", "SetChargingProfile", _scp("Infinity"),
                    Expect(errors=_NOT_A_NUMBER))),
    Regression(Case("overflowing_limit", "SetChargingProfile", _scp("1e999"),
                    error("scp", TYPE, PROPERTY))),
    # Found: InternalError, as SQLite stores no integer beyond 64 bits.
    Regression(Case("huge_profile_id", "SetChargingProfile", _scp("16.0", str(10**30)),
                    result_or_error("scp", TYPE, PROPERTY))),
    Regression(Case("huge_list_version", "SendLocalList",
                    '[2,"l1","SendLocalList",{"versionNumber":' + str(10**30)
                    + ',"updateType":"Full"}]', result_or_error("l1", TYPE, PROPERTY))),
    # Found: InternalError, as SQLite encodes no lone surrogate in UTF-8.
    Regression(Case("surrogate_variable", "SetVariables",
                    '[2,"s1","SetVariables",{"setVariableData":[{"component":{"name":'
                    '"SecurityCtrlr"},"variable":{"name":"OrganizationName"},'
                    '"attributeValue":"\\ud800"}]}]', result_or_error("s1", FORMAT, PROPERTY,
                                                                     TYPE))),
    Regression(Case("surrogate_token", "SendLocalList",
                    '[2,"s2","SendLocalList",{"versionNumber":3,"updateType":"Full",'
                    '"localAuthorizationList":[{"idToken":{"idToken":"\\ud800",'
                    '"type":"ISO14443"},"idTokenInfo":{"status":"Accepted"}}]}]',
                    result_or_error("s2", FORMAT, PROPERTY, TYPE))),
    Regression(Case("surrogate_transaction_id", "GetTransactionStatus",
                    '[2,"s3","GetTransactionStatus",{"transactionId":"a\\udfffb"}]',
                    result_or_error("s3", FORMAT, PROPERTY, TYPE))),
    # Found: with a daily profile, the composite schedule for the longest duration a 32-bit
    # integer allows blocked the loop for seconds and made a 3 MB frame, which the CSMS
    # refused (1009) by closing the connection; for 10^30 s it ran until memory ran out.
    Regression(Case("composite_schedule_for_68_years", "GetCompositeSchedule",
                    '[2,"g1","GetCompositeSchedule",{"duration":2147483647,"evseId":1}]',
                    Expect(result_id="g1")), before=(_DAILY,)),
    Regression(Case("composite_schedule_for_10e30_s", "GetCompositeSchedule",
                    '[2,"g2","GetCompositeSchedule",{"duration":' + str(10**30)
                    + ',"evseId":1}]', result_or_error("g2", TYPE, PROPERTY)),
               before=(_DAILY,)),
)}


@pytest.mark.parametrize("name", sorted(_REGRESSIONS))
def test_frame_that_broke_the_station(tmp_path: Path, name: str) -> None:
    regression = _REGRESSIONS[name]
    case = regression.case

    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        answers = Answers(rig)
        connection = csms.cps[IDENTITY]._connection
        with Watchdog() as watchdog:
            for raw in regression.before:
                await connection.send(raw)
                answer = await answers.next()
                assert answer is not None and answer[0] == 3, answer
            watchdog.arm(case.describe())
            await connection.send(case.raw)
            answer = await answers.next(timeout=10)
            assert answer is not None, (f"no answer to {case.describe()}; connections: "
                                        f"{len(csms.connections)}; hung: "
                                        f"{watchdog.fired or 'no'}")
            assert judge(case, answer, "2.0.1") is None, judge(case, answer, "2.0.1")
            await assert_healthy(rig, answers, connections=1)
        assert error_lines(rig) == []
        await rig.restart()
        await booted_again(rig)
        await assert_healthy(rig, answers, connections=2)

    StationRig.run(tmp_path, body, versions=("ocpp2.0.1",))


async def _reconnects_after(rig: StationRig, send: Callable[[Any], Any]) -> None:
    csms = rig.csms
    await csms.next_call("StatusNotification")
    answers = Answers(rig)
    await send(csms.cps[IDENTITY]._connection)
    await booted_again(rig)
    await assert_healthy(rig, answers, connections=2)
    assert error_lines(rig) == []


def test_text_frame_that_is_not_utf8_closes_the_socket_and_the_station_reconnects(
        tmp_path: Path) -> None:
    # RFC 6455 8.1: the endpoint fails the connection (1007); the station comes back.
    async def send(ws: Any) -> None:
        await ws.send(b'[2,"u1","GetLocalListVersion",{"x":"\xff"}]', text=True)

    StationRig.run(tmp_path, lambda rig: _reconnects_after(rig, send))


def test_frame_over_the_size_limit_closes_the_socket_and_the_station_reconnects(
        tmp_path: Path) -> None:
    async def send(ws: Any) -> None:
        await ws.send('[2,"big","DataTransfer",{"vendorId":"x","data":"' + "x" * 2**20 + '"}]')

    StationRig.run(tmp_path, lambda rig: _reconnects_after(rig, send))


def test_b05_integer_variables_take_32_bit_ascii_integers_only(tmp_path: Path) -> None:
    # Found: an integer variable without a declared maximum (AuthCacheCtrlr.LifeTime) took a
    # 401-digit value, after which every card tap died in the authorization cache (SQLite
    # OverflowError) and nobody could start charging; and "٣٠" (Arabic-Indic digits, which
    # Python's int() reads as 30) was stored and reported back as the HeartbeatInterval.
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        answer = await csms.request(IDENTITY, "SetVariables", {"setVariableData": [
            {"component": {"name": "AuthCacheCtrlr"}, "variable": {"name": "LifeTime"},
             "attributeValue": "1" + "0" * 400},
            {"component": {"name": "AuthCacheCtrlr"}, "variable": {"name": "LifeTime"},
             "attributeValue": str(2**31)},
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"},
             "attributeValue": "\u0663\u0660"}]})
        assert [r["attributeStatus"] for r in answer["setVariableResult"]] == [
            "Rejected", "Rejected", "Rejected"]
        csms.tokens["CARD1"] = "Accepted"
        rig.do("plug", profile="compact_3p")
        rig.do("tap", id_token="CARD1")
        await rig.until(lambda: rig.status()["contactor"])
        assert error_lines(rig) == []

    StationRig.run(tmp_path, body)
