"""A day on a simulated site, in virtual time: PV, house, home battery and cars behind one grid
connection, steered by the real energy manager (``ems.manager.cycle``) every control cycle.

The plant runs in one-second steps; the manager sees it only through timestamped readings, as
it would see real meters, and its commands reach the cars only as limits. What comes out is the
day's KPIs and what the properties need: the longest stretch any phase spent above the fuse,
energy delivered against the target, and how each input's health changed.

The plant's parts behave like their real counterparts, simply:
- a car follows the lowest limit after a reaction time (IEC 61851 allows 5 s), draws nothing
  below its minimum current, stops when full or gone, and sits out a phase switch's pause;
- the home battery runs its own self-consumption controller (it charges from export and
  discharges against import, the car's included) — the EMS can read it but not command it;
- the house load sits 50/30/20 % on L1/L2/L3, PV and battery are 3-phase balanced.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ems.config_error import ConfigError
from ems.kpi import Kpis
from ems.manager import (
    BOOSTABLE_SOURCES,
    CpSettings,
    CycleReport,
    EmsState,
    cycle,
    default_settings,
    initial_state,
    record_reading,
)
from ems.model import ChargePointState, Command, Reading, Role
from ems.site import ChargePointConfig, SiteConfig, time_of_day
from ems.tariff import PricePlan, Slot, price_at

HOUSE_SPLIT = (0.5, 0.3, 0.2)
MINUTES = 1440


@dataclass(frozen=True, slots=True)
class Day:
    """Per-minute PV and house power of one UTC day, and prices when the day has them."""

    name: str
    pv_w: tuple[float, ...]
    house_w: tuple[float, ...]
    prices: tuple[float, ...] | None = None

    @classmethod
    def load(cls, path: Path) -> Day:
        try:
            rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), "(file)", "a readable CSV file", str(exc)) from exc
        need = ("minute", "pv_w", "house_w")
        if not rows or any(k not in rows[0] for k in need):
            raise ConfigError(str(path), "header", "columns minute,pv_w,house_w"
                              "[,price_eur_kwh]", list(rows[0]) if rows else None)
        if len(rows) != MINUTES:
            raise ConfigError(str(path), "rows", f"{MINUTES} (one per minute)", len(rows))
        pv, house, prices = [], [], []
        for i, row in enumerate(rows):
            try:
                if None in row.values() or int(row["minute"]) != i:
                    raise ValueError
                pv.append(_nonneg(row["pv_w"]))
                house.append(_nonneg(row["house_w"]))
                if row.get("price_eur_kwh") not in (None, ""):
                    prices.append(float(row["price_eur_kwh"]))
            except (ValueError, TypeError):
                raise ConfigError(str(path), f"row {i + 2}",
                                  f"minute {i} and finite non-negative powers", row) from None
        if prices and len(prices) != MINUTES:
            raise ConfigError(str(path), "price_eur_kwh", "a price on every row or none",
                              len(prices))
        name = path.stem.removeprefix("day-")
        return cls(name, tuple(pv), tuple(house), tuple(prices) if prices else None)

    def price_plan(self, midnight: float) -> PricePlan | None:
        if self.prices is None:
            return None
        slots = [Slot(midnight + m * 60.0, midnight + (m + 15) * 60.0, self.prices[m])
                 for m in range(0, MINUTES, 15)]
        return PricePlan(tuple(slots), currency="EUR")


def _nonneg(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return value


@dataclass(frozen=True, slots=True)
class Car:
    cp_id: str
    arrive_s: float            # seconds after midnight
    depart_s: float
    battery_wh: float
    soc: float                 # at arrival, 0..1
    max_a: float = 16.0
    phases: int = 3            # what the car's charger can use
    reaction_s: float = 2.0


@dataclass(frozen=True, slots=True)
class HomeBattery:
    capacity_wh: float = 10_000.0
    soc: float = 0.5
    max_charge_w: float = 5_000.0
    max_discharge_w: float = 5_000.0
    min_soc: float = 0.05


class SimSite:
    """The site around the cars: the day's PV and house load (repeating every UTC day) and a
    home battery that runs its own self-consumption control. Used by ``simulate`` and by the
    sim board's in-process EMS (``kind = "sim"`` meters)."""

    def __init__(self, day: Day, battery: HomeBattery | None, voltage_v: float,
                 start_s: float | None = None) -> None:
        self.day = day
        self.battery = battery
        self.voltage_v = voltage_v
        # With ``start_s`` the profile begins at that time of day on the first reading, so a
        # demo started at night still sees the sun; without it the profile follows the clock.
        self.start_s = start_s
        self.offset_s: float | None = None if start_s is not None else 0.0
        self.soc = battery.soc if battery is not None else 0.0
        self.battery_w = 0.0
        self._last: float | None = None

    def minute(self, now: float) -> int:
        if self.offset_s is None:
            assert self.start_s is not None
            self.offset_s = self.start_s - now % 86_400.0
        return int((now + self.offset_s) // 60.0) % MINUTES

    def advance(self, now: float, ev_w: float) -> None:
        """Step the battery from the last call to ``now`` (for callers that poll, not tick)."""
        if self._last is not None and now > self._last:
            self.step(self._last, now - self._last, ev_w)
        self._last = now if self._last is None else max(self._last, now)

    def pv_w(self, now: float) -> float:
        return self.day.pv_w[self.minute(now)]

    def house_w(self, now: float) -> float:
        return self.day.house_w[self.minute(now)]

    def step(self, now: float, dt: float, ev_w: float) -> float:
        """The battery's power over the next ``dt`` seconds (+ discharging) given the cars'."""
        b = self.battery
        if b is None:
            return 0.0
        net = self.house_w(now) + ev_w - self.pv_w(now)
        power = 0.0
        if net < 0 and self.soc < 1.0:
            power = -min(-net, b.max_charge_w)
        elif net > 0 and self.soc > b.min_soc:
            power = min(net, b.max_discharge_w)
        self.soc = min(1.0, max(0.0, self.soc - power * dt / 3600.0 / b.capacity_wh))
        self.battery_w = power
        return power

    def phase_currents(self, now: float, ev_a: Sequence[float]) -> list[float]:
        """Signed grid current per phase, the cars' per-phase currents ``ev_a`` included."""
        v = self.voltage_v
        sources = (self.pv_w(now) + self.battery_w) / 3.0
        house = self.house_w(now)
        return [(house * HOUSE_SPLIT[i] - sources) / v + ev_a[i] for i in range(3)]

    def readings(self, now: float, ev_a: Sequence[float], ev_w: float) -> dict[Role, Reading]:
        currents = self.phase_currents(now, ev_a)
        grid_w = self.house_w(now) + ev_w - self.pv_w(now) - self.battery_w
        out = {Role.GRID: Reading(now, power_w=grid_w,
                                  currents_a=(currents[0], currents[1], currents[2])),
               Role.PV: Reading(now, power_w=self.pv_w(now)),
               Role.HOUSE: Reading(now, power_w=self.house_w(now))}
        if self.battery is not None:
            out[Role.BATTERY] = Reading(now, power_w=self.battery_w, soc_pct=self.soc * 100.0)
        return out


@dataclass(frozen=True, slots=True)
class Outage:
    """A meter that gives no answer from ``start_s`` to ``end_s`` (seconds after midnight)."""

    meter: str
    start_s: float
    end_s: float


@dataclass
class DayResult:
    kpis: Kpis
    energy_wh: dict[str, float]              # per car, delivered
    target_wh: dict[str, float | None]       # per car, what its settings asked for
    longest_overload_s: float                # longest stretch any phase was above the fuse
    phase_switches: dict[str, int]
    health_changes: list[tuple[float, str, str]] = field(default_factory=list)
    reports: list[CycleReport] = field(default_factory=list)


class _CarPlant:
    def __init__(self, car: Car, cp: ChargePointConfig) -> None:
        self.car, self.cp = car, cp
        self.energy_wh = 0.0
        self.soc = car.soc
        self.amps = 0.0                 # drawn per phase now
        self.target_a = 0.0
        self.target_at = 0.0
        self.energised = min(cp.phases, 3)
        self.switch_until: float | None = None
        self.switches = 0

    def present(self, t: float) -> bool:
        return self.car.arrive_s <= t < self.car.depart_s

    def phases(self) -> int:
        return min(self.car.phases, self.energised)

    def command(self, cmd: Command, t: float, boost: bool = False) -> None:
        limits = [lim.amps for lim in cmd.limits
                  if not (boost and lim.source in BOOSTABLE_SOURCES)]
        offered = min([self.cp.max_a, *limits])
        if offered < self.cp.min_a:
            offered = 0.0
        if cmd.phases is not None and cmd.phases != self.energised and self.switch_until is None:
            # Pause, open, switch, wait, close again: 30 s, on the safe side of the sim board's
            # sequence (about 14 s with a car that reacts in 2 s).
            self.switch_until = t + 30.0
            self.switches += 1
            self.energised = cmd.phases
        if offered != self.target_a:
            self.target_a = offered
            self.target_at = t + self.car.reaction_s

    def step(self, t: float, dt: float, voltage: float) -> float:
        if not self.present(t) or self.soc >= 1.0:
            self.amps = 0.0
            return 0.0
        if self.switch_until is not None:
            if t < self.switch_until:
                self.amps = 0.0
                return 0.0
            self.switch_until = None
        if t >= self.target_at:
            self.amps = min(self.target_a, self.car.max_a)
        power = self.amps * self.phases() * voltage
        self.energy_wh += power * dt / 3600.0
        self.soc = min(1.0, self.soc + power * dt / 3600.0 / self.car.battery_wh)
        return power


def simulate(site: SiteConfig, day: Day, cars: Sequence[Car], *, midnight: float,
             battery: HomeBattery | None = None, outages: Iterable[Outage] = (),
             settings: dict[str, CpSettings] | None = None, boost: Iterable[str] = (),
             keep_reports: bool = False, from_s: int = 0, to_s: int = 86_400) -> DayResult:
    """Run ``day`` from ``midnight`` (a clock time), the seconds ``from_s`` to ``to_s`` of it
    (the whole day by default)."""
    v = site.voltage_v
    by_cp = {c.id: c for c in site.charge_points}
    plants = [_CarPlant(car, by_cp[car.cp_id]) for car in cars]
    outages = tuple(outages)
    boosted = set(boost)
    state = initial_state(site)
    prices = day.price_plan(midnight)
    kpis = Kpis()
    site_plant = SimSite(day, battery, v)
    cycle_every = max(1, round(site.cycle_s))
    overload_run = 0.0
    longest = 0.0
    health: dict[str, str] = {}
    result = DayResult(kpis, {}, {}, 0.0, {})
    base = default_settings(site)
    if settings:
        base.update(settings)
    present_before: dict[str, bool] = {}
    # The KPIs get one step per control cycle with the cycle's mean powers: the same energy
    # as second by second, at a fifth of the cost (the day's budget is 5 s of wall time).
    acc = _Accumulator([p.car.cp_id for p in plants])

    for second in range(from_s, to_s):
        t = float(second)
        now = midnight + t
        if second % cycle_every == 0:
            acc.flush(kpis, prices)
        pv_w, house_w = site_plant.pv_w(now), site_plant.house_w(now)
        for plant in plants:
            present = plant.present(t)
            if present and not present_before.get(plant.car.cp_id, False):
                kpis.session_start(plant.car.cp_id, now, base[plant.car.cp_id].target_wh)
            elif not present and present_before.get(plant.car.cp_id, False):
                kpis.session_end(plant.car.cp_id, now)
            present_before[plant.car.cp_id] = present

        if second % cycle_every == 0:
            state = _feed_meters(site, state, now, t, site_plant, plants, outages)
            cps = {p.car.cp_id: _cp_state(p, now, t, v, p.car.cp_id in boosted)
                   for p in plants}
            state, commands, report = cycle(site, state, now, cps, prices=prices,
                                            settings=base)
            for cmd in commands:
                for p in plants:
                    if p.car.cp_id == cmd.cp_id:
                        p.command(cmd, t, cmd.cp_id in boosted)
            for status in report.inputs:
                if health.get(status.name) != status.health.value:
                    health[status.name] = status.health.value
                    result.health_changes.append((t, status.name, status.health.value))
            if keep_reports:
                result.reports.append(report)

        ev_w = {p.car.cp_id: p.step(t, 1.0, v) for p in plants}
        ev_total = sum(ev_w.values())
        battery_w = site_plant.step(now, 1.0, ev_total)
        grid_w = house_w + ev_total - pv_w - battery_w
        currents = site_plant.phase_currents(now, _ev_phases(plants))
        if max(abs(a) for a in currents) > site.grid.fuse_a + 1e-6:
            overload_run += 1.0
            longest = max(longest, overload_run)
        else:
            overload_run = 0.0
        acc.add(now, grid_w, pv_w, house_w, battery_w, ev_w)

    acc.flush(kpis, prices)
    for plant in plants:
        if present_before.get(plant.car.cp_id):
            kpis.session_end(plant.car.cp_id, midnight + float(to_s))
        result.energy_wh[plant.car.cp_id] = plant.energy_wh
        result.target_wh[plant.car.cp_id] = base[plant.car.cp_id].target_wh
        result.phase_switches[plant.car.cp_id] = plant.switches
    result.longest_overload_s = longest
    return result


class _Accumulator:
    def __init__(self, cp_ids: list[str]) -> None:
        self.cp_ids = cp_ids
        self.reset()

    def reset(self) -> None:
        self.start: float | None = None
        self.n = 0
        self.grid = self.pv = self.house = self.battery = 0.0
        self.ev = dict.fromkeys(self.cp_ids, 0.0)

    def add(self, now: float, grid: float, pv: float, house: float, battery: float,
            ev: dict[str, float]) -> None:
        if self.start is None:
            self.start = now
        self.n += 1
        self.grid += grid
        self.pv += pv
        self.house += house
        self.battery += battery
        for cp_id, w in ev.items():
            self.ev[cp_id] += w

    def flush(self, kpis: Kpis, prices: PricePlan | None) -> None:
        if self.start is None:
            return
        n = float(self.n)
        kpis.add(self.start, n, grid_w=self.grid / n, pv_w=self.pv / n,
                 house_w=self.house / n, battery_w=self.battery / n,
                 ev_w={k: w / n for k, w in self.ev.items()},
                 price=None if prices is None else price_at(prices, self.start))
        self.reset()


def _ev_phases(plants: Sequence[_CarPlant]) -> list[float]:
    amps = [0.0, 0.0, 0.0]
    for p in plants:
        for k in range(p.phases()):
            amps[p.cp.phase_map[k] - 1] += p.amps
    return amps


def _feed_meters(site: SiteConfig, state: EmsState, now: float, t: float, plant: SimSite,
                 plants: Sequence[_CarPlant], outages: Sequence[Outage]) -> EmsState:
    ev_w = sum(p.amps * p.phases() * site.voltage_v for p in plants)
    values = plant.readings(now, _ev_phases(plants), ev_w)
    for meter in site.meters:
        down = any(o.meter == meter.name and o.start_s <= t < o.end_s for o in outages)
        reading = values.get(meter.role)
        if not down and reading is not None:
            state = record_reading(state, meter.name, reading, now)
    return state


def _cp_state(p: _CarPlant, now: float, t: float, v: float, boost: bool) -> ChargePointState:
    phases = p.phases()
    currents = tuple(p.amps if k < phases else 0.0 for k in range(3))
    return ChargePointState(
        id=p.car.cp_id, at=now, connected=p.present(t), charging=p.amps > 0,
        phases=p.energised if p.cp.phases == 3 else 1,
        currents_a=(currents[0], currents[1], currents[2]),
        power_w=p.amps * phases * v, session_wh=p.energy_wh, offered_a=p.target_a,
        boost=boost, ev_soc_pct=p.soc * 100.0)



@dataclass(frozen=True, slots=True)
class SimSetup:
    """The ``[sim]`` table of a site file: the day to replay, the cars and the home battery."""

    day: Day
    cars: tuple[Car, ...]
    battery: HomeBattery | None
    start_s: float | None = None    # time of day the profile starts at when a controller runs


def sim_setup(site: SiteConfig, day_override: Path | None = None) -> SimSetup:
    file = str(site.path)
    raw = dict(site.sim)
    allowed = {"day", "car", "battery", "start"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(file, f"sim.{key}", f"one of {', '.join(sorted(allowed))}",
                              "an unknown key")
    day_path = day_override
    if day_path is None:
        if not isinstance(raw.get("day"), str):
            raise ConfigError(file, "sim.day", "the path of a day profile CSV",
                              raw.get("day"))
        day_path = site.path.parent / raw["day"]
    day = Day.load(day_path)
    cars = []
    ids = {c.id for c in site.charge_points}
    for i, car in enumerate(raw.get("car", [])):
        key = f"sim.car[{i}]"
        if not isinstance(car, dict):
            raise ConfigError(file, key, "a table", car)
        cp = car.get("cp")
        if cp not in ids:
            raise ConfigError(file, f"{key}.cp", f"one of the charge point ids {sorted(ids)}",
                              cp)
        cars.append(Car(
            cp_id=cp, arrive_s=_seconds(file, f"{key}.arrive", car.get("arrive")),
            depart_s=_seconds(file, f"{key}.depart", car.get("depart"), end_of_day=True),
            battery_wh=_num(file, f"{key}.battery_kwh", car.get("battery_kwh", 60), 1, 300)
            * 1000.0,
            soc=_num(file, f"{key}.soc", car.get("soc", 0.3), 0.0, 1.0),
            max_a=_num(file, f"{key}.max_a", car.get("max_a", 16), 6, 80),
            phases=int(_num(file, f"{key}.phases", car.get("phases", 3), 1, 3))))
        if cars[-1].depart_s <= cars[-1].arrive_s:
            raise ConfigError(file, f"{key}.depart", "a time after arrive", car.get("depart"))
    battery = None
    b = raw.get("battery")
    if b is not None:
        if not isinstance(b, dict):
            raise ConfigError(file, "sim.battery", "a table", b)
        battery = HomeBattery(
            capacity_wh=_num(file, "sim.battery.capacity_kwh", b.get("capacity_kwh", 10),
                             0.5, 1000) * 1000.0,
            soc=_num(file, "sim.battery.soc", b.get("soc", 0.5), 0.0, 1.0),
            max_charge_w=_num(file, "sim.battery.max_charge_kw", b.get("max_charge_kw", 5),
                              0.1, 1000) * 1000.0,
            max_discharge_w=_num(file, "sim.battery.max_discharge_kw",
                                 b.get("max_discharge_kw", 5), 0.1, 1000) * 1000.0)
    start = raw.get("start")
    start_s = None if start is None else _seconds(file, "sim.start", start)
    return SimSetup(day, tuple(cars), battery, start_s)


def _num(file: str, key: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(file, key, f"a number in [{lo:g}, {hi:g}]", value)
    return float(value)


def _seconds(file: str, key: str, value: object, end_of_day: bool = False) -> float:
    if end_of_day and value == "24:00":
        return 86_400.0
    at = time_of_day(value)
    if at is not None:
        return at.hour * 3600.0 + at.minute * 60.0
    raise ConfigError(file, key, "a time of day HH:MM" + (" (24:00 allowed)" if end_of_day
                                                         else ""), value)
