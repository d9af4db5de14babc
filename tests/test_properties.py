"""Properties that hold for ANY sequence of inputs, checked with hypothesis on the pure core:
the contactor is never closed in A, B, E or F; every duty is legal; the contactor closes only in
C/D with no fault and a limit at or above the minimum; any fault means the contactor is open."""

from __future__ import annotations

from typing import Any

from conftest import sim_board
from corebench import CoreBench
from hypothesis import given
from hypothesis import strategies as st

from firmware.core.cp import CpState
from firmware.core.duty import PilotMode, is_legal_duty
from firmware.core.iec61851 import hardware_took_over, manual_reset
from firmware.core.reasons import FaultCode
from firmware.core.safety import RcdTest
from hal.board import Role

loads = st.fixed_dictionaries({"load": st.sampled_from(["A", "B", "C", "B", "C", "D", "E",
                                                         "14", "-5", "7.5", "4.5", "10.5"])})
nothing: st.SearchStrategy[dict[str, Any]] = st.just({})
# Weighted toward plain CP changes and quiet steps, so that sequences reach charging and leave
# it in every way; the rest are faults and limit changes arriving in between.
changes = st.one_of(
    loads, loads, loads, nothing, nothing, nothing,
    st.fixed_dictionaries({"limit": st.floats(0.0, 90.0)}),
    st.fixed_dictionaries({"authorized": st.booleans()}),
    st.fixed_dictionaries({"diode": st.booleans()}),
    st.fixed_dictionaries({"rcd_tripped": st.booleans()}),
    st.fixed_dictionaries({"rcd_test": st.sampled_from(list(RcdTest))}),
    st.fixed_dictionaries({"welded": st.booleans()}),
    st.fixed_dictionaries({"no_close": st.booleans()}),
    st.fixed_dictionaries({"lock_fails": st.booleans()}),
    st.fixed_dictionaries({"pp_fault": st.booleans()}),
    st.fixed_dictionaries({"temperature_c": st.one_of(st.none(), st.floats(0.0, 110.0))}),
    st.fixed_dictionaries({"current_a": st.one_of(st.none(), st.floats(0.0, 60.0))}),
    st.fixed_dictionaries({"meter_silent": st.booleans()}),
    st.fixed_dictionaries({"reset": st.just(True)}),
    st.fixed_dictionaries({"took_over": st.just(True)}),  # fail-safe or watchdog in the shell
)
steps = st.lists(st.tuples(st.sampled_from([0.0, 0.01, 0.1, 0.3, 0.75, 1.0, 4.0, 6.0, 11.0,
                                            31.0]), changes), min_size=1, max_size=60)
boards = st.sampled_from([
    sim_board(), sim_board(charging={"ventilation": True}), sim_board(charging={"hlc": True}),
    sim_board(charging={"min_current_a": 8.0}),
    sim_board(timing={"min_pause_s": 0.0, "contactor_min_reclose_s": 0.0}),
])


def apply(bench: CoreBench, change: dict[str, Any]) -> None:
    for key, value in change.items():
        if key == "limit":
            bench.limit_amps(value)
        elif key == "meter_silent":
            bench.meter_silent_since = bench.now if value else None
        elif key == "reset":
            bench.state = manual_reset(bench.state)
        elif key == "took_over":
            bench.state = hardware_took_over(bench.state, bench.now)
        else:
            setattr(bench, key, value)


@given(boards, st.sampled_from(["idle", "plugged", "charging"]), steps)
def test_safety_invariants_hold_for_any_input_sequence(board: Any, start: str,
                                                        seq: Any) -> None:
    bench = CoreBench(board)
    if start == "plugged":
        bench.step(load="B")
    elif start == "charging":
        bench.charging()
    locked_before = False
    t = board.timing
    for dt, change in seq:
        apply(bench, change)
        before = bench.state
        closed_before = before.contactor  # a take-over opens it outside a step
        lock_held = bench.last is not None and bench.last.command.lock and not bench.lock_fails
        r = bench.step(dt)
        s, cmd, now = r.state, r.command, bench.now
        limit_a = bench.inputs().limit.amps
        if cmd.pilot.mode is PilotMode.PWM:
            assert is_legal_duty(cmd.pilot.duty), cmd.pilot
        if cmd.contactor:
            assert s.cp in (CpState.C, CpState.D), (r.iec, s)
            assert not s.faults, s.faults
            assert cmd.pilot.mode is not PilotMode.F
            if s.cp is CpState.D:
                assert board.charging.ventilation
            if limit_a < board.charging.min_current_a:  # only the sequence 10.2 grace
                assert cmd.pilot.mode is PilotMode.X1 and now < s.pwm_off_at + \
                    t.power_off_under_load_s
        if cmd.contactor and not closed_before:
            assert s.pilot.mode is PilotMode.PWM
            assert limit_a >= board.charging.min_current_a
            assert s.diode_ok
            assert before.pilot.mode is not PilotMode.F  # the CP was read in this step
            assert now >= before.contactor_changed_at + t.contactor_min_reclose_s
            if board.has(Role.LOCK):
                assert lock_held
        if s.faults:
            assert not cmd.contactor
        may_be_live = (cmd.contactor or FaultCode.CONTACTOR_WELDED in s.faults
                       or now < s.contactor_changed_at + t.weld_check_delay_s)
        if board.has(Role.LOCK) and locked_before and may_be_live:
            assert cmd.lock, "lock released while the socket may be live"
        locked_before = cmd.lock
