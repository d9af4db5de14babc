"""1p/3p phase switching: the relay that energises one or three phases moves only with the
contactor open.

Some cars' on-board chargers do not survive a phase change under load (EVerest's
``switch_3ph1ph_cp_state`` warning), and a relay that breaks load wears out. So a switch is a
pause: the pilot goes to X1, the car stops drawing and leaves C (or the under-load timeout opens
the contactor, as for any pause), the contactor opens and its weld check passes, a dwell passes
(in state F if the board says so), the relay switches and its feedback is checked, a settle time
passes in X1, and then PWM is offered again for the car to ask for power on the new phases.

``step(state, inputs, now, board)`` is pure, like ``iec61851.step``. It never drives the pilot or
the contactor: while a switch is under way it asks the charging state machine for a hold
(``hold(state, board)``), which pauses charging as a low limit does, so every rule about when the
contactor may close stays in one place. It commands the relay only when the contactor is
commanded open, reads open, and opened at least the dwell and the weld-check delay ago.

A request stands until it is replaced, like a limit. Whatever stands in its way (a fault, the
minimum interval between switches) is a typed refusal, shown and re-judged at every step. A fault
during a switch aborts it (the state machine has opened everything) and the request waits, refused,
until the fault clears. A switch that failed by itself (the contactor did not open, the relay did
not follow) is not retried for the same request until the car is unplugged, so a stuck relay
cannot make the session flap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

from hal.board import Board, Role


class Stage(Enum):
    IDLE = "idle"
    PAUSING = "pausing"              # X1: the car is asked to stop drawing
    WAITING_OPEN = "waiting_open"    # contactor commanded open: feedback and weld check
    DWELL = "dwell"                  # contactor open; the car's charger sees the supply gone
    SWITCHING = "switching"          # relay commanded: its feedback, then the settle time
    RESUMING = "resuming"            # hold released: PWM again, the car may ask for power


class Hold(Enum):
    """What the sequence asks of the pilot while it holds charging."""

    X1 = "x1"
    F = "f"


class Refusal(Enum):
    """Why a standing request is not being carried out now."""

    DISABLED = "phase_switching_disabled"    # the board does not switch phases
    UNSUPPORTED_PHASES = "unsupported_phases"  # only 1 or the board's phases
    RELAY_UNKNOWN = "relay_feedback_invalid"  # the relay's feedback is not a phase count
    FAULT = "fault"
    FAILED_BEFORE = "failed_before"          # this request failed once; replug to retry
    TOO_SOON = "too_soon"                    # phase_switch_min_interval_s not over yet


class Abort(Enum):
    """Why a switch that had started was given up (everything is left open)."""

    FAULT = "fault"
    CONTACTOR_NOT_OPENING = "contactor_not_opening"
    RELAY_NOT_FOLLOWING = "relay_not_following"


class Outcome(Enum):
    SWITCHED = "switched"          # the relay moved; no charging to resume
    RESUMED = "resumed"            # the relay moved and the car draws again
    NOT_RESUMED = "not_resumed"    # the relay moved; the car did not ask for power in time
    CANCELLED = "cancelled"        # the request changed before the relay moved
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class PhaseRequest:
    """A wish for ``phases`` phases (None: the board's own count). ``serial`` changes only when
    the phase count asked for changes, so a request sent again every cycle is the same one."""

    phases: int | None
    reason: str
    serial: int


@dataclass(frozen=True, slots=True)
class PhaseInputs:
    request: PhaseRequest | None
    relay: int | None              # phases the relay's feedback says are energised
    contactor: bool                # commanded closed by the charging state machine
    contactor_changed_at: float
    contactor_reads_open: bool     # no feedback (aux contact, voltage after it) says closed
    held: bool                     # the state machine shows our hold (or no car is plugged)
    charging: bool
    plugged: bool
    faulted: bool


class PhaseEventKind(Enum):
    STARTED = "phase_switch_started"
    REFUSED = "phase_switch_refused"
    SWITCHED = "phases_switched"
    FINISHED = "phase_switch_finished"
    ABORTED = "phase_switch_aborted"


@dataclass(frozen=True, slots=True)
class PhaseEvent:
    kind: PhaseEventKind
    at: float
    target: int | None = None
    phases: int | None = None
    refusal: Refusal | None = None
    abort: Abort | None = None
    outcome: Outcome | None = None
    count: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PhaseSwitchState:
    stage: Stage = Stage.IDLE
    since: float = -math.inf
    target: int | None = None
    serial: int | None = None
    reason: str | None = None
    was_charging: bool = False
    switched_at: float = -math.inf      # the relay was last commanded
    confirmed: bool = False             # its feedback followed
    switches: int = 0                   # relay moves confirmed since start-up
    refused: Refusal | None = None
    failed_serial: int | None = None
    plugged: bool = False
    outcome: Outcome | None = None      # how the last switch ended
    abort: Abort | None = None


@dataclass(frozen=True, slots=True)
class PhaseStep:
    state: PhaseSwitchState
    relay: int | None                   # command the relay to this many phases now
    events: tuple[PhaseEvent, ...]
    wake_at: float | None


BOARD_DEFAULT = "board default"
BEFORE_RELAY = (Stage.PAUSING, Stage.WAITING_OPEN, Stage.DWELL)


def energised_phases(feedback: int | None, board: Board) -> int:
    """Phases to convert watts over. A feedback that is no phase count counts as all the
    board's phases: fewer amps per phase, never more power than a limit allows."""
    return feedback if feedback in (1, board.ratings.phases) else board.ratings.phases


def wanted_phases(request: PhaseRequest | None, board: Board) -> int:
    if request is None or request.phases is None:
        return board.ratings.phases
    return request.phases


def hold(s: PhaseSwitchState, board: Board) -> Hold | None:
    """What the charging state machine must show while the sequence holds charging."""
    if s.stage is Stage.DWELL and board.charging.phase_switch_pause == "f":
        return Hold.F
    if s.stage in (Stage.PAUSING, Stage.WAITING_OPEN, Stage.DWELL, Stage.SWITCHING):
        return Hold.X1
    return None


def step(s: PhaseSwitchState, inp: PhaseInputs, now: float, board: Board) -> PhaseStep:
    events: list[PhaseEvent] = []
    deadlines: list[float] = []
    if s.plugged != inp.plugged:
        # An unplugged car takes its failed request with it: a new car, a new chance.
        s = replace(s, plugged=inp.plugged,
                    failed_serial=s.failed_serial if inp.plugged else None)
    relay: int | None = None
    # Each pass moves one stage on; a stage that is done at once (the contactor was already
    # open) hands over in the same step. Stages only move forward, so this ends.
    for _ in range(len(Stage) + 1):
        nxt, command = _advance(s, inp, now, board, events, deadlines)
        if command is not None:
            relay = command
        if nxt is s:  # every change is a new value
            break
        s = nxt
    future = [d for d in deadlines if d > now]
    return PhaseStep(s, relay, tuple(events), min(future) if future else None)


def _advance(s: PhaseSwitchState, inp: PhaseInputs, now: float, board: Board,
             events: list[PhaseEvent], deadlines: list[float]
             ) -> tuple[PhaseSwitchState, int | None]:
    t = board.timing
    if s.stage is Stage.IDLE:
        return _idle(s, inp, now, board, events, deadlines), None
    if inp.faulted:
        return _aborted(s, Abort.FAULT, inp, now, board, events), None
    if s.stage in BEFORE_RELAY and wanted_phases(inp.request, board) != s.target:
        # The wish changed before the relay moved: nothing was switched, charging resumes.
        return replace(s, stage=Stage.RESUMING, since=now, outcome=Outcome.CANCELLED), None
    opened_at = inp.contactor_changed_at
    is_open = not inp.contactor and inp.contactor_reads_open

    if s.stage is Stage.PAUSING:
        if inp.held and not inp.contactor:
            return replace(s, stage=Stage.WAITING_OPEN, since=now), None
        # The state machine opens under load power_off_under_load_s after the pilot left PWM.
        give_up = s.since + t.power_off_under_load_s + t.tick_s
        if now >= give_up:
            return _aborted(s, Abort.CONTACTOR_NOT_OPENING, inp, now, board, events), None
        deadlines.append(give_up)
        return s, None

    if s.stage is Stage.WAITING_OPEN:
        checked = opened_at + t.weld_check_delay_s
        if inp.contactor or (now >= checked and not inp.contactor_reads_open):
            return _aborted(s, Abort.CONTACTOR_NOT_OPENING, inp, now, board, events), None
        if now >= checked:
            return replace(s, stage=Stage.DWELL, since=now), None
        deadlines.append(checked)
        return s, None

    if s.stage is Stage.DWELL:
        if not is_open:
            return _aborted(s, Abort.CONTACTOR_NOT_OPENING, inp, now, board, events), None
        switch_at = opened_at + max(t.phase_switch_dwell_s, t.weld_check_delay_s)
        if now < switch_at:
            deadlines.append(switch_at)
            return s, None
        assert s.target is not None
        return replace(s, stage=Stage.SWITCHING, since=now, switched_at=now,
                       confirmed=False), s.target

    if s.stage is Stage.SWITCHING:
        if not is_open:
            return _aborted(s, Abort.CONTACTOR_NOT_OPENING, inp, now, board, events), None
        if not s.confirmed:
            if inp.relay != s.target:
                give_up = s.switched_at + t.phase_relay_feedback_s
                if now >= give_up:
                    return _aborted(s, Abort.RELAY_NOT_FOLLOWING, inp, now, board, events), None
                deadlines.append(give_up)
                return s, None
            s = replace(s, confirmed=True, switches=s.switches + 1)
            events.append(PhaseEvent(PhaseEventKind.SWITCHED, now, target=s.target,
                                     phases=s.target, count=s.switches, reason=s.reason))
        resume_at = s.switched_at + t.phase_switch_settle_s
        if now < resume_at:
            deadlines.append(resume_at)
            return s, None
        return replace(s, stage=Stage.RESUMING, since=now, outcome=None), None

    # RESUMING: the hold is released; the state machine offers PWM and closes when the car asks.
    cancelled = s.outcome is Outcome.CANCELLED
    if inp.charging:
        return _finished(s, Outcome.CANCELLED if cancelled else Outcome.RESUMED, inp, now,
                         board, events), None
    if not s.was_charging or not inp.plugged:
        return _finished(s, Outcome.CANCELLED if cancelled else Outcome.SWITCHED, inp, now,
                         board, events), None
    give_up = s.since + t.phase_switch_resume_s
    if now >= give_up:
        return _finished(s, Outcome.CANCELLED if cancelled else Outcome.NOT_RESUMED, inp, now,
                         board, events), None
    deadlines.append(give_up)
    return s, None


def _idle(s: PhaseSwitchState, inp: PhaseInputs, now: float, board: Board,
          events: list[PhaseEvent], deadlines: list[float]) -> PhaseSwitchState:
    target = wanted_phases(inp.request, board)
    current = energised_phases(inp.relay, board)
    refusal: Refusal | None = None
    if target != current:
        refusal = _refusal(s, inp, target, now, board)
        if refusal is Refusal.TOO_SOON:
            deadlines.append(s.switched_at + board.timing.phase_switch_min_interval_s)
    if refusal is not s.refused:
        if refusal is not None:
            events.append(PhaseEvent(PhaseEventKind.REFUSED, now, target=target, phases=current,
                                     refusal=refusal,
                                     reason=inp.request.reason if inp.request else None))
        s = replace(s, refused=refusal)
    if target == current or refusal is not None:
        return s
    reason = inp.request.reason if inp.request is not None else BOARD_DEFAULT
    events.append(PhaseEvent(PhaseEventKind.STARTED, now, target=target, phases=current,
                             reason=reason))
    return replace(s, stage=Stage.PAUSING, since=now, target=target,
                   serial=_serial(inp.request), reason=reason, was_charging=inp.charging,
                   confirmed=False, outcome=None, abort=None)


def _serial(request: PhaseRequest | None) -> int:
    return 0 if request is None else request.serial


def _refusal(s: PhaseSwitchState, inp: PhaseInputs, target: int, now: float,
             board: Board) -> Refusal | None:
    if not board.charging.phase_switching or not board.has(Role.PHASE_SWITCH):
        return Refusal.DISABLED
    if target not in (1, board.ratings.phases):
        return Refusal.UNSUPPORTED_PHASES
    if inp.relay not in (1, board.ratings.phases):
        return Refusal.RELAY_UNKNOWN
    if inp.faulted:
        return Refusal.FAULT
    if _serial(inp.request) == s.failed_serial:
        return Refusal.FAILED_BEFORE
    if now < s.switched_at + board.timing.phase_switch_min_interval_s:
        return Refusal.TOO_SOON
    return None


def _aborted(s: PhaseSwitchState, why: Abort, inp: PhaseInputs, now: float, board: Board,
             events: list[PhaseEvent]) -> PhaseSwitchState:
    events.append(PhaseEvent(PhaseEventKind.ABORTED, now, target=s.target,
                             phases=energised_phases(inp.relay, board), abort=why,
                             reason=s.reason))
    # A fault is refused on its own while it lasts; a switch that failed by itself (the
    # contactor, the relay) would fail again, so it waits for a new request or a new car.
    failed = s.failed_serial if why is Abort.FAULT else s.serial
    return replace(s, stage=Stage.IDLE, since=now, outcome=Outcome.ABORTED, abort=why,
                   failed_serial=failed)


def _finished(s: PhaseSwitchState, outcome: Outcome, inp: PhaseInputs, now: float,
              board: Board, events: list[PhaseEvent]) -> PhaseSwitchState:
    events.append(PhaseEvent(PhaseEventKind.FINISHED, now, target=s.target,
                             phases=energised_phases(inp.relay, board), outcome=outcome,
                             count=s.switches, reason=s.reason))
    return replace(s, stage=Stage.IDLE, since=now, outcome=outcome, abort=None)
