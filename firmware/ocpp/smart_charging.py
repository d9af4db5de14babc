"""Smart charging (OCPP 2.0.1 / 2.1 chapter K): charging profiles parsed and validated, the
composite schedule, and the limits the installed profiles put on the car.

Pure: every function takes the installed profiles, the instant and a context and returns values;
storage is whatever ``ProfileRepository`` the station passes in (``profile_store.ProfileStore``).

How the purposes combine, at every instant, for one EVSE:

- Within a purpose the valid profile with the highest stackLevel that has a period at that
  instant wins; where it has none (before an Absolute start, after its duration, outside its
  validity) the next one down shows through. Ties (which validation keeps out of CSMS profiles,
  K01.FR.06, K01.FR.52/53) go to the EVSE's own profile, then to the higher id.
- The transaction level is PriorityCharging while the transaction is in priority mode (2.1 K21,
  K22: it replaces the CSMS's transaction profiles), else the transaction's TxProfile, else
  TxDefaultProfile: a TxProfile is preferred over TxDefault for each instant it covers (K02
  remark), TxDefault fills the rest. TxDefault on the EVSE and on EVSE 0 form one stack
  (K01.FR.52/53 keep their stack levels apart).
- The caps are ChargingStationMaxProfile (station-wide only) and
  ChargingStationExternalConstraints, station-wide and the EVSE's own as two separate stacks.
- The composite is the lowest of the transaction level and the caps. Values are compared in amps
  per phase at the lowest numberPhases in force (K01.FR.140, default: the board's phases), so a
  TxProfile in W and a station maximum in A combine correctly; watts become amps over those
  phases (K01.FR.50), which keeps the total power of a W limit.
- 2.1 LocalGeneration capacity is added on top of that composite (2.1 §K.3.6, K27): it is power
  that does not come through the grid connection, so no cap clips it.
- Multi-EVSE simplification: a station-wide cap (ChargingStationMaxProfile, external constraints
  on EVSE 0) bounds the sum over EVSEs; here each EVSE gets the whole cap, and dividing it is the
  station's load balancing. The composite for EVSE 0 of a one-EVSE station is that EVSE's.
- Discharge (2.1 V2X) never enters a ``Limit``: negative limits, setpoints and dischargeLimit are
  reported by ``discharge_limits_at`` for the bidirectional work; for charging they mean 0.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from firmware import logs
from firmware.core.limits import Limit, LimitSource
from firmware.ocpp.dates import parse_datetime
from hal.clock import iso

log = logs.get("ocpp.smart_charging")

Payload = dict[str, Any]


class OcppVersion(StrEnum):
    V201 = "2.0.1"
    V21 = "2.1"


class Purpose(StrEnum):
    STATION_MAX = "ChargingStationMaxProfile"
    EXTERNAL = "ChargingStationExternalConstraints"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"
    PRIORITY = "PriorityCharging"
    LOCAL_GENERATION = "LocalGeneration"


class Kind(StrEnum):
    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"
    DYNAMIC = "Dynamic"


class Recurrency(StrEnum):
    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(StrEnum):
    A = "A"
    W = "W"


class OperationMode(StrEnum):
    IDLE = "Idle"
    CHARGING_ONLY = "ChargingOnly"
    CENTRAL_SETPOINT = "CentralSetpoint"
    EXTERNAL_SETPOINT = "ExternalSetpoint"
    EXTERNAL_LIMITS = "ExternalLimits"
    CENTRAL_FREQUENCY = "CentralFrequency"
    LOCAL_FREQUENCY = "LocalFrequency"
    LOCAL_LOAD_BALANCING = "LocalLoadBalancing"


class ChargingLimitSource(StrEnum):
    """Who installed a profile. 2.1 allows other strings (up to 20 characters) as well."""

    CSO = "CSO"
    EMS = "EMS"
    SO = "SO"
    OTHER = "Other"


class ReasonCode(StrEnum):
    """statusInfo.reasonCode values (Part 2 appendix "Reason codes", 2.1 additions)."""

    UNKNOWN_EVSE = "UnknownEvse"
    TX_NOT_FOUND = "TxNotFound"
    INVALID_SCHEDULE = "InvalidSchedule"
    INVALID_STACK_LEVEL = "InvalidStackLevel"
    INVALID_VALUE = "InvalidValue"
    INVALID_PROFILE = "InvalidProfile"
    INVALID_PROFILE_ID = "InvalidProfileId"
    INVALID_OPERATION_MODE = "InvalidOperationMode"
    DUPLICATE_PROFILE = "DuplicateProfile"
    MISSING_PARAM = "MissingParam"
    UNSUPPORTED_RATE_UNIT = "UnsupportedRateUnit"
    UNSUPPORTED_PURPOSE = "UnsupportedPurpose"
    UNSUPPORTED_KIND = "UnsupportedKind"
    UNSUPPORTED_PARAM = "UnsupportedParam"
    TOO_MANY_ELEMENTS = "TooManyElements"
    OUT_OF_STORAGE = "OutOfStorage"
    PHASE_CONFLICT = "PhaseConflict"
    VALUE_POSITIVE_ONLY = "ValuePositiveOnly"


V21_PURPOSES = frozenset({Purpose.PRIORITY, Purpose.LOCAL_GENERATION})
TX_LEVEL = frozenset({Purpose.TX, Purpose.TX_DEFAULT, Purpose.PRIORITY})
# Purposes whose profiles on EVSE 0 and on the EVSE form one stack when evaluated.
_SHARED_STACKS = frozenset({Purpose.TX_DEFAULT, Purpose.PRIORITY, Purpose.LOCAL_GENERATION})

# Modes a board can honour without discharging; Idle is charging at 0.
UNIDIRECTIONAL_MODES = frozenset({OperationMode.CHARGING_ONLY, OperationMode.IDLE,
                                  OperationMode.EXTERNAL_LIMITS,
                                  OperationMode.LOCAL_LOAD_BALANCING})
# What a bidirectional board supports here. The frequency modes need a frequency-watt control
# loop next to the meter, which this controller does not have (V2XSupportedOperationModes).
BIDIRECTIONAL_MODES = UNIDIRECTIONAL_MODES | {OperationMode.CENTRAL_SETPOINT,
                                              OperationMode.EXTERNAL_SETPOINT}
# Modes in which the EV may be discharged: the setpoint or an external actor decides the
# direction, the limits bound it.
DISCHARGE_MODES = frozenset({OperationMode.CENTRAL_SETPOINT, OperationMode.EXTERNAL_SETPOINT,
                             OperationMode.EXTERNAL_LIMITS, OperationMode.LOCAL_LOAD_BALANCING,
                             OperationMode.CENTRAL_FREQUENCY, OperationMode.LOCAL_FREQUENCY})
# K01.FR.111-113: the modes each purpose may carry (others: any supported mode).
_PURPOSE_MODES: dict[Purpose, frozenset[OperationMode]] = {
    Purpose.STATION_MAX: frozenset({OperationMode.CHARGING_ONLY}),
    Purpose.PRIORITY: frozenset({OperationMode.CHARGING_ONLY}),
    Purpose.EXTERNAL: frozenset({OperationMode.CHARGING_ONLY, OperationMode.EXTERNAL_LIMITS,
                                 OperationMode.EXTERNAL_SETPOINT}),
    Purpose.LOCAL_GENERATION: frozenset({OperationMode.CHARGING_ONLY,
                                         OperationMode.EXTERNAL_LIMITS}),
}
# Period fields this controller cannot honour, and why (K01.FR.144 for the per-phase ones: our
# EVs never report L2/L3 maxima, so a CSMS must not send them).
_UNSUPPORTED_PERIOD_FIELDS = {
    "limit_L2": ReasonCode.PHASE_CONFLICT, "limit_L3": ReasonCode.PHASE_CONFLICT,
    "setpoint_L2": ReasonCode.PHASE_CONFLICT, "setpoint_L3": ReasonCode.PHASE_CONFLICT,
    "dischargeLimit_L2": ReasonCode.PHASE_CONFLICT,
    "dischargeLimit_L3": ReasonCode.PHASE_CONFLICT,
    "setpointReactive": ReasonCode.UNSUPPORTED_PARAM,
    "setpointReactive_L2": ReasonCode.UNSUPPORTED_PARAM,
    "setpointReactive_L3": ReasonCode.UNSUPPORTED_PARAM,
    "v2xBaseline": ReasonCode.UNSUPPORTED_PARAM,
    "v2xFreqWattCurve": ReasonCode.UNSUPPORTED_PARAM,
    "v2xSignalWattCurve": ReasonCode.UNSUPPORTED_PARAM,
}
_V21_PROFILE_FIELDS = ("maxOfflineDuration", "invalidAfterOfflineDuration", "dynUpdateInterval",
                       "dynUpdateTime", "priceScheduleSignature")
_V21_SCHEDULE_FIELDS = ("limitAtSoC", "powerTolerance", "signatureId", "digestValue",
                        "useLocalTime", "randomizedDelay", "absolutePriceSchedule",
                        "priceLevelSchedule")
_V201_PERIOD_FIELDS = ("startPeriod", "limit", "numberPhases", "phaseToUse", "customData")

_DAY_S = 86_400
_RECURRENCE_S = {Recurrency.DAILY: _DAY_S, Recurrency.WEEKLY: 7 * _DAY_S}
# A recurring schedule repeats within a week; one week and a day of edges shows every change.
_HORIZON_S = 8 * _DAY_S


class ProfileFormatError(ValueError):
    """A chargingProfile that passed the schema but still cannot be read (a bad dateTime)."""


# ---- the profile model ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchedulePeriod:
    start_period: int
    limit: float | None                 # in the schedule's unit; < 0 only as legacy discharge
    number_phases: int | None = None
    phase_to_use: int | None = None
    operation_mode: OperationMode | None = None     # absent means ChargingOnly
    setpoint: float | None = None       # signed: negative discharges
    discharge_limit: float | None = None  # <= 0, as on the wire
    evse_sleep: bool = False
    fields: frozenset[str] = frozenset()  # the keys present in the request, for validation

    def content(self) -> tuple[object, ...]:
        """Everything but the start: two periods with equal content limit alike."""
        return (self.limit, self.number_phases, self.phase_to_use, self.operation_mode,
                self.setpoint, self.discharge_limit)


@dataclass(frozen=True, slots=True)
class ChargingSchedule:
    id: int
    unit: RateUnit
    periods: tuple[SchedulePeriod, ...]
    start_schedule: float | None = None
    duration: int | None = None
    min_charging_rate: float | None = None
    use_local_time: bool = False
    randomized_delay: int = 0
    fields: frozenset[str] = frozenset()
    starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Evaluation looks periods up by start many times per second of schedule.
        object.__setattr__(self, "starts", tuple(q.start_period for q in self.periods))


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    """One installed (or proposed) profile, where it applies and who set it.

    ``raw`` is the chargingProfile dict as received, kept for storage and reporting.
    """

    id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    schedules: tuple[ChargingSchedule, ...]
    evse_id: int
    source: str = ChargingLimitSource.CSO
    recurrency: Recurrency | None = None
    valid_from: float | None = None
    valid_to: float | None = None
    transaction_id: str | None = None
    dyn_update_interval: int | None = None
    dyn_update_time: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def schedule(self) -> ChargingSchedule:
        """The schedule that limits an IEC 61851 (PWM) charge: the first. The others are
        alternatives an ISO 15118 EV may choose among (K15, K18)."""
        return self.schedules[0]

    def valid_at(self, t: float) -> bool:
        return ((self.valid_from is None or self.valid_from <= t)
                and (self.valid_to is None or t < self.valid_to))

    def label(self) -> str:
        return f"{self.purpose.value} #{self.id} (stack {self.stack_level})"


def parse_time(value: str) -> float:
    """An OCPP dateTime as seconds since the UTC epoch (ProfileFormatError when it is not)."""
    try:
        return parse_datetime(value)
    except ValueError as exc:
        raise ProfileFormatError(f"not a dateTime: {value!r}") from exc


def _opt_time(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    return None if value is None else parse_time(str(value))


def _opt_float(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    return None if value is None else float(value)


def _opt_int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return None if value is None else int(value)


def _parse_period(raw: Mapping[str, Any]) -> SchedulePeriod:
    mode = raw.get("operationMode")
    return SchedulePeriod(
        start_period=int(raw["startPeriod"]), limit=_opt_float(raw, "limit"),
        number_phases=_opt_int(raw, "numberPhases"), phase_to_use=_opt_int(raw, "phaseToUse"),
        operation_mode=None if mode is None else OperationMode(mode),
        setpoint=_opt_float(raw, "setpoint"), discharge_limit=_opt_float(raw, "dischargeLimit"),
        evse_sleep=bool(raw.get("evseSleep", False)), fields=frozenset(raw))


def _parse_schedule(raw: Mapping[str, Any]) -> ChargingSchedule:
    return ChargingSchedule(
        id=int(raw["id"]), unit=RateUnit(raw["chargingRateUnit"]),
        periods=tuple(_parse_period(p) for p in raw["chargingSchedulePeriod"]),
        start_schedule=_opt_time(raw, "startSchedule"), duration=_opt_int(raw, "duration"),
        min_charging_rate=_opt_float(raw, "minChargingRate"),
        use_local_time=bool(raw.get("useLocalTime", False)),
        randomized_delay=int(raw.get("randomizedDelay", 0)), fields=frozenset(raw))


def parse_profile(raw: Mapping[str, Any], *, evse_id: int,
                  source: str = ChargingLimitSource.CSO) -> ChargingProfile:
    """A chargingProfile dict (2.0.1 or 2.1 shape, already schema-valid) as a profile on
    ``evse_id`` installed by ``source``. Raises ProfileFormatError on what the schema lets
    through but cannot be read."""
    try:
        schedules = tuple(_parse_schedule(s) for s in raw["chargingSchedule"])
        if not schedules or not all(s.periods for s in schedules):
            raise ProfileFormatError("a chargingProfile needs schedules with periods")
        recurrency = raw.get("recurrencyKind")
        return ChargingProfile(
            id=int(raw["id"]), stack_level=int(raw["stackLevel"]),
            purpose=Purpose(raw["chargingProfilePurpose"]),
            kind=Kind(raw["chargingProfileKind"]), schedules=schedules, evse_id=evse_id,
            source=str(source), recurrency=None if recurrency is None else Recurrency(recurrency),
            valid_from=_opt_time(raw, "validFrom"), valid_to=_opt_time(raw, "validTo"),
            transaction_id=raw.get("transactionId"),
            dyn_update_interval=_opt_int(raw, "dynUpdateInterval"),
            dyn_update_time=_opt_time(raw, "dynUpdateTime"), raw=copy.deepcopy(dict(raw)))
    except ProfileFormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileFormatError(f"unreadable chargingProfile: {exc}") from exc


# ---- validation (K01) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidationContext:
    """What the station supports and what is going on, for validating a SetChargingProfile.

    ``active_transactions`` maps an EVSE id to its transaction id; the rest mirrors
    SmartChargingCtrlr (RateUnit, ProfileStackLevel, PeriodsPerSchedule, SupportedAdditional-
    Purposes, SupportsDynamicProfiles, MaxExternalConstraintsId), the board (bidirectional,
    supply phases, ACPhaseSwitchingSupported) and V2XSupportedOperationModes. ``version`` and
    ``rate_units`` may be given as the plain strings the device model holds.
    """

    version: OcppVersion | str
    n_evses: int
    active_transactions: Mapping[int, str]
    rate_units: frozenset[str] = frozenset({RateUnit.A, RateUnit.W})
    max_stack_level: int = 8
    periods_per_schedule: int = 24
    bidirectional: bool = False
    phases: int = 3
    phase_switching: bool = False
    operation_modes: frozenset[OperationMode] = UNIDIRECTIONAL_MODES
    additional_purposes: frozenset[Purpose] = V21_PURPOSES
    dynamic_profiles: bool = False
    max_external_constraints_id: int | None = None
    # SmartChargingCtrlr.Entries maxLimit: every installed profile costs composite time on the
    # event loop, so their number is bounded.
    max_profiles: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", OcppVersion(self.version))
        object.__setattr__(self, "rate_units", frozenset(RateUnit(u) for u in self.rate_units))


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a profile is refused: status Rejected with this reasonCode and additionalInfo."""

    reason: ReasonCode
    info: str
    status: str = "Rejected"

    def status_info(self) -> Payload:
        return {"reasonCode": self.reason.value, "additionalInfo": self.info[:512]}

    def response(self) -> Payload:
        return {"status": self.status, "statusInfo": self.status_info()}


