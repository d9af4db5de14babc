"""Sharing the site budget among charge points: per phase, by priority, then fairly.

A pure function of the budget (amps per site phase, contracted power, unbalance limit) and the
charge points' demands. Two steps:

1. Admission, in line: by priority, then by ``cp_id``. A car is admitted at its minimum when
   that fits every phase it draws on, the contracted power and the unbalance limit, given the
   cars already admitted at their minimum; so when not all minimums fit, the lowest priority
   is suspended first. A car that is suspended now must find its minimum plus
   ``resume_margin_a`` free on the phases and in the contracted power, so a budget that wobbles
   around the minimum does not switch it on and off. The unbalance room depends only on which
   cars charge, not on the house load, so it needs no margin. A car that only the unbalance
   limit turns away waits: after every later admission that shifts the balance, the waiting
   cars are tried again, in line order, before the next car in line. (Other cars are not
   raised above their minimum to make balance room for it.)

   The line never looks at the suspension flags: each car's fate depends only on the fates of
   the cars before it and on its own need, which makes the result a fixed point of its own
   flags (no flapping). So among equal priorities ``cp_id`` decides, not who charges now: a
   line that put the charging cars first can make the flags ping-pong under the unbalance
   limit.
2. Filling, one priority level after the other: the admitted cars of a level rise together
   from their minimum (water-filling: the lowest first, to equal currents) until each reaches
   its maximum or a limit it shares binds. A lower level never takes room on a limit that holds
   back a car of a higher level. Cars on the most loaded phase that the unbalance limit stops
   rise again once cars on the least loaded phase have caught up (a few rounds).

A car that reports drawing less than it may take (``drawing_a``) may take at most its draw plus
``draw_headroom_a`` (never less than its minimum), and the rest goes to the others. A car held
back like that that ramps up still gains the headroom every cycle, so it is slowed, never
starved.

No step can exceed a limit: admission checks every addition, filling stops at the first limit
that binds, and a last check of each phase (an exactly rounded sum) trims any rounding excess.

Bad input fails safe and never raises: a budget amount that is not a finite non-negative number
counts as 0, a demand with NaN or no site phase is suspended, duplicate ``cp_id`` are all
suspended (their grants could not be told apart).
"""

from __future__ import annotations

import heapq
import math
import numbers
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import groupby

from ems.model import PHASES, ZERO3, Triple

# What counts as "at a limit", in amps: far above float rounding, far below anything a charge
# point can resolve (about 0.05 A).
TOL = 1e-9
# Rounds of the filling when the unbalance limit makes limits loosen again. Most results need
# one or two; a limit of a few amps over many single-phase cars can need ten (each round lets
# one phase catch up by about the limit). The bound keeps the time bounded; a result it cuts
# short is still within every limit, it just leaves a little unused.
MAX_ROUNDS = 16
_PHASE_SETS = frozenset({(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)})


@dataclass(frozen=True, slots=True)
class Demand:
    """What one charge point asks of the site this cycle."""

    cp_id: str
    phases: tuple[int, ...]          # site phases (0, 1, 2) the car draws on now
    min_a: float                     # below this it cannot charge: suspend instead
    max_a: float                     # the most it may take (cable, board, car, mode)
    priority: int = 0                # higher first; equal priorities share fairly
    suspended: bool = False          # suspended now (resume hysteresis)
    drawing_a: Triple | None = None  # measured draw per SITE phase, when known


@dataclass(frozen=True, slots=True)
class Budget:
    """What the site leaves for all charge points together."""

    phase_a: Triple                  # amps per site phase, net of the other loads
    total_w: float | None = None     # contracted power left for the cars (None: no limit)
    unbalance_a: float | None = None  # most minus least loaded phase, cars only (None: none)
    voltage_v: float = 230.0


class Binding(Enum):
    """What decided a grant."""

    FUSE = "fuse"              # a site phase is full
    POWER = "power"            # the contracted power is used up
    UNBALANCE = "unbalance"    # more on this car's phases would unbalance the site
    WISH = "wish"              # it gets all it asks for (or asks for less than its minimum)
    DRAW = "draw"              # it draws less than it may take; the rest went to the others
    INVALID = "invalid"        # the demand makes no sense (NaN, no phase, duplicate id)


