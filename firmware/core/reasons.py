"""Why things happen, as typed values: faults, stop reasons, suspend reasons.

A field pilot's platform logged "low solar power" when the real cause was a tariff window; these
enums exist so that every stop, pause and fault carries its true cause to the web page, MQTT, OCPP
and the logs without anyone parsing text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FaultCode(Enum):
    OVER_CURRENT = "over_current"
    RCD_TRIPPED = "rcd_tripped"
    RCD_SELF_TEST_FAILED = "rcd_self_test_failed"
    CONTACTOR_WELDED = "contactor_welded"
    CONTACTOR_NOT_CLOSING = "contactor_not_closing"
    DIODE_MISSING = "diode_missing"
    CP_SHORT = "cp_short"
    CP_INVALID = "cp_invalid"
    VENTILATION_NOT_AVAILABLE = "ventilation_not_available"
    OVER_TEMPERATURE = "over_temperature"
    LOCK_FAILURE = "lock_failure"
    PROXIMITY_FAULT = "proximity_fault"
    METER_LOST = "meter_lost"


class Recovery(Enum):
    """How a fault is cleared once it is raised."""

    AUTO = "auto"                  # clears when its condition is gone
    REPLUG = "replug"              # clears when the CP reads state A (car unplugged)
    MANUAL_RESET = "manual_reset"  # stays, across restarts, until an operator resets it


@dataclass(frozen=True, slots=True)
class FaultRule:
    recovery: Recovery
    why: str


# The recovery rule of every fault; docs/safety.md is this table in prose.
FAULT_RULES: dict[FaultCode, FaultRule] = {
    FaultCode.OVER_CURRENT: FaultRule(
        Recovery.REPLUG, "a car that overdraws after a lower offer cannot be trusted this session"),
    FaultCode.RCD_TRIPPED: FaultRule(
        Recovery.MANUAL_RESET, "a residual current means an insulation fault somewhere"),
    FaultCode.RCD_SELF_TEST_FAILED: FaultRule(
        Recovery.MANUAL_RESET, "the protective device itself is broken"),
    FaultCode.CONTACTOR_WELDED: FaultRule(
        Recovery.MANUAL_RESET, "the outlet may be live; needs service"),
    FaultCode.CONTACTOR_NOT_CLOSING: FaultRule(
        Recovery.REPLUG, "the contactor or its feedback failed; retry with a new session"),
    FaultCode.DIODE_MISSING: FaultRule(
        Recovery.REPLUG, "not a compliant EV (or a test short); check again on the next plug"),
    FaultCode.CP_SHORT: FaultRule(
        Recovery.REPLUG, "CP shorted to PE; the cable or car must be removed"),
    FaultCode.CP_INVALID: FaultRule(
        Recovery.REPLUG, "CP voltage outside every state band"),
    FaultCode.VENTILATION_NOT_AVAILABLE: FaultRule(
        Recovery.REPLUG, "the car asks for ventilation (state D) and will again: offering PWM "
        "after it backs off to B would only flap"),
    FaultCode.OVER_TEMPERATURE: FaultRule(
        Recovery.AUTO, "clears when the temperature falls below [safety] resume_c"),
    FaultCode.LOCK_FAILURE: FaultRule(
        Recovery.REPLUG, "charging without a locked plug is not allowed"),
    FaultCode.PROXIMITY_FAULT: FaultRule(
        Recovery.REPLUG, "the cable coding is invalid or the cable was cut"),
    FaultCode.METER_LOST: FaultRule(
        Recovery.AUTO, "without a meter over-current cannot be supervised; clears when it answers"),
}


class StopReason(Enum):
    """Why a session ended (at unplug) or why charging in it stopped for good."""

    EV_DISCONNECTED = "ev_disconnected"
    EV_DISCONNECTED_UNDER_LOAD = "ev_disconnected_under_load"
    FAULT = "fault"
    CONTROLLER_SHUTDOWN = "controller_shutdown"
    CONTROLLER_RESTART = "controller_restart"  # a session open when the controller died


class SuspendReason(Enum):
    """Why a car that is plugged in is not drawing power right now."""

    NOT_AUTHORIZED = "not_authorized"
    LOCKING = "locking"
    RCD_SELF_TEST = "rcd_self_test"
    LIMIT_BELOW_MINIMUM = "limit_below_minimum"
    EV_NOT_READY = "ev_not_ready"          # PWM offered, car has not asked for power yet
    EV_PAUSED = "ev_paused"                # car stopped drawing by itself (full, timer, user)
    EV_NOT_RESPONDING = "ev_not_responding"  # wake-up tried and the car still does not start
    WAKING_EV = "waking_ev"
    RECLOSE_DELAY = "reclose_delay"
    PHASE_SWITCH = "phase_switch"          # switching between 1 and 3 phases
    FAULT = "fault"
