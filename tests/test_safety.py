"""The safety supervisor's rules, each on a perfect board: raised when and only when they should,
the contactor open in the same step, and cleared only by their recovery rule."""

from __future__ import annotations

import pytest
from conftest import sim_board
from corebench import CoreBench

from firmware.core.duty import STATE_F, X1
from firmware.core.iec61851 import Phase, manual_reset
from firmware.core.limits import LimitSource
from firmware.core.reasons import FAULT_RULES, FaultCode, Recovery
from firmware.core.safety import RcdTest, thermal_limit
from hal.board import Board


@pytest.fixture
def bench(board: Board) -> CoreBench:
    return CoreBench(board)


def test_every_fault_has_a_recovery_rule() -> None:
    assert set(FAULT_RULES) == set(FaultCode)


def test_overcurrent_within_tolerance_is_fine(bench: CoreBench) -> None:
    bench.charging()  # offered 31.98 A: the ceiling is 31.98 * 1.1 + 0.5 = 35.68 A
    r = bench.run_for(30.0, tick=0.5) if bench.step(current_a=35.6) else None
    assert r is not None and not r.state.faults and r.command.contactor


def test_overcurrent_longer_than_the_timeout_stops(bench: CoreBench) -> None:
    bench.charging()
    bench.step(0.5, current_a=36.0)
    r = bench.run_for(6.9, tick=0.1)
    assert not r.state.faults and r.command.contactor
    r = bench.step(0.2)
    assert r.state.faults == {FaultCode.OVER_CURRENT} and r.command.contactor is False
    assert r.command.pilot == STATE_F


def test_a_short_overcurrent_restarts_the_timer(bench: CoreBench) -> None:
    bench.charging()
    bench.step(0.5, current_a=40.0)
    bench.run_for(5.0, tick=0.5)
    bench.step(0.5, current_a=20.0)
    bench.step(0.5, current_a=40.0)
    r = bench.run_for(6.0, tick=0.5)
    assert not r.state.faults


def test_the_car_may_take_the_old_offer_while_it_follows_a_cut(bench: CoreBench) -> None:
    bench.charging()
    bench.step(1.0, current_a=31.9)
    bench.limit_amps(10.0)
    bench.step(0.1)
    r = bench.run_for(4.9, tick=0.1)  # ev_reaction_s = 5: the old 32 A offer still counts
    assert not r.state.faults
    r = bench.run_for(7.5, tick=0.1)  # then 10 A + 10 % applies, for 7 s
    assert r.state.faults == {FaultCode.OVER_CURRENT}


def test_overcurrent_needs_a_new_plug(bench: CoreBench) -> None:
    bench.charging()
    bench.step(0.5, current_a=50.0)
    bench.run_for(8.0, tick=0.5)
    r = bench.run_for(60.0, tick=1.0) if bench.step(current_a=0.0) else None
    assert r is not None and FaultCode.OVER_CURRENT in r.state.faults
    r = bench.step(1.0, load="A")
    assert not r.state.faults