def _overlap(a: ChargingProfile, b: ChargingProfile) -> bool:
    a0 = -math.inf if a.valid_from is None else a.valid_from
    a1 = math.inf if a.valid_to is None else a.valid_to
    b0 = -math.inf if b.valid_from is None else b.valid_from
    b1 = math.inf if b.valid_to is None else b.valid_to
    return a0 < b1 and b0 < a1


def validate_profile(profile: ChargingProfile, *, evse_id: int, ctx: ValidationContext,
                     installed: Sequence[ChargingProfile], now: float) -> Rejection | None:
    """None when the CSMS may install ``profile`` on ``evse_id`` next to ``installed``;
    otherwise the first reason it may not."""
    return (_check_capacity(profile, ctx, installed)
            or _check_profile(profile, evse_id, ctx, installed, now)
            or _check_schedules(profile, ctx)
            or _check_conflicts(profile, evse_id, ctx, installed))


def _check_capacity(p: ChargingProfile, ctx: ValidationContext,
                    installed: Sequence[ChargingProfile]) -> Rejection | None:
    if len(installed) >= ctx.max_profiles and all(q.id != p.id for q in installed):
        return Rejection(ReasonCode.OUT_OF_STORAGE,
                         f"at most {ctx.max_profiles} charging profiles")
    return None


