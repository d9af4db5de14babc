"""A simulated electric vehicle as the charge point sees it: CP resistors, a battery, a charger.

The car reads the pilot like a real one (Table A.8 of IEC 61851-1, the car's side), follows a
change of the offer after its reaction delay, tapers near full, and can be given the quirks that
field reports describe: it does not resume after a pause unless woken, it lacks the CP diode, it
draws more than offered, it shorts CP to PE, it asks for ventilation (state D).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool), as JSON and TOML give them."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float is no sensible parameter either
        return False


class Quirk(Enum):
    NO_RESUME = "no_resume"          # after a pause it ignores PWM until it has seen state F
    MISSING_DIODE = "missing_diode"
    OVERDRAW = "overdraw"            # draws overdraw_a more than offered, whatever its max
    CP_SHORT = "cp_short"            # CP shorted to PE
    VENTILATION = "ventilation"      # asks for power in state D instead of C


class Output(Enum):
    """What the charge point drives onto the pilot."""

    X1 = "x1"
    PWM = "pwm"
    F = "f"


@dataclass(frozen=True, slots=True)
class EvProfile:
    name: str
    battery_kwh: float
    soc: float                     # at plug-in, 0..1
    max_current_a: float           # per phase, what its on-board charger takes at most
    phases: int
    target_soc: float = 1.0
    taper_soc: float = 0.8         # above this the current falls linearly ...
    taper_end_a: float = 2.0       # ... to this at 100 %
    reaction_s: float = 2.0        # delay to follow a pilot change (the standard allows 5 s)
    wake_f_s: float = 1.0          # state F this long wakes a car with the NO_RESUME quirk
    overdraw_a: float = 4.0
    quirks: frozenset[Quirk] = frozenset()

    def __post_init__(self) -> None:
        problems = []
        if not self.battery_kwh > 0:
            problems.append("battery_kwh must be > 0")
        if not 0.0 <= self.soc <= 1.0 or not 0.0 < self.target_soc <= 1.0:
            problems.append("soc and target_soc must be within 0..1")
        if self.phases not in (1, 2, 3):
            problems.append("phases must be 1, 2 or 3")
        if not 0 < self.max_current_a <= 80:
            problems.append("max_current_a must be within (0, 80]")
        if not 0 <= self.reaction_s <= 5.0:
            problems.append("reaction_s must be within 0..5 s (IEC 61851-1 allows 5 s)")
        if not 0 <= self.taper_soc <= 1.0 or self.taper_end_a < 0 or self.overdraw_a < 0:
            problems.append("taper_soc within 0..1, taper_end_a and overdraw_a >= 0")
        if problems:
            raise ValueError(f"EV profile {self.name!r}: " + "; ".join(problems))

    def with_overrides(self, overrides: dict[str, Any]) -> EvProfile:
        """A copy with some fields changed; ValueError names any unknown or mistyped field."""
        names = {f.name for f in fields(self)} - {"name"}
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in names:
                raise ValueError(f"unknown EV field {key!r}; expected one of "
                                 f"{', '.join(sorted(names))}")
            if key == "quirks":
                if not isinstance(value, list | tuple) or not all(isinstance(q, str)
                                                                  for q in value):
                    raise ValueError("quirks: expected a list of names")
                known = {q.value: q for q in Quirk}
                bad = [q for q in value if q not in known]
                if bad:
                    raise ValueError(f"unknown quirk {bad[0]!r}; expected one of "
                                     f"{', '.join(sorted(known))}")
                changes[key] = frozenset(known[q] for q in value)
            elif key == "phases":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError("phases: expected 1, 2 or 3")
                changes[key] = value
            else:
                if not is_number(value):
                    raise ValueError(f"{key}: expected a finite number, got {value!r}")
                changes[key] = float(value)
        return replace(self, **changes)


PROFILES: dict[str, EvProfile] = {p.name: p for p in (
    EvProfile("compact_3p", battery_kwh=58.0, soc=0.30, max_current_a=16.0, phases=3),
    EvProfile("fast_ac_3p", battery_kwh=77.0, soc=0.20, max_current_a=32.0, phases=3),
    EvProfile("city_1p", battery_kwh=40.0, soc=0.25, max_current_a=32.0, phases=1),
    EvProfile("phev_1p", battery_kwh=13.0, soc=0.10, max_current_a=16.0, phases=1,
              taper_soc=0.9),
    EvProfile("sleepy_3p", battery_kwh=58.0, soc=0.40, max_current_a=16.0, phases=3,
              quirks=frozenset({Quirk.NO_RESUME})),
    EvProfile("demo_3p", battery_kwh=58.0, soc=0.798, max_current_a=16.0, phases=3,
              target_soc=0.8, taper_soc=0.95),
    EvProfile("empty_60kwh_3p", battery_kwh=60.0, soc=0.0, max_current_a=32.0, phases=3,
              taper_soc=0.9),
)}


def offered_current(output: Output, duty: float) -> float:
    """The car's reading of the pilot (IEC 61851-1 Table A.8): what it may draw, in amps."""
    if output is not Output.PWM:
        return 0.0
    if 8.0 <= duty < 10.0:
        return 6.0
    if 10.0 <= duty <= 85.0:
        return duty * 0.6
    if 85.0 < duty <= 96.0:
        return (duty - 64.0) * 2.5
    if 96.0 < duty <= 97.0:
        return 80.0
    return 0.0  # 5 % asks for digital communication; anything else is no offer