def test_rcd_trip_opens_at_once_and_latches(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(0.01, rcd_tripped=True)
    assert r.state.faults == {FaultCode.RCD_TRIPPED} and r.command.contactor is False
    assert FAULT_RULES[FaultCode.RCD_TRIPPED].recovery is Recovery.MANUAL_RESET
    r = bench.step(1.0, rcd_tripped=False, load="A")
    assert FaultCode.RCD_TRIPPED in r.state.faults


def test_rcd_self_test_failure_is_a_latched_fault(bench: CoreBench) -> None:
    bench.rcd_test = RcdTest.FAILED
    r = bench.step(load="B")
    assert r.state.faults == {FaultCode.RCD_SELF_TEST_FAILED} and not r.command.contactor


def test_welded_contactor_is_found_after_the_open_command(bench: CoreBench) -> None:
    bench.charging()
    bench.welded = True
    r = bench.step(1.0, load="B")
    assert r.command.contactor is False and not r.state.faults  # command given, wait 1 s
    r = bench.step(0.5)
    assert not r.state.faults
    r = bench.step(0.5)
    assert r.state.faults == {FaultCode.CONTACTOR_WELDED}
    assert r.command.lock  # the socket may be live: keep the plug locked
    r = bench.step(1.0, load="C")
    assert r.command.contactor is False
    r = bench.step(5.0, load="A")
    assert FaultCode.CONTACTOR_WELDED in r.state.faults  # needs service, not a replug


def test_contactor_closed_at_start_is_found_welded(bench: CoreBench) -> None:
    r = bench.step(stuck_closed=True)
    assert r.state.faults == {FaultCode.CONTACTOR_WELDED} and not r.command.contactor


def test_contactor_that_does_not_close_is_a_fault(bench: CoreBench) -> None:
    bench.no_close = True
    bench.step(load="B")
    bench.settle()
    bench.step(1.0, load="C")
    r = bench.step(0.4)
    assert not r.state.faults
    r = bench.step(0.2)
    assert r.state.faults == {FaultCode.CONTACTOR_NOT_CLOSING} and not r.command.contactor


def test_lock_that_does_not_lock_prevents_charging(bench: CoreBench) -> None:
    bench.lock_fails = True
    r = bench.step(load="B")
    r = bench.step(0.5, load="C")
    assert r.command.contactor is False and r.command.pilot == X1
    r = bench.step(0.6)
    assert r.state.faults == {FaultCode.LOCK_FAILURE}
    assert not r.command.lock  # released: the user must be able to take the cable away


def test_lock_lost_while_charging_stops(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(0.1, lock_fails=True)
    r = bench.step(1.1)
    assert FaultCode.LOCK_FAILURE in r.state.faults and not r.command.contactor


def test_proximity_fault_stops(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(0.1, pp_fault=True)
    assert r.state.faults == {FaultCode.PROXIMITY_FAULT} and not r.command.contactor


def test_meter_silent_while_charging_is_a_fault_until_it_answers(bench: CoreBench) -> None:
    bench.charging()
    bench.meter_silent_since = bench.now
    r = bench.run_for(10.0, tick=0.5)
    assert not r.state.faults
    r = bench.step(0.6)
    assert r.state.faults == {FaultCode.METER_LOST} and not r.command.contactor
    r = bench.run_for(60.0, tick=0.5)
    assert r.state.faults == {FaultCode.METER_LOST}  # no reclosing into an unsupervised charge
    assert not any(step.command.contactor for step in bench.history[-100:])
    r = bench.step(1.0, meter_silent_since=None)
    assert not r.state.faults


def test_manual_reset_does_not_forgive_a_replug_fault(bench: CoreBench) -> None:
    bench.charging()
    bench.step(0.5, current_a=50.0)
    bench.run_for(8.0, tick=0.5)
    bench.step(0.5, rcd_tripped=True)
    assert bench.state.faults == {FaultCode.RCD_TRIPPED, FaultCode.OVER_CURRENT}
    bench.state = manual_reset(bench.state)
    r = bench.step(0.5, rcd_tripped=False, current_a=0.0)
    assert r.state.faults == {FaultCode.OVER_CURRENT}


def test_lock_holds_while_the_weld_check_is_pending(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(0.5, rcd_tripped=True)  # a fault that would release the plug
    assert not r.command.contactor and r.command.lock
    r = bench.step(0.5)
    assert r.command.lock
    r = bench.step(0.5)  # 1 s after the open command: not welded, now it may go
    assert not r.command.lock


def test_unplugged_with_welded_contacts_keeps_the_socket_locked(bench: CoreBench) -> None:
    bench.charging()
    bench.welded = True
    r = bench.step(1.0, load="A")  # unplugged under load, and the contacts stick
    assert r.command.lock
    r = bench.run_for(5.0, tick=0.5)
    assert FaultCode.CONTACTOR_WELDED in r.state.faults and r.command.lock


def test_grid_loss_is_not_a_contactor_fault(bench: CoreBench) -> None:
    from hal.roles import ContactorFeedback
    bench.charging()
    inputs = bench.inputs()
    lost = type(inputs)(**{**{f: getattr(inputs, f) for f in inputs.__slots__},
                           "feedback": ContactorFeedback(aux_closed=True,
                                                         voltage_present=False)})
    from firmware.core import iec61851 as core
    r = core.step(bench.state, lost, bench.now + 2.0, bench.board)
    assert not r.state.faults and r.command.contactor


def test_over_temperature_stops_and_resumes_below_resume_c(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(1.0, temperature_c=85.0)
    assert r.state.faults == {FaultCode.OVER_TEMPERATURE} and not r.command.contactor
    r = bench.step(1.0, temperature_c=70.0)
    assert FaultCode.OVER_TEMPERATURE in r.state.faults  # hysteresis down to resume_c
    r = bench.step(1.0, temperature_c=64.0)
    assert not r.state.faults and r.state.phase is not Phase.FAULT


def test_silent_temperature_sensor_stops(bench: CoreBench) -> None:
    bench.charging()
    r = bench.step(1.0, temperature_c=None)
    assert r.state.faults == {FaultCode.OVER_TEMPERATURE}


def test_thermal_derating_is_linear_between_start_and_stop() -> None:
    board = sim_board()
    assert thermal_limit(70.0, board) is None
    half = thermal_limit(77.5, board)
    assert half is not None and half.source is LimitSource.THERMAL
    assert half.amps == pytest.approx(19.0)  # halfway between 32 A and 6 A
    top = thermal_limit(90.0, board)
    assert top is not None and top.amps == 6.0


def test_two_cuts_in_a_row_still_allow_the_first_offer(bench: CoreBench) -> None:
    bench.charging()
    bench.step(1.0, current_a=31.9)  # the car draws the first offer, 32 A
    bench.limit_amps(16.0)
    bench.step(0.1)
    bench.limit_amps(10.0)
    r = bench.run_for(4.8, tick=0.1)  # within 5 s of the cuts the car may still draw 32 A
    assert not r.state.faults and r.state.overcurrent_since is None