def _check_profile(p: ChargingProfile, evse_id: int, ctx: ValidationContext,
                   installed: Sequence[ChargingProfile], now: float) -> Rejection | None:
    v21 = ctx.version == OcppVersion.V21
    if p.purpose in V21_PURPOSES and not v21:
        return Rejection(ReasonCode.UNSUPPORTED_PURPOSE, f"{p.purpose} needs OCPP 2.1")
    if p.kind is Kind.DYNAMIC and not v21:
        return Rejection(ReasonCode.UNSUPPORTED_KIND, "Dynamic needs OCPP 2.1")
    if not 0 <= evse_id <= ctx.n_evses:
        return Rejection(ReasonCode.UNKNOWN_EVSE, f"no EVSE {evse_id}")   # K01.FR.28
    if p.purpose is Purpose.EXTERNAL and p.source == ChargingLimitSource.CSO:
        # K01.FR.22: external constraints come from an EMS or grid operator, not the CSMS.
        return Rejection(ReasonCode.INVALID_VALUE,
                         "ChargingStationExternalConstraints cannot be set by the CSMS")
    if p.purpose in V21_PURPOSES and p.purpose not in ctx.additional_purposes:
        return Rejection(ReasonCode.UNSUPPORTED_PURPOSE, f"{p.purpose} not supported")  # FR.120
    if p.kind is Kind.DYNAMIC and not ctx.dynamic_profiles:
        return Rejection(ReasonCode.UNSUPPORTED_KIND, "Dynamic profiles not supported")  # FR.121
    if p.kind is not Kind.DYNAMIC and (p.dyn_update_interval is not None
                                       or p.dyn_update_time is not None):
        return Rejection(ReasonCode.INVALID_PROFILE,
                         "dynUpdateInterval/dynUpdateTime need kind Dynamic")   # K01.FR.122
    if (ctx.max_external_constraints_id is not None and p.source == ChargingLimitSource.CSO
            and p.id <= ctx.max_external_constraints_id):
        return Rejection(ReasonCode.INVALID_PROFILE_ID,
                         f"ids up to {ctx.max_external_constraints_id} are reserved for "
                         "external constraints")   # K01.FR.81
    same = next((q for q in installed if q.id == p.id), None)
    if (same is not None and same.purpose is Purpose.EXTERNAL
            and p.source == ChargingLimitSource.CSO):
        # K01.FR.05: any other profile with a known id is replaced, external constraints not.
        return Rejection(ReasonCode.DUPLICATE_PROFILE,
                         f"id {p.id} belongs to external constraints")
    if not 0 <= p.stack_level <= ctx.max_stack_level:
        return Rejection(ReasonCode.INVALID_STACK_LEVEL,
                         f"stackLevel {p.stack_level} outside 0..{ctx.max_stack_level}")
    if p.transaction_id is not None and p.purpose is not Purpose.TX:
        return Rejection(ReasonCode.INVALID_VALUE, "transactionId is only for a TxProfile")
    if p.valid_from is not None and p.valid_to is not None and p.valid_to <= p.valid_from:
        return Rejection(ReasonCode.INVALID_VALUE, "validTo is not after validFrom")
    if p.valid_to is not None and p.valid_to <= now:
        return Rejection(ReasonCode.INVALID_VALUE, "validTo has passed")
    return _check_purpose(p, evse_id, ctx)


def _check_purpose(p: ChargingProfile, evse_id: int,
                   ctx: ValidationContext) -> Rejection | None:
    if p.purpose is Purpose.STATION_MAX:
        if evse_id != 0:   # the evseId definition: a station maximum is for EVSE 0
            return Rejection(ReasonCode.INVALID_VALUE,
                             "ChargingStationMaxProfile applies to evseId 0 only")
        if p.kind is Kind.RELATIVE:
            return Rejection(ReasonCode.INVALID_VALUE,
                             "ChargingStationMaxProfile cannot be Relative")   # K01.FR.38
    if p.purpose is Purpose.TX:
        if evse_id == 0:
            return Rejection(ReasonCode.INVALID_VALUE, "a TxProfile needs evseId > 0")  # FR.16
        if p.transaction_id is None:   # K01.FR.03
            return Rejection(ReasonCode.MISSING_PARAM, "a TxProfile needs a transactionId")
        active = ctx.active_transactions.get(evse_id)
        if active is None:   # K01.FR.09
            return Rejection(ReasonCode.TX_NOT_FOUND, f"no transaction on EVSE {evse_id}")
        if active != p.transaction_id:   # K01.FR.33
            return Rejection(ReasonCode.TX_NOT_FOUND,
                             f"transaction {p.transaction_id} is not on EVSE {evse_id}")
    if p.purpose is Purpose.PRIORITY and any(s.duration is not None for s in p.schedules):
        return Rejection(ReasonCode.INVALID_SCHEDULE,
                         "a PriorityCharging schedule has no duration")   # K01.FR.70
    return None