@dataclass(frozen=True, slots=True)
class Grant:
    cp_id: str
    amps: float                # per phase; 0 when suspended
    suspended: bool
    reason: str                # the line a user sees
    binding: Binding


def allocate(budget: Budget, demands: Sequence[Demand], *, resume_margin_a: float = 1.0,
             draw_headroom_a: float = 2.0) -> dict[str, Grant]:
    """One grant per demand, in the demands' order. ``resume_margin_a``: what a suspended car
    needs free above its minimum to resume. ``draw_headroom_a``: what a car reporting its draw
    may take above it. An invalid margin counts as 0; an invalid headroom turns the draw cap
    off."""
    margin = resume_margin_a if _finite(resume_margin_a) and resume_margin_a > 0 else 0.0
    headroom = draw_headroom_a if _finite(draw_headroom_a) and draw_headroom_a >= 0 else None
    limits = _limits(budget)
    grants: dict[str, Grant] = {}
    cars: list[_Car] = []
    ids = [_id(d.cp_id) for d in demands]
    uses = Counter(ids)
    for d, cp_id in zip(demands, ids, strict=True):
        if uses[cp_id] > 1:
            grants[cp_id] = _off(cp_id, Binding.INVALID,
                                 f"suspended: {uses[cp_id]} charge points use this id")
            continue
        car = _car(d, cp_id, limits, headroom)
        if isinstance(car, Grant):
            grants[cp_id] = car
        else:
            cars.append(car)
    cars.sort(key=lambda c: c.key)
    admitted, refused = _admit(cars, limits, margin)
    grants.update(refused)
    amps = _fill(admitted, limits)
    grants.update(_explain(admitted, amps, limits))
    return {cp_id: grants[cp_id] for cp_id in dict.fromkeys(ids)}


# ---- the limits -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Limit:
    """One linear limit on the grants: sum of coef(car) * amps(car) <= bound."""

    binding: Binding
    bound: float
    p: int = -1    # FUSE: the phase; UNBALANCE: the phase that must not rise too far
    q: int = -1    # UNBALANCE: above this one

    def coef(self, phases: tuple[int, ...]) -> int:
        if self.binding is Binding.FUSE:
            return int(self.p in phases)
        if self.binding is Binding.POWER:
            return len(phases)
        return int(self.p in phases) - int(self.q in phases)


@dataclass(frozen=True, slots=True)
class _Coef:
    """A phase set's coefficients in every limit: all, the non-zero ones, the positive ones."""

    all: tuple[int, ...]
    nonzero: tuple[tuple[int, int], ...]
    positive: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Limits:
    phase_a: Triple
    total_w: float | None
    unbalance_a: float | None
    voltage_v: float
    all: tuple[_Limit, ...]
    coef: dict[tuple[int, ...], _Coef]   # for every set of site phases


def _limits(budget: Budget) -> _Limits:
    phase = _triple(budget.phase_a)
    phase_a: Triple = ZERO3 if phase is None else (_amount(phase[0]), _amount(phase[1]),
                                                   _amount(phase[2]))
    total_w = None if budget.total_w is None else _amount(budget.total_w)
    unbalance = None if budget.unbalance_a is None else _amount(budget.unbalance_a)
    volts = _amount(budget.voltage_v)
    out = [_Limit(Binding.FUSE, phase_a[p], p) for p in range(PHASES)]
    if total_w is not None:
        # Without a usable voltage the power cannot be turned into amps: nothing fits.
        out.append(_Limit(Binding.POWER, total_w / volts if volts > 0 else 0.0))
    if unbalance is not None:
        out += [_Limit(Binding.UNBALANCE, unbalance, p, q)
                for p in range(PHASES) for q in range(PHASES) if p != q]
    coef = {}
    for phases in _PHASE_SETS:
        c = tuple(lim.coef(phases) for lim in out)
        coef[phases] = _Coef(c, tuple((k, v) for k, v in enumerate(c) if v),
                             tuple(k for k, v in enumerate(c) if v > 0))
    return _Limits(phase_a, total_w, unbalance, volts, tuple(out), coef)


