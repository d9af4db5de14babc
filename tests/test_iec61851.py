"""Every transition of the IEC 61851-1 state machine, driven step by step on a perfect board."""

from __future__ import annotations

import pytest
from conftest import sim_board
from corebench import CoreBench

from firmware.core.duty import HLC_DUTY, STATE_F, X1, PilotMode
from firmware.core.iec61851 import ChargerState, EventKind, Phase, manual_reset
from firmware.core.reasons import FaultCode, StopReason, SuspendReason
from firmware.core.safety import RcdTest
from hal.board import Board
from hal.roles import IndicatorState


def kinds(step: object) -> list[EventKind]:
    return [e.kind for e in step.events]  # type: ignore[attr-defined]


@pytest.fixture
def bench(board: Board) -> CoreBench:
    return CoreBench(board)


def test_starts_idle_in_a1(bench: CoreBench) -> None:
    r = bench.step()
    assert (r.iec, r.state.phase, r.command.pilot, r.command.contactor) == ("A1", Phase.IDLE, X1,
                                                                            False)
    assert r.command.indicator is IndicatorState.IDLE and not r.command.lock


def test_a_to_b_plugs_in_locks_then_offers_pwm(bench: CoreBench) -> None:
    r = bench.step(load="B")
    assert EventKind.PLUGGED in kinds(r)
    assert (r.state.phase, r.state.suspend, r.iec) == (Phase.CONNECTED, SuspendReason.LOCKING,
                                                       "B1")
    assert r.command.lock
    r = bench.step()  # the lock reports locked
    assert (r.state.phase, r.iec) == (Phase.READY, "B2")
    assert r.command.pilot.mode is PilotMode.PWM and r.command.pilot.duty == 53.3  # 32 A
    assert r.state.offered_a == pytest.approx(31.98)


def test_not_authorized_stays_b1(bench: CoreBench) -> None:
    bench.authorized = False
    r = bench.settle(dt=0.0) if bench.step(load="B") else None
    assert r is not None
    assert (r.state.phase, r.state.suspend, r.iec) == (
        Phase.CONNECTED, SuspendReason.NOT_AUTHORIZED, "B1")
    r = bench.step(authorized=True)
    assert r.iec == "B2"


def test_waits_for_the_rcd_self_test(bench: CoreBench) -> None:
    bench.rcd_test = RcdTest.NOT_RUN
    bench.step(load="B")
    r = bench.step(rcd_test=RcdTest.PENDING)
    assert (r.state.phase, r.state.suspend) == (Phase.CONNECTED, SuspendReason.RCD_SELF_TEST)
    r = bench.step(rcd_test=RcdTest.PASSED)
    assert r.state.phase is Phase.READY


def test_b2_to_c2_closes_the_contactor(bench: CoreBench) -> None:
    bench.step(load="B")
    bench.settle()
    r = bench.step(load="C")
    assert (r.state.phase, r.iec, r.command.contactor) == (Phase.CHARGING, "C2", True)
    assert EventKind.CONTACTOR_CLOSED in kinds(r)
    assert r.command.indicator is IndicatorState.CHARGING


def test_c_without_pwm_never_closes(bench: CoreBench) -> None:
    bench.authorized = False
    bench.step(load="B")
    r = bench.settle(dt=1.0)
    r = bench.step(1.0, load="C")
    assert (r.iec, r.command.contactor) == ("C1", False)