def _check_schedules(p: ChargingProfile, ctx: ValidationContext) -> Rejection | None:
    for s in p.schedules:
        if s.unit not in ctx.rate_units:   # K01.FR.26
            return Rejection(ReasonCode.UNSUPPORTED_RATE_UNIT,
                             f"chargingRateUnit {s.unit} not supported")
        if len(s.periods) > ctx.periods_per_schedule:
            return Rejection(ReasonCode.TOO_MANY_ELEMENTS,
                             f"more than {ctx.periods_per_schedule} periods (PeriodsPerSchedule)")
        if s.periods[0].start_period != 0:   # K01.FR.31
            return Rejection(ReasonCode.INVALID_SCHEDULE, "the first startPeriod must be 0")
        starts = [q.start_period for q in s.periods]
        if any(b <= a for a, b in itertools.pairwise(starts)):   # K01.FR.35
            return Rejection(ReasonCode.INVALID_SCHEDULE,
                             "startPeriod values must increase strictly")
        if s.duration is not None and s.duration <= 0:
            return Rejection(ReasonCode.INVALID_SCHEDULE, "duration must be positive")
        if p.kind in (Kind.ABSOLUTE, Kind.RECURRING) and s.start_schedule is None:
            return Rejection(ReasonCode.INVALID_SCHEDULE,
                             f"{p.kind} schedules need startSchedule")   # K01.FR.40
        if p.kind is Kind.RELATIVE and s.start_schedule is not None:
            return Rejection(ReasonCode.INVALID_SCHEDULE,
                             "a Relative schedule has no startSchedule")   # K01.FR.41
        if p.kind is Kind.DYNAMIC and len(s.periods) != 1:
            return Rejection(ReasonCode.INVALID_SCHEDULE,
                             "a Dynamic schedule has exactly one period")   # 2.1 §5.5
        rejection = _check_v21_schedule(p, s) or _check_periods(p, s, ctx)
        if rejection is not None:
            return rejection
    if p.kind is Kind.RECURRING and p.recurrency is None:
        return Rejection(ReasonCode.MISSING_PARAM, "a Recurring profile needs recurrencyKind")
    return None


def _check_v21_schedule(p: ChargingProfile, s: ChargingSchedule) -> Rejection | None:
    if s.randomized_delay > 0:
        if p.purpose not in (Purpose.TX, Purpose.TX_DEFAULT):   # K01.FR.95
            return Rejection(ReasonCode.INVALID_SCHEDULE,
                             "randomizedDelay is only for TxProfile and TxDefaultProfile")
        return Rejection(ReasonCode.INVALID_SCHEDULE,
                         "randomizedDelay not supported")   # K01.FR.124
    if s.use_local_time:   # K01.FR.123
        return Rejection(ReasonCode.INVALID_SCHEDULE, "useLocalTime not supported")
    if "limitAtSoC" in s.fields:   # K01.FR.125
        return Rejection(ReasonCode.INVALID_SCHEDULE, "limitAtSoC not supported")
    return None


def _check_periods(p: ChargingProfile, s: ChargingSchedule,
                   ctx: ValidationContext) -> Rejection | None:
    supported = ctx.operation_modes | {OperationMode.CHARGING_ONLY}
    allowed_modes = _PURPOSE_MODES.get(p.purpose, supported) & supported
    for q in s.periods:
        unsupported = sorted(q.fields & _UNSUPPORTED_PERIOD_FIELDS.keys())
        if unsupported:
            return Rejection(_UNSUPPORTED_PERIOD_FIELDS[unsupported[0]],
                             f"{unsupported[0]} not supported")
        mode = q.operation_mode or OperationMode.CHARGING_ONLY
        if mode not in allowed_modes:   # K01.FR.71, K01.FR.111-115
            return Rejection(ReasonCode.INVALID_OPERATION_MODE,
                             f"operationMode {mode} not allowed for {p.purpose} here")
        if q.evse_sleep and mode is not OperationMode.IDLE:   # K01.FR.126
            return Rejection(ReasonCode.INVALID_SCHEDULE, "evseSleep not supported")
        if mode is OperationMode.CHARGING_ONLY and q.limit is None:
            return Rejection(ReasonCode.MISSING_PARAM, f"{mode} needs a limit")
        if mode is OperationMode.CENTRAL_SETPOINT and q.setpoint is None:
            return Rejection(ReasonCode.MISSING_PARAM, "CentralSetpoint needs a setpoint")
        rejection = _check_phases(q, ctx) or _check_discharge(p, q, ctx)
        if rejection is not None:
            return rejection
    return None


def _check_phases(q: SchedulePeriod, ctx: ValidationContext) -> Rejection | None:
    if q.number_phases is not None and not 1 <= q.number_phases <= 3:
        return Rejection(ReasonCode.INVALID_VALUE,
                         f"numberPhases {q.number_phases} on an AC EVSE")
    # numberPhases above the board's is not refused: the board charges on what it has
    # (K01.FR.45), and the value is clamped where it is used.
    if q.phase_to_use is not None:
        if q.number_phases != 1:   # K01.FR.19
            return Rejection(ReasonCode.INVALID_VALUE, "phaseToUse needs numberPhases 1")
        if not ctx.phase_switching:   # K01.FR.20
            return Rejection(ReasonCode.UNSUPPORTED_PARAM,
                             "phaseToUse needs ACPhaseSwitchingSupported")
        if not 1 <= q.phase_to_use <= min(3, ctx.phases):
            return Rejection(ReasonCode.INVALID_VALUE, f"phaseToUse {q.phase_to_use}")
    return None


def _check_discharge(p: ChargingProfile, q: SchedulePeriod,
                     ctx: ValidationContext) -> Rejection | None:
    discharges = ((q.limit is not None and q.limit < 0)
                  or (q.setpoint is not None and q.setpoint < 0)
                  or (q.discharge_limit is not None and q.discharge_limit < 0))
    if not discharges:
        return None
    if ctx.version != OcppVersion.V21 or not ctx.bidirectional:
        return Rejection(ReasonCode.VALUE_POSITIVE_ONLY,
                         "discharging needs OCPP 2.1 and a bidirectional EVSE")
    if q.limit is not None and q.limit < 0 and p.purpose not in TX_LEVEL:
        # A negative limit is the legacy way to give a transaction a discharge limit; on a cap
        # it would forbid charging. Caps bound discharge with dischargeLimit.
        return Rejection(ReasonCode.VALUE_POSITIVE_ONLY,
                         f"a negative limit on {p.purpose}; use dischargeLimit")
    return None


def _applies_to_same_evse(a: ChargingProfile, b_evse: int) -> bool:
    return a.evse_id in (b_evse, 0) or b_evse == 0


def _check_conflicts(p: ChargingProfile, evse_id: int, ctx: ValidationContext,
                     installed: Sequence[ChargingProfile]) -> Rejection | None:
    others = [q for q in installed if q.id != p.id]
    for q in others:
        if q.purpose is not p.purpose or q.stack_level != p.stack_level:
            continue
        if p.purpose is Purpose.TX:
            if q.transaction_id == p.transaction_id:   # K01.FR.39
                return Rejection(ReasonCode.DUPLICATE_PROFILE,
                                 f"TxProfile #{q.id} has stackLevel {p.stack_level} for this "
                                 "transaction")
        elif _overlap(p, q) and (q.evse_id == evse_id or (
                p.purpose in _SHARED_STACKS and 0 in (q.evse_id, evse_id))):
            # K01.FR.06; where EVSE 0 and the EVSE stack together, across both (K01.FR.52/53)
            return Rejection(ReasonCode.DUPLICATE_PROFILE,
                             f"{q.label()} on EVSE {q.evse_id} overlaps in validity")
    if ctx.version == OcppVersion.V21:
        mine = {q.phase_to_use for s in p.schedules for q in s.periods} - {None}
        for q in others:
            if not _applies_to_same_evse(q, evse_id):
                continue
            theirs = {r.phase_to_use for s in q.schedules for r in s.periods} - {None}
            if mine and theirs and mine != theirs:   # K01.FR.141
                return Rejection(ReasonCode.PHASE_CONFLICT,
                                 f"phaseToUse conflicts with {q.label()}")
    return None


# ---- evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TxContext:
    """The transaction on the EVSE: Relative profiles run from ``started_at``; ``priority`` is
    set while priority charging is in force (K21/K22)."""

    transaction_id: str
    started_at: float
    priority: bool = False