# ---- the demands --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Car:
    cp_id: str
    key: tuple[int, str]           # the admission order
    priority: int
    phases: tuple[int, ...]
    coef: _Coef
    min_a: float
    max_a: float                   # what it may take now (the draw cap applied)
    suspended: bool
    draw_a: float | None           # set when the draw cap lowered max_a


def _car(d: Demand, cp_id: str, limits: _Limits, headroom: float | None) -> _Car | Grant:
    phases = _phases(d.phases)
    if phases is None:
        return _off(cp_id, Binding.INVALID, f"suspended: phases {d.phases!r} are not site phases")
    lo = _number(d.min_a)
    hi = math.inf if d.max_a == math.inf else _number(d.max_a)   # no limit of its own
    if lo is None or hi is None:
        return _off(cp_id, Binding.INVALID,
                    f"suspended: invalid demand (min {d.min_a!r} A, max {d.max_a!r} A)")
    lo = max(0.0, lo)
    if hi < lo:
        return _off(cp_id, Binding.WISH,
                    f"suspended: asks for {max(0.0, hi):g} A, below its {lo:g} A minimum")
    drawn = _draw(d.drawing_a, phases)
    draw_a = None
    if drawn is not None and headroom is not None and drawn + headroom < hi:
        hi, draw_a = max(lo, drawn + headroom), drawn
    priority = d.priority if isinstance(d.priority, int) else 0
    return _Car(cp_id, (-priority, cp_id), priority, phases, limits.coef[phases], lo, hi,
                bool(d.suspended), draw_a)


def _phases(x: object) -> tuple[int, ...] | None:
    """The site phases, sorted and once each; None unless every one is 0, 1 or 2."""
    if type(x) is tuple and x in _PHASE_SETS and all(type(p) is int for p in x):
        return x   # already as it should be: the usual case
    if not isinstance(x, Iterable) or isinstance(x, str | bytes):
        return None
    raw = tuple(x)
    if not raw or any(type(p) is not int or not 0 <= p < PHASES for p in raw):
        return None
    return tuple(sorted(set(raw)))


def _draw(drawing: object, phases: tuple[int, ...]) -> float | None:
    """The car's draw on its busiest phase; None when not known or not a number."""
    values = _triple(drawing)
    if values is None:
        return None
    draws = [_number(values[p]) for p in phases]
    if any(v is None for v in draws):
        return None
    return max(abs(v) for v in draws if v is not None)


# ---- admission ----------------------------------------------------------------------------


class _State:
    """The admitted cars at their minimum: per-phase loads, kept as terms for exact sums."""

    def __init__(self, limits: _Limits) -> None:
        self.limits = limits
        self.power_limit = next((lim.bound for lim in limits.all
                                 if lim.binding is Binding.POWER), None)
        self.terms: list[list[float]] = [[] for _ in range(PHASES)]
        self.load = [0.0] * PHASES
        self.power_terms: list[float] = []   # amps x phases, per car
        self.power = 0.0

    def add(self, car: _Car) -> None:
        for p in car.phases:
            self.terms[p].append(car.min_a)
            self.load[p] += car.min_a
        self.power_terms.append(car.min_a * len(car.phases))
        self.power += car.min_a * len(car.phases)

    def room(self, car: _Car, need: float) -> tuple[Binding, int, float] | None:
        """None when ``need`` fits every phase of the car and the contracted power; else the
        limit that does not fit, its phase and what is left on it."""
        for p in car.phases:
            bound = self.limits.phase_a[p]
            if not _within(self.load[p], self.terms[p], need, bound):
                return Binding.FUSE, p, bound - math.fsum(self.terms[p])
        power = self.power_limit
        if power is not None and not _within(self.power, self.power_terms,
                                             need * len(car.phases), power):
            return Binding.POWER, -1, power - math.fsum(self.power_terms)
        return None

    def unbalance_after(self, car: _Car) -> tuple[float, int, int]:
        """The cars' unbalance with this car added at its minimum: amps, fullest, emptiest."""
        after = [self.load[p] + (car.min_a if p in car.phases else 0.0) for p in range(PHASES)]
        hi = max(range(PHASES), key=lambda p: (after[p], -p))
        lo = min(range(PHASES), key=lambda p: (after[p], p))
        return after[hi] - after[lo], hi, lo

    def balanced_with(self, car: _Car) -> bool:
        limit = self.limits.unbalance_a
        return (limit is None or len(car.phases) == PHASES
                or self.unbalance_after(car)[0] <= limit)


