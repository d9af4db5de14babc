"""Meter values as OCPP sampledValue lists, and the clock-aligned sampling instants.

Clock-aligned readings are taken at wall-clock boundaries counted from UTC midnight (:00, :15,
:30, :45 for a 900 s interval), so every charge point of a fleet reports the same timestamps and
the operator can add them up without resampling (AlignedDataCtrlr, J01). Session-relative
sampling (SampledDataCtrlr TxUpdatedInterval) counts from the transaction's start instead.
"""

from __future__ import annotations

import math
from typing import Any

from hal.clock import iso
from hal.roles import MeterReading

DAY_S = 86400.0
_PHASES = ("L1", "L2", "L3")


def next_aligned(now: float, interval_s: float) -> float:
    """The first aligned instant strictly after ``now``: multiples of the interval from the
    UTC midnight of ``now``'s day, restarting at each midnight when the interval does not
    divide a day (J01: aligned to midnight)."""
    if interval_s <= 0:
        raise ValueError("an aligned interval is > 0 s")
    midnight = math.floor(now / DAY_S) * DAY_S
    k = math.floor((now - midnight) / interval_s) + 1
    t = midnight + k * interval_s
    return min(t, midnight + DAY_S)


def next_periodic(start: float, now: float, interval_s: float) -> float:
    """The next instant after ``now`` on the grid start + k × interval."""
    k = math.floor((now - start) / interval_s) + 1
    return start + k * interval_s


def sampled_values(reading: MeterReading, measurands: list[str], context: str,
                   soc: float | None = None, offered_a: float | None = None
                   ) -> list[dict[str, Any]]:
    """The sampledValue list for the measurands asked for that the meter can give.

    Measurands we cannot measure are left out rather than reported as zero (a zero would be a
    false reading); the device model lists only what we support."""
    out: list[dict[str, Any]] = []

    def add(measurand: str, value: float, unit: str, phase: str | None = None) -> None:
        item: dict[str, Any] = {"value": round(value, 3), "measurand": measurand,
                                "context": context, "unitOfMeasure": {"unit": unit}}
        if phase is not None:
            item["phase"] = phase
        out.append(item)

    for measurand in measurands:
        if measurand == "Energy.Active.Import.Register":
            add(measurand, reading.energy_wh, "Wh")
        elif measurand == "Power.Active.Import":
            add(measurand, max(0.0, reading.total_power_w), "W")
        elif measurand == "Power.Active.Export":
            add(measurand, max(0.0, -reading.total_power_w), "W")
        elif measurand in ("Current.Import", "Current.Export"):
            sign = 1.0 if measurand == "Current.Import" else -1.0
            for phase, amps in zip(_PHASES, reading.current_a, strict=False):
                add(measurand, max(0.0, sign * amps), "A", phase)
        elif measurand == "Current.Offered" and offered_a is not None:
            add(measurand, offered_a, "A")
        elif measurand == "Power.Offered" and offered_a is not None:
            add(measurand, offered_a * sum(reading.voltage_v), "W")
        elif measurand == "Voltage":
            for phase, volts in zip(_PHASES, reading.voltage_v, strict=False):
                add(measurand, volts, "V", f"{phase}-N")
        elif measurand == "SoC" and soc is not None:
            add(measurand, soc, "Percent")
    return out


def meter_value(reading: MeterReading, measurands: list[str], context: str, at: float,
                soc: float | None = None, offered_a: float | None = None
                ) -> list[dict[str, Any]]:
    """A one-element meterValue list, or an empty list when nothing could be sampled."""
    values = sampled_values(reading, measurands, context, soc, offered_a)
    return [{"timestamp": iso(at), "sampledValue": values}] if values else []


def measurand_list(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]