@dataclass(frozen=True, slots=True)
class _Layers:
    """The candidate profiles for one EVSE, each tuple one stack."""

    station_max: tuple[ChargingProfile, ...]
    external: tuple[tuple[ChargingProfile, ...], ...]
    tx_level: tuple[tuple[Purpose, tuple[ChargingProfile, ...]], ...]   # preferred first
    local_generation: tuple[ChargingProfile, ...]

    def all(self) -> Iterator[ChargingProfile]:
        yield from self.station_max
        for stack in self.external:
            yield from stack
        for _, stack in self.tx_level:
            yield from stack
        yield from self.local_generation


def _layers(profiles: Iterable[ChargingProfile], evse_id: int, tx: TxContext | None) -> _Layers:
    by: dict[Purpose, list[ChargingProfile]] = {purpose: [] for purpose in Purpose}
    for p in profiles:
        if p.evse_id in (0, evse_id):
            by[p.purpose].append(p)

    def at(purpose: Purpose, evse: int) -> tuple[ChargingProfile, ...]:
        return tuple(p for p in by[purpose] if p.evse_id == evse)

    external = [at(Purpose.EXTERNAL, 0)]
    tx_level: list[tuple[Purpose, tuple[ChargingProfile, ...]]] = []
    if evse_id != 0:
        external.append(at(Purpose.EXTERNAL, evse_id))
        if tx is not None and tx.priority:
            tx_level.append((Purpose.PRIORITY, tuple(by[Purpose.PRIORITY])))
        if tx is not None:
            tx_level.append((Purpose.TX, tuple(
                p for p in at(Purpose.TX, evse_id) if p.transaction_id == tx.transaction_id)))
        tx_level.append((Purpose.TX_DEFAULT, tuple(by[Purpose.TX_DEFAULT])))
    return _Layers(station_max=at(Purpose.STATION_MAX, 0), external=tuple(external),
                   tx_level=tuple(tx_level),
                   local_generation=tuple(by[Purpose.LOCAL_GENERATION]))


def _recurrence_s(p: ChargingProfile) -> int | None:
    if (p.kind is Kind.RECURRING and p.recurrency is not None
            and p.schedule.start_schedule is not None):
        return _RECURRENCE_S[p.recurrency]
    return None


def _anchor(p: ChargingProfile, t: float, rel: float | None) -> float:
    """When the schedule in force at ``t`` started. ``rel`` is the transaction start for
    Relative schedules; None lets them start at ``t`` (no transaction: as if one began now)."""
    start = p.schedule.start_schedule
    recurrence = _recurrence_s(p)
    if recurrence is not None and start is not None:
        return start + math.floor((t - start) / recurrence) * recurrence
    if p.kind is not Kind.RELATIVE and start is not None:
        return start
    return t if rel is None else rel


def _period_at(p: ChargingProfile, t: float, rel: float | None) -> SchedulePeriod | None:
    if not p.valid_at(t):
        return None
    s = p.schedule
    if p.kind is Kind.DYNAMIC:
        # K28.FR.13: without an update for `duration` seconds the profile lapses.
        if (s.duration is not None and p.dyn_update_time is not None
                and t >= p.dyn_update_time + s.duration):
            return None
        return s.periods[0]
    offset = t - _anchor(p, t, rel)
    length = math.inf if s.duration is None else s.duration
    recurrence = _recurrence_s(p)
    if recurrence is not None:
        length = min(length, recurrence)
    if offset < 0 or offset >= length:
        return None
    return s.periods[max(0, bisect.bisect_right(s.starts, offset) - 1)]


def _fixed_edges(p: ChargingProfile, rel: float | None) -> list[float]:
    """The instants where ``p`` may change that do not repeat."""
    edges = [t for t in (p.valid_from, p.valid_to) if t is not None]
    s = p.schedule
    if p.kind is Kind.DYNAMIC:
        if s.duration is not None and p.dyn_update_time is not None:
            edges.append(p.dyn_update_time + s.duration)
        return edges
    if _recurrence_s(p) is not None:
        return edges
    anchor = s.start_schedule if p.kind is not Kind.RELATIVE else None
    anchor = rel if anchor is None else anchor
    if anchor is not None:
        edges.extend(anchor + q.start_period for q in s.periods)
        if s.duration is not None:
            edges.append(anchor + s.duration)
    return edges


def _recurring_edges(p: ChargingProfile, lo: float, hi: float) -> list[float]:
    """The repeating instants of a Recurring ``p`` in [lo, hi]."""
    recurrence = _recurrence_s(p)
    start = p.schedule.start_schedule
    if recurrence is None or start is None:
        return []
    s = p.schedule
    within = bisect.bisect_left(s.starts, recurrence)
    edges: list[float] = []
    anchor = start + math.floor((lo - start) / recurrence) * recurrence
    while anchor <= hi:
        first = bisect.bisect_left(s.starts, lo - anchor, hi=within)
        last = bisect.bisect_right(s.starts, hi - anchor, hi=within)
        edges.extend(anchor + o for o in s.starts[first:last])
        if s.duration is not None and s.duration < recurrence and (
                lo <= anchor + s.duration <= hi):
            edges.append(anchor + s.duration)
        anchor += recurrence
    return edges


def _edges_between(layers: _Layers, lo: float, hi: float, rel: float | None) -> list[float]:
    edges: set[float] = set()
    for p in layers.all():
        edges.update(e for e in _fixed_edges(p, rel) if lo < e < hi)
        edges.update(e for e in _recurring_edges(p, lo, hi) if lo < e < hi)
    return sorted(edges)


def _walk(layers: _Layers, now: float, rel: float | None) -> Iterator[float]:
    """Every instant after ``now`` where a profile may change, in order. Between two one-off
    edges recurring schedules repeat within a week, so their edges are listed for the first
    eight days of each gap only: a change later in the gap would have shown earlier."""
    profiles = list(layers.all())
    recurring = [p for p in profiles if _recurrence_s(p) is not None]
    fixed = sorted({e for p in profiles for e in _fixed_edges(p, rel) if e > now})
    gap = now
    for edge in [*fixed, math.inf]:
        if recurring:
            hi = min(edge, gap + _HORIZON_S)
            yield from sorted({e for p in recurring for e in _recurring_edges(p, gap, hi)
                               if gap < e < hi})
        if edge == math.inf:
            return
        yield edge
        gap = edge


@dataclass(frozen=True, slots=True)
class _Pick:
    """The profile that wins a stack at an instant, and its period then."""

    profile: ChargingProfile
    period: SchedulePeriod

    @property
    def unit(self) -> RateUnit:
        return self.profile.schedule.unit

    def signature(self) -> tuple[object, ...]:
        return (self.profile.id, self.profile.evse_id, self.unit, self.period.content())


def _winner(stack: Iterable[ChargingProfile], t: float, rel: float | None) -> _Pick | None:
    best: _Pick | None = None
    best_key: tuple[int, bool, int] = (-1, False, 0)
    for p in stack:
        period = _period_at(p, t, rel)
        if period is None:
            continue
        key = (p.stack_level, p.evse_id != 0, p.id)
        if best is None or key > best_key:
            best, best_key = _Pick(p, period), key
    return best


@dataclass(frozen=True, slots=True)
class _State:
    station_max: _Pick | None
    external: tuple[_Pick, ...]
    tx: _Pick | None
    local_generation: _Pick | None

    def caps(self) -> tuple[_Pick, ...]:
        return ((self.station_max,) if self.station_max else ()) + self.external

    def charge_picks(self) -> tuple[_Pick, ...]:
        return self.caps() + ((self.tx,) if self.tx else ())

    def signatures(self) -> dict[str, tuple[object, ...]]:
        lg = None if self.local_generation is None else self.local_generation.signature()
        return {
            "max": (None if self.station_max is None else self.station_max.signature(), lg),
            "external": (tuple(p.signature() for p in self.external), lg),
            "tx": (None if self.tx is None else self.tx.signature(), lg),
        }


