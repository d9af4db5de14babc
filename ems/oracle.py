"""The perfect-foresight oracle: the best any energy manager could have done on a recorded day,
knowing the whole day in advance. It is the yardstick for the real manager's KPIs.

A linear programme (mixed-integer in strict mode; ``scipy.optimize.milp``, HiGHS) over the
day's steps decides the EV's power, grid import and export, PV curtailment and the home
battery's charge and discharge, with:

- the power balance at each step, PV + import + battery discharge = house + EV + export +
  battery charge (PV may be curtailed; the house load is as recorded);
- the EV plugged in from step ``arrival`` to ``departure`` (exclusive) and its energy equal to
  the need (or, when the need cannot fit, the most that can: status ``NEED_REDUCED``);
- the grid import limit (the site fuse) bounding what the EV and battery may add: in a step
  where the recorded house alone exceeds it, the house is served anyway;
- export when allowed (never at a negative price), the battery's power limits, its energy
  within ``[0, capacity]`` and back to at least its initial energy at the end of the day, so the
  oracle cannot win by emptying it; charge and discharge each lose ``sqrt(efficiency)``.

The charge point's minimum current, two ways:

- **relaxed** (the default): the EV power is continuous in ``[0, max_power_w]``. A real charge
  point draws 0 or at least its minimum, which is not convex; the result is an upper bound of
  what a manager can reach (``below_min_steps`` counts the steps where the plan runs at a power
  no real setting gives);
- **strict** (``EvWindow.strict_min``): a mixed-integer programme, the best a real charge point
  can achieve. At each step it is off, or on in ``[min_power_w, max_power_w]``, or, when the
  one-phase range is given, on one phase in ``[min_power_1p_w, max_power_1p_w]``. One on/off
  and phase decision holds for each block of ``block_steps`` steps from the arrival (by default
  ``BLOCK_S``): that bounds the number of binaries, and a real charge point does not toggle or
  switch phases every minute either (cars and contactors want minutes between switches). A
  plan that may switch at any step can do a little better: 2.43 kWh of PV against 2.37 kWh
  with 5-minute blocks in the worst case measured below.

Objectives:
- ``PV_CAPTURE``: the most PV into the EV, exactly as ``ems.kpi.pv_to_ev_w`` defines it (PV
  covers the house first, then the EV); among the plans that reach it, the cheapest;
- ``COST``: the least import cost (or, without prices, the least import energy) for the EV's
  energy.

PV into the EV counts at each step whatever else the EV draws, so a strict plan charges at the
minimum or more from PV and grid together: the minimum costs PV only when the need is too small
to pay for such top-ups, or when the grid may not serve the car. On the shipped grey December
day (PV surplus at most 1.3 kW), 48 kWh to deliver: relaxed and strict both capture 2.65 kWh;
5 kWh to deliver: relaxed 2.65 kWh, strict 2.37 kWh.

Strict plans are optimal within a relative gap of ``MIP_GAP`` (``mip_gap`` says how close). Each
solve stops after ``time_limit_s``: then the plan is the best found, status ``TIME_LIMIT``, not
proven optimal; with no plan found at all, ``OracleError``.

Solve times on a 2-core AMD EPYC VM, shared with other jobs, for a 24 h day at 1-minute steps
(1440 steps, home battery, prices, a 10-hour car window), per ``optimise``: relaxed, 0.1 s for
``COST``, 0.15–1 s for ``PV_CAPTURE`` (two solves); strict with 5-minute blocks and phase
switching, 0.3–3.5 s for ``COST`` and 0.6–1.7 s for ``PV_CAPTURE`` on the four shipped days
with 48 kWh to deliver, 7–9 s for ``PV_CAPTURE`` on the grey day with 5 kWh (where the minimum
bites; with 1-minute blocks 14–20 s). A relaxed week of minutes takes 1–6 s.

scipy and numpy are imported when the oracle runs: they are the ``oracle`` extra, and a wallbox
imports ``ems`` without them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from ems.kpi import pv_to_ev_w

if TYPE_CHECKING:
    from numpy.typing import NDArray

MAX_STEPS = 20_000      # two weeks of minutes
BLOCK_S = 300.0         # strict mode, by default: how long one on/off and phase decision holds
TIME_LIMIT_S = 60.0     # per solve; a plan takes up to four (strict: each then polished by an LP)
MIP_GAP = 1e-4          # strict mode: relative gap at which HiGHS calls a plan optimal
# The programme's variables, a block of one per step for each of: EV power, grid import, grid
# export, PV curtailment, battery charge, battery discharge, battery energy, PV into the EV.
# Strict mode appends the binaries: on three phases, then on one phase, one per block of steps.
_BLOCKS = 8
_EV, _IMP, _EXP, _CURT, _CHG, _DIS, _SOC, _PVEV = range(_BLOCKS)
_TIE = 1e-6             # per kWh: among equal plans, the one that imports least


class Objective(Enum):
    PV_CAPTURE = "pv"
    COST = "cost"


class OracleStatus(Enum):
    OPTIMAL = "optimal"
    NEED_REDUCED = "need_reduced"   # the need did not fit; the plan delivers the most that does
    # A solve hit time_limit_s: the best plan found, not proven optimal (see mip_gap). The need
    # may also have been reduced (ev_wh < need_wh).
    TIME_LIMIT = "time_limit"


class OracleUnavailableError(ImportError):
    """scipy/numpy are not installed (``pip install 'voltpilot[oracle]'``)."""


class OracleError(RuntimeError):
    """The solver found no plan (numerical trouble, or out of time); the message says why."""


@dataclass(frozen=True, slots=True)
class HomeBattery:
    capacity_wh: float
    soc_wh: float               # energy at the first step; the day must end with at least this
    max_charge_w: float
    max_discharge_w: float
    efficiency: float = 0.9     # round trip


@dataclass(frozen=True, slots=True)
class EvWindow:
    arrival: int                # first step the car is plugged in
    departure: int              # first step it is gone
    energy_wh: float            # its need
    max_power_w: float          # on three phases when the one-phase range is given
    min_power_w: float = 0.0    # relaxed unless strict_min
    strict_min: bool = False    # off or in a range at each step (see the module docstring)
    min_power_1p_w: float | None = None     # both or neither: the charge point can switch to
    max_power_1p_w: float | None = None     # one phase and charge in this range


@dataclass(frozen=True, slots=True)
class OracleResult:
    objective: Objective
    status: OracleStatus
    need_wh: float
    ev_wh: float                    # delivered to the EV
    ev_pv_wh: float                 # of it from PV (ems.kpi's definition)
    grid_import_wh: float
    grid_export_wh: float
    cost: float | None              # of the import; None without prices
    ev_w: tuple[float, ...]         # the plan, per step
    grid_w: tuple[float, ...]       # site sign convention, like the KPI inputs
    battery_w: tuple[float, ...]
    pv_w: tuple[float, ...]         # PV used: production less curtailment
    below_min_steps: int            # steps at a power no real setting gives (0 when strict)
    ev_phases: tuple[int, ...]      # strict, per step: 0 off, 1 the 1p range, 3 the main one;
                                    # relaxed: ()
    mip_gap: float | None           # strict: the largest relative gap of the solves; else None

    @property
    def pv_capture(self) -> float | None:
        """PV share of the EV energy."""
        return self.ev_pv_wh / self.ev_wh if self.ev_wh > 0 else None


def optimise(pv_w: Sequence[float], house_w: Sequence[float], *, dt_s: float, ev: EvWindow,
             objective: Objective, prices: Sequence[float] | None = None,
             battery: HomeBattery | None = None, import_limit_w: float = math.inf,
             export_allowed: bool = True, block_steps: int | None = None,
             time_limit_s: float = TIME_LIMIT_S) -> OracleResult:
    """The optimal plan for the day (see the module docstring). ``block_steps`` matters only
    with ``ev.strict_min``; None: the steps that make ``BLOCK_S`` (at least one).
    ``time_limit_s`` bounds each solve. Raises ``ValueError`` for inputs that make no sense,
    ``OracleUnavailableError`` without scipy, ``OracleError`` when the solver finds no plan."""
    try:
        import numpy as np  # noqa: PLC0415 - optional extra
        from scipy.optimize import (  # type: ignore[import-untyped]  # noqa: PLC0415
            Bounds,
            LinearConstraint,
            milp,
        )
        from scipy.sparse import coo_array  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError as exc:
        raise OracleUnavailableError("the oracle needs scipy and numpy: "
                                     "pip install 'voltpilot[oracle]'") from exc
    n = _check(pv_w, house_w, dt_s, ev, prices, battery, import_limit_w, block_steps,
               time_limit_s)
    pv = np.asarray(pv_w, dtype=float)
    house = np.asarray(house_w, dtype=float)
    price = None if prices is None else np.asarray(prices, dtype=float)
    hours = dt_s / 3600.0
    if block_steps is None:
        block_steps = max(1, round(BLOCK_S / dt_s))
    bat = battery or HomeBattery(0.0, 0.0, 0.0, 0.0, 1.0)
    eta = math.sqrt(bat.efficiency)
    steps = np.arange(n)
    plugged_steps = np.arange(ev.arrival, ev.departure)
    # Strict mode: the block of each plugged step, and one binary per block and phase setting.
    block_of = (plugged_steps - ev.arrival) // block_steps
    n_blocks = -(-len(plugged_steps) // block_steps) if ev.strict_min else 0
    settings = _settings(ev)
    n_bin = n_blocks * len(settings)
    size = _BLOCKS * n + n_bin

    def at(block: int, i: NDArray[Any] = steps) -> NDArray[Any]:
        return block * n + i

    def sparse(entries: Sequence[tuple[NDArray[Any], NDArray[Any], float | NDArray[Any]]],
               n_rows: int) -> Any:
        r = np.concatenate([e[0] for e in entries])
        c = np.concatenate([e[1] for e in entries])
        v = np.concatenate([np.broadcast_to(np.asarray(e[2], dtype=float), e[0].shape)
                            for e in entries])
        return coo_array((v, (r, c)), shape=(n_rows, size)).tocsr()

    # Balance at each step (rows 0..n-1), battery energy after each step (rows n..2n-1).
    a_sys = sparse([(steps, at(_IMP), 1.0), (steps, at(_DIS), 1.0), (steps, at(_CURT), -1.0),
                    (steps, at(_EV), -1.0), (steps, at(_EXP), -1.0), (steps, at(_CHG), -1.0),
                    (n + steps, at(_SOC), 1.0), (n + steps[1:], at(_SOC, steps[:-1]), -1.0),
                    (n + steps, at(_CHG), -eta * hours), (n + steps, at(_DIS), hours / eta)],
                   2 * n)
    b_sys = np.concatenate([house - pv, [bat.soc_wh], np.zeros(n - 1)])
    ev_row = sparse([(np.zeros(n, dtype=int), at(_EV), hours)], 1)
    # PV into the EV <= EV power; PV into the EV + curtailment <= PV - house where PV exceeds
    # the house (elsewhere PV into the EV is 0 by its bound); the battery ends at least as full.
    surplus = np.flatnonzero(pv > house)
    k = np.arange(len(surplus))
    ub_entries = [(steps, at(_PVEV), 1.0), (steps, at(_EV), -1.0),
                  (n + k, at(_PVEV, surplus), 1.0), (n + k, at(_CURT, surplus), 1.0),
                  (np.array([n + len(surplus)]), at(_SOC, np.array([n - 1])), -1.0)]
    n_ub = n + len(surplus) + 1
    if n_bin:
        # Per plugged step, with b_s the binary of its block for setting s (min_s, max_s):
        # EV >= sum min_s b_s and EV <= sum max_s b_s (no big M: the binaries carry the
        # bounds); where PV exceeds the house, PV into the EV <= sum min(surplus, max_s) b_s
        # (implied for integer binaries, but a much tighter relaxation: it makes the solve
        # several times faster). Per block: sum b_s <= 1.
        m = len(plugged_steps)
        sunny = np.flatnonzero(pv[plugged_steps] > house[plugged_steps])
        room = (pv - house)[plugged_steps[sunny]]
        rows_lo, rows_hi = n_ub + np.arange(m), n_ub + m + np.arange(m)
        rows_pv = n_ub + 2 * m + np.arange(len(sunny))
        rows_one = n_ub + 2 * m + len(sunny) + np.arange(n_blocks)
        ub_entries += [(rows_lo, at(_EV, plugged_steps), -1.0),
                       (rows_hi, at(_EV, plugged_steps), 1.0),
                       (rows_pv, at(_PVEV, plugged_steps[sunny]), 1.0)]
        for s, (low, high) in enumerate(settings):
            first = _BLOCKS * n + s * n_blocks
            ub_entries += [(rows_lo, first + block_of, low), (rows_hi, first + block_of, -high),
                           (rows_pv, first + block_of[sunny], -np.minimum(room, high)),
                           (rows_one, first + np.arange(n_blocks), 1.0)]
        n_ub += 2 * m + len(sunny) + n_blocks
    a_ub = sparse(ub_entries, n_ub)
    b_ub = np.zeros(n_ub)
    b_ub[n:n + len(surplus)] = (pv - house)[surplus]
    b_ub[n + len(surplus)] = -bat.soc_wh
    if n_bin:
        b_ub[rows_one] = 1.0

    plugged = (steps >= ev.arrival) & (steps < ev.departure)
    negative = np.zeros(n, dtype=bool) if price is None else price < 0
    upper = np.zeros((_BLOCKS, n))
    upper[_EV] = np.where(plugged, max(high for _, high in settings), 0.0)
    upper[_IMP] = np.maximum(import_limit_w, house - pv)
    upper[_EXP] = np.where(export_allowed & ~negative, np.inf, 0.0)
    upper[_CURT] = pv
    upper[_CHG] = bat.max_charge_w
    upper[_DIS] = bat.max_discharge_w
    upper[_SOC] = bat.capacity_wh
    upper[_PVEV] = np.where(plugged & (pv > house), np.inf, 0.0)
    lower = np.zeros(size)
    upper_all = np.append(upper.reshape(_BLOCKS * n), np.ones(n_bin))
    integrality = np.append(np.zeros(_BLOCKS * n), np.ones(n_bin))
    system = [LinearConstraint(a_sys, b_sys, b_sys), LinearConstraint(a_ub, -np.inf, b_ub)]

    cost_c = np.zeros(size)
    cost_c[at(_IMP)] = ((np.ones(n) if price is None else price) + _TIE) * hours / 1000.0
    pv_c = np.zeros(size)
    pv_c[at(_PVEV)] = -hours
    gaps: list[float] = []
    timed_out = False

    def run(c: NDArray[Any], low: float, high: float, pv_floor: float | None,
            bottom: NDArray[Any], top: NDArray[Any], integer: NDArray[Any]) -> Any:
        """One milp: the EV energy in ``[low, high]``, PV into the EV at least ``pv_floor``."""
        rows = [*system, LinearConstraint(ev_row, low, high)]
        if pv_floor is not None:
            rows.append(LinearConstraint(coo_array(-pv_c.reshape(1, -1)), pv_floor, np.inf))
        # Costs per watt and step are ~1e-6: below HiGHS's dual tolerance (1e-7) by too little,
        # it would stop percents from the optimum. Scaled to 1, the optimum is the same.
        c = c / max(float(np.abs(c).max()), 1e-300)
        options = {"time_limit": time_limit_s, "mip_rel_gap": MIP_GAP}
        res = milp(c, integrality=integer, bounds=Bounds(bottom, top), constraints=rows,
                   options=options)
        if res.status == 4:
            # HiGHS rejects its own optimum when undoing presolve lands a hair outside a
            # tolerance (a plan pressed against the PV floor); solving unpresolved avoids it.
            res = milp(c, integrality=integer, bounds=Bounds(bottom, top), constraints=rows,
                       options={**options, "presolve": False})
        return res

    def polish(c: NDArray[Any], x: NDArray[Any], low: float, high: float,
               pv_floor: float | None) -> NDArray[Any]:
        """The plan again with its binaries fixed, now a linear programme. HiGHS takes a binary
        within 1e-6 of 0 as 0, and the EV power bound it carries lets an "off" step draw a few
        milliwatts (it does, when that helps); the fixed binaries leave no room for it. If that
        milliwatt-hour was needed, the energy and PV floors give way by at most that much."""
        on = np.rint(x[_BLOCKS * n:])
        fixed_low = np.append(lower[:_BLOCKS * n], on)
        fixed_top = np.append(upper_all[:_BLOCKS * n], on)
        leak_wh = 1e-6 * upper[_EV].sum() * hours + 1e-6
        for give in (0.0, leak_wh):
            res = run(c, low - give, high, None if pv_floor is None else pv_floor - give,
                      fixed_low, fixed_top, np.zeros(size))
            if res.status == 0:
                return np.asarray(res.x)
        return x

    def solve(c: NDArray[Any], low: float, high: float, pv_floor: float | None = None,
              fallback: NDArray[Any] | None = None) -> NDArray[Any] | None:
        """An optimum with the EV energy in ``[low, high]``, None when infeasible. Out of time:
        the best plan found, else ``fallback`` (a plan known to fit), else an error."""
        nonlocal timed_out
        res = run(c, low, high, pv_floor, lower, upper_all, integrality)
        if res.status == 2:
            return None
        timed_out = timed_out or res.status == 1
        if res.status == 1 and res.x is None and fallback is not None:
            gaps.append(math.inf)
            return fallback
        if res.status == 1 and res.x is None:
            raise OracleError(f"no plan found within time_limit_s={time_limit_s:g} s per "
                              f"solve (a longer limit or larger block_steps helps): "
                              f"{res.message}")
        if res.x is None or res.status not in (0, 1):
            raise OracleError(f"milp: {res.message}")
        if not n_bin:
            return np.asarray(res.x)
        # A proven optimum is within MIP_GAP, or within HiGHS's absolute gap of 1e-6 of an
        # objective near zero, where the relative gap it reports means nothing (even inf).
        gap = float(res.mip_gap)
        gaps.append(min(gap, MIP_GAP) if res.status == 0 else gap)
        return polish(c, np.asarray(res.x), low, high, pv_floor)

    def plan(low: float, high: float) -> NDArray[Any] | None:
        if objective is Objective.COST:
            return solve(cost_c, low, high)
        x = solve(pv_c, low, high)
        if x is None:
            return None
        # Then the cheapest of the plans that keep that PV (less a micro-watt-hour of slack,
        # so the solver's own tolerance cannot make the second stage infeasible). The first
        # plan keeps it too: out of time, it is the answer.
        best = -float(pv_c @ x)
        return solve(cost_c, low, high, best - 1e-6, fallback=x)

    status = OracleStatus.OPTIMAL
    x = plan(ev.energy_wh, ev.energy_wh)
    if x is None:
        most = np.zeros(size)
        most[at(_EV)] = -hours
        reach = solve(most, -np.inf, ev.energy_wh)
        if reach is None:
            raise OracleError("no feasible plan even without charging the EV")
        # The reached energy less a hair, up to the reached energy itself: the band always
        # holds the plan just found, which an equality on a minimum-power plan might not.
        reached = max(0.0, -float(most @ reach))
        status = OracleStatus.NEED_REDUCED
        x = plan(reached * (1 - 1e-9), reached)
        if x is None:
            raise OracleError("no feasible plan for the reachable EV energy")
    if timed_out:
        status = OracleStatus.TIME_LIMIT
    phases = _phases(x, n, ev, n_blocks, block_of, len(settings) == 2)
    gap = max(gaps) if gaps else (0.0 if ev.strict_min else None)     # strict, no window: LP
    return _result(objective, status, ev, x, n, pv, house, price, hours, phases, gap)


def _settings(ev: EvWindow) -> list[tuple[float, float]]:
    """The power ranges the charge point can run in: the main one, then one phase if given."""
    ranges = [(ev.min_power_w, ev.max_power_w)]
    if ev.min_power_1p_w is not None and ev.max_power_1p_w is not None:
        ranges.append((ev.min_power_1p_w, ev.max_power_1p_w))
    return ranges


def _phases(x: NDArray[Any], n: int, ev: EvWindow, n_blocks: int, block_of: NDArray[Any],
            one_phase: bool) -> tuple[int, ...]:
    """Strict mode: the setting of each step from the binaries, 0 (off), 1 or 3."""
    import numpy as np  # noqa: PLC0415

    if not ev.strict_min:
        return ()
    binaries = np.rint(x[_BLOCKS * n:]).reshape(2 if one_phase else 1, n_blocks)
    per_block = 3 * binaries[0] + (binaries[1] if one_phase else 0)
    out = np.zeros(n, dtype=int)
    out[ev.arrival:ev.departure] = per_block[block_of]
    return tuple(int(p) for p in out)


def _result(objective: Objective, status: OracleStatus, ev: EvWindow, x: NDArray[Any], n: int,
            pv: NDArray[Any], house: NDArray[Any], price: NDArray[Any] | None,
            hours: float, phases: tuple[int, ...], mip_gap: float | None) -> OracleResult:
    import numpy as np  # noqa: PLC0415

    v = np.where(np.abs(x) < 1e-7, 0.0, np.maximum(x, 0.0))[:_BLOCKS * n].reshape(_BLOCKS, n)
    ev_w = v[_EV]
    grid = v[_IMP] - v[_EXP]
    battery = v[_DIS] - v[_CHG]
    pv_used = pv - v[_CURT]
    imports = np.maximum(grid, 0.0)
    ev_pv = sum(pv_to_ev_w(float(p), float(h), float(e))
                for p, h, e in zip(pv_used, house, ev_w, strict=True)) * hours
    cost = None if price is None else float(np.sum(imports * price) * hours / 1000.0)
    settable = np.zeros(n, dtype=bool)
    for low, high in _settings(ev):
        settable |= (ev_w >= low - 1e-6) & (ev_w <= high + 1e-6)
    below = int(np.sum((ev_w > 1e-6) & ~settable))
    return OracleResult(
        objective=objective, status=status, need_wh=ev.energy_wh,
        ev_wh=float(ev_w.sum() * hours), ev_pv_wh=ev_pv,
        grid_import_wh=float(imports.sum() * hours),
        grid_export_wh=float(np.maximum(-grid, 0.0).sum() * hours), cost=cost,
        ev_w=tuple(float(w) for w in ev_w), grid_w=tuple(float(w) for w in grid),
        battery_w=tuple(float(w) for w in battery), pv_w=tuple(float(w) for w in pv_used),
        below_min_steps=below, ev_phases=phases, mip_gap=mip_gap)


def _check(pv_w: Sequence[float], house_w: Sequence[float], dt_s: float, ev: EvWindow,
           prices: Sequence[float] | None, battery: HomeBattery | None,
           import_limit_w: float, block_steps: int | None, time_limit_s: float) -> int:
    n = len(pv_w)
    if not 1 <= n <= MAX_STEPS:
        raise ValueError(f"pv_w: expected 1..{MAX_STEPS} steps, got {n}")
    series: dict[str, Sequence[float]] = {"pv_w": pv_w, "house_w": house_w}
    if prices is not None:
        series["prices"] = prices
    for name, values in series.items():
        if len(values) != n:
            raise ValueError(f"{name}: expected {n} steps like pv_w, got {len(values)}")
        for i, value in enumerate(values):
            if not math.isfinite(value) or (name != "prices" and value < 0):
                what = "a finite number" if name == "prices" else "a finite power >= 0"
                raise ValueError(f"{name}[{i}]: expected {what}, got {value!r}")
    if not (math.isfinite(dt_s) and dt_s > 0):
        raise ValueError(f"dt_s: expected seconds > 0, got {dt_s!r}")
    if not 0 <= ev.arrival <= ev.departure <= n:
        raise ValueError(f"ev: expected 0 <= arrival <= departure <= {n}, got "
                         f"{ev.arrival}..{ev.departure}")
    _nonneg("ev.energy_wh", ev.energy_wh)
    _nonneg("ev.max_power_w", ev.max_power_w)
    _nonneg("ev.min_power_w", ev.min_power_w)
    if ev.min_power_w > ev.max_power_w:
        raise ValueError(f"ev.min_power_w: expected <= max_power_w, got {ev.min_power_w}")
    if (ev.min_power_1p_w is None) != (ev.max_power_1p_w is None):
        raise ValueError(f"ev.min_power_1p_w, ev.max_power_1p_w: expected both or neither, got "
                         f"{ev.min_power_1p_w!r}, {ev.max_power_1p_w!r}")
    if ev.min_power_1p_w is not None and ev.max_power_1p_w is not None:
        _nonneg("ev.min_power_1p_w", ev.min_power_1p_w)
        _nonneg("ev.max_power_1p_w", ev.max_power_1p_w)
        if ev.min_power_1p_w > ev.max_power_1p_w:
            raise ValueError(f"ev.min_power_1p_w: expected <= max_power_1p_w, got "
                             f"{ev.min_power_1p_w}")
    if block_steps is not None and (isinstance(block_steps, bool)
                                    or not isinstance(block_steps, int) or block_steps < 1):
        raise ValueError(f"block_steps: expected an integer >= 1 or None, got {block_steps!r}")
    if not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise ValueError(f"time_limit_s: expected seconds > 0, got {time_limit_s!r}")
    if battery is not None:
        for name in ("capacity_wh", "soc_wh", "max_charge_w", "max_discharge_w"):
            _nonneg(f"battery.{name}", getattr(battery, name))
        if battery.soc_wh > battery.capacity_wh:
            raise ValueError(f"battery.soc_wh: expected <= capacity_wh, got {battery.soc_wh}")
        if not 0 < battery.efficiency <= 1:
            raise ValueError(f"battery.efficiency: expected 0 < round trip <= 1, got "
                             f"{battery.efficiency!r}")
    if math.isnan(import_limit_w) or import_limit_w < 0:
        raise ValueError(f"import_limit_w: expected >= 0 (inf: no limit), got {import_limit_w}")
    return n


def _nonneg(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
