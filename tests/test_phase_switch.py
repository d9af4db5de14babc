"""1p/3p switching: the pure sequence with the pure state machine (phasebench), the board keys
that enable it, the LimitPort request and the plant's relay."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import sim_board
from phasebench import PhaseBench

from firmware.core.duty import PilotMode
from firmware.core.iec61851 import Phase, manual_reset
from firmware.core.limits import Limit, LimitSource, arbitrate
from firmware.core.phase_switch import (
    Abort,
    Outcome,
    PhaseEventKind,
    Refusal,
    Stage,
    energised_phases,
)
from firmware.core.reasons import FaultCode, SuspendReason
from firmware.evse.limit_port import LimitPort
from hal.board import Board, BoardError, Role, load_board
from hal.clock import VirtualClock
from hal.sim.ev import PROFILES, Output
from hal.sim.plant import Plant, PlantError, PlantFault

SWITCHING = sim_board(charging={"phase_switching": True})
T = SWITCHING.timing


def bench(board: Board = SWITCHING) -> PhaseBench:
    return PhaseBench(board)


def stage(b: PhaseBench) -> Stage:
    return b.switch.stage


def pilot(b: PhaseBench) -> PilotMode:
    assert b.last is not None
    return b.last.command.pilot.mode


def charging_on_three(b: PhaseBench) -> None:
    b.charging()
    b.step(T.contactor_min_reclose_s)  # long enough since the first closing


def switch_while_charging(b: PhaseBench, phases: int) -> float:
    """Ask for ``phases`` while charging; the car follows the pilot. Returns when it opened."""
    b.ask(phases)
    r = b.step()
    assert stage(b) is Stage.PAUSING
    assert r.command.pilot.mode is PilotMode.X1 and r.command.contactor  # car still in C
    assert (b.state.phase, b.state.suspend) == (Phase.PAUSED_EVSE, SuspendReason.PHASE_SWITCH)
    r = b.step(2.0, load="B")  # the car stops after its reaction time
    assert not r.command.contactor and stage(b) is Stage.WAITING_OPEN
    return b.now


# ---- the sequence ----------------------------------------------------------------------------


def test_three_to_one_while_charging_follows_the_sequence() -> None:
    b = bench()
    charging_on_three(b)
    opened_at = switch_while_charging(b, 1)
    b.step(T.weld_check_delay_s)
    assert stage(b) is Stage.DWELL and b.relay == 3
    b.step(T.phase_switch_dwell_s - T.weld_check_delay_s - 0.01)
    assert stage(b) is Stage.DWELL and not b.commands
    r = b.step(0.01)
    [cmd] = b.commands
    assert (cmd.at, cmd.phases, cmd.contacts_closed, cmd.commanded_closed) == (
        opened_at + T.phase_switch_dwell_s, 1, False, False)
    assert stage(b) is Stage.SWITCHING and b.switch.confirmed and b.switch.switches == 1
    assert r.command.pilot.mode is PilotMode.X1
    b.step(T.phase_switch_settle_s)
    assert stage(b) is Stage.RESUMING
    r = b.step()
    assert r.command.pilot.mode is PilotMode.PWM and not r.command.contactor
    b.step(2.0, load="C")
    r = b.settle()
    assert r.command.contactor and b.state.phase is Phase.CHARGING
    assert (b.switch.stage, b.switch.outcome) == (Stage.IDLE, Outcome.RESUMED)
    kinds = [e.kind for e in b.phase_events]
    assert kinds == [PhaseEventKind.STARTED, PhaseEventKind.SWITCHED, PhaseEventKind.FINISHED]
    assert b.events_of(PhaseEventKind.SWITCHED)[0].count == 1


def test_a_car_that_stays_in_c_is_opened_under_load_before_the_relay_moves() -> None:
    b = bench()
    charging_on_three(b)
    b.ask(1)
    b.step()
    r = b.run_for(T.power_off_under_load_s - 0.1, tick=0.1)
    assert r.command.contactor and not b.commands
    r = b.run_for(0.2, tick=0.1)
    assert not r.command.contactor
    opened_at = b.state.contactor_changed_at
    b.run_for(T.phase_switch_dwell_s + 0.2, tick=0.1)
    [cmd] = b.commands
    assert cmd.at >= opened_at + T.phase_switch_dwell_s and not cmd.contacts_closed


def test_a_fault_during_the_dwell_aborts_and_leaves_everything_open() -> None:
    b = bench()
    charging_on_three(b)
    switch_while_charging(b, 1)
    b.step(T.weld_check_delay_s)
    assert stage(b) is Stage.DWELL
    r = b.step(0.5, rcd_tripped=True)
    assert FaultCode.RCD_TRIPPED in b.state.faults and not r.command.contactor
    assert (b.switch.stage, b.switch.abort) == (Stage.IDLE, Abort.FAULT)
    assert b.events_of(PhaseEventKind.ABORTED)[0].abort is Abort.FAULT
    assert b.switch.refused is Refusal.FAULT
    r = b.run_for(30.0, tick=1.0)
    assert not b.commands and b.relay == 3 and not r.command.contactor
    # Once an operator has reset it, the request that is still standing is carried out.
    b.step(rcd_tripped=False)
    b.state = manual_reset(b.state)
    b.run_for(T.phase_switch_dwell_s + 1.0, tick=0.5)
    assert b.relay == 1 and b.switch.switches == 1


def test_a_request_during_a_fault_is_refused_and_nothing_moves() -> None:
    b = bench()
    charging_on_three(b)
    b.step(rcd_tripped=True)
    b.ask(1, "pv surplus low")
    b.run_for(120.0, tick=1.0)
    assert b.switch.refused is Refusal.FAULT and stage(b) is Stage.IDLE
    [refused] = b.events_of(PhaseEventKind.REFUSED)
    assert (refused.refusal, refused.target, refused.phases, refused.reason) == (
        Refusal.FAULT, 1, 3, "pv surplus low")
    assert not b.commands


def test_a_failed_request_is_not_retried_until_the_car_is_unplugged() -> None:
    b = bench()
    charging_on_three(b)
    b.relay_stuck = True
    switch_while_charging(b, 1)
    b.step(T.phase_switch_dwell_s)
    assert len(b.commands) == 1 and stage(b) is Stage.SWITCHING
    b.step(T.phase_relay_feedback_s)
    assert (b.switch.stage, b.switch.abort) == (Stage.IDLE, Abort.RELAY_NOT_FOLLOWING)
    assert b.switch.refused is Refusal.FAILED_BEFORE
    b.run_for(300.0, tick=5.0)
    assert len(b.commands) == 1 and b.switch.switches == 0
    b.relay_stuck = False
    b.step(load="A")
    b.run_for(2.0, tick=0.5)
    assert len(b.commands) == 2 and b.relay == 1  # no car: the relay moves at once


def test_the_board_default_is_restored_when_the_request_is_withdrawn() -> None:
    b = bench()
    b.ask(1)
    b.step()
    assert b.relay == 1 and b.switch.switches == 1  # no car, contactor never closed
    b.ask(None, "surplus back")
    b.step(T.phase_switch_min_interval_s - 1)
    assert b.switch.refused is Refusal.TOO_SOON and b.relay == 1
    b.step(1.0)
    assert b.relay == 3 and b.switch.refused is None and b.switch.switches == 2
    assert b.events_of(PhaseEventKind.STARTED)[-1].reason == "surplus back"


def test_a_relay_found_on_one_phase_at_start_goes_to_the_board_default() -> None:
    b = bench()
    b.relay = 1  # a bistable relay keeps its position through a restart
    b.step()
    assert b.relay == 3
    assert b.events_of(PhaseEventKind.STARTED)[0].reason == "board default"


def test_a_changed_wish_before_the_relay_moves_cancels_and_charging_resumes() -> None:
    b = bench()
    charging_on_three(b)
    switch_while_charging(b, 1)
    b.step(1.0)
    b.ask(3)
    b.step()
    assert stage(b) is Stage.RESUMING
    b.step(T.contactor_min_reclose_s, load="C")
    b.settle()
    assert b.state.phase is Phase.CHARGING
    assert (b.switch.stage, b.switch.outcome) == (Stage.IDLE, Outcome.CANCELLED)
    assert not b.commands and b.switch.switches == 0


def test_state_f_during_the_dwell_only_with_the_contactor_open() -> None:
    b = bench(sim_board(charging={"phase_switching": True, "phase_switch_pause": "f"}))
    charging_on_three(b)
    switch_while_charging(b, 1)
    b.step(T.weld_check_delay_s)
    assert stage(b) is Stage.DWELL
    assert pilot(b) is PilotMode.F and not b.state.contactor
    b.step(T.phase_switch_dwell_s)
    assert pilot(b) is PilotMode.X1 and b.relay == 1
    for step in b.history:
        if step.command.pilot.mode is PilotMode.F:
            assert not step.command.contactor


def test_a_welded_contactor_never_lets_the_relay_move() -> None:
    b = bench()
    charging_on_three(b)
    b.welded = True
    switch_while_charging(b, 1)
    b.run_for(30.0, tick=0.1)
    assert FaultCode.CONTACTOR_WELDED in b.state.faults
    assert b.switch.abort in (Abort.FAULT, Abort.CONTACTOR_NOT_OPENING)
    assert not b.commands and b.relay == 3


def test_a_second_switch_waits_for_the_minimum_interval() -> None:
    b = bench()
    b.step(load="B")
    b.ask(1)
    b.settle()
    assert b.relay == 1
    first = b.commands[0].at
    b.ask(3)
    b.run_for(30.0, tick=1.0)
    assert b.switch.refused is Refusal.TOO_SOON and b.relay == 1
    b.run_for(T.phase_switch_min_interval_s - 30.0 + T.phase_switch_dwell_s, tick=0.5)
    assert b.relay == 3 and b.commands[1].at >= first + T.phase_switch_min_interval_s


@pytest.mark.parametrize(("board", "ask", "refusal"), [
    (sim_board(charging={"phase_switching": False}), 1, Refusal.DISABLED),
    (SWITCHING, 2, Refusal.UNSUPPORTED_PHASES),
    (SWITCHING, 0, Refusal.UNSUPPORTED_PHASES),
])
def test_requests_that_cannot_be_carried_out_are_refused(board: Board, ask: int,
                                                         refusal: Refusal) -> None:
    b = bench(board)
    charging_on_three(b)
    b.ask(ask)
    r = b.run_for(120.0, tick=1.0)
    assert b.switch.refused is refusal and not b.commands
    assert r.command.contactor and b.state.phase is Phase.CHARGING  # charging goes on


def test_a_relay_feedback_that_is_no_phase_count_refuses_and_counts_as_three() -> None:
    b = bench()
    b.relay_feedback = 2
    b.ask(1)
    b.step(load="B")
    assert b.switch.refused is Refusal.RELAY_UNKNOWN and not b.commands
    assert energised_phases(2, SWITCHING) == 3
    assert energised_phases(None, SWITCHING) == 3
    assert energised_phases(1, SWITCHING) == 1


def test_a_switch_with_the_car_in_b_still_pauses_the_pilot_first() -> None:
    b = bench()
    b.step(load="B")
    r = b.settle()
    assert r.command.pilot.mode is PilotMode.PWM
    b.ask(1)
    b.step()
    [cmd] = b.commands
    # The relay moved in a round whose state machine already showed the hold.
    held = [h for h in b.history if h.state.suspend is SuspendReason.PHASE_SWITCH]
    assert held and held[0].command.pilot.mode is PilotMode.X1 and not cmd.contacts_closed
    assert b.switch.outcome is None and stage(b) is Stage.SWITCHING


# ---- the limit port ----------------------------------------------------------------------------


def test_request_phases_is_a_standing_request() -> None:
    port = LimitPort()
    calls: list[int] = []
    port.subscribe(lambda: calls.append(1))
    assert port.phase_request() is None
    port.request_phases(1, "pv surplus below 4.1 kW")
    first = port.phase_request()
    assert first is not None and (first.phases, first.serial) == (1, 1) and len(calls) == 1
    port.request_phases(1, "pv surplus below 3.9 kW")  # sent again each cycle: the same one
    again = port.phase_request()
    assert again is not None and again.serial == 1 and again.reason.endswith("3.9 kW")
    assert len(calls) == 1
    port.request_phases(None, "surplus back")
    last = port.phase_request()
    assert last is not None and (last.phases, last.serial) == (None, 2) and len(calls) == 2
    for bad in (1.0, True, "3"):
        with pytest.raises(ValueError, match="whole number"):
            port.request_phases(bad, "garbage")  # type: ignore[arg-type]
    assert port.phase_request() == last


def test_watts_are_converted_over_the_energised_phases() -> None:
    pv = Limit.of(LimitSource.PV_SURPLUS, "surplus", watts=3680.0, phases=1)
    assert arbitrate([pv], 0.0, phases=1, voltage_v=230.0).amps == pytest.approx(16.0)
    assert arbitrate([pv], 0.0, phases=3, voltage_v=230.0).amps == pytest.approx(16.0 / 3)


# ---- the board file ------------------------------------------------------------------------------

SIM_TOML = Path(__file__).resolve().parents[1] / "boards" / "sim" / "board.toml"


def board_error(tmp_path: Path, *edits: tuple[str, str]) -> str:
    text = SIM_TOML.read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "b" / "board.toml"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BoardError) as info:
        load_board(str(path))
    message = str(info.value)
    assert str(path) in message
    return message


# The sim board ships with switching on (the energy manager's site asks for it).
ON = ("phase_switching = true", "phase_switching = true")
OFF = ("phase_switching = true", "phase_switching = false")


@pytest.mark.parametrize(("edits", "fragments"), [
    ((ON, ("phases = 3", "phases = 1"), ('phase_switch = "sim"', 'phase_switch = "none"')),
     ("[charging] phase_switching", "expected false", "phases = 1")),
    ((ON, ('phase_switch = "sim"', 'phase_switch = "none"')),
     ("[charging] phase_switching", "expected false", "[roles] phase_switch")),
    ((ON, ("hlc = false", "hlc = true")),
     ("[charging] phase_switching", "hlc = true", "basic charging")),
    ((OFF, ("phases = 3", "phases = 1")),
     ("[roles] phase_switch", 'expected "none"', "phases = 1")),
])
def test_board_refuses_phase_switching_it_cannot_do(tmp_path: Path,
                                                    edits: tuple[tuple[str, str], ...],
                                                    fragments: tuple[str, ...]) -> None:
    message = board_error(tmp_path, *edits)
    for fragment in fragments:
        assert fragment in message, message


def test_a_board_with_switching_on_loads(tmp_path: Path) -> None:
    text = SIM_TOML.read_text(encoding="utf-8").replace(*ON).replace(
        "[timing]\ntick_s = 1.0", '[timing]\ntick_s = 1.0\nphase_switch_dwell_s = 8.0')
    path = tmp_path / "b" / "board.toml"
    path.parent.mkdir()
    path.write_text(text + '\n', encoding="utf-8")
    board = load_board(str(path))
    assert board.charging.phase_switching and board.charging.phase_switch_pause == "x1"
    assert board.timing.phase_switch_dwell_s == 8.0 and board.has(Role.PHASE_SWITCH)
    assert load_board("sim").charging.phase_switching  # the EMS's site asks for it


# ---- the plant's relay ---------------------------------------------------------------------------


def charging_plant(profile: str, relay: int = 3) -> tuple[Plant, VirtualClock]:
    """A plant whose car draws 16 A per phase on ``relay`` energised phases."""
    clock = VirtualClock()
    p = Plant(clock=clock)
    p.drive_phase_relay(relay)
    p.plug(PROFILES[profile])
    p.drive_pilot(Output.PWM, 26.7)  # 16 A
    clock.advance(5.0)
    p.drive_contactor(True)
    clock.advance(5.0)
    p.advance()
    return p, clock


def test_the_plant_energises_the_relays_phases_and_counts_switches_under_load() -> None:
    p, _ = charging_plant("compact_3p")
    assert p.meter_sample is not None and p.meter_sample.current_a == (16.0, 16.0, 16.0)
    p.drive_phase_relay(1)  # under load: what must never happen
    assert p.switched_under_load == 1 and p.energised_phases() == 1
    assert p.meter_sample.current_a == (16.0, 0.0, 0.0)
    p.drive_contactor(False)
    p.drive_phase_relay(3)
    assert (p.switched_under_load, p.relay_switches) == (1, 2)
    assert p.snapshot()["phase_relay"] == {"phases": 3, "switches": 2, "switched_under_load": 1}
    with pytest.raises(PlantError):
        p.drive_phase_relay(2)


def test_a_stuck_phase_relay_does_not_move() -> None:
    p = Plant(clock=VirtualClock())
    p.set_fault(PlantFault.PHASE_RELAY_STUCK, True)
    p.drive_phase_relay(1)
    assert p.energised_phases() == 3 and p.relay_switches == 0
    p.plug(PROFILES["compact_3p"])
    p.drive_contactor(True)
    p.drive_phase_relay(1)  # asked under load: counted even though it does not move
    assert p.switched_under_load == 1 and p.energised_phases() == 3


def test_a_single_phase_car_draws_on_one_phase_whatever_the_relay() -> None:
    p, _ = charging_plant("phev_1p", relay=1)
    assert p.meter_sample is not None and p.meter_sample.current_a == (16.0, 0.0, 0.0)
