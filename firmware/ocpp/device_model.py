"""The OCPP 2.x device model (spec part 2, chapter B "Provisioning", use cases B05–B08).

Holds the values of the components and variables declared in `device_model_vars`, persists the
persistent ones in the OCPP store, and answers the CSMS's GetVariables, SetVariables,
GetBaseReport and GetReport requests with the per-item statuses the spec asks for. The station
reads its configuration through the typed getters (`get_int`, `get_bool`, ...) and keeps the
values only it knows (availability, entry counts, the active network profile) with
`set_internal`.

Everything here is synchronous and does no network I/O: the station routes requests in, sends
the responses and NotifyReport messages out, and maps `RequestTooLargeError` to a CALLERROR.
The one clock-dependent variable (ClockCtrlr.DateTime) is read through a source the station
registers with `add_source`, so no function here reads the time itself.

WriteOnly values (BasicAuthPassword) are never returned by GetVariables, never put in a report
and never logged; only the station reads them, through the typed getters.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any

from firmware import logs
from firmware.ocpp.db import transaction
from firmware.ocpp.rpc import INT32

log = logs.get("ocpp.device_model")


class DataType(StrEnum):
    STRING = "string"
    DECIMAL = "decimal"
    INTEGER = "integer"
    DATE_TIME = "dateTime"
    BOOLEAN = "boolean"
    OPTION_LIST = "OptionList"
    SEQUENCE_LIST = "SequenceList"
    MEMBER_LIST = "MemberList"


class Mutability(StrEnum):
    READ_ONLY = "ReadOnly"
    WRITE_ONLY = "WriteOnly"
    READ_WRITE = "ReadWrite"


class Attribute(StrEnum):
    ACTUAL = "Actual"
    TARGET = "Target"
    MIN_SET = "MinSet"
    MAX_SET = "MaxSet"


class ReportBase(StrEnum):
    FULL_INVENTORY = "FullInventory"
    CONFIGURATION_INVENTORY = "ConfigurationInventory"
    SUMMARY_INVENTORY = "SummaryInventory"


class Criterion(StrEnum):
    """GetReport componentCriteria: a component matches when its variable of that name is true."""

    ACTIVE = "Active"
    AVAILABLE = "Available"
    ENABLED = "Enabled"
    PROBLEM = "Problem"


class GetStatus(StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    UNKNOWN_COMPONENT = "UnknownComponent"
    UNKNOWN_VARIABLE = "UnknownVariable"
    NOT_SUPPORTED_ATTRIBUTE_TYPE = "NotSupportedAttributeType"


class SetStatus(StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    UNKNOWN_COMPONENT = "UnknownComponent"
    UNKNOWN_VARIABLE = "UnknownVariable"
    NOT_SUPPORTED_ATTRIBUTE_TYPE = "NotSupportedAttributeType"
    REBOOT_REQUIRED = "RebootRequired"


class ReportStatus(StrEnum):
    """GenericDeviceModelStatusEnumType, the answer to GetBaseReport and GetReport."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    NOT_SUPPORTED = "NotSupported"
    EMPTY_RESULT_SET = "EmptyResultSet"


class ReasonCode(StrEnum):
    """statusInfo.reasonCode values, spelled as in the spec's list of reason codes."""

    INVALID_VALUE = "InvalidValue"
    VALUE_OUT_OF_RANGE = "ValueOutOfRange"
    VALUE_POSITIVE_ONLY = "ValuePositiveOnly"
    VALUE_ZERO_NOT_ALLOWED = "ValueZeroNotAllowed"
    VALUE_TOO_LOW = "ValueTooLow"
    TOO_LARGE_ELEMENT = "TooLargeElement"
    READ_ONLY = "ReadOnly"
    WRITE_ONLY = "WriteOnly"
    NOT_FOUND = "NotFound"
    UNSUPPORTED_PARAM = "UnsupportedParam"


class CallErrorCode(StrEnum):
    OCCURRENCE_CONSTRAINT_VIOLATION = "OccurrenceConstraintViolation"
    FORMAT_VIOLATION = "FormatViolation"


class ChangeSource(StrEnum):
    CSMS = "csms"
    STATION = "station"


class RequestTooLargeError(Exception):
    """A request over DeviceDataCtrlr ItemsPerMessage/BytesPerMessage: answer with a CALLERROR.

    B06.FR.16/B06.FR.17 let the station answer an oversized GetVariablesRequest with
    OccurrenceConstraintViolation (too many items) or FormatViolation (too many bytes); we apply
    the same rule to SetVariables and GetReport, whose limits are declared the same way. The
    station maps `code` to the CALLERROR code (the `ocpp` library's
    OccurrenceConstraintViolationError / FormatViolationError).
    """

    def __init__(self, code: CallErrorCode, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class UndeclaredVariableError(LookupError):
    """The station asked for a variable the declarations do not have (a programming error)."""


class UnsetVariableError(LookupError):
    """A typed getter was asked for a variable that has no value."""


@dataclass(frozen=True, slots=True)
class VarKey:
    """A component-variable: component name, its instance and EVSE/connector, variable name,
    its instance. Names and instances compare case-insensitively, as the spec says."""

    component: str
    variable: str
    component_instance: str | None = None
    variable_instance: str | None = None
    evse: int | None = None
    connector: int | None = None

    def __post_init__(self) -> None:
        if self.connector is not None and self.evse is None:
            raise ValueError(f"{self}: a connector id needs an EVSE id")

    def component_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.component}
        if self.component_instance is not None:
            out["instance"] = self.component_instance
        if self.evse is not None:
            evse: dict[str, Any] = {"id": self.evse}
            if self.connector is not None:
                evse["connectorId"] = self.connector
            out["evse"] = evse
        return out

    def variable_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.variable}
        if self.variable_instance is not None:
            out["instance"] = self.variable_instance
        return out

    def __str__(self) -> str:
        text = self.component
        if self.component_instance is not None:
            text += f"({self.component_instance})"
        if self.evse is not None:
            text += f"@{self.evse}" + (f".{self.connector}" if self.connector is not None else "")
        text += f".{self.variable}"
        if self.variable_instance is not None:
            text += f"[{self.variable_instance}]"
        return text