@dataclass
class Ev:
    """One plugged-in car. ``update`` is called by the plant whenever time passes."""

    profile: EvProfile
    soc: float
    s2_closed: bool = False            # S2 closed: the car asks for power (state C or D)
    asleep: bool = False
    user_stopped: bool = False
    followed_offer_a: float = 0.0      # the offer the car's charger follows now
    current_a: float = 0.0
    energy_wh: float = 0.0
    _pending: deque[tuple[float, float]] = field(default_factory=deque)
    _s2_change: tuple[float, bool] | None = None
    _f_since: float | None = None
    _last_offer_a: float = 0.0

    @classmethod
    def plug(cls, profile: EvProfile) -> Ev:
        return cls(profile=profile, soc=profile.soc)

    def has(self, quirk: Quirk) -> bool:
        return quirk in self.profile.quirks

    @property
    def full(self) -> bool:
        return self.soc >= self.profile.target_soc - 1e-9

    def max_draw_a(self) -> float:
        p = self.profile
        cap = p.max_current_a
        if self.soc > p.taper_soc and p.taper_soc < 1.0:
            share = (self.soc - p.taper_soc) / (1.0 - p.taper_soc)
            cap = max(p.taper_end_a, cap - share * (cap - p.taper_end_a))
        return cap

    def next_due(self) -> float | None:
        dues = [d for d, _ in self._pending]
        if self._s2_change is not None:
            dues.append(self._s2_change[0])
        return min(dues) if dues else None

    def sense(self, output: Output, duty: float, now: float) -> None:
        """The car looks at the pilot at ``now`` and decides what to do next."""
        p = self.profile
        offer = offered_current(output, duty)
        if offer != self._last_offer_a:
            self._pending.append((now + p.reaction_s, offer))
            self._last_offer_a = offer
        if output is Output.F:
            self._f_since = now if self._f_since is None else self._f_since
            if self.asleep and now - self._f_since >= p.wake_f_s:
                self.asleep = False
        else:
            self._f_since = None

        want = (offer >= 6.0 and not self.full and not self.user_stopped and not self.asleep)
        if self.full or self.user_stopped:
            self._set_s2(False, now)  # the car stops at once: it controls its own charger
        elif want != self.s2_closed:
            due = now + p.reaction_s
            if self._s2_change is None or self._s2_change[1] != want:
                self._s2_change = (due, want)
        elif self._s2_change is not None and self._s2_change[1] != want:
            self._s2_change = None

    def _set_s2(self, closed: bool, now: float) -> None:
        if self.s2_closed and not closed and self.has(Quirk.NO_RESUME) and not self.full \
                and not self.user_stopped:
            self.asleep = True
        self.s2_closed = closed
        self._s2_change = None

    def apply_due(self, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            self.followed_offer_a = self._pending.popleft()[1]
        if self._s2_change is not None and self._s2_change[0] <= now:
            self._set_s2(self._s2_change[1], now)

    def draw_a(self, powered: bool) -> float:
        """Per-phase current the car takes while it has been given power."""
        if not (powered and self.s2_closed) or self.full:
            return 0.0
        if self.followed_offer_a <= 0.0:
            return 0.0
        if self.has(Quirk.OVERDRAW):
            return self.followed_offer_a + self.profile.overdraw_a
        return min(self.followed_offer_a, self.max_draw_a())

    def charge(self, wh: float) -> float:
        """Store up to ``wh`` (never past the target); returns what was taken."""
        room_wh = max(0.0, (self.profile.target_soc - self.soc) * self.profile.battery_kwh * 1000)
        wh = min(wh, room_wh)
        self.energy_wh += wh
        self.soc = min(self.profile.target_soc, self.soc + wh / 1000.0 / self.profile.battery_kwh)
        return wh

    def seconds_to_target(self, power_w: float) -> float | None:
        if power_w <= 0:
            return None
        remaining_wh = (self.profile.target_soc - self.soc) * self.profile.battery_kwh * 1000.0
        return max(0.0, remaining_wh / power_w * 3600.0)
