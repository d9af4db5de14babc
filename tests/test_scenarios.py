"""Whole sessions on the simulated board in virtual time: the real connector, the real plant and
store, the real event loop (on virtual time). Each fault injection must end with the contactor
open within the time the standard allows, and the right fault code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import sim_board
from rig import Rig

from firmware.core.iec61851 import Phase
from firmware.core.limits import Limit, LimitSource
from firmware.core.reasons import FaultCode, StopReason, SuspendReason
from firmware.evse.session import SessionStatus
from firmware.store.db import Store
from hal.roles import IndicatorState, LockState
from hal.sim.ev import PROFILES, Quirk
from hal.sim.plant import PlantFault


def test_plug_charge_full_finish(tmp_path: Path) -> None:
    profile = PROFILES["phev_1p"].with_overrides({"soc": 0.5, "target_soc": 0.8})

    async def scenario(rig: Rig) -> None:
        await rig.until(1.0)
        rig.plant.plug(profile)
        await rig.wait_for(lambda: rig.plant.contactor_closed, 5.0)
        assert rig.connector.view().iec == "C2"
        assert rig.plant.indicator is IndicatorState.CHARGING
        assert rig.plant.lock_state is LockState.LOCKED
        await rig.wait_for(lambda: rig.phase is Phase.PAUSED_EV, 4 * 3600)
        assert rig.connector.state.suspend is SuspendReason.EV_PAUSED
        assert not rig.plant.contactor_closed
        session = rig.connector.session
        assert session is not None and session.status is SessionStatus.SUSPENDED_EV
        await rig.until(rig.t + 60)
        rig.plant.unplug()
        await rig.until(rig.t + 1)
        assert rig.phase is Phase.IDLE and rig.plant.lock_state is LockState.UNLOCKED

    rig = Rig.run(tmp_path, scenario)
    [session] = rig.finished
    assert session.stop_reason is StopReason.EV_DISCONNECTED
    assert session.status is SessionStatus.FINISHED
    expected_wh = (0.8 - 0.5) * 13.0 * 1000
    assert session.energy_wh == pytest.approx(expected_wh, rel=1e-3)
    assert session.max_power_w == pytest.approx(16 * 0.998 * 230, rel=1e-2)
    assert session.wakeups == 0 and session.faults == []
    store = Store(tmp_path / "voltpilot.db")  # reopened: the record outlives the controller
    [rec] = store.sessions()
    assert rec.stop_reason == "ev_disconnected" and rec.energy_wh == pytest.approx(expected_wh,
                                                                                  rel=1e-3)
    kinds = [kind for _, kind, _ in store.events(rec.id)]
    assert kinds[:2] == ["plugged", "phase"] and kinds[-1] == "unplugged"
    assert "contactor_closed" in kinds and "contactor_opened" in kinds
    store.close()


def test_limit_change_mid_session_reaches_the_pwm_at_once(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        await rig.until(rig.t + 5)
        assert rig.plant.meter_sample is not None
        assert rig.plant.meter_sample.current_a[0] == pytest.approx(16.0)
        rig.limits.submit(Limit.of(LimitSource.OCPP_TX, "operator", amps=10))
        assert rig.plant.duty == 16.6  # applied in the same turn of the loop
        binding = rig.connector.limit.binding
        assert binding is not None and binding.source is LimitSource.OCPP_TX
        await rig.until(rig.t + 3)  # the car follows within its reaction time (2 s)
        assert rig.plant.meter_sample.current_a[0] == pytest.approx(9.96)
        rig.limits.withdraw(LimitSource.OCPP_TX)
        assert rig.plant.duty == 53.3
        await rig.until(rig.t + 3)
        assert rig.plant.meter_sample.current_a[0] == pytest.approx(16.0)
        assert rig.plant.contactor_closed and rig.phase is Phase.CHARGING

    Rig.run(tmp_path, scenario)


def test_a_limit_ends_at_its_valid_until_not_at_the_next_tick(tmp_path: Path) -> None:
    """A VPP activation until a settlement boundary, or an OCPP schedule's end, must release
    at its time: the connector wakes for it instead of waiting for its next periodic step."""
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        await rig.until(rig.t + 5.05)
        until = rig.clock.now() + 0.3  # well inside one tick (1 s on the sim board)
        rig.limits.submit(Limit.of(LimitSource.VPP, "activation", amps=8, valid_until=until))
        assert rig.plant.duty == 13.3
        duties: list[tuple[float, float]] = []
        while rig.clock.now() < until + 0.2:
            duties.append((rig.clock.now(), rig.plant.duty))
            await asyncio.sleep(0.01)
        released = [t for t, duty in duties if duty == 53.3]
        assert released and released[0] - until < 0.02

    Rig.run(tmp_path, scenario)


def test_pause_below_minimum_and_resume(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.limits.submit(Limit.of(LimitSource.GRID_14A, "dimmed to zero", amps=0))
        assert rig.plant.output.value == "x1"
        took = await rig.wait_for(lambda: not rig.plant.contactor_closed, 6.5)
        assert took <= 2.1  # the car opened S2 after its 2 s reaction; we opened at once
        assert (rig.phase, rig.connector.state.suspend) == (
            Phase.PAUSED_EVSE, SuspendReason.LIMIT_BELOW_MINIMUM)
        session = rig.connector.session
        assert session is not None and session.status is SessionStatus.SUSPENDED_EVSE
        await rig.until(rig.t + 30)
        rig.limits.withdraw(LimitSource.GRID_14A)
        await rig.wait_for(lambda: rig.plant.contactor_closed, 5.0)
        assert rig.phase is Phase.CHARGING and session.status is SessionStatus.CHARGING

    rig = Rig.run(tmp_path, scenario)
    assert len(rig.close_commands) == 2


def test_non_resuming_car_is_woken_up(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging("sleepy_3p")
        rig.limits.submit(Limit.of(LimitSource.PRICE, "expensive hour", amps=0))
        await rig.wait_for(lambda: not rig.plant.contactor_closed, 6.5)
        await rig.until(rig.t + 20)
        assert rig.plant.ev is not None and rig.plant.ev.asleep
        rig.limits.withdraw(LimitSource.PRICE)
        resumed_at = rig.t
        await rig.until(rig.t + 25)
        assert not rig.plant.contactor_closed  # it really does not resume by itself
        took = await rig.wait_for(lambda: rig.plant.contactor_closed, 60.0)
        # 30 s of PWM in B, then F 4 s, X1 0.75 s, PWM, and the car's 2 s reaction
        assert rig.t - resumed_at == pytest.approx(30 + 4 + 0.75 + 2, abs=0.2)
        assert took > 0
        assert rig.connector.state.wakeups_total == 1

    rig = Rig.run(tmp_path, scenario)
    [session] = rig.finished
    assert session.wakeups == 1


def test_wakeup_that_fails_reports_the_car_not_responding(tmp_path: Path) -> None:
    stubborn = PROFILES["sleepy_3p"].with_overrides({"wake_f_s": 5.0})  # needs more than 4 s F

    async def scenario(rig: Rig) -> None:
        rig.plant.plug(stubborn)
        await rig.wait_for(lambda: rig.plant.contactor_closed, 5.0)
        rig.limits.submit(Limit.of(LimitSource.PRICE, "expensive hour", amps=0))
        await rig.until(rig.t + 15)
        rig.limits.withdraw(LimitSource.PRICE)
        await rig.until(rig.t + 30 + 4.75 + 10 + 1)
        assert (rig.phase, rig.connector.state.suspend) == (
            Phase.PAUSED_EV, SuspendReason.EV_NOT_RESPONDING)
        assert rig.connector.state.wakeups_total == 1

    Rig.run(tmp_path, scenario)


def test_ev_stop_c_to_b_opens_the_contactor_at_once(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        await rig.until(rig.t + 3)
        stopped_at = rig.clock.now()
        rig.plant.ev_stop()
        await rig.wait_for(lambda: not rig.plant.contactor_closed, 0.1, step_s=0.001)
        assert rig.open_commands[-1] - stopped_at <= 0.1
        assert rig.phase is Phase.PAUSED_EV

    Rig.run(tmp_path, scenario)


FAULTS = [
    # (what to do to the plant, the fault code, the most time allowed to an open command)
    ("rcd_trip", FaultCode.RCD_TRIPPED, 0.1),
    ("cp_short", FaultCode.CP_SHORT, 0.1),
    ("pp_cut", FaultCode.PROXIMITY_FAULT, 1.0),
    ("overdraw", FaultCode.OVER_CURRENT, 7.0 + 1.0),
    ("hot", FaultCode.OVER_TEMPERATURE, 1.0),
    ("temp_sensor_lost", FaultCode.OVER_TEMPERATURE, 1.0),
    ("meter_silent", FaultCode.METER_LOST, 10.0 + 1.0),
    ("lock_fail", FaultCode.LOCK_FAILURE, 2.0),
]


@pytest.mark.parametrize(("injection", "code", "allowed_s"), FAULTS,
                         ids=[f[0] for f in FAULTS])
def test_fault_while_charging_opens_in_time(tmp_path: Path, injection: str, code: FaultCode,
                                            allowed_s: float) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        await rig.until(rig.t + 5)
        injected_at = rig.clock.now()
        if injection in ("cp_short", "overdraw"):
            rig.plant.set_quirk(Quirk(injection), True)
        elif injection == "hot":
            rig.plant.temperature_c = 90.0
        else:
            rig.plant.set_fault(PlantFault(injection), True)
        await rig.wait_for(lambda: not rig.plant.contactor_closed, allowed_s, step_s=0.01)
        assert rig.open_commands[-1] - injected_at <= allowed_s
        assert code in rig.connector.state.faults
        assert rig.phase is Phase.FAULT
        assert rig.plant.indicator is IndicatorState.FAULT
        await rig.until(rig.t + 30)
        assert not rig.plant.contactor_closed

    rig = Rig.run(tmp_path, scenario)
    [session] = rig.finished
    assert code in session.faults


@pytest.mark.parametrize(("quirk", "code"), [("missing_diode", FaultCode.DIODE_MISSING),
                                             ("ventilation",
                                              FaultCode.VENTILATION_NOT_AVAILABLE)])
def test_cars_that_must_not_charge_never_get_the_contactor(tmp_path: Path, quirk: str,
                                                           code: FaultCode) -> None:
    profile = PROFILES["compact_3p"].with_overrides({"quirks": [quirk]})

    async def scenario(rig: Rig) -> None:
        rig.plant.plug(profile)
        await rig.wait_for(lambda: code in rig.connector.state.faults, 10.0)
        await rig.until(rig.t + 60)
        assert code in rig.connector.state.faults
        assert rig.connector.view().iec in ("B1", "C1", "D1")  # X1: no offer until unplugged

    rig = Rig.run(tmp_path, scenario)
    assert rig.close_commands == []


def test_welded_contactor_is_detected_and_never_closes_again(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.plant.set_fault(PlantFault.CONTACTOR_WELD, True)
        rig.plant.ev_stop()
        await rig.wait_for(lambda: FaultCode.CONTACTOR_WELDED in rig.connector.state.faults,
                           1.5)
        assert rig.plant.contactor_closed  # the contacts really are stuck
        assert rig.plant.lock_state is LockState.LOCKED  # the socket may be live
        rig.plant.ev_resume()
        await rig.until(rig.t + 30)
        rig.plant.unplug()
        await rig.until(rig.t + 5)
        rig.plant.plug(PROFILES["compact_3p"])
        await rig.until(rig.t + 30)
        assert rig.phase is Phase.FAULT

    rig = Rig.run(tmp_path, scenario)
    assert len(rig.close_commands) == 1
    store = Store(tmp_path / "voltpilot.db")
    assert store.latched(1) == ["contactor_welded"]  # survives a restart
    store.close()


def test_rcd_self_test_failure_blocks_charging(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        rig.plant.set_fault(PlantFault.RCD_SELF_TEST_FAIL, True)
        rig.plant.plug(PROFILES["compact_3p"])
        await rig.wait_for(lambda: FaultCode.RCD_SELF_TEST_FAILED in rig.connector.state.faults,
                           2.0)
        await rig.until(rig.t + 20)

    rig = Rig.run(tmp_path, scenario)
    assert rig.close_commands == []


def test_manual_reset_after_an_rcd_trip(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.plant.set_fault(PlantFault.RCD_TRIP, True)
        await rig.until(rig.t + 1)
        rig.connector.reset_faults()
        assert FaultCode.RCD_TRIPPED in rig.connector.state.faults  # still leaking
        rig.plant.set_fault(PlantFault.RCD_TRIP, False)
        rig.connector.reset_faults()
        assert not rig.connector.state.faults
        await rig.wait_for(lambda: rig.plant.contactor_closed, 15.0)

    Rig.run(tmp_path, scenario)


def test_watchdog_opens_the_contactor_when_the_controller_hangs(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.connector._step_once = lambda: None  # type: ignore[method-assign]  # it hangs
        hung_at = rig.t
        took = await rig.wait_for(lambda: not rig.plant.contactor_closed, 6.0, step_s=0.1)
        assert rig.plant.watchdog.tripped and rig.t - hung_at <= 5.0 + 1.1 and took > 0

    Rig.run(tmp_path, scenario)


def test_derating_binds_as_thermal(tmp_path: Path) -> None:
    board = sim_board()

    async def scenario(rig: Rig) -> None:
        await rig.charging("fast_ac_3p")
        rig.plant.temperature_c = 77.5
        await rig.until(rig.t + 1.1)
        binding = rig.connector.limit.binding
        assert binding is not None and binding.source is LimitSource.THERMAL
        assert rig.connector.limit.amps == pytest.approx(19.0)
        assert rig.plant.duty == 31.6
        assert rig.phase is Phase.CHARGING

    Rig.run(tmp_path, scenario, board)


def test_a_failing_step_opens_the_contactor_and_recovers(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        meter = rig.hw.meter
        assert meter is not None
        real_read = meter.read

        def broken() -> None:
            raise OSError("meter bus error")

        meter.read = broken  # type: ignore[method-assign,assignment]
        failed_at = rig.t
        took = await rig.wait_for(lambda: not rig.plant.contactor_closed, 1.1)
        assert rig.plant.output.value == "f" and took <= 1.0
        await rig.until(rig.t + 3)
        assert not rig.plant.contactor_closed
        meter.read = real_read  # type: ignore[method-assign]
        # back to normal, after the reclose delay
        await rig.wait_for(lambda: rig.plant.contactor_closed, 12.0)
        assert rig.t - failed_at >= 10.0

    rig = Rig.run(tmp_path, scenario)
    assert len(rig.close_commands) == 2


def test_after_a_watchdog_trip_the_controller_takes_charge_again(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.connector._step_once = lambda: None  # type: ignore[method-assign]  # a 7 s stall
        await rig.until(rig.t + 7)
        assert rig.plant.watchdog.tripped and not rig.plant.contactor_closed
        del rig.connector._step_once  # the class's method again
        rig.connector.step()
        assert not rig.plant.watchdog.tripped
        await rig.wait_for(lambda: rig.plant.contactor_closed, 15.0)
        assert rig.phase is Phase.CHARGING

    Rig.run(tmp_path, scenario)


def test_a_real_stall_is_recovered_without_spurious_faults(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.clock.advance(6.0)  # the whole process stood still (swap, a long GC pause)
        rig.connector.step()
        assert not rig.connector.state.faults
        await rig.wait_for(lambda: rig.plant.contactor_closed, 15.0)
        assert not rig.connector.state.faults

    Rig.run(tmp_path, scenario)


def test_a_grid_dip_does_not_end_the_session(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.plant.set_grid((0.0, 0.0, 0.0), None)
        await rig.until(rig.t + 2)
        rig.plant.set_grid((230.0, 230.0, 230.0), None)
        await rig.until(rig.t + 2)
        assert not rig.connector.state.faults and rig.phase is Phase.CHARGING
        assert rig.plant.meter_sample is not None and rig.plant.meter_sample.total_power_w > 0

    Rig.run(tmp_path, scenario)


def test_a_car_that_paused_itself_is_not_woken_after_our_pause(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.plant.ev_stop()  # its driver stops it: the car goes to B by itself
        await rig.until(rig.t + 5)
        rig.limits.submit(Limit.of(LimitSource.PV_SURPLUS, "cloud", amps=0))
        await rig.until(rig.t + 20)
        rig.limits.withdraw(LimitSource.PV_SURPLUS)
        await rig.until(rig.t + 120)
        assert (rig.phase, rig.connector.state.suspend) == (Phase.PAUSED_EV,
                                                            SuspendReason.EV_PAUSED)
        assert rig.connector.state.wakeups_total == 0
        rig.plant.ev_resume()
        await rig.wait_for(lambda: rig.plant.contactor_closed, 15.0)

    Rig.run(tmp_path, scenario)


def test_over_current_stops_after_the_configured_time(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        await rig.until(rig.t + 3.3)
        rig.plant.set_quirk(Quirk.OVERDRAW, True)
        injected = rig.clock.now()
        await rig.wait_for(lambda: not rig.plant.contactor_closed, 10.0, step_s=0.001)
        # 7 s after the first meter sample that shows it (samples come every tick_s)
        assert 7.0 <= rig.open_commands[-1] - injected <= 7.0 + rig.board.timing.tick_s

    Rig.run(tmp_path, scenario)


def test_without_free_mode_charging_waits_for_authorization(tmp_path: Path) -> None:
    board = sim_board(charging={"free_mode": False})

    async def scenario(rig: Rig) -> None:
        rig.plant.plug(PROFILES["compact_3p"])
        await rig.until(rig.t + 30)
        assert (rig.phase, rig.connector.state.suspend) == (Phase.CONNECTED,
                                                            SuspendReason.NOT_AUTHORIZED)
        assert rig.connector.view().iec == "B1"
        rig.connector.authorize(True)
        await rig.wait_for(lambda: rig.plant.contactor_closed, 5.0)
        rig.connector.authorize(False)  # withdrawn: X1, the car stops, then we open
        await rig.wait_for(lambda: not rig.plant.contactor_closed, 6.5)
        assert rig.connector.state.suspend is SuspendReason.NOT_AUTHORIZED

    Rig.run(tmp_path, scenario, board)
