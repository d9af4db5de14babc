"""One control cycle of the energy manager: a pure function of (site, state, inputs, now).

Per cycle it judges every input's health, works out what the grid connection leaves for the
charge points per phase, lets each charge point's mode (off / now / min+PV / PV), the home
battery, the departure plan and 1p/3p switching say what the car should get, shares the site
budget fairly, and returns one ``Command`` per charge point: limits with a source and a reason
that say WHY, in words a user understands.

Which limit carries what (the controller's arbiter takes the lowest):
- ``site_fuse`` (grid class, a boost never lifts it): the car's share of the connection;
- ``pv_surplus`` (optimisation class): what the sun pays for, in PV and min+PV modes;
- ``price`` (tariff class): 0 A while the plan waits for cheaper slots;
- ``user`` (tariff class): 0 A in mode off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta

from ems.balance import Binding, Budget, Demand, Grant, allocate
from ems.battery import available_for_ev
from ems.inputs import InputState, InputStatus, assess, record
from ems.model import ChargePointState, Command, EmsLimit, Mode, Reading, Triple
from ems.phase_switch import PhaseState, decide_phases
from ems.plan import PlanKind, plan_charging
from ems.site import ChargePointConfig, SiteConfig
from ems.surplus import SurplusState, decide
from ems.tariff import PricePlan

# The protocol's bound on a reason (docs/ems-mqtt.md); a meter's fault text can be long.
MAX_REASON = 200
# What a user boost lifts on the controller (optimisation and tariff classes).
BOOSTABLE_SOURCES = frozenset({"pv_surplus", "home_battery", "price", "ems_mode"})


def _short(lim: EmsLimit) -> EmsLimit:
    if len(lim.reason) <= MAX_REASON:
        return lim
    return replace(lim, reason=lim.reason[:MAX_REASON - 1] + "…")


@dataclass(frozen=True, slots=True)
class CpSettings:
    """What a user may change at run time (web page, MQTT, CLI) over the site file."""

    mode: Mode
    departure: time | None = None       # every day at this time (UTC)
    target_wh: float | None = None
    never_switch: bool = False          # this car does not take 1p/3p switches


@dataclass(frozen=True, slots=True)
class CpMemory:
    surplus: SurplusState = field(default_factory=SurplusState)
    phases: PhaseState = field(default_factory=PhaseState)
    suspended: bool = False


@dataclass(frozen=True, slots=True)
class EmsState:
    inputs: Mapping[str, InputState]
    cps: Mapping[str, CpMemory]
    ev_phase_a: Triple | None = None  # what the cars drew per site phase last cycle
    ev_w: float | None = None


@dataclass(frozen=True, slots=True)
class CpReport:
    cp_id: str
    mode: Mode
    command: Command
    surplus_w: float | None
    reason: str                  # the one line a user sees: why this car gets what it gets


@dataclass(frozen=True, slots=True)
class CycleReport:
    at: float
    inputs: tuple[InputStatus, ...]
    budget_a: Triple | None      # amps per site phase left for the charge points
    surplus_w: float | None      # what PV (and the battery) leave for the cars
    cps: tuple[CpReport, ...]


def initial_state(site: SiteConfig) -> EmsState:
    return EmsState(inputs={m.name: InputState() for m in site.meters},
                    cps={c.id: CpMemory() for c in site.charge_points})


def record_reading(state: EmsState, meter: str, reading: Reading | None, now: float,
                   fault: str | None = None) -> EmsState:
    """A meter poll's outcome (the reading, or None and what went wrong)."""
    inputs = dict(state.inputs)
    inputs[meter] = record(inputs.get(meter, InputState()), reading, now, fault)
    return replace(state, inputs=inputs)


def default_settings(site: SiteConfig) -> dict[str, CpSettings]:
    return {c.id: CpSettings(c.mode, c.departure, c.target_wh) for c in site.charge_points}


def next_departure(departure: time, now: float) -> float:
    """The next clock time at ``departure`` (UTC) after ``now``: recomputed every cycle, so a
    daily departure rolls over to the next day once it has passed."""
    day = datetime.fromtimestamp(now, tz=UTC)
    at = day.replace(hour=departure.hour, minute=departure.minute, second=0, microsecond=0)
    if at.timestamp() <= now:
        at += timedelta(days=1)
    return at.timestamp()


