"""Dry-contact inputs of a grid operator's control box or ripple-control receiver → limits.

A pure function of (board, state, readings, now): debounce each input, apply its polarity, turn
what the inputs mean into one limit per source (§14a dimming, DSO step, enable, tariff window),
and stagger every release: a limit that gets LESS strict waits a random delay (up to
``release_delay_max_s``) before it lifts, so a neighbourhood of chargers released by one
ripple-control telegram does not restart in the same second (the rebound peak). A stricter limit
applies at once. An input that cannot be read (a broken wire on a supervised input) takes its
meaning's fail-safe: dimmed, the lowest DSO step, disabled, or in the peak window.

The randomness is a pure function of a per-charger seed and the count of releases, so a run is
reproducible and two chargers with different seeds draw different delays.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum

from firmware.core.limits import Limit, LimitSource
from hal.board import Board, ContactInput


class Reading(Enum):
    OPEN = "open"
    CLOSED = "closed"
    UNREADABLE = "unreadable"   # a broken wire, or an input the backend could not read

    @classmethod
    def of(cls, closed: bool | None) -> Reading:
        if closed is None:
            return cls.UNREADABLE
        return cls.CLOSED if closed else cls.OPEN


class Meaning(Enum):
    DIM_14A = "dim_14a"
    DSO_STEP = "dso_step"
    ENABLE = "enable"
    TARIFF_WINDOW = "tariff_window"


SOURCE = {
    Meaning.DIM_14A: LimitSource.GRID_14A,
    Meaning.DSO_STEP: LimitSource.GRID_RIPPLE_CONTROL,
    Meaning.ENABLE: LimitSource.CONTACT_ENABLE,
    Meaning.TARIFF_WINDOW: LimitSource.TARIFF_WINDOW,
}


@dataclass(frozen=True, slots=True)
class InputState:
    """One input: the debounced reading, and a different reading waiting out its debounce."""

    stable: Reading
    pending: Reading | None = None
    since: float = 0.0


@dataclass(frozen=True, slots=True)
class Release:
    """A less strict limit waiting for its randomised moment (None: no limit at all)."""

    target: Limit | None
    at: float


@dataclass(frozen=True, slots=True)
class ContactsState:
    inputs: Mapping[str, InputState]
    applied: Mapping[LimitSource, Limit]
    releases: Mapping[LimitSource, Release]
    seed: int
    released: int = 0   # releases drawn so far: each draws its own delay


def active(spec: ContactInput, reading: Reading) -> bool | None:
    """Whether the input signals its meaning (after polarity); None when it cannot be read."""
    if reading is Reading.UNREADABLE:
        return None
    return (reading is Reading.CLOSED) == (spec.polarity == "closed")


def start(board: Board, readings: Mapping[str, bool | None], now: float,
          seed: int) -> ContactsState:
    """The state at power-up: the inputs count as they read (no debounce), and their limits
    apply at once (no release delay: nothing was released)."""
    inputs = {name: InputState(Reading.of(readings.get(name))) for name in board.inputs}
    state = ContactsState(inputs=inputs, applied={}, releases={}, seed=seed)
    return replace(state, applied=_targets(board, state))


def step(board: Board, state: ContactsState, readings: Mapping[str, bool | None],
         now: float) -> ContactsState:
    """Take new readings (an input missing from ``readings`` cannot be read) at ``now``."""
    inputs = {name: _debounce(board.inputs[name].debounce_s, s,
                              Reading.of(readings.get(name)), now)
              for name, s in state.inputs.items()}
    state = replace(state, inputs=inputs)
    targets = _targets(board, state)
    applied = dict(state.applied)
    releases = dict(state.releases)
    released = state.released
    for source in sorted({*applied, *targets, *releases}, key=lambda s: s.key):
        target = targets.get(source)
        current = applied.get(source)
        pending = releases.get(source)
        # Stricter (or as strict) applies at once; less strict once its release delay is over.
        if (_strictness(target) >= _strictness(current)
                or (pending is not None and now >= pending.at)):
            releases.pop(source, None)
            _put(applied, source, target)
        elif pending is not None:
            releases[source] = Release(target, pending.at)
        else:
            assert current is not None   # a less strict target means something applies now
            released += 1
            delay = board.contacts.release_delay_max_s * _unit(state.seed, released)
            if delay <= 0:
                _put(applied, source, target)
                continue
            releases[source] = Release(target, now + delay)
            # valid_until lets the arbiter lift it on time even if this step were late.
            applied[source] = replace(current, reason=f"{current.reason}; released, lifted "
                                      f"after a random {delay:.0f} s", valid_until=now + delay)
    return replace(state, applied=applied, releases=releases, released=released)


def next_due(board: Board, state: ContactsState) -> float | None:
    """When ``step`` must run again without a new edge: a debounce or a release delay ends."""
    times = [s.since + board.inputs[name].debounce_s
             for name, s in state.inputs.items() if s.pending is not None]
    times += [r.at for r in state.releases.values()]
    return min(times) if times else None


def sources(board: Board) -> frozenset[LimitSource]:
    """The sources this board's inputs may set."""
    return frozenset(SOURCE[Meaning(spec.meaning)] for spec in board.inputs.values())


