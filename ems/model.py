"""The values the energy manager reasons about: readings with a timestamp, per-phase triples,
charge-point state and the limits it asks a charge point to honour.

Sign convention, one for the whole site (the same as a generator-reference meter would use for
sources and a consumer-reference meter for loads, so every number reads the way a user says it):

- grid: positive = import from the grid, negative = export (feed-in);
- PV: positive = production;
- battery: positive = discharging into the house, negative = charging;
- house and charge points: positive = consumption.

Times are clock seconds (``hal.clock``'s timeline, injected; the EMS never reads the wall).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

PHASES = 3
Triple = tuple[float, float, float]
ZERO3: Triple = (0.0, 0.0, 0.0)


class Role(Enum):
    """What a meter measures on the site."""

    GRID = "grid"
    PV = "pv"
    BATTERY = "battery"
    HOUSE = "house"
    CHARGE_POINT = "charge_point"


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of one meter. Unknown quantities are None; ``at`` is when it was taken."""

    at: float
    power_w: float | None = None            # total active power, site sign convention
    currents_a: Triple | None = None        # per phase L1..L3, signed like power_w
    voltages_v: Triple | None = None
    import_wh: float | None = None          # energy counters as the device reports them
    export_wh: float | None = None
    soc_pct: float | None = None            # batteries
    frequency_hz: float | None = None

    def finite(self) -> bool:
        """Every value present is a real number (a meter that answers NaN is not answering)."""
        values: list[float] = [self.at]
        for v in (self.power_w, self.import_wh, self.export_wh, self.soc_pct,
                  self.frequency_hz):
            if v is not None:
                values.append(v)
        for t in (self.currents_a, self.voltages_v):
            if t is not None:
                values.extend(t)
        return all(math.isfinite(v) for v in values)


class Mode(Enum):
    """How a charge point uses the site's power (the evcc modes, which users know)."""

    OFF = "off"        # do not charge
    NOW = "now"        # as fast as the site allows
    MIN_PV = "minpv"   # the minimum current always, more with PV surplus
    PV = "pv"          # PV surplus only; pauses when there is none


@dataclass(frozen=True, slots=True)
class ChargePointState:
    """What a charge point reports to the EMS each cycle."""

    id: str
    at: float
    connected: bool = False           # a car is plugged in (CP state B/C/D)
    charging: bool = False            # the contactor is closed and current may flow
    phases: int = 3                   # phases energised now (1 or 3)
    currents_a: Triple = ZERO3        # measured per phase
    power_w: float = 0.0
    session_wh: float = 0.0           # energy of the current session
    offered_a: float = 0.0            # what the pilot offers now
    boost: bool = False               # the user lifted optimisation/tariff limits
    ev_soc_pct: float | None = None   # from ISO 15118 when present
    ev_max_a: float | None = None     # the car's own maximum (HLC) when known


@dataclass(frozen=True, slots=True)
class EmsLimit:
    """A limit for one charge point. ``source`` is a limit-source key the controller knows
    (``site_fuse``, ``pv_surplus``, ``home_battery``, ``price``); the controller maps it to its
    own arbiter classes. Amps are per phase on ``phases`` phases (None: whatever is energised)."""

    source: str
    amps: float
    reason: str
    phases: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.amps) or self.amps < 0:
            raise ValueError(f"{self.source}: limit must be finite and >= 0, got {self.amps}")


@dataclass(frozen=True, slots=True)
class Command:
    """Everything the EMS asks of one charge point this cycle: its limits (a source missing
    from the tuple is withdrawn), when 1p/3p switching is on the phase count to use, and the
    fail-safe current for when the EMS falls silent."""

    cp_id: str
    limits: tuple[EmsLimit, ...] = ()
    phases: int | None = None
    notes: tuple[str, ...] = field(default=())
    # The current to fall back to when this command expires unanswered. The site's fail-safe
    # currents are checked to fit the fuse together; a charge point's own setting is not, so
    # it applies the lower of the two.
    failsafe_a: float | None = None

    def __post_init__(self) -> None:
        if self.failsafe_a is not None and not (math.isfinite(self.failsafe_a)
                                                and self.failsafe_a >= 0):
            raise ValueError(f"{self.cp_id}: failsafe_a must be finite and >= 0, got "
                             f"{self.failsafe_a}")
