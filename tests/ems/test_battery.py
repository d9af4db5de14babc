"""Home battery priority (ems/battery.py): what of the sun the cars may use, and why."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ems.battery import BatteryConfig, available_for_ev
from ems.model import Reading

PRIORITY = BatteryConfig(priority_soc=60.0, support_soc=80.0, max_support_w=2000.0)


def bat(power_w: float | None, soc: float | None = 50.0) -> Reading:
    return Reading(at=0.0, power_w=power_w, soc_pct=soc)


def test_no_battery_is_the_grid_alone() -> None:
    # Exporting 3 kW while the car draws 1.4 kW: 4.4 kW for the car.
    assert available_for_ev(BatteryConfig(), grid_w=-3000.0, ev_w=1400.0,
                            battery=None) == (4400.0, "PV surplus 4.4 kW")


def test_without_a_grid_reading_nothing_is_known() -> None:
    for grid in (None, math.nan, math.inf):
        assert available_for_ev(PRIORITY, grid_w=grid, ev_w=0.0, battery=bat(0.0)) == (
            None, "no grid reading")


def test_below_priority_the_battery_charges_first() -> None:
    # Grid at zero, battery charging 3 kW: the sun's 3 kW are the battery's.
    w, why = available_for_ev(PRIORITY, grid_w=0.0, ev_w=0.0, battery=bat(-3000.0, 40.0))
    assert w == 0.0
    assert why == ("PV surplus 0.0 kW: home battery at 40 %, below its 60 % priority, "
                   "3.0 kW kept for it")
    # Exporting 2 kW on top: those are the car's.
    w, _ = available_for_ev(PRIORITY, grid_w=-2000.0, ev_w=0.0, battery=bat(-3000.0, 40.0))
    assert w == 2000.0


def test_below_priority_the_configured_charge_power_is_kept() -> None:
    """A zero-grid battery that gave way to the car (charging 1 kW instead of 3 kW) gets its
    3 kW back: the car is offered less, not the battery."""
    cfg = BatteryConfig(priority_soc=60.0, max_charge_w=3000.0)
    w, why = available_for_ev(cfg, grid_w=0.0, ev_w=2000.0, battery=bat(-1000.0, 40.0))
    assert w == 0.0 and "3.0 kW kept for it" in why


def test_between_priority_and_support_the_battery_charging_is_available() -> None:
    w, why = available_for_ev(PRIORITY, grid_w=0.0, ev_w=0.0, battery=bat(-3000.0, 70.0))
    assert w == 3000.0 and "neither first nor support" in why


def test_a_battery_that_discharges_never_pays_for_the_car_unless_allowed() -> None:
    # The car draws 4 kW, the battery discharges 2.5 kW to hold the grid at zero.
    for soc in (40.0, 70.0, 80.0):
        w, _ = available_for_ev(PRIORITY, grid_w=0.0, ev_w=4000.0, battery=bat(2500.0, soc))
        assert w == 1500.0


def test_above_support_the_battery_may_add_up_to_its_limit() -> None:
    w, why = available_for_ev(PRIORITY, grid_w=0.0, ev_w=4000.0, battery=bat(2500.0, 81.0))
    assert w == 1500.0 + 2000.0
    assert why == "PV surplus 3.5 kW: home battery at 81 %, above 80 %, adds up to 2.0 kW"


def test_battery_not_involved_counts_charging_but_never_discharging() -> None:
    cfg = BatteryConfig()
    assert available_for_ev(cfg, grid_w=0.0, ev_w=0.0, battery=bat(-3000.0, 10.0))[0] == 3000.0
    assert available_for_ev(cfg, grid_w=0.0, ev_w=4000.0, battery=bat(2500.0, 99.0))[0] == 1500.0


def test_stale_battery_neither_supports_nor_has_its_charging_counted() -> None:
    w, why = available_for_ev(PRIORITY, grid_w=-1000.0, ev_w=0.0, battery=None)
    assert w == 1000.0 and "home battery not measured: no support" in why
    w, why = available_for_ev(PRIORITY, grid_w=-1000.0, ev_w=0.0, battery=bat(None, 95.0))
    assert w == 1000.0 and "not measured" in why
    for soc in (None, math.nan, 150.0):
        w, why = available_for_ev(PRIORITY, grid_w=0.0, ev_w=4000.0, battery=bat(2500.0, soc))
        assert w == 1500.0 and "SoC unknown" in why      # no support although it discharges
        w, _ = available_for_ev(PRIORITY, grid_w=0.0, ev_w=0.0, battery=bat(-3000.0, soc))
        assert w == 0.0                                   # its charging kept for it


def test_bad_car_power_counts_as_nothing() -> None:
    for ev in (math.nan, -500.0):
        assert available_for_ev(BatteryConfig(), grid_w=-1000.0, ev_w=ev,
                                battery=None)[0] == 1000.0


@pytest.mark.parametrize("kwargs", [
    {"priority_soc": 120.0}, {"support_soc": -1.0}, {"max_charge_w": 0.0},
    {"max_support_w": math.nan}, {"support_soc": 80.0},
    {"priority_soc": 70.0, "support_soc": 60.0, "max_support_w": 1000.0}])
def test_config_rejects_impossible_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        BatteryConfig(**kwargs)


socs = st.one_of(st.none(), st.floats(0.0, 100.0))


@given(grid=st.floats(-20_000, 20_000), ev=st.floats(0, 22_000),
       power=st.one_of(st.none(), st.floats(-10_000, 10_000)), soc=socs,
       priority=socs, support_gap=st.one_of(st.none(), st.floats(0.0, 100.0)))
def test_never_more_than_the_sun_plus_the_allowed_support(grid: float, ev: float,
                                                          power: float | None,
                                                          soc: float | None,
                                                          priority: float | None,
                                                          support_gap: float | None) -> None:
    support = None if support_gap is None else min(100.0, (priority or 0.0) + support_gap)
    cfg = BatteryConfig(priority_soc=priority, support_soc=support,
                        max_support_w=1500.0 if support is not None else 0.0)
    w, why = available_for_ev(cfg, grid_w=grid, ev_w=ev, battery=bat(power, soc))
    assert w is not None and why
    base = ev - grid
    if power is None:
        assert w == base
        return
    sun = base - power
    allowed = cfg.max_support_w if (soc is not None and support is not None
                                    and soc > support) else 0.0
    assert w <= sun + allowed + 1e-6
    if soc is None or (priority is not None and soc < priority):
        assert w <= sun - max(0.0, -power) + 1e-6
