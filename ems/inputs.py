"""Every external input's health: fresh, stale, invalid or never seen, with a declared fail-safe.

The field's most common complaint is a charger that keeps the last current forever after its
meter or feed died. Here a reading older than its input's timeout is never used: the input is
``stale`` and its declared fail-safe applies, visibly, with the reason and since when.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from ems.model import Reading, Role


class Health(Enum):
    OK = "ok"
    STALE = "stale"          # no valid reading within the timeout
    INVALID = "invalid"      # the last answer was a fault (NaN, garbage, exception response)
    MISSING = "missing"      # nothing ever arrived since start


class FailSafe(Enum):
    """What the energy manager assumes while an input is not healthy."""

    WORST_CASE = "worst_case"  # grid meter: the fuse is taken; cars get the failsafe current
    NO_SURPLUS = "no_surplus"  # PV: nothing to spare; PV mode pauses, min+PV charges the minimum
    NO_SUPPORT = "no_support"  # battery: it neither supports the car nor is its charging available
    IGNORE = "ignore"          # house: derivable from the others, nothing depends on it alone


DEFAULT_FAILSAFE = {
    Role.GRID: FailSafe.WORST_CASE,
    Role.PV: FailSafe.NO_SURPLUS,
    Role.BATTERY: FailSafe.NO_SUPPORT,
    Role.HOUSE: FailSafe.IGNORE,
    Role.CHARGE_POINT: FailSafe.WORST_CASE,
}


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    role: Role
    timeout_s: float = 10.0
    fail_safe: FailSafe = FailSafe.WORST_CASE


@dataclass(frozen=True, slots=True)
class InputState:
    """What is remembered of one input between cycles."""

    last: Reading | None = None
    health: Health = Health.MISSING
    since: float | None = None        # when the current health began
    faults: int = 0
    last_fault: str | None = None


def record(state: InputState, reading: Reading | None, now: float,
           fault: str | None = None) -> InputState:
    """A poll's outcome: a valid reading, or a fault (``reading`` None with ``fault`` text)."""
    if reading is not None and reading.finite():
        health = Health.OK
        if state.health is not health:
            state = replace(state, health=health, since=now)
        return replace(state, last=reading)
    why = fault or "non-finite value"
    state = replace(state, faults=state.faults + 1, last_fault=why)
    if state.health is Health.OK:
        # One bad answer does not discard a reading that is still within its timeout.
        return state
    if state.health is not Health.INVALID:
        state = replace(state, health=Health.INVALID, since=now)
    return state


@dataclass(frozen=True, slots=True)
class InputStatus:
    name: str
    role: Role
    health: Health
    since: float | None
    age_s: float | None
    faults: int
    last_fault: str | None
    fail_safe: FailSafe | None     # the fail-safe in force, None when healthy

    @property
    def ok(self) -> bool:
        return self.health is Health.OK

    def reason(self) -> str:
        if self.ok:
            return f"{self.name}: ok"
        what = {Health.STALE: f"no reading for {self.age_s:.0f} s" if self.age_s is not None
                else "no reading",
                Health.INVALID: f"invalid answers ({self.last_fault})",
                Health.MISSING: "no reading yet"}[self.health]
        assert self.fail_safe is not None
        who = (f"{self.role.value} meter" if self.name == self.role.value
               else f"{self.role.value} meter {self.name!r}")
        return f"{who} {what}: fail-safe {self.fail_safe.value}"


def assess(spec: InputSpec, state: InputState, now: float) -> tuple[InputState, InputStatus,
                                                                     Reading | None]:
    """The input's health at ``now`` and the reading that may be used (None: apply the
    fail-safe). A reading counts from the time it was taken, not when it was polled."""
    last = state.last
    age = None if last is None else max(0.0, now - last.at)
    if state.health is Health.OK and (age is None or age > spec.timeout_s):
        state = replace(state, health=Health.STALE, since=now)
    usable = last if state.health is Health.OK else None
    status = InputStatus(spec.name, spec.role, state.health, state.since, age, state.faults,
                         state.last_fault, None if usable is not None else spec.fail_safe)
    return state, status, usable