_Comp = tuple[str, str | None, int | None, int | None]
_Norm = tuple[str, str | None, int | None, int | None, str, str | None]


def _lower(text: str | None) -> str | None:
    return None if text is None else text.lower()


def _norm(key: VarKey) -> _Norm:
    return (key.component.lower(), _lower(key.component_instance), key.evse, key.connector,
            key.variable.lower(), _lower(key.variable_instance))


@dataclass(frozen=True, slots=True)
class Declaration:
    """One variable as the station implements it: its characteristics and attributes.

    `default` is the Actual value at first start (or every start, for non-persistent and
    constant variables); the station's overrides replace it with board-derived values. For
    string variables minLimit/maxLimit bound the length. `reboot_required`: a SetVariables
    change is stored as pending and takes effect at the next start (answered RebootRequired).
    `secret` marks a WriteOnly value that must never be logged. `allow_empty` lets a list
    variable hold no members (e.g. a measurand list that disables sampling).
    """

    key: VarKey
    data_type: DataType
    mutability: Mutability
    default: str | None = None
    unit: str | None = None
    min_limit: float | None = None
    max_limit: float | None = None
    values_list: tuple[str, ...] = ()
    extra_attributes: tuple[Attribute, ...] = ()
    persistent: bool = True
    constant: bool = False
    reboot_required: bool = False
    secret: bool = False
    allow_empty: bool = False

    def __post_init__(self) -> None:
        lists = (DataType.OPTION_LIST, DataType.SEQUENCE_LIST, DataType.MEMBER_LIST)
        problems = [
            (self.data_type in lists and not self.values_list, "a list type needs values_list"),
            (self.secret and self.mutability is not Mutability.WRITE_ONLY,
             "a secret must be WriteOnly"),
            (self.constant and self.mutability is not Mutability.READ_ONLY,
             "a constant must be ReadOnly"),
            (self.reboot_required and not (self.persistent and self.writable),
             "reboot_required needs a persistent writable variable"),
            (Attribute.ACTUAL in self.extra_attributes or
             len(set(self.extra_attributes)) != len(self.extra_attributes),
             "extra_attributes lists Target/MinSet/MaxSet once each"),
        ]
        for bad, why in problems:
            if bad:
                raise ValueError(f"declaration {self.key}: {why}")

    @property
    def attributes(self) -> tuple[Attribute, ...]:
        return (Attribute.ACTUAL, *self.extra_attributes)

    @property
    def writable(self) -> bool:
        return self.mutability is not Mutability.READ_ONLY

    @property
    def readable(self) -> bool:
        return self.mutability is not Mutability.WRITE_ONLY


@dataclass(frozen=True, slots=True, repr=False)
class Change:
    """A value that changed. `pending`: stored for the next start (RebootRequired), not yet in
    effect. The repr hides the values of secret variables so a logged Change leaks nothing."""

    key: VarKey
    attribute: Attribute
    old: str | None
    new: str
    pending: bool
    source: ChangeSource
    secret: bool = False

    def __repr__(self) -> str:
        old, new = ("***", "***") if self.secret else (repr(self.old), repr(self.new))
        return (f"Change({self.key}, {self.attribute}, {old} -> {new}, pending={self.pending}, "
                f"source={self.source})")


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: ReasonCode
    info: str


Validator = Callable[[str, str | None], str | None]
"""fn(new_value, old_value) -> None to accept, or a reasonCode (e.g. "ValueTooLow") to reject."""


def never_lower(new: str, old: str | None) -> str | None:
    """A validator for SecurityCtrlr.SecurityProfile: the profile may only be raised (A05)."""
    if old is not None and int(new) < int(old):
        return ReasonCode.VALUE_TOO_LOW.value
    return None


