"""Control-pilot voltage → IEC 61851-1 state, with the standard's hysteresis (Table A.4).

Bands as implemented by chargebyte's EVerest driver (CPUtils::voltage_to_state). Debouncing is
the backend's job: it samples the ADC far faster than this layer runs and reports settled
levels, so a state change reaches the core without waiting for a second sample.
"""

from __future__ import annotations

from enum import Enum

from hal.roles import CpReading

# The negative plateau must sit near −12 V when the car's diode is in place.
_DIODE_LOW_MAX_V = -10.0
# Missing diode: the negative plateau mirrors the positive one (|high + low| ≈ 0).
_DIODE_FAULT_SUM_V = 1.2
_PLATEAU_MIN_V = 2.0


class CpState(Enum):
    A = "A"  # no car
    B = "B"  # car connected, not ready
    C = "C"  # car requests power
    D = "D"  # car requests power with ventilation
    E = "E"  # CP shorted to PE / EVSE error
    F = "F"  # −12 V: only seen while we drive state F ourselves
    INVALID = "invalid"


def classify(reading: CpReading, previous: CpState) -> CpState:
    v = reading.high_v
    if v > 13.0:
        return CpState.INVALID
    if v >= 11.0:
        return CpState.A
    if v >= 10.0:
        return CpState.A if previous is CpState.A else CpState.B
    if v >= 8.0:
        return CpState.B
    if v >= 7.0:
        return CpState.B if previous in (CpState.A, CpState.B) else CpState.C
    if v >= 5.0:
        return CpState.C
    if v >= 4.0:
        return CpState.C if previous in (CpState.A, CpState.B, CpState.C) else CpState.D
    if v >= 2.0:
        return CpState.D
    if v >= -2.0:
        return CpState.E
    if v >= -10.0:
        return CpState.INVALID
    if v >= -11.0:
        return CpState.F if previous is CpState.F else CpState.INVALID
    if v >= -13.0:
        return CpState.F
    return CpState.INVALID


def diode_missing(reading: CpReading) -> bool:
    """Only meaningful while PWM is on: the negative plateau is loaded like the positive one."""
    return (reading.high_v > _PLATEAU_MIN_V
            and abs(reading.high_v + reading.low_v) <= _DIODE_FAULT_SUM_V)


def diode_present(reading: CpReading) -> bool:
    """Only meaningful while PWM is on: the car's diode blocks the negative half."""
    return reading.high_v > _PLATEAU_MIN_V and reading.low_v <= _DIODE_LOW_MAX_V
