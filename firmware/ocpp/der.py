"""OCPP 2.1 DER control (functional block R): the grid-code settings a CSMS installs on a
station that can feed power back (SetDERControl, GetDERControl -> ReportDERControl,
ClearDERControl, NotifyDERStartStop), kept in the OCPP store across restarts, and the pure
mapping from those controls to the settings the grid-operator layer applies.

Our reading of the rules, where the schemas leave room:
- A control is keyed by controlId; setting an existing id replaces it.
- Default controls (isDefault) apply whenever no scheduled control of the same type is in its
  window [startTime, startTime + duration). EnterService and Gradients carry no time window in
  the schema: they are settings that apply at all times.
- Within one controlType and one kind (default or scheduled), of two controls whose windows
  overlap, the lower priority value wins, and at equal priority the later one. The loser is
  "superseded" (ReportDERControl isSuperseded, SetDERControlResponse supersededIds); it stays
  stored and takes effect again wherever the winner does not cover it or once it is cleared.
- Units: voltage trip curves (HV*/LV*) and EnterService voltages are percent of the nominal
  voltage; frequency curves and EnterService frequencies are hertz; curve x of trip curves is the
  clearing time in seconds; LimitMaxDischarge.pctMaxDischargePower is percent of the rated
  discharge power. A trip curve in another unit is rejected rather than guessed at.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise
from typing import Any

from firmware import logs
from firmware.ocpp.dates import parse_datetime
from firmware.ocpp.db import transaction
from hal.clock import iso

log = logs.get("ocpp.der")

Payload = dict[str, Any]

# ReportDERControl arrays and supersededIds hold at most 24 entries; keeping at most as many
# controls per type bounds the store and keeps every list within the schema.
MAX_PER_TYPE = 24
REPORT_CHUNK = 24


class DerControlType(Enum):
    ENTER_SERVICE = "EnterService"
    FREQ_DROOP = "FreqDroop"
    FREQ_WATT = "FreqWatt"
    FIXED_PF_ABSORB = "FixedPFAbsorb"
    FIXED_PF_INJECT = "FixedPFInject"
    FIXED_VAR = "FixedVar"
    GRADIENTS = "Gradients"
    HF_MUST_TRIP = "HFMustTrip"
    HF_MAY_TRIP = "HFMayTrip"
    HV_MUST_TRIP = "HVMustTrip"
    HV_MOM_CESS = "HVMomCess"
    HV_MAY_TRIP = "HVMayTrip"
    LIMIT_MAX_DISCHARGE = "LimitMaxDischarge"
    LF_MUST_TRIP = "LFMustTrip"
    LV_MUST_TRIP = "LVMustTrip"
    LV_MOM_CESS = "LVMomCess"
    LV_MAY_TRIP = "LVMayTrip"
    POWER_MONITORING_MUST_TRIP = "PowerMonitoringMustTrip"
    VOLT_VAR = "VoltVar"
    VOLT_WATT = "VoltWatt"
    WATT_PF = "WattPF"
    WATT_VAR = "WattVar"


class DerStatus(Enum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    NOT_SUPPORTED = "NotSupported"
    NOT_FOUND = "NotFound"


_T = DerControlType
VOLTAGE_CURVES = frozenset({_T.HV_MUST_TRIP, _T.HV_MOM_CESS, _T.HV_MAY_TRIP,
                            _T.LV_MUST_TRIP, _T.LV_MOM_CESS, _T.LV_MAY_TRIP})
FREQUENCY_CURVES = frozenset({_T.HF_MUST_TRIP, _T.HF_MAY_TRIP, _T.LF_MUST_TRIP})
CURVE_TYPES = VOLTAGE_CURVES | FREQUENCY_CURVES | frozenset({
    _T.FREQ_WATT, _T.POWER_MONITORING_MUST_TRIP,
    _T.VOLT_VAR, _T.VOLT_WATT, _T.WATT_PF, _T.WATT_VAR})
UNSCHEDULED = frozenset({_T.ENTER_SERVICE, _T.GRADIENTS})

# The request field that carries each type's setting ("Determines which setting field is used").
_SETTING_FIELD: dict[DerControlType, str] = {
    _T.ENTER_SERVICE: "enterService", _T.FREQ_DROOP: "freqDroop",
    _T.FIXED_PF_ABSORB: "fixedPFAbsorb", _T.FIXED_PF_INJECT: "fixedPFInject",
    _T.FIXED_VAR: "fixedVar", _T.GRADIENTS: "gradient",
    _T.LIMIT_MAX_DISCHARGE: "limitMaxDischarge",
    **dict.fromkeys(CURVE_TYPES, "curve"),
}
_SETTING_FIELDS = frozenset(_SETTING_FIELD.values())
# Inside a ReportDERControl item the setting sits under this key.
_REPORT_KEY = {"fixedPFAbsorb": "fixedPF", "fixedPFInject": "fixedPF"}
_ORDER = {control_type: index for index, control_type in enumerate(DerControlType)}


@dataclass(frozen=True, slots=True)
class DerControl:
    control_id: str
    control_type: DerControlType
    is_default: bool
    priority: int
    start: float | None
    duration: float | None
    setting: Mapping[str, Any]  # the type's setting object exactly as the CSMS sent it
    seq: int  # arrival order: at equal priority the later control wins

    @property
    def end(self) -> float | None:
        if self.start is None or self.duration is None:
            return None
        return self.start + self.duration

    @property
    def window(self) -> tuple[float, float]:
        end = self.end
        if self.start is None or end is None:
            return (-math.inf, math.inf)
        return (self.start, end)

    def in_window(self, now: float) -> bool:
        low, high = self.window
        return low <= now < high

    def expired(self, now: float) -> bool:
        end = self.end
        return end is not None and end <= now

    def outranks(self, other: DerControl) -> bool:
        return (self.priority, -self.seq) < (other.priority, -other.seq)

    def competes_with(self, other: DerControl) -> bool:
        """Same type and kind, overlapping windows: only one of the two can be in effect."""
        if (other.control_id == self.control_id or other.control_type is not self.control_type
                or other.is_default != self.is_default):
            return False
        (a0, a1), (b0, b1) = self.window, other.window
        return a0 < b1 and b0 < a1


@dataclass(frozen=True, slots=True)
class Refusal:
    status: DerStatus
    reason_code: str
    info: str

    def response(self) -> Payload:
        return {"status": self.status.value,
                "statusInfo": {"reasonCode": self.reason_code, "additionalInfo": self.info}}


NO_CAPABILITY = Refusal(DerStatus.NOT_SUPPORTED, "UnsupportedRequest",
                        "this charging station has no DER control capability")


def superseded_ids(controls: Iterable[DerControl]) -> frozenset[str]:
    every = list(controls)
    return frozenset(c.control_id for c in every
                     if any(o.competes_with(c) and o.outranks(c) for o in every))


def parse_control(payload: Payload, now: float, *, seq: int,
                  supported: Collection[DerControlType]) -> DerControl | Refusal:
    """A schema-valid SetDERControlRequest checked against the rules the schema cannot express."""
    control_type = DerControlType(payload["controlType"])
    if control_type not in supported:
        return Refusal(DerStatus.NOT_SUPPORTED, "UnsupportedParam",
                       f"{control_type.value} is not supported by this charging station")
    field = _SETTING_FIELD[control_type]
    setting = payload.get(field)
    if setting is None:
        return Refusal(DerStatus.REJECTED, "MissingParam",
                       f"{control_type.value} needs the {field} field")
    others = sorted(f for f in _SETTING_FIELDS - {field} if f in payload)
    if others:
        return Refusal(DerStatus.REJECTED, "InvalidValue",
                       f"{control_type.value} does not take {', '.join(others)}")
    is_default = bool(payload["isDefault"])
    start: float | None = None
    duration: float | None = None
    if control_type not in UNSCHEDULED:
        has_time = "startTime" in setting or "duration" in setting
        if is_default and has_time:
            return Refusal(DerStatus.REJECTED, "InvalidValue",
                           "a default control has no startTime or duration")
        if not is_default:
            if "startTime" not in setting or "duration" not in setting:
                return Refusal(DerStatus.REJECTED, "MissingParam",
                               "a scheduled control needs startTime and duration")
            start = parse_datetime(setting["startTime"])
            duration = float(setting["duration"])
            if duration <= 0:
                return Refusal(DerStatus.REJECTED, "InvalidValue", "duration must be positive")
            if start + duration <= now:
                return Refusal(DerStatus.REJECTED, "InvalidValue",
                               "the control's window has already ended")
    problem = _setting_problem(control_type, setting)
    if problem is not None:
        return problem
    return DerControl(control_id=payload["controlId"], control_type=control_type,
                      is_default=is_default, priority=int(setting["priority"]), start=start,
                      duration=duration, setting=setting, seq=seq)


def _setting_problem(control_type: DerControlType, s: Mapping[str, Any]) -> Refusal | None:
    def invalid(info: str) -> Refusal:
        return Refusal(DerStatus.REJECTED, "InvalidValue", info)

    def out_of_range(info: str) -> Refusal:
        return Refusal(DerStatus.REJECTED, "ValueOutOfRange", info)

    if control_type in CURVE_TYPES:
        return _curve_problem(control_type, s)
    if control_type in (_T.FIXED_PF_ABSORB, _T.FIXED_PF_INJECT):
        if not 0 < s["displacement"] <= 1:
            return out_of_range("displacement is a power factor in (0, 1]")
    elif control_type is _T.FIXED_VAR:
        if s["unit"] != "Not_Applicable" and not -100 <= s["setpoint"] <= 100:
            return out_of_range("a percentage setpoint lies in [-100, 100]")
    elif control_type is _T.FREQ_DROOP:
        if s["overFreq"] <= s["underFreq"]:
            return invalid("overFreq must exceed underFreq")
        if s["responseTime"] < 0:
            return out_of_range("responseTime cannot be negative")
    elif control_type is _T.ENTER_SERVICE:
        if s["lowVoltage"] >= s["highVoltage"] or s["lowFreq"] >= s["highFreq"]:
            return invalid("enter-service bands need low < high")
        if any(s.get(key, 0) < 0 for key in ("delay", "randomDelay", "rampRate")):
            return out_of_range("delays and ramp rate cannot be negative")
    elif control_type is _T.GRADIENTS:
        if s["gradient"] < 0 or s["softGradient"] < 0:
            return out_of_range("gradients cannot be negative")
    elif control_type is _T.LIMIT_MAX_DISCHARGE:
        if not 0 <= s.get("pctMaxDischargePower", 0) <= 100:
            return out_of_range("pctMaxDischargePower lies in [0, 100]")
        monitoring = s.get("powerMonitoringMustTrip")
        if monitoring is not None:
            return _curve_problem(_T.POWER_MONITORING_MUST_TRIP, monitoring)
    return None


def _curve_problem(control_type: DerControlType, curve: Mapping[str, Any]) -> Refusal | None:
    xs = [point["x"] for point in curve["curveData"]]
    if any(b < a for a, b in pairwise(xs)):
        return Refusal(DerStatus.REJECTED, "InvalidValue", "curve points must be sorted by x")
    unit = curve["yUnit"]
    if control_type in VOLTAGE_CURVES and unit != "PctEffectiveV":
        return Refusal(DerStatus.REJECTED, "InvalidValue",
                       f"{control_type.value} takes y in PctEffectiveV, not {unit}")
    if control_type in FREQUENCY_CURVES and unit != "Not_Applicable":
        return Refusal(DerStatus.REJECTED, "InvalidValue",
                       f"{control_type.value} takes y in hertz (Not_Applicable), not {unit}")
    if (control_type in VOLTAGE_CURVES | FREQUENCY_CURVES
            and any(p["x"] < 0 or p["y"] <= 0 for p in curve["curveData"])):
        return Refusal(DerStatus.REJECTED, "ValueOutOfRange",
                       "trip curves need x >= 0 s and y > 0")
    return None


def report_item(control: DerControl, superseded: bool) -> tuple[str, Payload]:
    """The ReportDERControl field and entry for one control."""
    field = _SETTING_FIELD[control.control_type]
    item: Payload = {"id": control.control_id}
    if control.control_type in CURVE_TYPES:
        item["curveType"] = control.control_type.value
    if control.control_type not in UNSCHEDULED:
        item["isDefault"] = control.is_default
        item["isSuperseded"] = superseded
    item[_REPORT_KEY.get(field, field)] = dict(control.setting)
    return field, item


def report_payloads(request_id: int, controls: Iterable[DerControl],
                    superseded: Collection[str]) -> list[Payload]:
    """ReportDERControl requests for `controls`, at most REPORT_CHUNK entries each, every one
    but the last with tbc true."""
    ordered = sorted(controls, key=lambda c: (_ORDER[c.control_type], not c.is_default,
                                              c.priority, c.seq))
    items = [report_item(c, c.control_id in superseded) for c in ordered]
    chunks = [items[i:i + REPORT_CHUNK] for i in range(0, len(items), REPORT_CHUNK)]
    reports: list[Payload] = []
    for index, chunk in enumerate(chunks):
        report: Payload = {"requestId": request_id}
        for field, item in chunk:
            report.setdefault(field, []).append(item)
        report["tbc"] = index < len(chunks) - 1
        reports.append(report)
    return reports


def effective_controls(controls: Iterable[DerControl],
                       now: float) -> dict[DerControlType, DerControl]:
    """Per type, the control in effect at `now`: the best-ranked scheduled control in its
    window, else the best-ranked default."""
    best: dict[tuple[DerControlType, bool], DerControl] = {}
    for control in controls:
        if not control.in_window(now):
            continue
        key = (control.control_type, control.is_default)
        if key not in best or control.outranks(best[key]):
            best[key] = control
    chosen: dict[DerControlType, DerControl] = {}
    # Scheduled (is_default False) sort first, so a default only fills a type left empty.
    for (control_type, _), control in sorted(best.items(), key=lambda kv: kv[0][1]):
        chosen.setdefault(control_type, control)
    return chosen


def start_stop_notifications(controls: Iterable[DerControl], since: float,
                             now: float) -> list[Payload]:
    """NotifyDERStartStop requests for scheduled controls that started or ended in
    (since, now], oldest first; a start lists the controls it supersedes."""
    every = list(controls)
    events: list[tuple[float, bool, Payload]] = []
    for control in every:
        start, end = control.start, control.end
        if start is None or end is None:
            continue
        if since < start <= now:
            payload: Payload = {"controlId": control.control_id, "started": True,
                                "timestamp": iso(start)}
            beaten = sorted(o.control_id for o in every if o.in_window(start)
                            and control.competes_with(o) and control.outranks(o))
            if beaten:
                payload["supersededIds"] = beaten[:MAX_PER_TYPE]
            events.append((start, True, payload))
        if since < end <= now:
            events.append((end, False, {"controlId": control.control_id, "started": False,
                                        "timestamp": iso(end)}))
    return [payload for _, _, payload in sorted(events, key=lambda e: (e[0], e[1]))]


@dataclass(frozen=True, slots=True)
class TripPoint:
    threshold: float     # volts for voltage curves, hertz for frequency curves
    clear_time_s: float  # beyond the threshold for this long, the station must disconnect


@dataclass(frozen=True, slots=True)
class EnterServiceBand:
    voltage_min_v: float
    voltage_max_v: float
    frequency_min_hz: float
    frequency_max_hz: float
    delay_s: float | None
    random_delay_s: float | None
    ramp_s: float | None


@dataclass(frozen=True, slots=True)
class GridSettings:
    """What the grid-operator layer applies while discharging: a cap on discharge power and the
    interface-protection settings (must-trip curves; the band, delay and ramp for
    re-entering service after a trip). Empty fields mean "no DER control; board defaults"."""

    discharge_limit_w: float | None = None
    over_voltage_trip: tuple[TripPoint, ...] = ()
    under_voltage_trip: tuple[TripPoint, ...] = ()
    over_frequency_trip: tuple[TripPoint, ...] = ()
    under_frequency_trip: tuple[TripPoint, ...] = ()
    enter_service: EnterServiceBand | None = None
    control_ids: tuple[str, ...] = ()  # the controls these come from, for logs and reports


def _trip_points(control: DerControl | None, scale: float) -> tuple[TripPoint, ...]:
    if control is None:
        return ()
    return tuple(TripPoint(threshold=point["y"] * scale, clear_time_s=point["x"])
                 for point in control.setting["curveData"])


def active_grid_settings(controls: Iterable[DerControl], now: float, *,
                         rated_discharge_w: float, nominal_voltage_v: float) -> GridSettings:
    """The grid settings in force at `now`. Only LimitMaxDischarge, the four must-trip curves
    and EnterService are mapped; the reactive-power and droop controls are stored and
    reported but not applied by this controller."""
    chosen = effective_controls(controls, now)
    volts = nominal_voltage_v / 100
    discharge = chosen.get(_T.LIMIT_MAX_DISCHARGE)
    pct = None if discharge is None else discharge.setting.get("pctMaxDischargePower")
    enter = chosen.get(_T.ENTER_SERVICE)
    band = None
    if enter is not None:
        s = enter.setting
        band = EnterServiceBand(
            voltage_min_v=s["lowVoltage"] * volts, voltage_max_v=s["highVoltage"] * volts,
            frequency_min_hz=s["lowFreq"], frequency_max_hz=s["highFreq"],
            delay_s=s.get("delay"), random_delay_s=s.get("randomDelay"),
            ramp_s=s.get("rampRate"))
    used = [c for t, c in chosen.items() if t in (_T.LIMIT_MAX_DISCHARGE, _T.ENTER_SERVICE,
                                                   _T.HV_MUST_TRIP, _T.LV_MUST_TRIP,
                                                   _T.HF_MUST_TRIP, _T.LF_MUST_TRIP)]
    return GridSettings(
        discharge_limit_w=None if pct is None else rated_discharge_w * pct / 100,
        over_voltage_trip=_trip_points(chosen.get(_T.HV_MUST_TRIP), volts),
        under_voltage_trip=_trip_points(chosen.get(_T.LV_MUST_TRIP), volts),
        over_frequency_trip=_trip_points(chosen.get(_T.HF_MUST_TRIP), 1.0),
        under_frequency_trip=_trip_points(chosen.get(_T.LF_MUST_TRIP), 1.0),
        enter_service=band,
        control_ids=tuple(sorted(c.control_id for c in used)))


class DerControls:
    """The station's DER controls in the OCPP store. On a board without DER capability every
    request is answered NotSupported and nothing is stored."""

    def __init__(self, db: sqlite3.Connection, *, capable: bool,
                 supported: Collection[DerControlType] = frozenset(DerControlType)) -> None:
        self._db = db
        self._capable = capable
        self._supported = frozenset(supported)
        db.execute("""CREATE TABLE IF NOT EXISTS der_controls (
            control_id TEXT PRIMARY KEY, control_type TEXT NOT NULL,
            is_default INTEGER NOT NULL, priority INTEGER NOT NULL,
            start REAL, duration REAL, setting TEXT NOT NULL, seq INTEGER NOT NULL)""")

    def controls(self, now: float | None = None) -> tuple[DerControl, ...]:
        """Every stored control, or only those not yet expired at `now`."""
        rows = self._db.execute(
            "SELECT control_id, control_type, is_default, priority, start, duration, setting,"
            " seq FROM der_controls ORDER BY seq").fetchall()
        every = tuple(DerControl(control_id=r[0], control_type=DerControlType(r[1]),
                                 is_default=bool(r[2]), priority=r[3], start=r[4],
                                 duration=r[5], setting=json.loads(r[6]), seq=r[7])
                      for r in rows)
        return every if now is None else tuple(c for c in every if not c.expired(now))

    def set_der_control(self, payload: Payload, now: float) -> Payload:
        """SetDERControlRequest -> SetDERControlResponse."""
        if not self._capable:
            return NO_CAPABILITY.response()
        current = [c for c in self.controls(now) if c.control_id != payload["controlId"]]
        seq = 1 + max((c.seq for c in self.controls()), default=0)
        parsed = parse_control(payload, now, seq=seq, supported=self._supported)
        if isinstance(parsed, Refusal):
            logs.log(log, "der_control_refused", control_id=payload["controlId"],
                     status=parsed.status, reason=parsed.reason_code, info=parsed.info)
            return parsed.response()
        if sum(c.control_type is parsed.control_type for c in current) >= MAX_PER_TYPE:
            refusal = Refusal(DerStatus.REJECTED, "OutOfStorage",
                              f"at most {MAX_PER_TYPE} {parsed.control_type.value} controls")
            return refusal.response()
        beaten = sorted(c.control_id for c in current
                        if parsed.competes_with(c) and parsed.outranks(c))
        with transaction(self._db):
            self._db.execute("DELETE FROM der_controls WHERE control_id = ?",
                             (parsed.control_id,))
            self._db.execute(
                "INSERT INTO der_controls VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (parsed.control_id, parsed.control_type.value, int(parsed.is_default),
                 parsed.priority, parsed.start, parsed.duration, json.dumps(parsed.setting),
                 parsed.seq))
        logs.log(log, "der_control_set", control_id=parsed.control_id,
                 control_type=parsed.control_type, is_default=parsed.is_default,
                 priority=parsed.priority, superseded=beaten)
        response: Payload = {"status": DerStatus.ACCEPTED.value}
        if beaten:
            response["supersededIds"] = beaten
        return response

    def get_der_control(self, payload: Payload, now: float) -> tuple[Payload, list[Payload]]:
        """GetDERControlRequest -> (GetDERControlResponse, the ReportDERControl requests to send
        after it; empty unless Accepted)."""
        if not self._capable:
            return NO_CAPABILITY.response(), []
        current = self.controls(now)
        wanted = [c for c in current if _matches(c, payload)]
        if not wanted:
            return {"status": DerStatus.NOT_FOUND.value}, []
        reports = report_payloads(payload["requestId"], wanted, superseded_ids(current))
        return {"status": DerStatus.ACCEPTED.value}, reports

    def clear_der_control(self, payload: Payload) -> Payload:
        """ClearDERControlRequest -> ClearDERControlResponse: by controlId, or every control of
        controlType (or of every type) with the given isDefault."""
        if not self._capable:
            return NO_CAPABILITY.response()
        doomed = [c.control_id for c in self.controls() if _matches(c, payload)]
        if not doomed:
            return {"status": DerStatus.NOT_FOUND.value}
        self._delete(doomed)
        logs.log(log, "der_control_cleared", control_ids=doomed)
        return {"status": DerStatus.ACCEPTED.value}

    def prune(self, now: float) -> tuple[str, ...]:
        """Delete scheduled controls whose window has ended. Compute NotifyDERStartStop for the
        period first: a pruned control can no longer be reported as stopped."""
        doomed = [c.control_id for c in self.controls() if c.expired(now)]
        if doomed:
            self._delete(doomed)
        return tuple(doomed)

    def _delete(self, control_ids: Iterable[str]) -> None:
        with transaction(self._db):
            self._db.executemany("DELETE FROM der_controls WHERE control_id = ?",
                                 [(i,) for i in control_ids])


def _matches(control: DerControl, query: Mapping[str, Any]) -> bool:
    return bool(query.get("isDefault", control.is_default) == control.is_default
                and query.get("controlType", control.control_type.value)
                == control.control_type.value
                and query.get("controlId", control.control_id) == control.control_id)
