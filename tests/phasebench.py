"""The pure charging state machine and the phase-switch sequence, composed as the connector
composes them, on a perfect board with a 1p/3p relay. Time moves only when the test moves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from corebench import CoreBench

from firmware.core import iec61851 as core
from firmware.core import phase_switch
from firmware.core.duty import PilotMode
from firmware.core.iec61851 import Inputs, Phase, Step
from firmware.core.phase_switch import (
    Hold,
    PhaseEvent,
    PhaseEventKind,
    PhaseInputs,
    PhaseRequest,
    PhaseSwitchState,
)
from firmware.core.reasons import SuspendReason

# A step that hands over to the other machine is repeated at once, as the connector does; the
# two settle in a handful of rounds.
MAX_ROUNDS = 8


@dataclass(frozen=True, slots=True)
class RelayCommand:
    at: float
    phases: int
    contacts_closed: bool       # the main contactor's contacts at that moment
    commanded_closed: bool      # the state machine's command at that moment


@dataclass
class PhaseBench(CoreBench):
    switch: PhaseSwitchState = field(default_factory=PhaseSwitchState)
    relay: int = 3                 # where the relay is; its feedback reports this
    relay_stuck: bool = False      # it does not move when commanded
    relay_feedback: int | None = None  # overrides the feedback (a broken sensor)
    request: PhaseRequest | None = None
    car_follows: bool = False      # a plugged car asks for power (C) on PWM, stops (B) on X1/F
    serial: int = 0
    commands: list[RelayCommand] = field(default_factory=list)
    phase_events: list[PhaseEvent] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    # Every round of the state machine with the hold it was given and whether the contacts
    # were closed before it.
    held: list[tuple[Hold | None, bool, Step]] = field(default_factory=list)

    def ask(self, phases: int | None, reason: str = "test") -> None:
        """As LimitPort.request_phases: only a different count is a new request."""
        if self.request is not None and self.request.phases == phases:
            return
        self.serial += 1
        self.request = PhaseRequest(phases, reason, self.serial)

    def feedback(self) -> int | None:
        return self.relay if self.relay_feedback is None else self.relay_feedback

    def contacts_closed(self) -> bool:
        closed = self.state.contactor or self.stuck_closed or (
            self.welded and self._ever_closed())
        return closed and not self.no_close

    def inputs(self) -> Inputs:
        return replace(super().inputs(), hold=phase_switch.hold(self.switch, self.board))

    def step(self, dt: float = 0.0, **changes: Any) -> Step:
        self.now += dt
        for key, value in changes.items():
            setattr(self, key, value)
        if self.car_follows and self.load in ("B", "C") and self.last is not None:
            self.load = "C" if self.last.command.pilot.mode is PilotMode.PWM else "B"
        for rounds in range(1, MAX_ROUNDS + 1):
            inp = self.inputs()
            closed_before = self.state.contactor
            result = core.step(self.state, inp, self.now, self.board)
            self.held.append((inp.hold, closed_before, result))
            self.state, self.last = result.state, result
            self.history.append(result)
            fb = inp.feedback
            s = result.state
            before = phase_switch.hold(self.switch, self.board)
            ps = phase_switch.step(self.switch, PhaseInputs(
                request=self.request, relay=self.feedback(), contactor=result.command.contactor,
                contactor_changed_at=s.contactor_changed_at,
                contactor_reads_open=fb.aux_closed is not True and fb.voltage_present is not True,
                held=s.suspend is SuspendReason.PHASE_SWITCH or not s.plugged,
                charging=s.phase is Phase.CHARGING, plugged=s.plugged, faulted=bool(s.faults)),
                self.now, self.board)
            if ps.relay is not None:
                self.commands.append(RelayCommand(self.now, ps.relay, self.contacts_closed(),
                                                  result.command.contactor))
                if not self.relay_stuck:
                    self.relay = ps.relay
            self.switch = ps.state
            self.phase_events.extend(ps.events)
            if ps.relay is None and phase_switch.hold(ps.state, self.board) == before:
                self.rounds.append(rounds)
                return result
        raise AssertionError(f"no settled step after {MAX_ROUNDS} rounds: {self.switch}")

    def events_of(self, kind: PhaseEventKind) -> list[PhaseEvent]:
        return [e for e in self.phase_events if e.kind is kind]
