"""How close the energy manager came to perfect foresight on a replayed day.

``compare`` hands the oracle (``ems.oracle``) the same day, car window and home battery the
simulation ran with, and sets two figures of the manager beside the oracle's best:

- PV capture: the EV energy that came from PV (``ems.kpi``'s definition), against the most the
  oracle can put into the same car (up to what its battery can take, or its target);
- cost: the site's import cost for the day, against the cheapest plan that delivers the same
  EV energy.

The oracle relaxes the minimum charging current; with a car that needs more than the day's PV
that costs it nothing (the grid can top a car up to its minimum at any step), so its PV figure
is what min+PV can reach, and a target PV mode — which refuses that import — cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ems import oracle
from ems.config_error import ConfigError
from ems.simulate import DayResult, SimSetup
from ems.site import SiteConfig

STEP_S = 60.0


@dataclass(frozen=True, slots=True)
class Comparison:
    day: str
    ev_wh: float
    ev_pv_wh: float
    cost: float
    oracle_ev_pv_wh: float
    oracle_cost: float | None
    oracle_cost_ev_wh: float

    @property
    def capture_ratio(self) -> float | None:
        """Our PV into the car over the oracle's best (1.0 = as good as perfect foresight)."""
        if self.oracle_ev_pv_wh <= 1.0:
            return None
        return self.ev_pv_wh / self.oracle_ev_pv_wh

    def text(self) -> str:
        ratio = self.capture_ratio
        lines = [f"oracle on {self.day}: PV into the car {self.ev_pv_wh / 1000:.2f} kWh, "
                 f"most possible {self.oracle_ev_pv_wh / 1000:.2f} kWh"
                 + ("" if ratio is None else f" ({ratio:.1%} of it)")]
        if self.oracle_cost is not None:
            lines.append(f"site import cost {self.cost:.2f}, cheapest possible for the same "
                         f"{self.oracle_cost_ev_wh / 1000:.2f} kWh: {self.oracle_cost:.2f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "ev_wh": self.ev_wh, "ev_pv_wh": self.ev_pv_wh,
                "cost": self.cost, "oracle_ev_pv_wh": self.oracle_ev_pv_wh,
                "oracle_cost": self.oracle_cost, "oracle_cost_ev_wh": self.oracle_cost_ev_wh,
                "capture_ratio": self.capture_ratio}


def compare(site: SiteConfig, setup: SimSetup, result: DayResult) -> Comparison:
    if len(setup.cars) != 1:
        raise ConfigError(str(site.path), "sim.car", "exactly one car to compare with the "
                          "oracle", len(setup.cars))
    car = setup.cars[0]
    cp = next(c for c in site.charge_points if c.id == car.cp_id)
    v = site.voltage_v
    phases = min(cp.phases, car.phases)
    min_phases = 1 if cp.phase_switching else phases
    delivered = result.energy_wh[car.cp_id]
    room = (1.0 - car.soc) * car.battery_wh
    target = result.target_wh.get(car.cp_id)

    def window(energy_wh: float) -> oracle.EvWindow:
        return oracle.EvWindow(
            arrival=int(car.arrive_s // STEP_S), departure=int(car.depart_s // STEP_S),
            energy_wh=energy_wh, max_power_w=min(cp.max_a, car.max_a) * phases * v,
            min_power_w=cp.min_a * min_phases * v)

    battery = None
    if setup.battery is not None:
        b = setup.battery
        battery = oracle.HomeBattery(capacity_wh=b.capacity_wh, soc_wh=b.soc * b.capacity_wh,
                                     max_charge_w=b.max_charge_w,
                                     max_discharge_w=b.max_discharge_w, efficiency=1.0)
    common: dict[str, Any] = {
        "dt_s": STEP_S, "battery": battery,
        "prices": list(setup.day.prices) if setup.day.prices is not None else None,
        "import_limit_w": site.grid.fuse_a * 3 * v}
    best_pv = oracle.optimise(setup.day.pv_w, setup.day.house_w,
                              ev=window(min(room, target) if target else room),
                              objective=oracle.Objective.PV_CAPTURE, **common)
    cheapest = oracle.optimise(setup.day.pv_w, setup.day.house_w, ev=window(delivered),
                               objective=oracle.Objective.COST, **common)
    session = [s for s in result.kpis.sessions if s.cp_id == car.cp_id]
    return Comparison(
        day=setup.day.name, ev_wh=delivered, ev_pv_wh=sum(s.ev_pv_wh for s in session),
        cost=sum(d.cost for d in result.kpis.days.values()),
        oracle_ev_pv_wh=best_pv.ev_pv_wh,
        oracle_cost=cheapest.cost, oracle_cost_ev_wh=cheapest.ev_wh)