def _debounce(debounce_s: float, s: InputState, reading: Reading, now: float) -> InputState:
    if reading is s.stable:
        return InputState(s.stable)
    if reading is not s.pending:
        s = InputState(s.stable, reading, now)
    # The same sum as next_due, so a timer set for that moment finds the debounce over.
    if now >= s.since + debounce_s:
        return InputState(reading)
    return s


def _put(applied: dict[LimitSource, Limit], source: LimitSource, limit: Limit | None) -> None:
    if limit is None:
        applied.pop(source, None)
    else:
        applied[source] = limit


def _strictness(limit: Limit | None) -> float:
    """Higher is stricter; a source's limits are all in watts or all in amps."""
    if limit is None:
        return -float("inf")
    value = limit.amps if limit.amps is not None else limit.watts
    assert value is not None
    return -value


def _unit(seed: int, n: int) -> float:
    return random.Random(f"{seed}:{n}").random()


def _targets(board: Board, state: ContactsState) -> dict[LimitSource, Limit]:
    """The limit each source asks for now, from the debounced inputs."""
    by_meaning: dict[Meaning, list[tuple[str, bool | None]]] = {}
    for name, s in state.inputs.items():
        spec = board.inputs[name]
        by_meaning.setdefault(Meaning(spec.meaning), []).append((name, active(spec, s.stable)))
    out: dict[LimitSource, Limit] = {}
    for meaning, seen in by_meaning.items():
        limit = _limit(board, meaning, seen)
        if limit is not None:
            out[SOURCE[meaning]] = limit
    return out


def _limit(board: Board, meaning: Meaning, seen: list[tuple[str, bool | None]]) -> Limit | None:
    broken = sorted(name for name, on in seen if on is None)
    why = f"input {', '.join(broken)} unreadable (broken wire?), fail-safe: " if broken else ""
    source = SOURCE[meaning]
    if meaning is Meaning.DIM_14A:
        if not broken and not any(on for _, on in seen):
            return None
        kw = board.contacts.dim_14a_w / 1000
        return Limit.of(source, f"{why}§14a dimming by the grid operator: {kw:g} kW",
                        watts=board.contacts.dim_14a_w)
    if meaning is Meaning.ENABLE:
        # Several enable inputs are in series: each one open disables.
        if not broken and all(on for _, on in seen):
            return None
        off = [name for name, on in seen if on is False]
        by = f" by input {', '.join(off)}" if off else ""
        return Limit.of(source, f"{why}disabled{by}", amps=0.0)
    if meaning is Meaning.TARIFF_WINDOW:
        if not broken and not any(on for _, on in seen):
            return None
        return Limit.of(source, f"{why}peak tariff window: paused", amps=0.0)
    if broken:
        pct = min(board.dso_steps.values())
    else:
        pct = board.dso_steps[frozenset(name for name, on in seen if on)]
    if pct >= 100.0:
        return None
    return Limit.of(source, f"{why}DSO step {pct:g} %",
                    amps=board.ratings.max_current_a * pct / 100)