def cycle(site: SiteConfig, state: EmsState, now: float,
          cps: Mapping[str, ChargePointState], *, prices: PricePlan | None = None,
          settings: Mapping[str, CpSettings] | None = None,
          ) -> tuple[EmsState, tuple[Command, ...], CycleReport]:
    """One decision for every charge point of the site. ``cps`` holds the charge points'
    latest reports (a missing or stale one counts as drawing nothing and not connected)."""
    settings = settings or default_settings(site)
    inputs = dict(state.inputs)
    statuses: list[InputStatus] = []
    usable: dict[str, Reading | None] = {}
    for meter in site.meters:
        inputs[meter.name], status, usable[meter.name] = assess(
            meter.input_spec(), inputs.get(meter.name, InputState()), now)
        statuses.append(status)
    by_name = {s.name: s for s in statuses}

    fresh = {c.id: cps[c.id] for c in site.charge_points
             if c.id in cps and now - cps[c.id].at <= 3 * site.cycle_s}
    ev_now = [0.0, 0.0, 0.0]
    ev_w_now = 0.0
    for c in site.charge_points:
        s = fresh.get(c.id)
        if s is None:
            continue
        ev_w_now += max(0.0, s.power_w)
        for k in range(3):
            ev_now[c.phase_map[k] - 1] += max(0.0, s.currents_a[k])
    # The grid sample may be older than the cars' reports: only what the cars drew both last
    # cycle and now is surely inside it, so only that is taken off as "theirs".
    # (The first cycle has no history: the cars' reports are all there is.)
    before = state.ev_phase_a if state.ev_phase_a is not None else ev_now
    ev_phase = [min(a, b) for a, b in zip(ev_now, before, strict=True)]
    ev_w = min(ev_w_now, state.ev_w if state.ev_w is not None else ev_w_now)

    grid = usable.get(site.grid.meter) if site.grid.meter else None
    grid_status = by_name.get(site.grid.meter) if site.grid.meter else None
    battery = usable.get(site.battery_meter) if site.battery_meter else None
    pv = usable.get(site.pv_meter) if site.pv_meter else None
    hidden_w: float | None = 0.0
    if site.pv_meter is not None:
        hidden_w = None if pv is None or pv.power_w is None else max(0.0, pv.power_w)
    if site.battery_meter is not None and hidden_w is not None:
        hidden_w = None if battery is None or battery.power_w is None \
            else hidden_w + max(0.0, battery.power_w)
    budget = _budget(site, grid, ev_phase, ev_w, hidden_w)

    pv_ok = site.pv_meter is None or by_name[site.pv_meter].ok
    if grid is None or grid.power_w is None or not pv_ok:
        surplus_total: float | None = None
        surplus_why = "no healthy grid/PV reading"
    else:
        surplus_total, surplus_why = available_for_ev(site.battery, grid_w=grid.power_w,
                                                      ev_w=ev_w, battery=battery)

    memories = dict(state.cps)
    wishes: dict[str, _Wish] = {}
    remaining = surplus_total
    order = sorted(site.charge_points, key=lambda c: (-c.priority, c.id))
    for c in order:
        s = fresh.get(c.id)
        mem = memories.get(c.id, CpMemory())
        wish, mem, used_w = _wish(site, c, s, mem, settings[c.id], remaining, surplus_why,
                                  prices, now)
        memories[c.id] = mem
        wishes[c.id] = wish
        if remaining is not None:
            remaining = max(0.0, remaining - used_w)

    grants: dict[str, Grant] = {}
    if budget is not None:
        demands = [Demand(cp_id=c.id,
                          phases=_site_phases(c, fresh.get(c.id), wishes[c.id].phases),
                          min_a=c.min_a, max_a=wishes[c.id].amps, priority=c.priority,
                          suspended=memories[c.id].suspended,
                          drawing_a=_drawing(c, fresh.get(c.id)))
                   for c in site.charge_points if wishes[c.id].wants]
        grants = allocate(budget, demands)
        for cp_id, grant in grants.items():
            memories[cp_id] = replace(memories[cp_id], suspended=grant.suspended)

    commands: list[Command] = []
    reports: list[CpReport] = []
    # A car the fuse does not hold back (it gets all it asks, or takes no part now) is bounded
    # by what the connection has left, split among such cars per phase: its site-fuse limit
    # is then the fuse's real headroom, not a copy of its PV wish, so the reason a user sees is
    # the limit that truly binds — and a boost between two cycles cannot overload a phase.
    bound = {cp_id for cp_id, g in grants.items()
             if g.suspended or g.binding is not Binding.WISH}
    free = [c for c in site.charge_points if c.id not in bound]
    for c in site.charge_points:
        wish = wishes[c.id]
        limits = list(wish.limits)
        if budget is None:
            if grid_status is None:
                why = "no grid meter configured"
            elif grid_status.ok:
                why = ("grid meter without per-phase currents and no healthy PV/battery "
                       "reading to bound the load")
            else:
                why = grid_status.reason()
            limits.append(EmsLimit("site_fuse", site.grid.failsafe_a,
                                   f"{why}: {site.grid.failsafe_a:g} A"))
        elif c.id in bound:
            g = grants[c.id]
            limits.append(EmsLimit("site_fuse", g.amps, g.reason))
        else:
            limits.append(_headroom(c, free, budget, grants, site))
        command = Command(c.id, tuple(_short(lim) for lim in limits), wish.phases,
                          tuple(n[:MAX_REASON] for n in wish.notes),
                          failsafe_a=site.grid.failsafe_a)
        commands.append(command)
        boosted = c.id in fresh and fresh[c.id].boost
        shown = [lim for lim in command.limits
                 if not (boosted and lim.source in BOOSTABLE_SOURCES)] or list(command.limits)
        binding = min(shown, key=lambda lim: lim.amps)
        reports.append(CpReport(c.id, settings[c.id].mode, command, wish.surplus_w,
                                binding.reason))
    report = CycleReport(now, tuple(statuses), None if budget is None else budget.phase_a,
                         surplus_total, tuple(reports))
    return (EmsState(inputs, memories, (ev_now[0], ev_now[1], ev_now[2]), ev_w_now),
            tuple(commands), report)