def _resolve(layers: _Layers, t: float, rel: float | None) -> _State:
    tx = None
    for _, stack in layers.tx_level:
        tx = _winner(stack, t, rel)
        if tx is not None:
            break
    external = tuple(pick for stack in layers.external
                     if (pick := _winner(stack, t, rel)) is not None)
    return _State(station_max=_winner(layers.station_max, t, rel), external=external, tx=tx,
                  local_generation=_winner(layers.local_generation, t, rel))


def _phases_in_force(picks: Iterable[_Pick], phases: int) -> int:
    """K01.FR.140: the lowest numberPhases among the periods in force, never more than the board
    has (K01.FR.45). Without one, the board's phases: K01.FR.49's default of 3 on a three-phase
    board, and 1 on a single-phase board, where 3 cannot be meant."""
    n = phases
    for pick in picks:
        wanted = pick.period.number_phases
        if wanted is not None and 1 <= wanted < n:
            n = wanted
    return max(1, n)


def _charge_ceiling(q: SchedulePeriod) -> float | None:
    """How much a period lets the car charge, in its unit (None: it does not limit)."""
    if q.operation_mode is OperationMode.IDLE:
        return 0.0
    if q.limit is not None and q.limit < 0:
        return 0.0   # legacy negative limit: discharging
    if q.operation_mode is OperationMode.CENTRAL_SETPOINT and q.setpoint is not None:
        if q.setpoint <= 0:
            return 0.0
        return q.setpoint if q.limit is None else min(q.setpoint, q.limit)
    return q.limit


def _discharge_allowed(q: SchedulePeriod) -> bool:
    if q.operation_mode is None:
        return q.limit is not None and q.limit < 0
    return q.operation_mode in DISCHARGE_MODES


def _discharge_ceiling(q: SchedulePeriod) -> float | None:
    """How much a period lets the car discharge, as a magnitude in its unit (None: no bound)."""
    bounds = []
    if q.discharge_limit is not None:
        bounds.append(-q.discharge_limit)
    if q.limit is not None and q.limit < 0:
        bounds.append(-q.limit)
    return min(bounds) if bounds else None


def _to_amps(value: float, unit: RateUnit, phases: int, voltage_v: float) -> float:
    return value if unit is RateUnit.A else value / (voltage_v * phases)


def _from_amps(amps: float, unit: RateUnit, phases: int, voltage_v: float) -> float:
    return amps if unit is RateUnit.A else amps * voltage_v * phases


def _round(value: float) -> float:
    """One decimal, as the 2.0.1 limit field allows; never -0.0."""
    return round(value, 1) + 0.0


# ---- the composite schedule (K08) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompositePeriod:
    """From ``start_period`` seconds after the schedule start. ``limit`` is None where no
    profile limits charging; ``discharge_limit`` is a magnitude, present only where
    discharging is allowed and bounded; all values in the schedule's unit."""

    start_period: int
    limit: float | None
    number_phases: int
    operation_mode: OperationMode | None = None
    setpoint: float | None = None
    discharge_limit: float | None = None

    def same_values(self, other: CompositePeriod) -> bool:
        return replace(self, start_period=0) == replace(other, start_period=0)


@dataclass(frozen=True, slots=True)
class CompositeSchedule:
    evse_id: int
    start: float
    duration: int
    unit: RateUnit
    periods: tuple[CompositePeriod, ...]

    def period_at(self, t: float) -> CompositePeriod:
        current = self.periods[0]
        for period in self.periods:
            if self.start + period.start_period > t:
                break
            current = period
        return current

    def to_payload(self, *, rating_a: float, voltage_v: float,
                   version: OcppVersion | None = None) -> Payload:
        """The CompositeScheduleType dict. Where no profile limits, the EVSE's rating is
        reported (2.0.1 requires a limit). ``version`` 2.1 adds operationMode, setpoint and
        dischargeLimit; without it the shape is valid for both versions."""
        periods: list[Payload] = []
        for cp in self.periods:
            limit = cp.limit
            if limit is None:
                limit = _from_amps(rating_a, self.unit, cp.number_phases, voltage_v)
            out: Payload = {"startPeriod": cp.start_period, "limit": _round(limit),
                            "numberPhases": cp.number_phases}
            if version is OcppVersion.V21:
                if cp.operation_mode is not None:
                    out["operationMode"] = cp.operation_mode.value
                if cp.setpoint is not None:
                    out["setpoint"] = _round(cp.setpoint)
                if cp.discharge_limit is not None:
                    out["dischargeLimit"] = _round(-cp.discharge_limit)
            if periods and {**periods[-1], "startPeriod": 0} == {**out, "startPeriod": 0}:
                continue
            periods.append(out)
        return {"evseId": self.evse_id, "duration": self.duration,
                "scheduleStart": iso(self.start), "chargingRateUnit": self.unit.value,
                "chargingSchedulePeriod": periods}


def _composite_period(state: _State, offset: int, unit: RateUnit, phases: int,
                      voltage_v: float) -> CompositePeriod:
    picks = state.charge_picks()
    n = _phases_in_force(picks, phases)
    amps: float | None = None
    for pick in picks:
        value = _charge_ceiling(pick.period)
        if value is not None:
            a = _to_amps(value, pick.unit, n, voltage_v)
            amps = a if amps is None else min(amps, a)
    lg = state.local_generation
    if amps is not None and lg is not None:
        extra = _charge_ceiling(lg.period)
        if extra is not None:
            amps += _to_amps(extra, lg.unit, n, voltage_v)
    mode = setpoint = discharge = None
    tx = state.tx
    if tx is not None:
        if tx.period.operation_mode not in (None, OperationMode.CHARGING_ONLY):
            mode = tx.period.operation_mode
        if tx.period.setpoint is not None:
            setpoint = _from_amps(_to_amps(tx.period.setpoint, tx.unit, n, voltage_v), unit, n,
                                  voltage_v)
        if _discharge_allowed(tx.period):
            bounds = [_to_amps(b, p.unit, n, voltage_v) for p in (tx, *state.caps())
                      if (b := _discharge_ceiling(p.period)) is not None]
            if bounds:
                discharge = _from_amps(min(bounds), unit, n, voltage_v)
    limit = None if amps is None else _from_amps(amps, unit, n, voltage_v)
    return CompositePeriod(start_period=offset, limit=limit, number_phases=n,
                           operation_mode=mode, setpoint=setpoint, discharge_limit=discharge)


def composite_schedule(profiles: Iterable[ChargingProfile], *, evse_id: int, start: float,
                       duration_s: int, unit: RateUnit | str, tx: TxContext | None,
                       phases: int, voltage_v: float) -> CompositeSchedule:
    """The composite schedule for ``evse_id`` from ``start`` (whole seconds) for
    ``duration_s``: the combination rules of the module docstring, period by period, with
    consecutive equal periods merged. Relative profiles run from the transaction start, or from
    ``start`` when there is no transaction (the schedule a transaction starting now gets)."""
    rate_unit = RateUnit(unit)
    t0 = float(math.floor(start))
    rel = t0 if tx is None else tx.started_at
    layers = _layers(profiles, evse_id, tx)
    offsets = {0}
    for edge in _edges_between(layers, t0, t0 + duration_s, rel):
        offset = math.ceil(edge - t0)
        if 0 < offset < duration_s:
            offsets.add(offset)
    periods: list[CompositePeriod] = []
    for offset in sorted(offsets):
        period = _composite_period(_resolve(layers, t0 + offset, rel), offset, rate_unit,
                                   phases, voltage_v)
        if not periods or not periods[-1].same_values(period):
            periods.append(period)
    return CompositeSchedule(evse_id=evse_id, start=t0, duration=duration_s, unit=rate_unit,
                             periods=tuple(periods))