def _admit(cars: list[_Car], limits: _Limits, margin: float,
           ) -> tuple[list[_Car], dict[str, Grant]]:
    """Which cars charge (at least at their minimum), and the grants of those that do not.

    Each car's fate depends only on the fates of the cars before it in line and on its own
    need, and a smaller need never turns a yes into a no; so feeding the suspension flags of
    a result back in, with the same budget, gives the same result (no flapping).
    """
    state = _State(limits)
    admitted: list[_Car] = []
    waiting: list[_Car] = []          # turned away by the unbalance limit only, in line order
    refused: dict[str, Grant] = {}

    def verdict(car: _Car) -> bool | None:
        """True: admit; None: wait for the balance; False: refused (its grant recorded)."""
        need = car.min_a + (margin if car.suspended else 0.0)
        short = state.room(car, need)
        if short is not None:
            refused[car.cp_id] = _short(car, need, short, limits)
            return False
        if not state.balanced_with(car):
            return None
        return True

    def retry_waiting() -> None:
        again = True
        while again:
            again = False
            for car in list(waiting):
                fate = verdict(car)
                if fate is None:
                    continue
                waiting.remove(car)
                if fate:
                    state.add(car)
                    admitted.append(car)
                    again = True
                    break

    for car in cars:
        fate = verdict(car)
        if fate is None:
            waiting.append(car)
        elif fate:
            state.add(car)
            admitted.append(car)
            if waiting and len(car.phases) < PHASES:   # a 3-phase car shifts no balance
                retry_waiting()
    admitted.sort(key=lambda c: c.key)   # the waiting ones may have come in late
    for car in waiting:
        gap, hi, lo = state.unbalance_after(car)
        refused[car.cp_id] = _off(
            car.cp_id, Binding.UNBALANCE,
            f"suspended: unbalance limit {limits.unbalance_a:g} A: with it at its {car.min_a:g} A "
            f"minimum, the charging cars at theirs would put {_ph(hi)} {gap:.1f} A above "
            f"{_ph(lo)}")
    return admitted, refused


def _short(car: _Car, need: float, short: tuple[Binding, int, float],
           limits: _Limits) -> Grant:
    binding, p, left = short
    left = max(0.0, left)
    want = (f"{need:g} A to resume ({car.min_a:g} A minimum + {need - car.min_a:g} A)"
            if car.suspended else f"{car.min_a:g} A minimum")
    if binding is Binding.FUSE:
        return _off(car.cp_id, binding, f"suspended: {left:.1f} A left on {_ph(p)} < {want}")
    n = len(car.phases)
    kw = left * limits.voltage_v / 1000
    return _off(car.cp_id, binding,
                f"suspended: {kw:.1f} kW of contracted power left < {want} on {n} "
                f"phase{'s' if n > 1 else ''} ({need * n * limits.voltage_v / 1000:.1f} kW)")


# ---- filling ------------------------------------------------------------------------------


def _fill(cars: list[_Car], limits: _Limits) -> list[float]:
    """The grants of the admitted cars (same order), from their minimum up."""
    amps = [c.min_a for c in cars]
    levels = [[i for i, _ in group]
              for _, group in groupby(enumerate(cars), key=lambda ic: ic[1].priority)]
    for _ in range(MAX_ROUNDS):
        for n, level in enumerate(levels):
            higher = [i for lv in levels[:n] for i in lv]
            _raise(level, higher, cars, amps, limits)
        if limits.unbalance_a is None:
            break   # only the unbalance limit can loosen once bound
        slack = _slacks(cars, amps, limits)
        if not any(a < c.max_a - TOL and all(slack[k] > TOL for k in c.coef.positive)
                   for c, a in zip(cars, amps, strict=True)):
            break
    _trim(cars, amps, limits)
    return amps


