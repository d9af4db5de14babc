"""Meters of ``kind = "sim"``: the simulated site (``ems.simulate.SimSite``) read like real
meters, for the sim board's in-process energy manager and the demos."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ems.model import Role
from ems.service import Poll
from ems.simulate import SimSite

# What the cars draw now: per-site-phase amps and total watts.
CarDraw = Callable[[float], tuple[Sequence[float], float]]


class SimMeter:
    def __init__(self, name: str, role: Role, site: SimSite, cars: CarDraw) -> None:
        self.name = name
        self.role = role
        self.site = site
        self.cars = cars

    async def poll(self, now: float) -> Poll:
        amps, watts = self.cars(now)
        self.site.advance(now, watts)
        reading = self.site.readings(now, amps, watts).get(self.role)
        if reading is None:
            return Poll(None, f"the simulated site has no {self.role.value} meter")
        return Poll(reading)

    async def close(self) -> None:
        return None
