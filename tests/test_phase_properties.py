"""Properties of 1p/3p switching that hold for ANY sequence of inputs, checked with hypothesis on
the pure state machine and the pure sequence composed as the connector composes them: the relay
never moves while the contactor is closed (nor before it has been open the dwell and the weld
check), the contactor never closes while the sequence holds charging, state F never shows with
the contactor closed, a fault leaves no sequence running, and the two machines always settle."""

from __future__ import annotations

from typing import Any

from conftest import sim_board
from hypothesis import given
from hypothesis import strategies as st
from phasebench import PhaseBench

from firmware.core.cp import CpState
from firmware.core.duty import PilotMode
from firmware.core.iec61851 import hardware_took_over, manual_reset
from firmware.core.phase_switch import Stage

loads = st.fixed_dictionaries({"load": st.sampled_from(["A", "B", "C", "B", "C", "E"])})
nothing: st.SearchStrategy[dict[str, Any]] = st.just({})
asks = st.fixed_dictionaries({"ask": st.sampled_from([1, 3, None, 1, 3, 2])})
changes = st.one_of(
    loads, loads, asks, asks, asks, nothing, nothing, nothing,
    st.fixed_dictionaries({"car_follows": st.booleans()}),
    st.fixed_dictionaries({"limit": st.floats(0.0, 40.0)}),
    st.fixed_dictionaries({"rcd_tripped": st.booleans()}),
    st.fixed_dictionaries({"welded": st.booleans()}),
    st.fixed_dictionaries({"stuck_closed": st.booleans()}),
    st.fixed_dictionaries({"no_close": st.booleans()}),
    st.fixed_dictionaries({"relay_stuck": st.booleans()}),
    st.fixed_dictionaries({"relay_feedback": st.sampled_from([None, None, 1, 2, 3])}),
    st.fixed_dictionaries({"authorized": st.booleans()}),
    st.fixed_dictionaries({"reset": st.just(True)}),
    st.fixed_dictionaries({"took_over": st.just(True)}),
)
steps = st.lists(st.tuples(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0, 2.0, 3.0, 6.0, 11.0,
                                            61.0]), changes), min_size=1, max_size=80)
boards = st.sampled_from([
    sim_board(charging={"phase_switching": True}),
    sim_board(charging={"phase_switching": True, "phase_switch_pause": "f"}),
    sim_board(charging={"phase_switching": True},
              timing={"phase_switch_dwell_s": 2.0, "phase_switch_settle_s": 1.0,
                      "phase_switch_min_interval_s": 0.0, "contactor_min_reclose_s": 0.0,
                      "min_pause_s": 0.0, "phase_relay_feedback_s": 0.05}),
    sim_board(),
])


def apply(bench: PhaseBench, change: dict[str, Any]) -> None:
    for key, value in change.items():
        if key == "limit":
            bench.limit_amps(value)
        elif key == "ask":
            bench.ask(value)
        elif key == "reset":
            bench.state = manual_reset(bench.state)
        elif key == "took_over":
            bench.state = hardware_took_over(bench.state, bench.now)
        else:
            setattr(bench, key, value)


@given(boards, st.sampled_from(["idle", "plugged", "charging", "switching"]), st.booleans(),
       st.floats(0.0, 20.0), steps)
def test_the_relay_never_moves_under_load_for_any_input_sequence(board: Any, start: str,
                                                                  follows: bool, into: float,
                                                                  seq: Any) -> None:
    bench = PhaseBench(board, car_follows=follows)
    if start == "plugged":
        bench.step(load="B")
    elif start in ("charging", "switching"):
        bench.charging()
    if start == "switching":  # anywhere in a switch from three phases to one
        bench.car_follows = True
        bench.ask(1)
        bench.run_for(into, tick=0.5)
        bench.car_follows = follows
    t = board.timing
    for dt, change in seq:
        apply(bench, change)
        seen_commands, seen_rounds = len(bench.commands), len(bench.held)
        bench.step(dt)
        for move in bench.commands[seen_commands:]:
            assert not move.contacts_closed and not move.commanded_closed, move
            assert board.charging.phase_switching
            opened = bench.state.contactor_changed_at
            assert move.at >= opened + max(t.phase_switch_dwell_s, t.weld_check_delay_s), (
                move, opened)
        for hold, closed_before, result in bench.held[seen_rounds:]:
            cmd = result.command
            if cmd.contactor and not closed_before:
                assert hold is None, "the contactor closed while a phase switch held charging"
            if cmd.pilot.mode is PilotMode.F:
                assert not cmd.contactor
            if cmd.contactor:
                assert result.state.cp in (CpState.C, CpState.D) and not result.state.faults
        s = bench.switch
        if bench.state.faults:
            assert s.stage is Stage.IDLE
        if s.stage in (Stage.DWELL, Stage.SWITCHING):
            assert not bench.state.contactor and not bench.contacts_closed()
        assert s.switches <= len(bench.commands)


calm = st.one_of(
    asks, asks, asks, nothing, nothing,
    st.fixed_dictionaries({"limit": st.sampled_from([0.0, 6.0, 10.0, 16.0, 32.0])}),
    st.fixed_dictionaries({"load": st.sampled_from(["A", "B", "B"])}),
    st.fixed_dictionaries({"rcd_tripped": st.just(True)}),
    st.fixed_dictionaries({"took_over": st.just(True)}),
)
calm_steps = st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 6.0, 11.0, 61.0]),
                                calm), min_size=1, max_size=60)


@given(boards, calm_steps, st.sampled_from([1, 3, None]))
def test_with_a_well_behaved_car_every_request_is_carried_out(board: Any, seq: Any,
                                                              last: int | None) -> None:
    """Liveness: whatever happened before, once faults are cleared and the car follows the
    pilot, the last request is carried out and the car charges again; nothing is left stuck
    in a stage. Along the way the relay never moves under load."""
    bench = PhaseBench(board, car_follows=True)
    bench.charging()
    for dt, change in seq:
        apply(bench, change)
        bench.step(dt)
    bench.ask(last)
    bench.limit_amps(16.0)
    bench.step(load="B", rcd_tripped=False)
    bench.state = manual_reset(bench.state)
    t = board.timing
    bench.run_for(t.phase_switch_min_interval_s + t.power_off_under_load_s
                  + t.phase_switch_dwell_s + t.phase_switch_settle_s
                  + t.contactor_min_reclose_s + 10.0, tick=0.5)
    assert all(not c.contacts_closed and not c.commanded_closed for c in bench.commands)
    wanted = 3 if last is None else last
    if board.charging.phase_switching:
        assert bench.relay == wanted, bench.switch
    else:
        assert bench.relay == 3 and not bench.commands
    assert bench.switch.stage is Stage.IDLE, bench.switch
    assert bench.last is not None and bench.last.command.contactor, bench.state