def _slacks(cars: list[_Car], amps: list[float], limits: _Limits) -> list[float]:
    """What each limit has left (exactly rounded sums)."""
    terms: list[list[float]] = [[] for _ in range(PHASES)]
    for c, a in zip(cars, amps, strict=True):
        for p in c.phases:
            terms[p].append(a)
    load = [math.fsum(t) for t in terms]
    power = math.fsum(a * len(c.phases) for c, a in zip(cars, amps, strict=True))
    out = []
    for lim in limits.all:
        if lim.binding is Binding.FUSE:
            out.append(lim.bound - load[lim.p])
        elif lim.binding is Binding.POWER:
            out.append(lim.bound - power)
        else:
            out.append(lim.bound - (load[lim.p] - load[lim.q]))
    return out


def _raise(level: list[int], higher: list[int], cars: list[_Car], amps: list[float],
           limits: _Limits) -> None:
    """Water-fill one priority level in place."""
    waiting = sorted((i for i in level if amps[i] < cars[i].max_a - TOL),
                     key=lambda i: (amps[i], i))
    if not waiting:
        return
    slack = _slacks(cars, amps, limits)
    # Limits that hold back a car of a higher priority stay theirs, even if they loosen.
    guarded = {k for h in higher if amps[h] < cars[h].max_a - TOL
               for k in cars[h].coef.positive if slack[k] <= TOL}
    rate = [0] * len(slack)
    active: set[int] = set()
    tops: list[tuple[float, int]] = []   # (max_a, car) of the active ones
    lam = amps[waiting[0]]               # the water level: every active car is at it
    nxt = 0

    def join(i: int) -> None:
        if any(slack[k] <= TOL or k in guarded for k in cars[i].coef.positive):
            return
        active.add(i)
        heapq.heappush(tops, (cars[i].max_a, i))
        for k, c in cars[i].coef.nonzero:
            rate[k] += c

    def freeze(i: int, at: float) -> None:
        amps[i] = at
        active.discard(i)
        for k, c in cars[i].coef.nonzero:
            rate[k] -= c

    for _ in range(4 * (len(level) + len(slack)) + 8):   # every pass has an event
        while nxt < len(waiting) and amps[waiting[nxt]] <= lam + TOL:
            join(waiting[nxt])
            nxt += 1
        if not active:
            if nxt == len(waiting):
                break
            lam = amps[waiting[nxt]]
            continue
        while tops[0][1] not in active:
            heapq.heappop(tops)
        step = tops[0][0] - lam
        if nxt < len(waiting):
            step = min(step, amps[waiting[nxt]] - lam)
        for k, r in enumerate(rate):
            if r > 0:
                step = min(step, slack[k] / r)
        step = max(0.0, step)
        lam += step
        for k, r in enumerate(rate):
            slack[k] -= r * step
        while tops and (tops[0][1] not in active or tops[0][0] <= lam + TOL):
            top, i = heapq.heappop(tops)
            if i in active:
                freeze(i, min(top, lam))
        for k in range(len(slack)):
            if rate[k] > 0 and slack[k] <= TOL:
                for i in sorted(i for i in active if cars[i].coef.all[k] > 0):
                    freeze(i, lam)
    for i in sorted(active):
        freeze(i, min(lam, cars[i].max_a))


def _trim(cars: list[_Car], amps: list[float], limits: _Limits) -> None:
    """Take back any float rounding that put a phase over its budget (exactly rounded sums);
    admission made sure the minima fit, so lowering toward them always ends it."""
    for p in range(PHASES):
        on = [i for i, c in enumerate(cars) if p in c.phases]
        for _ in range(4 * len(on) + 4):
            excess = math.fsum(amps[i] for i in on) - limits.phase_a[p]
            if excess <= 0:
                break
            spare = [i for i in on if amps[i] > cars[i].min_a]
            if not spare:
                break
            i = max(spare, key=lambda j: (amps[j] - cars[j].min_a, -j))
            amps[i] = max(cars[i].min_a, math.nextafter(amps[i] - excess, -math.inf))
        else:
            for i in on:
                amps[i] = cars[i].min_a


