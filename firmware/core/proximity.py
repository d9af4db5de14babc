"""Proximity pilot: the cable's resistor coding → the current the cable may carry.

Ranges from IEC 61851-1 Table B.2 as EVerest's bring-up guide lists them (min/nominal/max):
13 A 1100/1500/2460 Ω, 20 A 400/680/936 Ω, 32 A 164/220/308 Ω, 63 A 80/100/140 Ω. A value
between two ranges counts as the lower ampacity, the safe side.
"""

from __future__ import annotations

# (lowest accepted resistance, ampacity), checked from the highest resistance down.
_BANDS = ((936.0, 13.0), (308.0, 20.0), (140.0, 32.0))
_MAX_OHM = 2460.0
_MIN_OHM = 80.0


def cable_ampacity(ohm: float | None) -> float | None:
    """Amps the cable may carry, or None when there is no valid cable coding (open, cut,
    shorted)."""
    if ohm is None or ohm > _MAX_OHM:
        return None
    for lowest, amps in _BANDS:
        if ohm > lowest:
            return amps
    return 63.0 if ohm >= _MIN_OHM else None
