"""CP voltage to state, with the hysteresis bands of IEC 61851-1 Table A.4."""

from __future__ import annotations

import pytest

from firmware.core.cp import CpState, classify, diode_missing, diode_present
from hal.roles import CpReading

A, B, C, D, E, F, X = (CpState.A, CpState.B, CpState.C, CpState.D, CpState.E, CpState.F,
                       CpState.INVALID)


@pytest.mark.parametrize(("volts", "previous", "state"), [
    (13.5, A, X), (12.0, B, A), (10.5, A, A), (10.5, B, B), (9.0, A, B), (7.5, B, B),
    (7.5, C, C), (6.0, B, C), (4.5, C, C), (4.5, D, D), (3.0, C, D), (0.0, C, E), (-1.5, B, E),
    (-5.0, B, X), (-10.5, F, F), (-10.5, B, X), (-12.0, B, F), (-14.0, F, X),
])
def test_bands_and_hysteresis(volts: float, previous: CpState, state: CpState) -> None:
    assert classify(CpReading(volts, -12.0), previous) is state


def test_diode_check_needs_the_negative_plateau() -> None:
    assert diode_present(CpReading(9.0, -12.0))
    assert not diode_missing(CpReading(9.0, -12.0))
    assert diode_missing(CpReading(9.0, -9.0))
    assert diode_missing(CpReading(6.0, -5.5))
    assert not diode_present(CpReading(0.0, 0.0))