# ASCII digits only (\d would take "٣٠"), and OCPP's integer is 32 bits.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_datetime(text: str) -> datetime | None:
    """An OCPP dateTime (with 'Z' or an offset, with or without fractional seconds)."""
    if "T" not in text.upper():
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def normalize(decl: Declaration, value: str) -> str | Invalid:
    """The canonical form of `value` for `decl`, or why it is not a valid value (B05.FR.07).

    Booleans and list members are matched case-insensitively and stored in the declared
    spelling; list items lose surrounding spaces.
    """
    match decl.data_type:
        case DataType.STRING:
            return _check_length(decl, value)
        case DataType.INTEGER:
            if not _INTEGER.fullmatch(value) or len(value) > 11:
                return Invalid(ReasonCode.INVALID_VALUE, "not an integer")
            number = int(value)
            if not INT32[0] <= number <= INT32[1]:
                return Invalid(ReasonCode.VALUE_OUT_OF_RANGE, "outside the 32-bit integer range")
            return _check_range(decl, number) or value
        case DataType.DECIMAL:
            if not _DECIMAL.fullmatch(value) or not math.isfinite(float(value)):
                return Invalid(ReasonCode.INVALID_VALUE, "not a decimal")
            return _check_range(decl, float(value)) or value
        case DataType.BOOLEAN:
            if value.lower() not in ("true", "false"):
                return Invalid(ReasonCode.INVALID_VALUE, "not true or false")
            return value.lower()
        case DataType.DATE_TIME:
            if parse_datetime(value) is None:
                return Invalid(ReasonCode.INVALID_VALUE, "not a dateTime with a time zone")
            return value
        case DataType.OPTION_LIST:
            option = _member(decl, value)
            return option if option is not None else Invalid(
                ReasonCode.INVALID_VALUE, f"not one of {','.join(decl.values_list)}")
        case DataType.SEQUENCE_LIST | DataType.MEMBER_LIST:
            return _normalize_list(decl, value)


def _check_length(decl: Declaration, value: str) -> str | Invalid:
    if decl.max_limit is not None and len(value) > decl.max_limit:
        return Invalid(ReasonCode.TOO_LARGE_ELEMENT, f"longer than {decl.max_limit:g}")
    if decl.min_limit is not None and len(value) < decl.min_limit:
        return Invalid(ReasonCode.INVALID_VALUE, f"shorter than {decl.min_limit:g}")
    return value


def _check_range(decl: Declaration, number: float) -> Invalid | None:
    low, high = decl.min_limit, decl.max_limit
    if low is not None and number < low:
        if number < 0 <= low:
            return Invalid(ReasonCode.VALUE_POSITIVE_ONLY, "negative")
        if number == 0 < low:
            return Invalid(ReasonCode.VALUE_ZERO_NOT_ALLOWED, "zero")
        return Invalid(ReasonCode.VALUE_OUT_OF_RANGE, f"below {low:g}")
    if high is not None and number > high:
        return Invalid(ReasonCode.VALUE_OUT_OF_RANGE, f"above {high:g}")
    return None


def _member(decl: Declaration, item: str) -> str | None:
    wanted = item.strip().lower()
    return next((v for v in decl.values_list if v.lower() == wanted), None)


def _normalize_list(decl: Declaration, value: str) -> str | Invalid:
    if not value.strip():
        return "" if decl.allow_empty else Invalid(ReasonCode.INVALID_VALUE, "empty list")
    members: list[str] = []
    for item in value.split(","):
        member = _member(decl, item)
        if member is None:
            return Invalid(ReasonCode.INVALID_VALUE, f"{item.strip()[:40]!r} is not allowed")
        if member in members:
            return Invalid(ReasonCode.INVALID_VALUE, f"{member} listed twice")
        members.append(member)
    return ",".join(members)


class _Miss(Enum):
    UNKNOWN_COMPONENT = "UnknownComponent"
    UNKNOWN_VARIABLE = "UnknownVariable"


_SUMMARY_CONDITIONS = frozenset({"problem", "tripped", "overload", "fallback"})
_FRAME_ID = "x" * 36  # OCPP-J message ids are at most 36 characters


def _frame_bytes(action: str, payload: Mapping[str, Any]) -> int:
    """Size of the CALL frame the `ocpp` library sends (compact JSON, ASCII-escaped)."""
    return len(json.dumps([2, _FRAME_ID, action, payload], separators=(",", ":")))


def _status_info(reason: str, info: str = "") -> dict[str, str]:
    out = {"reasonCode": str(reason)}
    if info:
        out["additionalInfo"] = info[:512]
    return out


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


