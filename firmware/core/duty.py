"""Where the PWM duty is computed: IEC 61851-1 Table A.7, current → duty cycle and back.

6 A to 51 A: duty = I / 0.6 %; 51 A to 80 A: duty = I / 2.5 + 64 %; 5 % asks for ISO 15118
high-level communication. Anything else is illegal and never leaves this module. Duties are
rounded DOWN to the PWM's 0.1 % resolution so the car is never offered more than the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

MIN_CURRENT_A = 6.0
MAX_CURRENT_A = 80.0
HLC_DUTY = 5.0
_LOW_BAND_TOP_A = 51.0      # 85 % duty
_HIGH_BAND_START_A = 52.5   # 85 % duty again: between the two the only safe duty is 85 %
_RESOLUTION = 0.1


class PilotMode(Enum):
    X1 = "x1"    # steady +12 V: no PWM
    PWM = "pwm"  # ±12 V at 1 kHz
    F = "f"      # steady −12 V: EVSE not available


@dataclass(frozen=True, slots=True)
class Pilot:
    mode: PilotMode
    duty: float = 0.0

    def __post_init__(self) -> None:
        if self.mode is PilotMode.PWM and not is_legal_duty(self.duty):
            raise ValueError(f"illegal PWM duty {self.duty} %")


X1 = Pilot(PilotMode.X1)
STATE_F = Pilot(PilotMode.F)


def is_legal_duty(duty: float) -> bool:
    return duty == HLC_DUTY or 10.0 <= duty <= 96.0


def _floor(duty: float) -> float:
    # The epsilon keeps exact products such as 16 / 0.6 * 10 = 266.666... from flooring a
    # hair low, and cannot raise a duty by a whole step.
    return math.floor(duty / _RESOLUTION + 1e-9) * _RESOLUTION


def duty_for_current(amps: float) -> float:
    """The duty cycle that offers at most ``amps`` per phase; ValueError below 6 A.

    Above 80 A the offer is 80 A, the most a PWM can signal.
    """
    if not amps >= MIN_CURRENT_A:
        raise ValueError(f"{amps} A is below the {MIN_CURRENT_A} A a PWM can offer")
    amps = min(amps, MAX_CURRENT_A)
    if amps < _HIGH_BAND_START_A:
        return round(_floor(min(amps, _LOW_BAND_TOP_A) / 0.6), 1)
    return round(_floor(amps / 2.5 + 64.0), 1)


def current_for_duty(duty: float) -> float:
    """What a car may draw at this duty (the inverse of ``duty_for_current``)."""
    if not is_legal_duty(duty) or duty == HLC_DUTY:
        raise ValueError(f"duty {duty} % does not offer a current")
    amps = duty * 0.6 if duty <= 85.0 else (duty - 64.0) * 2.5
    return round(amps, 6)


def pwm_for_current(amps: float) -> Pilot:
    return Pilot(PilotMode.PWM, duty_for_current(amps))
