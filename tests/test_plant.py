"""The simulated plant and car: they must behave like the real things the tests stand in for."""

from __future__ import annotations

import pytest

from hal.clock import VirtualClock
from hal.sim.ev import PROFILES, EvProfile, Output, Quirk, offered_current
from hal.sim.plant import Plant, PlantError, PlantFault


def plant_with(profile: EvProfile) -> tuple[Plant, VirtualClock]:
    clock = VirtualClock()
    plant = Plant(clock=clock)
    plant.plug(profile)
    return plant, clock


def charge(plant: Plant, clock: VirtualClock, duty: float = 53.3) -> None:
    plant.drive_pilot(Output.PWM, duty)
    clock.advance(3.0)
    plant.advance()
    plant.drive_contactor(True)


def test_car_reads_the_pilot_like_table_a8() -> None:
    assert offered_current(Output.PWM, 26.6) == pytest.approx(15.96)
    assert offered_current(Output.PWM, 9.0) == 6.0
    assert offered_current(Output.PWM, 90.0) == pytest.approx(65.0)
    assert offered_current(Output.PWM, 5.0) == 0.0
    assert offered_current(Output.X1, 50.0) == 0.0


def test_cp_levels_follow_the_car_and_the_pilot() -> None:
    plant, clock = plant_with(PROFILES["compact_3p"])
    assert (plant.cp_reading().high_v, plant.cp_reading().low_v) == (9.0, 9.0)  # B1
    plant.drive_pilot(Output.PWM, 26.6)
    assert (plant.cp_reading().high_v, plant.cp_reading().low_v) == (9.0, -12.0)  # B2
    clock.advance(1.9)
    plant.advance()
    assert plant.cp_reading().high_v == 9.0  # the car takes its reaction time (2 s)
    clock.advance(0.2)
    plant.advance()
    assert plant.cp_reading().high_v == 6.0  # C2
    plant.drive_pilot(Output.F)
    assert plant.cp_reading().high_v == -12.0


def test_energy_is_exact_whatever_the_step() -> None:
    results = []
    for step in (0.5, 7.0, 300.0):
        plant, clock = plant_with(PROFILES["compact_3p"].with_overrides(
            {"soc": 0.5, "target_soc": 0.6}))
        charge(plant, clock, duty=26.6)
        while plant.ev is not None and plant.ev.s2_closed:
            clock.advance(step)
            plant.advance()
        results.append(plant.meter_energy_wh)
    assert results == pytest.approx([0.1 * 58_000] * 3, rel=1e-9)


def test_taper_near_full() -> None:
    plant, _ = plant_with(PROFILES["compact_3p"].with_overrides({"soc": 0.9}))
    assert plant.ev is not None
    assert plant.ev.max_draw_a() == pytest.approx(16 - 0.5 * (16 - 2))


def test_quirks_show_on_the_cp() -> None:
    plant, _ = plant_with(PROFILES["compact_3p"].with_overrides({"quirks": ["missing_diode"]}))
    plant.drive_pilot(Output.PWM, 26.6)
    assert plant.cp_reading().low_v == -9.0
    plant.set_quirk(Quirk.CP_SHORT, True)
    assert (plant.cp_reading().high_v, plant.cp_reading().low_v) == (0.0, 0.0)


def test_sleepy_car_needs_state_f_to_wake() -> None:
    plant, clock = plant_with(PROFILES["sleepy_3p"])
    charge(plant, clock)
    plant.drive_pilot(Output.X1)
    clock.advance(3)
    plant.advance()
    assert plant.ev is not None and plant.ev.asleep and not plant.ev.s2_closed
    plant.drive_pilot(Output.PWM, 26.6)
    clock.advance(60)
    plant.advance()
    assert not plant.ev.s2_closed
    plant.drive_pilot(Output.F)
    clock.advance(1.0)
    plant.advance()
    plant.drive_pilot(Output.PWM, 26.6)
    clock.advance(2.5)
    plant.advance()
    assert plant.ev.s2_closed


def test_overdraw_takes_more_than_offered() -> None:
    plant, clock = plant_with(PROFILES["compact_3p"].with_overrides({"quirks": ["overdraw"]}))
    charge(plant, clock, duty=16.6)
    assert plant.meter_sample is not None
    assert plant.meter_sample.current_a[0] == pytest.approx(9.96 + 4.0)


def test_welded_contactor_stays_closed_and_watchdog_opens_a_healthy_one() -> None:
    plant, clock = plant_with(PROFILES["compact_3p"])
    charge(plant, clock)
    plant.set_fault(PlantFault.CONTACTOR_WELD, True)
    plant.drive_contactor(False)
    assert plant.contactor_closed
    plant.set_fault(PlantFault.CONTACTOR_WELD, False)
    plant.arm_watchdog(5.0)
    clock.advance(4.0)
    plant.advance()
    assert plant.contactor_closed
    clock.advance(1.1)
    plant.advance()
    assert not plant.contactor_closed and plant.output is Output.F


def test_grid_loss_stops_the_flow() -> None:
    plant, clock = plant_with(PROFILES["compact_3p"])
    charge(plant, clock)
    plant.set_grid((0.0, 0.0, 0.0), None)
    assert plant.meter_sample is not None and plant.meter_sample.total_power_w == 0.0


def test_plant_refuses_what_makes_no_sense() -> None:
    plant, _ = plant_with(PROFILES["compact_3p"])
    with pytest.raises(PlantError):
        plant.plug(PROFILES["compact_3p"])
    plant.unplug()
    with pytest.raises(PlantError):
        plant.unplug()
    with pytest.raises(PlantError):
        plant.ev_stop()


@pytest.mark.parametrize("overrides", [{"soc": 1.5}, {"phases": 4}, {"reaction_s": 6.0},
                                       {"battery_kwh": 0}, {"bogus": 1}, {"quirks": ["nope"]},
                                       {"soc": "half"}])
def test_bad_ev_overrides_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PROFILES["compact_3p"].with_overrides(overrides)


def test_watchdog_stops_the_energy_when_it_trips_not_when_someone_looks() -> None:
    plant, clock = plant_with(PROFILES["compact_3p"])
    charge(plant, clock)
    plant.arm_watchdog(5.0)
    before = plant.meter_energy_wh
    clock.advance(60.0)  # nobody reads for a minute
    plant.advance()
    assert plant.watchdog.tripped and not plant.contactor_closed
    power_w = 3 * 230.0 * 16.0  # the car takes its own 16 A maximum
    assert plant.meter_energy_wh - before == pytest.approx(power_w * 5.0 / 3600, rel=1e-6)