@dataclass(frozen=True, slots=True)
class _Wish:
    wants: bool                  # takes part in the sharing of the site budget
    amps: float                  # the most it should get
    limits: tuple[EmsLimit, ...]
    phases: int | None
    surplus_w: float | None
    notes: tuple[str, ...] = ()


def _wish(site: SiteConfig, c: ChargePointConfig, s: ChargePointState | None, mem: CpMemory,
          cps: CpSettings, surplus_w: float | None, surplus_why: str,
          prices: PricePlan | None, now: float) -> tuple[_Wish, CpMemory, float]:
    v = site.voltage_v
    connected = s is not None and s.connected
    phases_now = s.phases if s is not None and s.phases in (1, 3) else c.phases
    boost = s is not None and s.boost
    limits: list[EmsLimit] = []
    notes: list[str] = []
    mode = cps.mode
    if mode is Mode.OFF:
        limits.append(EmsLimit("ems_mode", 0.0, "mode off"))
    # In a slot the departure plan chose (or when only full power now reaches the target)
    # the car charges at full power whatever the mode; outside them mode now waits for the
    # plan, while the PV modes go on using the free sun.
    planned = False
    if connected and cps.departure is not None and cps.target_wh is not None:
        assert s is not None
        need = max(0.0, cps.target_wh - s.session_wh)
        if need > 0:
            plan = plan_charging(prices, now=now, departure=next_departure(cps.departure, now),
                                 energy_wh=need, power_w=c.max_a * phases_now * v)
            # Without prices the PV modes keep to the sun until only the guarantee is left.
            planned = plan.charge_now(now) and not (
                plan.kind is PlanKind.NO_PRICES and mode in (Mode.PV, Mode.MIN_PV))
            if not planned and mode is Mode.NOW:
                limits.append(EmsLimit("price", 0.0, plan.reason))
            notes.append(plan.reason)
        else:
            notes.append(f"target {cps.target_wh / 1000:.1f} kWh reached")
    if not connected:
        # A new car starts from a clean slate, not from the last car's PV history.
        mem = replace(mem, surplus=SurplusState())
    phases_cmd: int | None = None
    if c.phase_switching:
        # Only the PV modes switch down for lack of sun; mode now wants all three phases.
        available = surplus_w if mode in (Mode.PV, Mode.MIN_PV) and not planned \
            and not boost else math.inf
        cfg = site.phase_switch
        if cps.never_switch:
            cfg = replace(cfg, never_switch=True)
        if mode is Mode.MIN_PV:
            cfg = replace(cfg, up_delay_s=cfg.up_delay_minpv_s)
        pstate, pdec = decide_phases(cfg, mem.phases, available_w=available,
                                     current_phases=phases_now, now=now, connected=connected,
                                     min_a=c.min_a, max_a=c.max_a, voltage_v=v,
                                     pays_at_w=c.max_a * v if mode is Mode.MIN_PV else None)
        mem = replace(mem, phases=pstate)
        phases_cmd = pdec.phases
        notes.append(pdec.reason)
    used_w = 0.0
    pv_amps: float | None = None
    if mode in (Mode.PV, Mode.MIN_PV) and not planned:
        sstate, dec = decide(site.pv_mode, mem.surplus, mode=mode,
                             surplus_w=surplus_w if connected else None, now=now,
                             min_a=c.min_a, max_a=c.max_a, phases=phases_now, voltage_v=v)
        mem = replace(mem, surplus=sstate)
        pv_amps = dec.amps
        reason = dec.reason if surplus_w is not None else f"{dec.reason} ({surplus_why})"
        if dec.amps is not None:
            limits.append(EmsLimit("pv_surplus", dec.amps, reason))
            if dec.charging:
                used_w = dec.amps * phases_now * v
    waiting = any(lim.amps == 0.0 for lim in limits)
    wants = connected and (boost or not waiting)
    amps = c.max_a
    if not boost and pv_amps is not None:
        amps = max(c.min_a, min(c.max_a, pv_amps))
    if s is not None and s.ev_max_a is not None:
        amps = max(c.min_a, min(amps, s.ev_max_a))
    return _Wish(wants, amps, tuple(limits), phases_cmd, surplus_w, tuple(notes)), mem, used_w