# ---- reasons ------------------------------------------------------------------------------


def _explain(cars: list[_Car], amps: list[float], limits: _Limits) -> dict[str, Grant]:
    slack = _slacks(cars, amps, limits)
    sharing = [0] * len(limits.all)   # cars held by each limit
    most: list[dict[int, float]] = [{} for _ in limits.all]   # per priority, the largest grant
    for c, a in zip(cars, amps, strict=True):
        for k in c.coef.positive:
            sharing[k] += 1
            if a > most[k].get(c.priority, -1.0):
                most[k][c.priority] = a
    out: dict[str, Grant] = {}
    for i, car in enumerate(cars):
        a = amps[i]
        if a >= car.max_a - TOL:
            if car.draw_a is not None:
                out[car.cp_id] = Grant(car.cp_id, a, False,
                                       f"draws {car.draw_a:.1f} A: offered {a:.1f} A, the "
                                       f"rest goes to the others", Binding.DRAW)
            else:
                out[car.cp_id] = Grant(car.cp_id, a, False, f"site: room for all it asks "
                                       f"({a:.1f} A)", Binding.WISH)
            continue
        k = min(car.coef.positive, key=lambda k: (slack[k], k))
        first = any(p > car.priority and top > a for p, top in most[k].items())
        out[car.cp_id] = Grant(car.cp_id, a, False,
                               _why(limits.all[k], sharing[k], len(cars), limits, first),
                               limits.all[k].binding)
    return out


def _why(lim: _Limit, n: int, charging: int, limits: _Limits, higher_first: bool) -> str:
    note = " (higher priority first)" if higher_first else ""
    if lim.binding is Binding.FUSE:
        share = (f"{n} cars share {lim.bound:.1f} A" if n > 1
                 else f"{lim.bound:.1f} A left")
        return f"site fuse: {share} on {_ph(lim.p)}{note}"
    if lim.binding is Binding.POWER:
        kw = (limits.total_w or 0.0) / 1000
        return f"contracted power: {charging} car{'s' if charging > 1 else ''} " \
               f"share {kw:.1f} kW{note}"
    return (f"unbalance limit: {_ph(lim.p)} may carry at most {lim.bound:g} A more than "
            f"{_ph(lim.q)}{note}")


# ---- small helpers ------------------------------------------------------------------------


def _off(cp_id: str, binding: Binding, reason: str) -> Grant:
    return Grant(cp_id, 0.0, True, reason, binding)


def _ph(p: int) -> str:
    return f"L{p + 1}"


def _id(cp_id: object) -> str:
    return cp_id if isinstance(cp_id, str) else str(cp_id)


def _finite(x: object) -> bool:
    return _number(x) is not None


def _number(x: object) -> float | None:
    """A finite float, or None (NaN, infinity, not a number at all)."""
    # The exact types first: the usual case, and far cheaper than the ABC check.
    usual = type(x) is float or type(x) is int
    if not usual and (isinstance(x, bool) or not isinstance(x, numbers.Real)):
        return None
    v = float(x)  # type: ignore[arg-type]
    return v if math.isfinite(v) else None


def _amount(x: object) -> float:
    """A budget amount: anything but a finite non-negative number counts as 0 (fail safe)."""
    v = _number(x)
    return v if v is not None and v > 0 else 0.0


def _triple(x: object) -> tuple[object, ...] | None:
    if not isinstance(x, Iterable) or isinstance(x, str | bytes):
        return None
    values = tuple(x)
    return values if len(values) == PHASES else None


def _within(total: float, terms: list[float], add: float, bound: float) -> bool:
    """``sum(terms) + add <= bound``, exactly rounded near the bound (a running sum may be
    off by an ulp, and a fuse is a fuse)."""
    rough = total + add
    if abs(rough - bound) > 1e-6 * max(1.0, abs(bound)):
        return rough <= bound
    return math.fsum([*terms, add]) <= bound
