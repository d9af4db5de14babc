"""Limit arbitration: every limit has a source and a reason; the car gets the lowest.

"When maximum charge speed information is received via multiple sources, the lowest value
applies" (SCALE procurement requirements). The result names the limit that binds, so the web page
can say "limited to 6 A by §14a dimming since 14:02" and nobody has to ask who set this current.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum


class LimitClass(IntEnum):
    """Priority classes, most important first. A user boost lifts only the last two."""

    SAFETY = 0
    GRID = 1
    OPERATOR = 2
    OPTIMISATION = 3
    TARIFF = 4


BOOSTABLE = frozenset({LimitClass.OPTIMISATION, LimitClass.TARIFF})


class LimitSource(Enum):
    """Who set a limit. Each source has the class it normally belongs to."""

    BOARD_RATING = ("board_rating", LimitClass.SAFETY)
    CABLE = ("cable", LimitClass.SAFETY)
    EV_MAXIMUM = ("ev_maximum", LimitClass.SAFETY)
    THERMAL = ("thermal", LimitClass.SAFETY)
    GRID_14A = ("grid_14a", LimitClass.GRID)
    GRID_RIPPLE_CONTROL = ("grid_ripple_control", LimitClass.GRID)
    GRID_ENVELOPE = ("grid_envelope", LimitClass.GRID)
    SITE_FUSE = ("site_fuse", LimitClass.GRID)
    # An external interlock wired to an "enable" contact: whoever wired it meant the charger to
    # stop, so it is grid class, out of a user boost's reach (docs/board-toml.md, [inputs]).
    CONTACT_ENABLE = ("contact_enable", LimitClass.GRID)
    OCPP_STATION_MAX = ("ocpp_station_max", LimitClass.OPERATOR)
    OCPP_EXTERNAL = ("ocpp_external", LimitClass.OPERATOR)
    OCPP_TX = ("ocpp_tx", LimitClass.OPERATOR)
    OCPP_TX_DEFAULT = ("ocpp_tx_default", LimitClass.OPERATOR)
    OFFLINE_FALLBACK = ("offline_fallback", LimitClass.OPERATOR)
    VPP = ("vpp", LimitClass.OPERATOR)
    SCENARIO = ("scenario", LimitClass.OPERATOR)
    PV_SURPLUS = ("pv_surplus", LimitClass.OPTIMISATION)
    HOME_BATTERY = ("home_battery", LimitClass.OPTIMISATION)
    PRICE = ("price", LimitClass.TARIFF)
    EMS_MODE = ("ems_mode", LimitClass.TARIFF)   # the energy manager's mode off
    TARIFF_WINDOW = ("tariff_window", LimitClass.TARIFF)  # a peak-window contact
    USER = ("user", LimitClass.TARIFF)

    def __init__(self, key: str, cls: LimitClass) -> None:
        self.key = key
        self.default_class = cls

    @classmethod
    def from_key(cls, key: str) -> LimitSource:
        for source in cls:
            if source.key == key:
                return source
        raise ValueError(f"unknown limit source {key!r}; expected one of "
                         f"{', '.join(s.key for s in cls)}")


@dataclass(frozen=True, slots=True)
class Limit:
    """One source's ceiling on the current: amps per phase OR watts in total, not both.

    ``phases`` is how many phases the source asks to charge on (None: no preference); it is kept
    for 1p/3p switching, which arrives with the energy manager. Watts always become amps over
    the phases actually energised, never over a phase count some source wishes for: a 1-phase
    wish must not turn a 7 kW limit into 21 kW on a 3-phase board. ``valid_from`` and
    ``valid_until`` are clock times; None means open-ended.
    """

    source: LimitSource
    cls: LimitClass
    reason: str
    amps: float | None = None
    watts: float | None = None
    phases: int | None = None
    valid_from: float | None = None
    valid_until: float | None = None

    def __post_init__(self) -> None:
        if (self.amps is None) == (self.watts is None):
            raise ValueError(f"{self.source.key}: a limit is in amps or in watts, exactly one")
        value = self.amps if self.amps is not None else self.watts
        assert value is not None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{self.source.key}: limit must be a finite value >= 0, got {value}")
        if self.phases not in (None, 1, 2, 3):
            raise ValueError(f"{self.source.key}: phases must be 1, 2 or 3, got {self.phases}")
        if (self.valid_from is not None and self.valid_until is not None
                and self.valid_until <= self.valid_from):
            raise ValueError(f"{self.source.key}: valid_until must be after valid_from")

    @classmethod
    def of(cls, source: LimitSource, reason: str, *, amps: float | None = None,
           watts: float | None = None, phases: int | None = None,
           valid_from: float | None = None, valid_until: float | None = None) -> Limit:
        """A limit in its source's usual class."""
        return cls(source, source.default_class, reason, amps, watts, phases, valid_from,
                   valid_until)

    def active(self, now: float) -> bool:
        return ((self.valid_from is None or self.valid_from <= now)
                and (self.valid_until is None or now < self.valid_until))

    def per_phase_amps(self, phases: int, voltage_v: float) -> float:
        """Amps per phase when ``phases`` phases are energised."""
        if self.amps is not None:
            return self.amps
        assert self.watts is not None
        return self.watts / (voltage_v * phases)


_ORDER = {source: i for i, source in enumerate(LimitSource)}


@dataclass(frozen=True, slots=True)
class EffectiveLimit:
    amps: float                  # per phase; 0 when no limit is known (fail safe)
    binding: Limit | None
    active: tuple[Limit, ...]
    boosted: bool
    changes_at: float | None = None  # the next time a limit starts or ends its validity


def arbitrate(limits: Iterable[Limit], now: float, *, phases: int, voltage_v: float,
              boost: bool = False) -> EffectiveLimit:
    """The minimum of the limits active at ``now`` with ``phases`` energised, and which one
    sets it.

    With ``boost`` the user lifts optimisation and tariff limits (never grid or safety ones).
    Ties go to the more important class, then to the source declared first, so the explanation
    is stable.
    """
    limits = tuple(limits)
    active = tuple(lim for lim in limits
                   if lim.active(now) and not (boost and lim.cls in BOOSTABLE))
    edges = [t for lim in limits for t in (lim.valid_from, lim.valid_until)
             if t is not None and t > now]
    best: Limit | None = None
    best_amps = math.inf
    for lim in active:
        amps = lim.per_phase_amps(phases, voltage_v)
        if best is None or amps < best_amps or (
                amps == best_amps and (lim.cls, _ORDER[lim.source])
                < (best.cls, _ORDER[best.source])):
            best, best_amps = lim, amps
    return EffectiveLimit(amps=0.0 if best is None else best_amps, binding=best, active=active,
                          boosted=boost, changes_at=min(edges) if edges else None)