def test_c2_to_b2_opens_in_the_same_step(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(0.01, load="B")
    assert r.command.contactor is False and EventKind.CONTACTOR_OPENED in kinds(r)
    assert (r.state.phase, r.state.suspend, r.iec) == (Phase.PAUSED_EV, SuspendReason.EV_PAUSED,
                                                       "B2")


def test_paused_ev_resumes_after_the_reclose_interval(bench: CoreBench) -> None:
    bench.charging()
    bench.step(1.0, load="B")
    r = bench.step(1.0, load="C")
    assert (r.state.phase, r.state.suspend, r.command.contactor) == (
        Phase.READY, SuspendReason.RECLOSE_DELAY, False)
    assert r.wake_at == pytest.approx(bench.now - 1.0 + 10.0)
    r = bench.step(r.wake_at - bench.now)  # type: ignore[operator]
    assert (r.state.phase, r.command.contactor) == (Phase.CHARGING, True)


def test_unplug_under_load(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(5.0, load="A")
    assert r.command.contactor is False
    unplugged = [e for e in r.events if e.kind is EventKind.UNPLUGGED]
    assert unplugged and unplugged[0].stop is StopReason.EV_DISCONNECTED_UNDER_LOAD
    assert (r.state.phase, r.iec, r.command.pilot) == (Phase.IDLE, "A1", X1)


def test_unplug_from_b(bench: CoreBench) -> None:
    bench.step(load="B")
    bench.settle()
    r = bench.step(2.0, load="A")
    unplugged = [e for e in r.events if e.kind is EventKind.UNPLUGGED]
    assert unplugged and unplugged[0].stop is StopReason.EV_DISCONNECTED
    assert not r.command.lock and r.state.phase is Phase.IDLE


def test_limit_below_minimum_pauses_c2_to_c1_then_opens_on_b(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(1.0, limits=[])
    bench.limit_amps(5.0)
    r = bench.step(0.5)
    assert (r.state.phase, r.state.suspend, r.command.pilot, r.iec) == (
        Phase.PAUSED_EVSE, SuspendReason.LIMIT_BELOW_MINIMUM, X1, "C1")
    assert r.command.contactor is True  # the car gets time to stop drawing
    r = bench.step(2.0, load="B")
    assert (r.command.contactor, r.iec) == (False, "B1")


def test_car_staying_in_c1_is_switched_off_under_load_after_6s(bench: CoreBench) -> None:
    bench.charging()
    bench.limit_amps(0.0)
    r = bench.step(1.0)
    paused_at = bench.now
    assert r.wake_at == pytest.approx(paused_at + 6.0)
    r = bench.step(5.9)
    assert r.command.contactor is True
    r = bench.step(0.1)
    assert r.command.contactor is False and r.iec == "C1"


def test_resume_after_the_minimum_pause(bench: CoreBench) -> None:
    bench.charging()
    bench.limit_amps(3.0)
    bench.step(1.0)
    bench.step(2.0, load="B")
    bench.limit_amps(16.0)
    r = bench.step(1.0)
    assert r.state.phase is Phase.PAUSED_EVSE  # less than min_pause_s (10 s) after pausing
    assert r.wake_at == pytest.approx(bench.now - 3.0 + 10.0)
    r = bench.step(7.0)
    assert (r.state.phase, r.iec, r.command.pilot.duty) == (Phase.READY, "B2", 26.6)
    r = bench.step(2.0, load="C")
    assert r.state.phase is Phase.CHARGING


def test_wakeup_sequence_f_then_x1_then_pwm(bench: CoreBench) -> None:
    bench.step(load="B")
    r = bench.settle()
    assert r.state.phase is Phase.READY
    r = bench.step(29.9)
    assert r.state.phase is Phase.READY
    r = bench.step(0.1)
    attempts = [e for e in r.events if e.kind is EventKind.WAKEUP_ATTEMPT]
    assert attempts and attempts[0].attempt == 1
    assert (r.state.phase, r.command.pilot, r.iec) == (Phase.WAKEUP, STATE_F, "F")
    assert r.state.suspend is SuspendReason.WAKING_EV
    r = bench.step(3.9)
    assert r.command.pilot == STATE_F
    r = bench.step(0.1)
    assert r.command.pilot == X1 and r.iec == "B1"
    r = bench.step(0.7)
    assert r.command.pilot == X1
    r = bench.step(0.05)
    assert r.command.pilot.mode is PilotMode.PWM and r.state.phase is Phase.READY
    r = bench.step(1.0, load="C")
    assert r.state.phase is Phase.CHARGING and r.state.wakeups_total == 1


def test_wakeup_gives_up_after_the_allowed_attempts(board: Board) -> None:
    bench = CoreBench(sim_board(timing={"wakeup_max_attempts": 2}))
    bench.step(load="B")
    bench.settle()
    bench.run_for(30.0 + 4.0 + 0.75 + 10.0 + 4.0 + 0.75 + 10.0 + 0.5, tick=0.05)
    assert bench.state.wakeups_total == 2
    assert (bench.state.phase, bench.state.suspend) == (Phase.PAUSED_EV,
                                                        SuspendReason.EV_NOT_RESPONDING)
    assert bench.last is not None and bench.last.command.pilot.mode is PilotMode.PWM
    r = bench.step(60.0)
    assert bench.state.wakeups_total == 2 and r.state.phase is Phase.PAUSED_EV
    r = bench.step(1.0, load="C")
    assert r.state.phase is Phase.CHARGING


def test_no_wakeup_when_disabled() -> None:
    bench = CoreBench(sim_board(timing={"wakeup": False}))
    bench.step(load="B")
    bench.settle()
    r = bench.run_for(120.0, tick=1.0)
    assert r.state.phase is Phase.READY and r.state.wakeups_total == 0


def test_no_wakeup_after_the_car_paused_itself(bench: CoreBench) -> None:
    bench.charging()
    bench.step(1.0, load="B")
    r = bench.run_for(120.0, tick=1.0)
    assert (r.state.phase, r.state.wakeups_total) == (Phase.PAUSED_EV, 0)


def test_state_d_refused_without_ventilation(bench: CoreBench) -> None:
    bench.step(load="B")
    bench.settle()
    r = bench.step(1.0, load="D")
    assert r.state.faults == {FaultCode.VENTILATION_NOT_AVAILABLE}
    assert (r.state.phase, r.command.contactor, r.command.pilot) == (Phase.FAULT, False,
                                                                     STATE_F)
    r = bench.step(0.3)
    assert r.command.pilot == X1  # F for 300 ms, then X1 so we can watch the car again
    r = bench.step(3.0, load="B")
    assert r.state.faults == {FaultCode.VENTILATION_NOT_AVAILABLE}  # it would only ask again
    r = bench.step(1.0, load="A")
    assert not r.state.faults and r.state.phase is Phase.IDLE


def test_state_d_charges_with_ventilation() -> None:
    bench = CoreBench(sim_board(charging={"ventilation": True}))
    bench.step(load="B")
    bench.settle()
    r = bench.step(1.0, load="D")
    assert (r.state.phase, r.iec, r.command.contactor) == (Phase.CHARGING, "D2", True)


def test_cp_short_is_state_e_fault_until_unplugged(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(1.0, load="E")
    assert FaultCode.CP_SHORT in r.state.faults and r.command.contactor is False
    r = bench.step(0.3)
    assert r.iec == "E" and r.command.pilot == X1
    r = bench.step(1.0, load="B")
    assert FaultCode.CP_SHORT in r.state.faults  # replug needed
    r = bench.step(1.0, load="A")
    assert not r.state.faults and r.state.phase is Phase.IDLE


@pytest.mark.parametrize("volts", ["14", "-5"])
def test_cp_voltage_outside_every_band_is_a_fault(bench: CoreBench, volts: str) -> None:
    bench.step(load="B")
    bench.settle()
    r = bench.step(1.0, load=volts)
    assert FaultCode.CP_INVALID in r.state.faults and r.iec == "F"
    r = bench.step(0.3)
    assert r.iec == "invalid" and r.command.pilot == X1


def test_missing_diode_goes_to_state_f_and_never_charges(bench: CoreBench) -> None:
    bench.diode = False
    bench.step(load="B")
    r = bench.settle()
    assert FaultCode.DIODE_MISSING in r.state.faults
    assert r.command.pilot == STATE_F and r.iec == "F"
    r = bench.step(1.0, load="C")
    assert r.command.contactor is False
    r = bench.step(1.0, load="A")
    assert FaultCode.DIODE_MISSING not in r.state.faults


def test_cp_is_not_read_while_driving_f(bench: CoreBench) -> None:
    bench.step(load="B")
    bench.settle()
    bench.step(1.0, load="D")  # ventilation fault: pilot F
    r = bench.step(0.1, load="A")  # the CP shows our −12 V; the unplug is seen after F
    assert r.command.pilot == STATE_F and r.state.plugged
    r = bench.step(0.2)
    r = bench.step(0.01)
    assert not r.state.plugged and r.state.phase is Phase.IDLE


def test_fault_while_charging_opens_at_once_and_shows_f(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(0.5, rcd_tripped=True)
    assert r.command.contactor is False and r.command.pilot == STATE_F
    assert r.command.indicator is IndicatorState.FAULT
    assert r.wake_at == pytest.approx(bench.now + 0.3)


def test_manual_reset_fault_survives_unplug_until_reset(bench: CoreBench) -> None:
    bench.charging()
    bench.step(0.5, rcd_tripped=True)
    bench.step(0.5, rcd_tripped=False)
    r = bench.step(1.0, load="A")
    assert r.state.faults == {FaultCode.RCD_TRIPPED} and r.state.phase is Phase.FAULT
    bench.state = manual_reset(bench.state)
    r = bench.step(0.1)
    assert not r.state.faults and r.state.phase is Phase.IDLE


def test_manual_reset_cannot_hide_a_live_fault(bench: CoreBench) -> None:
    bench.charging()
    bench.step(0.5, rcd_tripped=True)
    bench.state = manual_reset(bench.state)
    r = bench.step(0.1)
    assert FaultCode.RCD_TRIPPED in r.state.faults and r.command.contactor is False


def test_hlc_offers_five_percent() -> None:
    bench = CoreBench(sim_board(charging={"hlc": True}))
    bench.step(load="B")
    r = bench.settle()
    assert r.command.pilot.duty == HLC_DUTY and r.state.offered_a == 32.0


def test_limit_changes_move_the_duty_and_report_the_offer(bench: CoreBench) -> None:
    bench.charging()
    bench.limit_amps(16.0)
    r = bench.step(0.1)
    assert r.command.pilot.duty == 26.6
    offers = [e.amps for e in r.events if e.kind is EventKind.OFFER_CHANGED]
    assert offers == [pytest.approx(15.96)]
    bench.limit_amps(63.0)
    r = bench.step(0.1)
    assert r.command.pilot.duty == 53.3  # the board rating (32 A) still binds


def test_initial_state_holds_latched_faults(board: Board) -> None:
    bench = CoreBench(board, state=ChargerState(faults=frozenset({FaultCode.CONTACTOR_WELDED})))
    r = bench.step(load="B")
    assert r.state.phase is Phase.FAULT
    r = bench.run_for(5.0, tick=0.5)
    assert r.command.contactor is False and r.command.lock  # welded: keep the plug locked


@pytest.mark.parametrize(("load", "pilot_mode", "iec"), [
    ("A", PilotMode.X1, "A1"), ("B", PilotMode.X1, "B1"), ("B", PilotMode.PWM, "B2"),
    ("C", PilotMode.X1, "C1"), ("C", PilotMode.PWM, "C2"), ("D", PilotMode.PWM, "D2"),
])
def test_iec_state_names(load: str, pilot_mode: PilotMode, iec: str) -> None:
    from firmware.core.cp import CpState
    from firmware.core.duty import Pilot
    from firmware.core.iec61851 import iec_state
    pilot = Pilot(pilot_mode, 26.6) if pilot_mode is PilotMode.PWM else X1
    assert iec_state(CpState(load), pilot) == iec
