"""PWM duty from current (IEC 61851-1 Table A.7) and back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.core.duty import (
    HLC_DUTY,
    Pilot,
    PilotMode,
    current_for_duty,
    duty_for_current,
    is_legal_duty,
)
from hal.sim.ev import Output, offered_current


@pytest.mark.parametrize(("amps", "duty"), [
    (6.0, 10.0), (10.0, 16.6), (13.0, 21.6), (16.0, 26.6), (20.0, 33.3), (32.0, 53.3),
    (40.0, 66.6), (51.0, 85.0), (51.5, 85.0), (52.5, 85.0), (53.0, 85.2), (63.0, 89.2),
    (80.0, 96.0), (120.0, 96.0),
])
def test_duty_table(amps: float, duty: float) -> None:
    assert duty_for_current(amps) == duty


@pytest.mark.parametrize("amps", [0.0, 5.9, -1.0, float("nan")])
def test_below_six_amps_there_is_no_duty(amps: float) -> None:
    with pytest.raises(ValueError):
        duty_for_current(amps)


def test_illegal_duty_cannot_be_built() -> None:
    for duty in (0.0, 4.9, 7.0, 9.9, 96.1, 100.0):
        with pytest.raises(ValueError):
            Pilot(PilotMode.PWM, duty)
    assert Pilot(PilotMode.PWM, HLC_DUTY).duty == 5.0


@given(st.floats(6.0, 200.0))
def test_the_offer_never_exceeds_the_request(amps: float) -> None:
    duty = duty_for_current(amps)
    assert is_legal_duty(duty)
    offered = current_for_duty(duty)
    assert offered <= min(amps, 80.0) + 1e-9
    # At most one 0.1 % step below; just above 51 A the next step up (85.1 %) is 52.75 A.
    assert offered >= min(amps, 80.0) - 0.25 or (offered == 51.0 and amps < 52.75) or (
        amps <= 51.0 and offered >= amps - 0.06)
    # and the car reads the same current from it as we think we offer
    assert offered_current(Output.PWM, duty) == pytest.approx(offered)


@given(st.floats(6.0, 80.0), st.floats(6.0, 80.0))
def test_duty_is_monotonic(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert duty_for_current(lo) <= duty_for_current(hi)