def _drawing(c: ChargePointConfig, s: ChargePointState | None) -> Triple | None:
    """What a charging car draws per site phase, so a car taking less than it may (its own
    charger's limit, a full battery) leaves the rest to the others; None while it does not
    charge (a car about to start must not be held to nothing)."""
    if s is None or not s.charging:
        return None
    amps = [0.0, 0.0, 0.0]
    for k in range(3):
        amps[c.phase_map[k] - 1] += max(0.0, s.currents_a[k])
    return (amps[0], amps[1], amps[2])


def _site_phases(c: ChargePointConfig, s: ChargePointState | None,
                 commanded: int | None) -> tuple[int, ...]:
    """The site phases a car may draw on before the next cycle: those energised now, or all
    of the charge point's while a switch up is asked for (its grant must hold on each)."""
    phases = s.phases if s is not None and s.phases in (1, 3) else c.phases
    phases = min(c.phases, max(phases, commanded or 0))
    return tuple(sorted(c.phase_map[k] - 1 for k in range(phases)))


def _budget(site: SiteConfig, grid: Reading | None, ev_phase: list[float], ev_w: float,
            hidden_w: float | None) -> Budget | None:
    """What the connection leaves for the charge points, or None when the grid meter cannot
    bound it (the caller then applies the fail-safe current).

    With per-phase currents, the other loads on a phase are the grid current less the cars',
    never below zero: a signed meter's export then counts as nothing (the fuse still caps the
    car), a meter that reports magnitudes makes export count as load — pessimistic, never
    optimistic. With total power only, PV and a discharging battery may hide load on one phase
    behind a small net figure, so the gross other load (net + those sources) is assumed on
    every phase; ``hidden_w`` None (their meters unhealthy) leaves nothing to bound it.
    """
    if grid is None or (grid.currents_a is None and (grid.power_w is None or hidden_w is None)):
        return None
    v = site.voltage_v
    other_w = None if grid.power_w is None else grid.power_w - ev_w
    if grid.currents_a is not None:
        other = [max(0.0, grid.currents_a[i] - ev_phase[i]) for i in range(3)]
    else:
        assert other_w is not None and hidden_w is not None
        other = [max(0.0, (other_w + hidden_w) / v)] * 3
    phase_a = (max(0.0, site.grid.fuse_a - other[0]), max(0.0, site.grid.fuse_a - other[1]),
               max(0.0, site.grid.fuse_a - other[2]))
    total_w = None
    if site.grid.contracted_w is not None:
        total_w = max(0.0, site.grid.contracted_w - max(0.0, other_w if other_w is not None
                                                         else sum(other) * v))
    return Budget(phase_a=phase_a, total_w=total_w, unbalance_a=site.grid.unbalance_a,
                  voltage_v=v)


def _headroom(c: ChargePointConfig, free: list[ChargePointConfig], budget: Budget,
              grants: Mapping[str, Grant], site: SiteConfig) -> EmsLimit:
    """The most ``c`` may draw without the fuse (or the contracted power) being exceeded even
    if every car in ``free`` rose at once: its grant plus an even share of what is left."""
    left = list(budget.phase_a)
    by_id = {cp.id: cp for cp in site.charge_points}
    for cp_id, g in grants.items():
        cp = by_id[cp_id]
        for k in range(cp.phases):
            left[cp.phase_map[k] - 1] -= g.amps
    share = math.inf
    for k in range(c.phases):
        phase = c.phase_map[k] - 1
        sharing = sum(1 for o in free if phase in (o.phase_map[j] - 1 for j in range(o.phases)))
        share = min(share, max(0.0, left[phase]) / max(1, sharing))
    if budget.total_w is not None:
        used_w = sum(g.amps * by_id[i].phases * budget.voltage_v for i, g in grants.items())
        share = min(share, max(0.0, budget.total_w - used_w)
                    / (sum(o.phases for o in free) * budget.voltage_v))
    granted = grants[c.id].amps if c.id in grants else 0.0
    amps = min(c.max_a, granted + share)
    if amps < c.min_a:
        return EmsLimit("site_fuse", 0.0,
                        f"site fuse: {amps:.1f} A free, below the {c.min_a:g} A minimum")
    return EmsLimit("site_fuse", amps, f"site fuse: {amps:.1f} A free")