class DeviceModel:
    """The station's device model over the OCPP store. Construct it once per start: pending
    (RebootRequired) values become effective here."""

    def __init__(self, db: sqlite3.Connection, declarations: Iterable[Declaration],
                 overrides: Mapping[VarKey, str | Mapping[Attribute, str]] | None = None) -> None:
        self._db = db
        self._decls: dict[_Norm, Declaration] = {}
        for decl in declarations:
            norm = _norm(decl.key)
            if norm in self._decls:
                raise ValueError(f"{decl.key} is declared twice")
            self._decls[norm] = decl
        self._components: set[_Comp] = {norm[:4] for norm in self._decls}
        self._values: dict[tuple[_Norm, Attribute], str] = {}
        self._pending: dict[tuple[_Norm, Attribute], str] = {}
        self._validators: dict[_Norm, list[Validator]] = {}
        self._sources: dict[_Norm, Callable[[], str]] = {}
        self._subscribers: list[Callable[[Change], None]] = []
        self._create_tables()
        self._load(overrides or {})

    # ---- start-up -------------------------------------------------------------------------

    def _create_tables(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS device_model_value (var TEXT NOT NULL, "
                         "attribute TEXT NOT NULL, value TEXT NOT NULL, "
                         "PRIMARY KEY (var, attribute))")
        self._db.execute("CREATE TABLE IF NOT EXISTS device_model_pending (var TEXT NOT NULL, "
                         "attribute TEXT NOT NULL, value TEXT NOT NULL, "
                         "PRIMARY KEY (var, attribute))")

    def _load(self, overrides: Mapping[VarKey, str | Mapping[Attribute, str]]) -> None:
        base: dict[tuple[_Norm, Attribute], str] = {}
        for norm, decl in self._decls.items():
            if decl.default is not None:
                base[norm, Attribute.ACTUAL] = decl.default
        for key, given in overrides.items():
            norm = _norm(key)
            if norm not in self._decls:
                raise ValueError(f"override for undeclared variable {key}")
            per_attribute = {Attribute.ACTUAL: given} if isinstance(given, str) else given
            for attribute, value in per_attribute.items():
                if attribute not in self._decls[norm].attributes:
                    raise ValueError(f"override for {key}: no {attribute} attribute")
                base[norm, attribute] = value
        for (norm, attribute), value in base.items():
            checked = normalize(self._decls[norm], value)
            if isinstance(checked, Invalid):
                raise ValueError(f"default or override of {self._decls[norm].key} "
                                 f"{attribute}: {checked.info}")
            self._values[norm, attribute] = checked
        applied = self._apply_pending()
        by_id = {self._var_id(norm): norm for norm in self._decls}
        for var, attribute, value in self._db.execute(
                "SELECT var, attribute, value FROM device_model_value").fetchall():
            self._restore(by_id.get(var), attribute, value)
        logs.log(log, "dm_loaded", variables=len(self._decls), pending_applied=applied)

    def _apply_pending(self) -> int:
        """Pending (RebootRequired) values become the stored values at start."""
        with transaction(self._db):
            count = self._db.execute("INSERT OR REPLACE INTO device_model_value "
                                     "SELECT var, attribute, value FROM device_model_pending"
                                     ).rowcount
            self._db.execute("DELETE FROM device_model_pending")
        return count

    def _restore(self, norm: _Norm | None, attribute_text: str, value: str) -> None:
        decl = self._decls.get(norm) if norm is not None else None
        if decl is None or norm is None or not decl.persistent or decl.constant:
            return
        try:
            attribute = Attribute(attribute_text)
        except ValueError:
            return
        checked = normalize(decl, value)
        if attribute not in decl.attributes or isinstance(checked, Invalid):
            # A stored value the current declarations no longer accept (e.g. a range narrowed
            # by an update): fall back to the default rather than run with it.
            logs.log(log, "dm_stored_value_ignored", logging.WARNING, variable=str(decl.key),
                     attribute=attribute_text)
            return
        self._values[norm, attribute] = checked

    @staticmethod
    def _var_id(norm: _Norm) -> str:
        return json.dumps(norm)

    # ---- lookup ---------------------------------------------------------------------------

    def _decl(self, component: str, variable: str, *, instance: str | None,
              component_instance: str | None, evse: int | None,
              connector: int | None) -> Declaration:
        key = VarKey(component, variable, component_instance, instance, evse, connector)
        decl = self._decls.get(_norm(key))
        if decl is None:
            raise UndeclaredVariableError(str(key))
        return decl

    def _resolve(self, component: Mapping[str, Any],
                 variable: Mapping[str, Any]) -> Declaration | _Miss:
        evse = component.get("evse") or {}
        comp: _Comp = (str(component["name"]).lower(), _lower(component.get("instance")),
                       evse.get("id"), evse.get("connectorId"))
        if comp not in self._components:
            return _Miss.UNKNOWN_COMPONENT
        # B06.FR.14/B06.FR.15: the variable instance must match exactly; a variable that
        # only exists with an instance is unknown when asked for without one.
        decl = self._decls.get((*comp, str(variable["name"]).lower(),
                                _lower(variable.get("instance"))))
        return decl if decl is not None else _Miss.UNKNOWN_VARIABLE

    def _current(self, norm: _Norm, attribute: Attribute) -> str | None:
        source = self._sources.get(norm)
        if source is not None and attribute is Attribute.ACTUAL:
            return source()
        return self._values.get((norm, attribute))

    # ---- station API ----------------------------------------------------------------------

    def get(self, component: str, variable: str, *, instance: str | None = None,
            component_instance: str | None = None, evse: int | None = None,
            connector: int | None = None, attribute: Attribute = Attribute.ACTUAL) -> str | None:
        """The value in effect (a pending RebootRequired value is not), or None when unset.
        WriteOnly values are returned too: this is the station's own access."""
        decl = self._decl(component, variable, instance=instance,
                          component_instance=component_instance, evse=evse, connector=connector)
        return self._current(_norm(decl.key), attribute)

    def get_str(self, component: str, variable: str, *, instance: str | None = None,
                component_instance: str | None = None, evse: int | None = None,
                connector: int | None = None) -> str:
        value = self.get(component, variable, instance=instance,
                         component_instance=component_instance, evse=evse, connector=connector)
        if value is None:
            raise UnsetVariableError(f"{component}.{variable} has no value")
        return value

    def get_int(self, component: str, variable: str, *, instance: str | None = None,
                component_instance: str | None = None, evse: int | None = None,
                connector: int | None = None) -> int:
        return int(self.get_str(component, variable, instance=instance,
                                component_instance=component_instance, evse=evse,
                                connector=connector))

    def get_float(self, component: str, variable: str, *, instance: str | None = None,
                  component_instance: str | None = None, evse: int | None = None,
                  connector: int | None = None) -> float:
        return float(self.get_str(component, variable, instance=instance,
                                  component_instance=component_instance, evse=evse,
                                  connector=connector))

    def get_bool(self, component: str, variable: str, *, instance: str | None = None,
                 component_instance: str | None = None, evse: int | None = None,
                 connector: int | None = None) -> bool:
        return self.get_str(component, variable, instance=instance,
                            component_instance=component_instance, evse=evse,
                            connector=connector) == "true"

    def get_list(self, component: str, variable: str, *, instance: str | None = None,
                 component_instance: str | None = None, evse: int | None = None,
                 connector: int | None = None) -> list[str]:
        """A comma-separated value as its members (empty list for an empty value)."""
        value = self.get_str(component, variable, instance=instance,
                             component_instance=component_instance, evse=evse,
                             connector=connector)
        return [item.strip() for item in value.split(",") if item.strip()]

    def add_validator(self, component: str, variable: str, fn: Validator, *,
                      instance: str | None = None, component_instance: str | None = None,
                      evse: int | None = None, connector: int | None = None) -> None:
        """A station rule checked on every SetVariables of this variable after the declared
        type and range checks; `fn(new, old)` returns a reasonCode to reject the value."""
        decl = self._decl(component, variable, instance=instance,
                          component_instance=component_instance, evse=evse, connector=connector)
        self._validators.setdefault(_norm(decl.key), []).append(fn)

    def add_source(self, component: str, variable: str, fn: Callable[[], str], *,
                   instance: str | None = None, component_instance: str | None = None,
                   evse: int | None = None, connector: int | None = None) -> None:
        """Read the Actual value of a ReadOnly variable from `fn` whenever it is asked for
        (ClockCtrlr.DateTime from the station's clock)."""
        decl = self._decl(component, variable, instance=instance,
                          component_instance=component_instance, evse=evse, connector=connector)
        if decl.writable:
            raise ValueError(f"{decl.key}: only ReadOnly variables can have a source")
        self._sources[_norm(decl.key)] = fn

    def subscribe(self, fn: Callable[[Change], None]) -> Callable[[], None]:
        """Be told of every change in effect: `set_internal` ones at once, SetVariables ones
        when the station `publish`es them. Returns a function that unsubscribes."""
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn)

    def publish(self, changes: Iterable[Change]) -> None:
        """Tell subscribers about SetVariables changes; the station calls this once the
        SetVariablesResponse is sent, so a subscriber that reconnects (a new BasicAuthPassword,
        A01) does not cut the response off. Pending changes are not in effect and are skipped."""
        for change in changes:
            if not change.pending:
                self._notify(change)

    def _notify(self, change: Change) -> None:
        for fn in list(self._subscribers):
            try:
                fn(change)
            except Exception:
                # One faulty subscriber must not keep the others from hearing of the change.
                log.exception("dm_subscriber_failed", extra={"fields": {
                    "variable": str(change.key)}})

    def set_internal(self, component: str, variable: str, value: str, *,
                     instance: str | None = None, component_instance: str | None = None,
                     evse: int | None = None, connector: int | None = None,
                     attribute: Attribute = Attribute.ACTUAL) -> Change | None:
        """Set a value the station maintains itself, whatever its mutability (availability,
        entry counts, the active network profile). Persisted if the variable is persistent;
        subscribers are told at once. Returns the change, or None if the value is unchanged.
        A pending RebootRequired value of the variable still takes effect at the next start.
        Raises ValueError for a constant or an invalid value."""
        decl = self._decl(component, variable, instance=instance,
                          component_instance=component_instance, evse=evse, connector=connector)
        if decl.constant or attribute not in decl.attributes:
            raise ValueError(f"{decl.key} {attribute} cannot be set")
        checked = normalize(decl, value)
        if isinstance(checked, Invalid):
            raise ValueError(f"{decl.key}: invalid value ({checked.info})")
        norm = _norm(decl.key)
        old = self._values.get((norm, attribute))
        if old == checked:
            return None
        if decl.persistent:
            self._db.execute("INSERT OR REPLACE INTO device_model_value VALUES (?, ?, ?)",
                             (self._var_id(norm), attribute.value, checked))
        self._values[norm, attribute] = checked
        change = Change(decl.key, attribute, old, checked, False, ChangeSource.STATION,
                        decl.secret or not decl.readable)
        self._notify(change)
        return change

    # ---- GetVariables / SetVariables (B06 / B05) ------------------------------------------

    def _check_request(self, message: str, items: int, payload: Mapping[str, Any],
                       frame_bytes: int | None) -> None:
        max_items = self._limit("ItemsPerMessage", message)
        if max_items is not None and items > max_items:
            raise RequestTooLargeError(
                CallErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
                f"{items} items; ItemsPerMessage{message} is {max_items}")
        max_bytes = self._limit("BytesPerMessage", message)
        size = frame_bytes if frame_bytes is not None else _frame_bytes(message, payload)
        if max_bytes is not None and size > max_bytes:
            raise RequestTooLargeError(CallErrorCode.FORMAT_VIOLATION,
                                       f"{size} bytes; BytesPerMessage{message} is {max_bytes}")

    def _limit(self, variable: str, instance: str | None) -> int | None:
        decl = self._decls.get(("devicedatactrlr", None, None, None, variable.lower(),
                                _lower(instance)))
        value = self._current(_norm(decl.key), Attribute.ACTUAL) if decl else None
        return int(value) if value is not None else None

    def _value_size(self, specific: str) -> int | None:
        """ConfigurationValueSize / ReportingValueSize, falling back to ValueSize."""
        for name in (specific, "ValueSize"):
            size = self._limit(name, None)
            if size is not None:
                return size
        return None

    def get_variables(self, payload: Mapping[str, Any], *,
                      frame_bytes: int | None = None) -> dict[str, Any]:
        """Answer a GetVariablesRequest. `frame_bytes`: the size of the received frame, if the
        station knows it; otherwise the size of the payload re-encoded is used.

        Raises RequestTooLargeError past ItemsPerMessage/BytesPerMessage GetVariables.
        """
        items: Sequence[Mapping[str, Any]] = payload["getVariableData"]
        self._check_request("GetVariables", len(items), payload, frame_bytes)
        size = min(self._value_size("ReportingValueSize") or 2500, 2500)
        # B06.FR.01: one result per requested item, in order.
        return {"getVariableResult": [self._get_one(item, size) for item in items]}

    def _get_one(self, item: Mapping[str, Any], size: int) -> dict[str, Any]:
        attribute = Attribute(item.get("attributeType", Attribute.ACTUAL))
        # B06.FR.02/B06.FR.03: echo the component, the variable and the attribute type.
        result: dict[str, Any] = {"attributeType": attribute.value,
                                  "component": item["component"], "variable": item["variable"]}
        decl = self._resolve(item["component"], item["variable"])
        if isinstance(decl, _Miss):
            # B06.FR.06/B06.FR.07
            result["attributeStatus"] = decl.value
            result["attributeStatusInfo"] = _status_info(ReasonCode.NOT_FOUND)
        elif attribute not in decl.attributes:
            result["attributeStatus"] = GetStatus.NOT_SUPPORTED_ATTRIBUTE_TYPE.value  # B06.FR.08
            result["attributeStatusInfo"] = _status_info(ReasonCode.UNSUPPORTED_PARAM)
        elif not decl.readable:
            result["attributeStatus"] = GetStatus.REJECTED.value  # B06.FR.09
            result["attributeStatusInfo"] = _status_info(ReasonCode.WRITE_ONLY)
        else:
            result["attributeStatus"] = GetStatus.ACCEPTED.value
            # B06.FR.13: a supported attribute without a value reads as an empty string.
            # ReportingValueSize truncates what is returned.
            result["attributeValue"] = (self._current(_norm(decl.key), attribute) or "")[:size]
        return result

    def set_variables(self, payload: Mapping[str, Any], *,
                      frame_bytes: int | None = None) -> tuple[dict[str, Any], list[Change]]:
        """Answer a SetVariablesRequest. Accepted values are in effect and persisted, and
        RebootRequired ones stored as pending, before this returns. The changes are returned
        for the station to `publish` after sending the response.

        Raises RequestTooLargeError past ItemsPerMessage/BytesPerMessage SetVariables.
        """
        items: Sequence[Mapping[str, Any]] = payload["setVariableData"]
        self._check_request("SetVariables", len(items), payload, frame_bytes)
        staged: dict[tuple[_Norm, Attribute], str] = {}
        pending: dict[tuple[_Norm, Attribute], str | None] = {}
        results: list[dict[str, Any]] = []
        changes: list[Change] = []
        for item in items:
            result, change = self._set_one(item, staged, pending)
            results.append(result)
            if change is not None:
                changes.append(change)
        self._commit(staged, pending)
        for item, result in zip(items, results, strict=True):
            self._log_set(item, result)
        return {"setVariableResult": results}, changes

    def _set_one(self, item: Mapping[str, Any], staged: dict[tuple[_Norm, Attribute], str],
                 pending: dict[tuple[_Norm, Attribute], str | None],
                 ) -> tuple[dict[str, Any], Change | None]:
        attribute = Attribute(item.get("attributeType", Attribute.ACTUAL))
        # B05.FR.02/B05.FR.12: echo the attribute type, Actual when the request had none.
        result: dict[str, Any] = {"attributeType": attribute.value,
                                  "component": item["component"], "variable": item["variable"]}

        def answer(status: SetStatus, reason: str | None = None,
                   info: str = "") -> dict[str, Any]:
            result["attributeStatus"] = status.value
            if reason is not None:
                result["attributeStatusInfo"] = _status_info(reason, info)
            return result

        decl = self._resolve(item["component"], item["variable"])
        if isinstance(decl, _Miss):  # B05.FR.04/B05.FR.05
            return answer(SetStatus(decl.value), ReasonCode.NOT_FOUND), None
        if attribute not in decl.attributes:  # B05.FR.06
            return answer(SetStatus.NOT_SUPPORTED_ATTRIBUTE_TYPE,
                          ReasonCode.UNSUPPORTED_PARAM), None
        if not decl.writable:  # B05.FR.08
            return answer(SetStatus.REJECTED, ReasonCode.READ_ONLY), None
        raw: str = item["attributeValue"]
        size = self._value_size("ConfigurationValueSize")
        if size is not None and len(raw) > size:
            return answer(SetStatus.REJECTED, ReasonCode.TOO_LARGE_ELEMENT,
                          f"longer than ConfigurationValueSize {size}"), None
        checked = normalize(decl, raw)
        if isinstance(checked, Invalid):  # B05.FR.07
            return answer(SetStatus.REJECTED, checked.reason, checked.info), None
        norm = _norm(decl.key)
        slot = (norm, attribute)
        old = staged.get(slot, self._values.get(slot))
        for validator in self._validators.get(norm, []):
            verdict = validator(checked, old)
            if verdict is not None:
                # A verdict too long for a reasonCode (20 characters) is an explanation.
                if len(verdict) <= 20:
                    return answer(SetStatus.REJECTED, verdict), None
                return answer(SetStatus.REJECTED, ReasonCode.INVALID_VALUE, verdict), None
        secret = decl.secret or not decl.readable
        if decl.reboot_required:
            if checked == old:
                # Back to the value in effect: nothing waits for a reboot any more.
                pending[slot] = None
                return answer(SetStatus.ACCEPTED), None
            pending[slot] = checked  # B05.FR.09
            return answer(SetStatus.REBOOT_REQUIRED), Change(
                decl.key, attribute, old, checked, True, ChangeSource.CSMS, secret)
        if checked == old:
            return answer(SetStatus.ACCEPTED), None
        staged[slot] = checked  # B05.FR.10
        return answer(SetStatus.ACCEPTED), Change(decl.key, attribute, old, checked, False,
                                                  ChangeSource.CSMS, secret)

    def _commit(self, staged: Mapping[tuple[_Norm, Attribute], str],
                pending: Mapping[tuple[_Norm, Attribute], str | None]) -> None:
        """Write the accepted values in one transaction, then make them current."""
        if not staged and not pending:
            return
        with transaction(self._db):
            for (norm, attribute), value in staged.items():
                if self._decls[norm].persistent:
                    self._db.execute("INSERT OR REPLACE INTO device_model_value "
                                     "VALUES (?, ?, ?)",
                                     (self._var_id(norm), attribute.value, value))
            for (norm, attribute), maybe in pending.items():
                if maybe is None:
                    self._db.execute("DELETE FROM device_model_pending WHERE var = ? "
                                     "AND attribute = ?", (self._var_id(norm), attribute.value))
                else:
                    self._db.execute("INSERT OR REPLACE INTO device_model_pending "
                                     "VALUES (?, ?, ?)",
                                     (self._var_id(norm), attribute.value, maybe))
        self._values.update(staged)
        for slot, maybe in pending.items():
            if maybe is None:
                self._pending.pop(slot, None)
            else:
                self._pending[slot] = maybe

    def pending(self) -> dict[VarKey, str]:
        """Actual values stored by SetVariables that take effect at the next start (secret
        ones included: the caller must not log them)."""
        return {self._decls[norm].key: value for (norm, attribute), value in self._pending.items()
                if attribute is Attribute.ACTUAL}

    def _log_set(self, item: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        fields: dict[str, Any] = {
            "component": item["component"].get("name"), "variable": item["variable"].get("name"),
            "attribute": result["attributeType"], "status": result["attributeStatus"]}
        if "attributeStatusInfo" in result:
            fields["reason"] = result["attributeStatusInfo"]["reasonCode"]
        decl = self._resolve(item["component"], item["variable"])
        if isinstance(decl, Declaration) and decl.readable and not decl.secret:
            fields["value"] = item["attributeValue"]
        logs.log(log, "dm_set_variable", **fields)

    # ---- reports (B07 / B08) --------------------------------------------------------------

    def base_report(self, report_base: ReportBase) -> list[dict[str, Any]]:
        """The ReportData items of a base report, in declaration order.

        FullInventory: every variable (B07.FR.08). ConfigurationInventory: the variables the
        operator can set, ReadWrite and WriteOnly (B07.FR.07). SummaryInventory: the
        AvailabilityState of the station, its EVSEs and connectors, plus the Problem / Tripped
        / Overload / Fallback variables of components in that abnormal state (B07.FR.09).
        """
        if report_base is ReportBase.FULL_INVENTORY:
            chosen = list(self._decls.values())
        elif report_base is ReportBase.CONFIGURATION_INVENTORY:
            chosen = [decl for decl in self._decls.values() if decl.writable]
        else:
            chosen = [decl for norm, decl in self._decls.items() if self._in_summary(norm)]
        return [self._report_data(decl) for decl in chosen]

    def _in_summary(self, norm: _Norm) -> bool:
        if norm[4] == "availabilitystate":
            return True
        return norm[4] in _SUMMARY_CONDITIONS and self._current(norm, Attribute.ACTUAL) == "true"

    def get_base_report(self, payload: Mapping[str, Any], *,
                        busy: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Answer a GetBaseReportRequest: (response, ReportData items to send with
        `chunk_report` after the response). `busy`: a report is still being sent, so this
        one is Rejected."""
        try:
            base = ReportBase(payload["reportBase"])
        except ValueError:
            return {"status": ReportStatus.NOT_SUPPORTED.value}, []
        if busy:
            return {"status": ReportStatus.REJECTED.value}, []
        items = self.base_report(base)
        if not items:
            return {"status": ReportStatus.EMPTY_RESULT_SET.value}, []
        return {"status": ReportStatus.ACCEPTED.value}, items

    def get_report(self, payload: Mapping[str, Any], *, busy: bool = False,
                   frame_bytes: int | None = None,
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Answer a GetReportRequest (B08): the variables of the components that meet any of
        the componentCriteria and match any componentVariable entry. An entry without a
        variable, an instance or an EVSE matches all of them. A criterion holds for a
        component whose variable of that name (no instance) is "true"; components without
        that variable do not meet it. Nothing matching: EmptyResultSet.

        Raises RequestTooLargeError past ItemsPerMessage/BytesPerMessage GetReport.
        """
        wanted: Sequence[Mapping[str, Any]] = payload.get("componentVariable", [])
        self._check_request("GetReport", len(wanted), payload, frame_bytes)
        if busy:
            return {"status": ReportStatus.REJECTED.value}, []
        criteria = [Criterion(c) for c in payload.get("componentCriteria", [])]
        chosen = [decl for norm, decl in self._decls.items()
                  if (not criteria or any(self._meets(norm[:4], c) for c in criteria))
                  and (not wanted or any(_matches(decl.key, cv) for cv in wanted))]
        if not chosen:
            return {"status": ReportStatus.EMPTY_RESULT_SET.value}, []
        return ({"status": ReportStatus.ACCEPTED.value},
                [self._report_data(decl) for decl in chosen])

    def _meets(self, comp: _Comp, criterion: Criterion) -> bool:
        norm: _Norm = (*comp, criterion.value.lower(), None)
        return norm in self._decls and self._current(norm, Attribute.ACTUAL) == "true"

    def _report_data(self, decl: Declaration) -> dict[str, Any]:
        norm = _norm(decl.key)
        size = min(self._value_size("ReportingValueSize") or 2500, 2500)
        attributes: list[dict[str, Any]] = []
        for attribute in decl.attributes:
            # B07.FR.11: every supported attribute is reported, with or without a value.
            entry: dict[str, Any] = {"type": attribute.value,
                                     "mutability": decl.mutability.value,
                                     "persistent": decl.persistent, "constant": decl.constant}
            value = self._current(norm, attribute)
            if value is not None and decl.readable:  # B07.FR.03: no WriteOnly values
                entry["value"] = value[:size]
            attributes.append(entry)
        characteristics: dict[str, Any] = {"dataType": decl.data_type.value,
                                           "supportsMonitoring": False}
        if decl.unit is not None:
            characteristics["unit"] = decl.unit
        if decl.min_limit is not None:
            characteristics["minLimit"] = _number(decl.min_limit)
        if decl.max_limit is not None:
            characteristics["maxLimit"] = _number(decl.max_limit)
        if decl.values_list:
            characteristics["valuesList"] = ",".join(decl.values_list)
        return {"component": decl.key.component_dict(), "variable": decl.key.variable_dict(),
                "variableAttribute": attributes, "variableCharacteristics": characteristics}

    @staticmethod
    def chunk_report(items: Sequence[Mapping[str, Any]], *, request_id: int, generated_at: str,
                     items_per_message: int, bytes_per_message: int) -> list[dict[str, Any]]:
        """Split ReportData items into NotifyReportRequest payloads: seqNo from 0 (B07.FR.10),
        tbc true on all but the last, each CALL frame at most `bytes_per_message` bytes and
        `items_per_message` items. No items, no messages. Raises ValueError if one item
        alone does not fit."""
        if items_per_message < 1:
            raise ValueError("items_per_message must be at least 1")

        def envelope(seq_no: int) -> int:
            # "tbc":false is the longest form of the flag, so this bounds every message.
            return _frame_bytes("NotifyReport", {
                "requestId": request_id, "generatedAt": generated_at, "reportData": [],
                "tbc": False, "seqNo": seq_no})

        messages: list[list[Mapping[str, Any]]] = []
        current: list[Mapping[str, Any]] = []
        used = 0
        for item in items:
            size = len(json.dumps(item, separators=(",", ":")))
            if current and (len(current) >= items_per_message
                            or envelope(len(messages)) + used + 1 + size > bytes_per_message):
                messages.append(current)
                current, used = [], 0
            cost = size + (1 if current else 0)  # the item and the comma before it
            if envelope(len(messages)) + used + cost > bytes_per_message:
                raise ValueError(f"a report item of {size} bytes does not fit in "
                                 f"{bytes_per_message}-byte messages")
            current.append(item)
            used += cost
        if current:
            messages.append(current)
        return [{"requestId": request_id, "generatedAt": generated_at,
                 "reportData": list(chunk), "tbc": seq < len(messages) - 1, "seqNo": seq}
                for seq, chunk in enumerate(messages)]


def _matches(key: VarKey, wanted: Mapping[str, Any]) -> bool:
    """Whether a GetReport componentVariable entry selects `key`; absent fields match all."""
    component = wanted["component"]
    if component["name"].lower() != key.component.lower():
        return False
    if "instance" in component and _lower(component["instance"]) != _lower(
            key.component_instance):
        return False
    evse = component.get("evse")
    if evse is not None and (evse["id"] != key.evse or (
            "connectorId" in evse and evse["connectorId"] != key.connector)):
        return False
    variable = wanted.get("variable")
    if variable is None:
        return True
    if variable["name"].lower() != key.variable.lower():
        return False
    return "instance" not in variable or _lower(variable["instance"]) == _lower(
        key.variable_instance)