# ---- limits for the arbiter -----------------------------------------------------------------


def _first_changes(layers: _Layers, now: float, rel: float | None) -> dict[str, float]:
    """For each slot (max, external, tx), the first instant after ``now`` its winner or value
    changes. A slot depends only on its own stacks and LocalGeneration, so each walks only
    their edges; a slot without candidates cannot change."""
    lg = layers.local_generation
    own = {"max": _Layers(layers.station_max, (), (), lg),
           "external": _Layers((), layers.external, (), lg),
           "tx": _Layers((), (), layers.tx_level, lg)}
    found: dict[str, float] = {}
    for slot, sub in own.items():
        if next(sub.all(), None) is None:
            continue
        base = _resolve(sub, now, rel).signatures()[slot]
        for t in _walk(sub, now, rel):
            if _resolve(sub, t, rel).signatures()[slot] != base:
                found[slot] = t
                break
    return found


def _reason(pick: _Pick, lg: _Pick | None) -> str:
    text = f"OCPP {pick.profile.label()}"
    if lg is not None and _charge_ceiling(lg.period):
        text += f" + LocalGeneration #{lg.profile.id}"
    return text


def _source(pick: _Pick) -> LimitSource:
    return {Purpose.STATION_MAX: LimitSource.OCPP_STATION_MAX,
            Purpose.EXTERNAL: LimitSource.OCPP_EXTERNAL,
            Purpose.TX_DEFAULT: LimitSource.OCPP_TX_DEFAULT}.get(pick.profile.purpose,
                                                                 LimitSource.OCPP_TX)


def _limit_phases(q: SchedulePeriod, phases: int) -> int | None:
    """The period's numberPhases for a Limit, never more than the board has."""
    wanted = q.number_phases
    return None if wanted is None or not 1 <= wanted <= 3 else min(wanted, phases)


def limits_at(profiles: Iterable[ChargingProfile], *, evse_id: int, now: float,
              tx: TxContext | None, phases: int, voltage_v: float) -> list[Limit]:
    """The operator-class limits the profiles set on ``evse_id`` at ``now``, one per source:
    OCPP_STATION_MAX, OCPP_EXTERNAL (the lower of the station-wide and the EVSE's own),
    OCPP_TX (TxProfile or PriorityCharging) or else OCPP_TX_DEFAULT. Each is in the unit its
    profile states, with the period's numberPhases, valid until its value or winner next
    changes. Active LocalGeneration capacity is added to each (it raises the composite)."""
    layers = _layers(profiles, evse_id, tx)
    rel = None if tx is None else tx.started_at
    state = _resolve(layers, now, rel)
    changes = _first_changes(layers, now, rel)
    n = _phases_in_force(state.charge_picks(), phases)
    slots = [("max", state.station_max), ("external", _binding(state.external, n, voltage_v)),
             ("tx", state.tx)]
    lg = state.local_generation
    out = []
    for slot, pick in slots:
        value = None if pick is None else _charge_ceiling(pick.period)
        if pick is None or value is None:
            continue
        lim_phases = _limit_phases(pick.period, phases)
        if lg is not None and (extra := _charge_ceiling(lg.period)):
            over = lim_phases or phases
            value += _from_amps(_to_amps(extra, lg.unit, over, voltage_v), pick.unit, over,
                                voltage_v)
        amount = max(0.0, value)
        out.append(Limit.of(_source(pick), _reason(pick, lg),
                            amps=amount if pick.unit is RateUnit.A else None,
                            watts=amount if pick.unit is RateUnit.W else None,
                            phases=lim_phases, valid_until=changes.get(slot)))
    return out


def _binding(picks: Sequence[_Pick], phases: int, voltage_v: float) -> _Pick | None:
    best: _Pick | None = None
    best_amps = math.inf
    for pick in picks:
        value = _charge_ceiling(pick.period)
        if value is None:
            continue
        amps = _to_amps(value, pick.unit, phases, voltage_v)
        if best is None or amps < best_amps:
            best, best_amps = pick, amps
    return best


def next_change(profiles: Iterable[ChargingProfile], *, evse_id: int, now: float,
                tx: TxContext | None) -> float | None:
    """The next instant after ``now`` where any purpose's value for ``evse_id`` changes, or a
    profile that applies to it expires; None when nothing will."""
    layers = _layers(list(profiles), evse_id, tx)
    rel = None if tx is None else tx.started_at
    times = list(_first_changes(layers, now, rel).values())
    times.extend(p.valid_to for p in layers.all() if p.valid_to is not None and p.valid_to > now)
    return min(times) if times else None


# ---- discharge (2.1 V2X) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DischargeLimit:
    """One purpose's bound on discharging: amps per phase OR watts in total, >= 0."""

    source: LimitSource
    reason: str
    amps: float | None = None
    watts: float | None = None
    phases: int | None = None
    valid_until: float | None = None

    def __post_init__(self) -> None:
        if (self.amps is None) == (self.watts is None):
            raise ValueError("a discharge limit is in amps or in watts, exactly one")
        value = self.amps if self.amps is not None else self.watts
        if value is None or not math.isfinite(value) or value < 0:
            raise ValueError(f"a discharge limit is a finite magnitude >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class DischargeState:
    """What the profiles say about discharging at an instant, for the V2G work.

    Discharging is allowed only when the transaction-level period is in a discharge-capable
    operationMode (or, for legacy systems, has a negative limit). Then the car may discharge up
    to the lowest of ``limits`` (none: OCPP sets no bound); with CentralSetpoint it should
    follow ``setpoint`` (signed, negative discharges, in ``setpoint_unit``). Whether the board
    can discharge at all is the caller's to know: validation refuses discharging profiles on
    unidirectional boards, but ExternalLimits, for instance, is valid on both.
    """

    allowed: bool
    mode: OperationMode
    limits: tuple[DischargeLimit, ...] = ()
    setpoint: float | None = None
    setpoint_unit: RateUnit | None = None
    valid_until: float | None = None


def discharge_limits_at(profiles: Iterable[ChargingProfile], *, evse_id: int, now: float,
                        tx: TxContext | None, phases: int) -> DischargeState:
    """Whether, and how much, the profiles let the car on ``evse_id`` discharge at ``now``."""
    layers = _layers(list(profiles), evse_id, tx)
    rel = None if tx is None else tx.started_at
    state = _resolve(layers, now, rel)
    changes = _first_changes(layers, now, rel)
    until = min(changes.values()) if changes else None
    pick = state.tx
    if pick is None:
        return DischargeState(allowed=False, mode=OperationMode.CHARGING_ONLY,
                              valid_until=until)
    q = pick.period
    mode = q.operation_mode or OperationMode.CHARGING_ONLY
    if not _discharge_allowed(q):
        return DischargeState(allowed=False, mode=mode, valid_until=until)
    bounds = []
    for bounding in (pick, *state.caps()):
        bound = _discharge_ceiling(bounding.period)
        if bound is None:
            continue
        is_amps = bounding.unit is RateUnit.A
        bounds.append(DischargeLimit(_source(bounding), f"OCPP {bounding.profile.label()}",
                                     amps=bound if is_amps else None,
                                     watts=None if is_amps else bound,
                                     phases=_limit_phases(bounding.period, phases),
                                     valid_until=until))
    return DischargeState(allowed=True, mode=mode, limits=tuple(bounds), setpoint=q.setpoint,
                          setpoint_unit=None if q.setpoint is None else pick.unit,
                          valid_until=until)


# ---- CSMS requests --------------------------------------------------------------------------


class ProfileRepository(Protocol):
    """Where installed profiles live (profile_store.ProfileStore)."""

    def put(self, profile: ChargingProfile) -> None: ...

    def remove(self, ids: Iterable[int]) -> list[int]: ...

    def all(self) -> list[ChargingProfile]: ...


def set_charging_profile(payload: Payload, ctx: ValidationContext, store: ProfileRepository,
                         now: float) -> Payload:
    """SetChargingProfile (K01): validate, then install (replacing the same id, K01.FR.05)."""
    evse_id = int(payload["evseId"])
    try:
        profile = parse_profile(payload["chargingProfile"], evse_id=evse_id)
    except ProfileFormatError as exc:
        rejection: Rejection | None = Rejection(ReasonCode.INVALID_VALUE, str(exc))
    else:
        rejection = validate_profile(profile, evse_id=evse_id, ctx=ctx, installed=store.all(),
                                     now=now)
    if rejection is not None:
        logs.log(log, "profile_rejected", evse=evse_id,
                 profile=payload["chargingProfile"].get("id"), reason=rejection.reason,
                 info=rejection.info)
        return rejection.response()
    store.put(profile)
    logs.log(log, "profile_set", evse=evse_id, profile=profile.id, purpose=profile.purpose,
             stack=profile.stack_level)
    return {"status": "Accepted"}


# The CSMS clears only what it installed; ExternalConstraints and LocalGeneration belong to
# the external system (K10.FR.04, K10.FR.08, K10.FR.09).
_NOT_CLEARABLE = frozenset({Purpose.EXTERNAL, Purpose.LOCAL_GENERATION})


def clear_charging_profile(payload: Payload, store: ProfileRepository) -> Payload:
    """ClearChargingProfile (K10): by chargingProfileId, else by the criteria (evseId, purpose,
    stackLevel; none: all). Accepted when something was cleared, Unknown otherwise."""
    criteria = payload.get("chargingProfileCriteria") or {}
    purpose = criteria.get("chargingProfilePurpose")
    if purpose is not None and Purpose(purpose) in _NOT_CLEARABLE:
        return {"status": "Unknown", "statusInfo": {
            "reasonCode": ReasonCode.INVALID_VALUE.value,
            "additionalInfo": f"{purpose} is set by an external system"}}
    clearable = [p for p in store.all()
                 if p.source == ChargingLimitSource.CSO and p.purpose not in _NOT_CLEARABLE]
    wanted_id = payload.get("chargingProfileId")
    if wanted_id is not None:
        matches = [p for p in clearable if p.id == wanted_id]
    else:
        matches = [p for p in clearable
                   if criteria.get("evseId") in (None, p.evse_id)
                   and purpose in (None, p.purpose)
                   and criteria.get("stackLevel") in (None, p.stack_level)]
    if not matches:
        return {"status": "Unknown"}
    removed = store.remove(p.id for p in matches)
    logs.log(log, "profiles_cleared", ids=removed)
    return {"status": "Accepted"}


def _for_version(raw: Mapping[str, Any], version: OcppVersion) -> dict[str, Any] | None:
    """A stored chargingProfile in the shape of ``version``; None when 2.0.1 cannot express
    it (a 2.1 purpose or kind, a period without limit)."""
    if version is OcppVersion.V21:
        return copy.deepcopy(dict(raw))
    if (raw["chargingProfilePurpose"] in {p.value for p in V21_PURPOSES}
            or raw["chargingProfileKind"] == Kind.DYNAMIC):
        return None
    out = {k: copy.deepcopy(v) for k, v in raw.items() if k not in _V21_PROFILE_FIELDS}
    schedules = []
    for s in raw["chargingSchedule"]:
        schedule = {k: copy.deepcopy(v) for k, v in s.items() if k not in _V21_SCHEDULE_FIELDS}
        periods = [{k: v for k, v in q.items() if k in _V201_PERIOD_FIELDS}
                   for q in s["chargingSchedulePeriod"]]
        if any("limit" not in q for q in periods):
            return None
        schedule["chargingSchedulePeriod"] = periods
        schedules.append(schedule)
    out["chargingSchedule"] = schedules
    return out


def _matches(p: ChargingProfile, evse_id: int | None, criterion: Mapping[str, Any]) -> bool:
    ids = criterion.get("chargingProfileId")
    sources = criterion.get("chargingLimitSource")
    return (evse_id in (None, p.evse_id)
            and (ids is None or p.id in ids)
            and criterion.get("chargingProfilePurpose") in (None, p.purpose)
            and criterion.get("stackLevel") in (None, p.stack_level)
            and (sources is None or p.source in sources))


def get_charging_profiles(payload: Payload, store: ProfileRepository, *,
                          version: OcppVersion | str = OcppVersion.V21,
                          ) -> tuple[Payload, list[Payload]]:
    """GetChargingProfiles (K09): the response, and the ReportChargingProfiles payloads to
    send after it, one per EVSE and source (the message carries one of each), all but the
    last with tbc. All criteria given must match."""
    ocpp_version = OcppVersion(version)
    evse_id = payload.get("evseId")
    criterion = payload.get("chargingProfile") or {}
    groups: dict[tuple[int, str], list[tuple[int, Payload]]] = {}
    for p in store.all():
        if not _matches(p, evse_id, criterion):
            continue
        shaped = _for_version(p.raw, ocpp_version)
        if shaped is None:
            continue
        source = p.source
        if ocpp_version is OcppVersion.V201 and source not in set(ChargingLimitSource):
            source = ChargingLimitSource.OTHER.value   # 2.0.1 knows only the four sources
        groups.setdefault((p.evse_id, source), []).append((p.id, shaped))
    if not groups:
        return {"status": "NoProfiles"}, []
    reports = [{"requestId": payload["requestId"], "chargingLimitSource": source,
                "evseId": evse, "chargingProfile": [item for _, item in sorted(
                    items, key=lambda pair: pair[0])], "tbc": True}
               for (evse, source), items in sorted(groups.items())]
    reports[-1]["tbc"] = False
    return {"status": "Accepted"}, reports


COMPOSITE_MAX_S = 7 * 86400


def get_composite_schedule(payload: Payload, *, store: ProfileRepository, now: float,
                           tx: TxContext | None, phases: int, voltage_v: float, n_evses: int,
                           units: Iterable[str], rating_a: float = 32.0,
                           version: OcppVersion | str | None = None) -> Payload:
    """GetCompositeSchedule (K08) for the requested EVSE from ``now``. ``tx`` is the
    transaction on that EVSE (for EVSE 0 of a one-EVSE station: on EVSE 1); ``units`` are the
    supported rate units (SmartChargingCtrlr.RateUnit); ``rating_a`` is reported where no
    profile limits. EVSE 0 of a multi-EVSE station gets the station-wide caps only."""
    evse_id = int(payload["evseId"])
    supported = [RateUnit(u) for u in units if u in set(RateUnit)]
    if not 0 <= evse_id <= n_evses:
        return Rejection(ReasonCode.UNKNOWN_EVSE, f"no EVSE {evse_id}").response()
    requested = payload.get("chargingRateUnit")
    if requested is not None and RateUnit(requested) not in supported:
        return Rejection(ReasonCode.UNSUPPORTED_RATE_UNIT,
                         f"chargingRateUnit {requested} not supported").response()
    if requested is not None:
        unit = RateUnit(requested)
    else:
        unit = RateUnit.A if RateUnit.A in supported or not supported else supported[0]
    target = 1 if evse_id == 0 and n_evses == 1 else evse_id
    # The CSMS may ask for any horizon; we answer at most COMPOSITE_MAX_S of it (the answer's
    # duration says so), so one request can neither block the loop nor outgrow a frame.
    duration = min(max(0, int(payload["duration"])), COMPOSITE_MAX_S)
    schedule = composite_schedule(store.all(), evse_id=target, start=now,
                                  duration_s=duration, unit=unit,
                                  tx=tx, phases=phases, voltage_v=voltage_v)
    schedule = replace(schedule, evse_id=evse_id)
    return {"status": "Accepted",
            "schedule": schedule.to_payload(rating_a=rating_a, voltage_v=voltage_v,
                                            version=None if version is None
                                            else OcppVersion(version))}
