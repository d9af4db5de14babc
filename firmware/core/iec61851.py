"""The IEC 61851-1 charging state machine of one connector, as a pure function.

``step(state, inputs, now, board)`` returns the next state, what to drive (pilot, contactor,
lock, indicator), the events that happened and when the machine next needs to look even if no
input changes. No I/O, no asyncio: the same inputs at the same time give the same outputs, which
is what the property tests and the virtual-time scenarios rely on.

The IEC state name (A, B1, B2, C1, C2, D1, D2, E, F) is the car's CP state plus our pilot output
(1 = steady +12 V, 2 = PWM). The ``Phase`` is what the controller is doing about it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

from firmware.core.cp import CpState, classify, diode_present
from firmware.core.duty import (
    HLC_DUTY,
    STATE_F,
    X1,
    Pilot,
    PilotMode,
    current_for_duty,
    pwm_for_current,
)
from firmware.core.limits import EffectiveLimit
from firmware.core.phase_switch import Hold
from firmware.core.reasons import FAULT_RULES, FaultCode, Recovery, StopReason, SuspendReason
from firmware.core.safety import Observation, RcdTest, clears, supervise
from hal.board import Board, Role
from hal.roles import ContactorFeedback, CpReading, IndicatorState, LockState, MeterReading


class Phase(Enum):
    IDLE = "idle"                # no car (A)
    CONNECTED = "connected"      # car present, not allowed to charge yet: X1
    READY = "ready"              # PWM offered, waiting for the car to ask (B2)
    CHARGING = "charging"        # C2/D2 with the contactor closed
    PAUSED_EVSE = "paused_evse"  # limit below the minimum: X1
    PAUSED_EV = "paused_ev"      # PWM on, the car stays in B
    WAKEUP = "wakeup"            # F, then X1, then PWM again, for cars that do not resume
    FAULT = "fault"              # contactor open; F for a moment, then X1 until recovered


PLUGGED = (CpState.B, CpState.C, CpState.D)
POWER_REQUEST = (CpState.C, CpState.D)


@dataclass(frozen=True, slots=True)
class Inputs:
    cp: CpReading
    limit: EffectiveLimit
    authorized: bool
    feedback: ContactorFeedback
    rcd_tripped: bool = False
    rcd_test: RcdTest = RcdTest.NOT_RUN
    lock: LockState | None = None     # None: the board has no lock
    pp_fault: bool = False
    meter: MeterReading | None = None
    temperature_c: float | None = None
    # A phase switch holds charging (firmware/core/phase_switch.py): a pause like a low limit's.
    hold: Hold | None = None


class EventKind(Enum):
    PLUGGED = "plugged"
    UNPLUGGED = "unplugged"
    PHASE = "phase"
    CONTACTOR_CLOSED = "contactor_closed"
    CONTACTOR_OPENED = "contactor_opened"
    OFFER_CHANGED = "offer_changed"
    FAULT_RAISED = "fault_raised"
    FAULT_CLEARED = "fault_cleared"
    WAKEUP_ATTEMPT = "wakeup_attempt"


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    at: float
    phase: Phase | None = None
    suspend: SuspendReason | None = None
    fault: FaultCode | None = None
    stop: StopReason | None = None
    amps: float | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class ChargerState:
    phase: Phase = Phase.IDLE
    phase_since: float = -math.inf
    suspend: SuspendReason | None = None
    cp: CpState = CpState.A
    plugged: bool = False
    pilot: Pilot = X1
    pwm_off_at: float = -math.inf          # when the pilot last left PWM
    contactor: bool = False
    contactor_changed_at: float = -math.inf
    offered_a: float = 0.0
    # The highest offer of the last ev_reaction_s: a car may take that long to follow a cut.
    recent_offer_a: float = 0.0
    recent_offer_until: float = -math.inf
    faults: frozenset[FaultCode] = frozenset()
    fault_since: float = -math.inf
    overcurrent_since: float | None = None
    diode_ok: bool = False
    lock_requested_at: float | None = None
    offer_since: float = -math.inf         # PWM (re)offered while the car waits in B
    wakeups_this_offer: int = 0
    wakeups_total: int = 0
    # The car went C → B by itself (full, its timer, its driver): it is not woken up until it
    # asks for power again or is unplugged, whatever pauses we make in between.
    ev_paused: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    pilot: Pilot
    contactor: bool
    lock: bool
    indicator: IndicatorState


@dataclass(frozen=True, slots=True)
class Step:
    state: ChargerState
    command: Command
    events: tuple[Event, ...]
    iec: str
    wake_at: float | None = None


def iec_state(cp: CpState, pilot: Pilot) -> str:
    if pilot.mode is PilotMode.F:
        return "F"
    if cp in (CpState.A, CpState.B, CpState.C, CpState.D):
        return f"{cp.value}{'2' if pilot.mode is PilotMode.PWM else '1'}"
    return cp.value if cp is not CpState.INVALID else "invalid"


def step(s: ChargerState, inp: Inputs, now: float, board: Board) -> Step:
    events: list[Event] = []
    deadlines: list[float] = []
    observing = s.pilot.mode is not PilotMode.F
    cp = classify(inp.cp, s.cp) if observing else s.cp
    allowed_a = max(s.offered_a, s.recent_offer_a if now < s.recent_offer_until else 0.0)

    conditions, overcurrent_since, safety_due = supervise(
        Observation(cp=cp, cp_reading=inp.cp, pwm_on=s.pilot.mode is PilotMode.PWM,
                    observing_cp=observing, contactor_closed_cmd=s.contactor,
                    contactor_changed_at=s.contactor_changed_at, feedback=inp.feedback,
                    rcd_tripped=inp.rcd_tripped, rcd_test=inp.rcd_test, lock=inp.lock,
                    lock_requested_at=s.lock_requested_at, pp_fault=inp.pp_fault,
                    meter=inp.meter, allowed_a=allowed_a, temperature_c=inp.temperature_c),
        s.faults, s.overcurrent_since, now, board)
    plugged = s.plugged
    if observing and cp is CpState.A:
        plugged = False
    elif cp in PLUGGED:
        plugged = True
    if plugged and not s.plugged:
        events.append(Event(EventKind.PLUGGED, now))

    faults = frozenset(f for f in s.faults if not clears(f, conditions, cp, observing))
    for code in sorted(s.faults - faults, key=lambda c: c.value):
        events.append(Event(EventKind.FAULT_CLEARED, now, fault=code))
    for code in sorted(conditions - faults, key=lambda c: c.value):
        events.append(Event(EventKind.FAULT_RAISED, now, fault=code))
    faults |= conditions

    diode_ok = s.diode_ok or (observing and s.pilot.mode is PilotMode.PWM
                              and diode_present(inp.cp))
    if not plugged:
        diode_ok = False
    ev_paused = s.ev_paused and plugged and cp not in POWER_REQUEST

    t = board.timing
    if safety_due is not None:
        deadlines.append(safety_due)
    if inp.limit.changes_at is not None:
        deadlines.append(inp.limit.changes_at)
    phase, suspend, pilot, contactor = s.phase, s.suspend, s.pilot, False
    offer_since, wakeups = s.offer_since, s.wakeups_this_offer
    wakeups_total = s.wakeups_total
    fault_since = s.fault_since

    if faults:
        if s.phase is not Phase.FAULT:
            fault_since = now
        phase, suspend = Phase.FAULT, SuspendReason.FAULT
        hold_until = fault_since + t.state_f_after_fault_s
        pilot = STATE_F if now < hold_until else X1
        if now < hold_until:
            deadlines.append(hold_until)
    elif not plugged:
        phase, suspend, pilot = Phase.IDLE, None, X1
        wakeups_total = 0
    elif inp.hold is not None:
        # State F only once the contactor is open: with it closed, X1 and the under-load rule
        # below let the car stop drawing first.
        phase, suspend = Phase.PAUSED_EVSE, SuspendReason.PHASE_SWITCH
        pilot = STATE_F if inp.hold is Hold.F and not s.contactor else X1
    else:
        blocked = _blocked(inp, board)
        min_a = board.charging.min_current_a
        if blocked is not None:
            phase, suspend, pilot = Phase.CONNECTED, blocked, X1
        elif inp.limit.amps < min_a or (
                s.phase is Phase.PAUSED_EVSE and s.suspend is SuspendReason.LIMIT_BELOW_MINIMUM
                and now < s.phase_since + t.min_pause_s):
            if s.phase is not Phase.PAUSED_EVSE:
                phase = Phase.PAUSED_EVSE
            elif inp.limit.amps >= min_a:
                deadlines.append(s.phase_since + t.min_pause_s)
            suspend, pilot = SuspendReason.LIMIT_BELOW_MINIMUM, X1
        else:
            offer = (Pilot(PilotMode.PWM, HLC_DUTY) if board.charging.hlc
                     else pwm_for_current(min(inp.limit.amps, board.ratings.max_current_a)))
            phase, suspend, pilot, offer_since, wakeups, wakeups_total = _offering(
                s, cp, observing, offer, diode_ok, ev_paused, now, board, deadlines, events)
            contactor = phase is Phase.CHARGING
            if phase is Phase.PAUSED_EV and suspend is SuspendReason.EV_PAUSED:
                ev_paused = True

    pwm_off_at = (now if s.pilot.mode is PilotMode.PWM and pilot.mode is not PilotMode.PWM
                  else s.pwm_off_at)
    if phase is not Phase.CHARGING and not faults and s.contactor and cp in POWER_REQUEST:
        # X1 while the car still draws (IEC 61851-1 sequence 10.2): give it time to go to B
        # before opening under load.
        until = pwm_off_at + t.power_off_under_load_s
        if pilot.mode is PilotMode.X1 and now < until:
            contactor = True
            deadlines.append(until)

    phase_since = now if phase is not s.phase else s.phase_since
    if phase is not s.phase or suspend is not s.suspend:
        events.append(Event(EventKind.PHASE, now, phase=phase, suspend=suspend))

    if contactor != s.contactor:
        events.append(Event(EventKind.CONTACTOR_CLOSED if contactor
                            else EventKind.CONTACTOR_OPENED, now))
        contactor_changed_at = now
    else:
        contactor_changed_at = s.contactor_changed_at
    deadlines.append(contactor_changed_at + (t.contactor_feedback_s if contactor
                                             else t.weld_check_delay_s))

    if s.plugged and not plugged:
        events.append(Event(EventKind.UNPLUGGED, now, stop=(
            StopReason.EV_DISCONNECTED_UNDER_LOAD if s.contactor
            else StopReason.EV_DISCONNECTED)))

    offered_a = _offered(pilot, inp.limit, board.ratings.max_current_a)
    recent_offer_a, recent_offer_until = s.recent_offer_a, s.recent_offer_until
    if offered_a < s.offered_a:
        # A second cut while the car still follows the first: the highest offer still counts.
        recent_offer_a = max(s.offered_a, recent_offer_a if now < recent_offer_until else 0.0)
        recent_offer_until = now + t.ev_reaction_s
    if offered_a != s.offered_a:
        events.append(Event(EventKind.OFFER_CHANGED, now, amps=offered_a))

    # Locked while plugged (IEC 61851-1 D.6.5). A fault that ends the session releases the plug
    # so the cable can be removed, but never while the socket may be live: the contactor is
    # closed, its weld check is still pending, or it is welded. That holds after an unplug too.
    may_be_live = (contactor or s.contactor or FaultCode.CONTACTOR_WELDED in faults
                   or now < contactor_changed_at + t.weld_check_delay_s)
    ends_session = any(FAULT_RULES[f].recovery is not Recovery.AUTO for f in faults)
    held = plugged or s.lock_requested_at is not None
    lock_wanted = board.has(Role.LOCK) and held and (
        may_be_live or (plugged and not ends_session))
    lock_requested_at: float | None = None
    if lock_wanted:
        lock_requested_at = now if s.lock_requested_at is None else s.lock_requested_at
        if inp.lock is not LockState.LOCKED:
            deadlines.append(lock_requested_at + t.lock_timeout_s)

    new = ChargerState(
        phase=phase, phase_since=phase_since, suspend=suspend, cp=cp, plugged=plugged,
        pilot=pilot, pwm_off_at=pwm_off_at, contactor=contactor,
        contactor_changed_at=contactor_changed_at, offered_a=offered_a,
        recent_offer_a=recent_offer_a, recent_offer_until=recent_offer_until, faults=faults,
        fault_since=fault_since, overcurrent_since=overcurrent_since, diode_ok=diode_ok,
        lock_requested_at=lock_requested_at, offer_since=offer_since,
        wakeups_this_offer=wakeups, wakeups_total=wakeups_total, ev_paused=ev_paused)
    future = [d for d in deadlines if d > now]
    return Step(new, Command(pilot, contactor, lock_wanted, _indicator(phase)), tuple(events),
                iec_state(cp, pilot), min(future) if future else None)


def _blocked(inp: Inputs, board: Board) -> SuspendReason | None:
    if not inp.authorized:
        return SuspendReason.NOT_AUTHORIZED
    if inp.lock is not None and inp.lock is not LockState.LOCKED:
        return SuspendReason.LOCKING
    if (board.charging.rcd_self_test_on_plug and board.has(Role.RCD)
            and inp.rcd_test in (RcdTest.NOT_RUN, RcdTest.PENDING)):
        return SuspendReason.RCD_SELF_TEST
    return None


def _offering(s: ChargerState, cp: CpState, observing: bool, offer: Pilot, diode_ok: bool,
              ev_paused: bool, now: float, board: Board, deadlines: list[float],
              events: list[Event]) -> tuple[Phase, SuspendReason | None, Pilot, float, int, int]:
    """The car may charge: PWM is on, unless a wake-up sequence is under way."""
    t = board.timing
    offer_since, wakeups, total = s.offer_since, s.wakeups_this_offer, s.wakeups_total

    if s.phase is Phase.WAKEUP:
        f_end = s.phase_since + t.wakeup_f_s
        x1_end = f_end + t.wakeup_x1_s
        if now < f_end:
            deadlines.append(f_end)
            return Phase.WAKEUP, SuspendReason.WAKING_EV, STATE_F, offer_since, wakeups, total
        if now < x1_end:
            deadlines.append(x1_end)
            return Phase.WAKEUP, SuspendReason.WAKING_EV, X1, offer_since, wakeups, total
        offer_since = now
    elif s.phase not in (Phase.READY, Phase.CHARGING, Phase.PAUSED_EV):
        # PWM starts now (plug-in, authorization, end of a pause): a fresh chance to wake.
        offer_since, wakeups = now, 0

    if cp in POWER_REQUEST:
        reclose_at = s.contactor_changed_at + board.timing.contactor_min_reclose_s
        if not observing:
            # We drove F until now: the CP we remember is from before. Look first.
            return Phase.READY, SuspendReason.EV_NOT_READY, offer, offer_since, wakeups, total
        if not diode_ok:
            return Phase.READY, SuspendReason.EV_NOT_READY, offer, offer_since, wakeups, total
        if not s.contactor and now < reclose_at:
            deadlines.append(reclose_at)
            return Phase.READY, SuspendReason.RECLOSE_DELAY, offer, offer_since, wakeups, total
        return Phase.CHARGING, None, offer, offer_since, wakeups, total

    if s.phase is Phase.CHARGING or ev_paused:
        return Phase.PAUSED_EV, SuspendReason.EV_PAUSED, offer, offer_since, wakeups, total
    if s.phase is Phase.PAUSED_EV:
        return Phase.PAUSED_EV, s.suspend, offer, offer_since, wakeups, total

    waited = now - offer_since
    wait = t.wakeup_wait_c_s if wakeups else t.wakeup_after_s
    if t.wakeup and waited >= wait and wakeups < t.wakeup_max_attempts:
        events.append(Event(EventKind.WAKEUP_ATTEMPT, now, attempt=total + 1))
        deadlines.append(now + t.wakeup_f_s)
        return Phase.WAKEUP, SuspendReason.WAKING_EV, STATE_F, offer_since, wakeups + 1, total + 1
    if wakeups and waited >= wait:
        return (Phase.PAUSED_EV, SuspendReason.EV_NOT_RESPONDING, offer, offer_since, wakeups,
                total)
    if t.wakeup:
        deadlines.append(offer_since + wait)
    return Phase.READY, SuspendReason.EV_NOT_READY, offer, offer_since, wakeups, total


def _offered(pilot: Pilot, limit: EffectiveLimit, max_a: float) -> float:
    if pilot.mode is not PilotMode.PWM:
        return 0.0
    if pilot.duty == HLC_DUTY:
        return min(limit.amps, max_a)
    return current_for_duty(pilot.duty)


def _indicator(phase: Phase) -> IndicatorState:
    return {
        Phase.IDLE: IndicatorState.IDLE,
        Phase.CONNECTED: IndicatorState.CONNECTED,
        Phase.READY: IndicatorState.CONNECTED,
        Phase.CHARGING: IndicatorState.CHARGING,
        Phase.PAUSED_EVSE: IndicatorState.SUSPENDED,
        Phase.PAUSED_EV: IndicatorState.SUSPENDED,
        Phase.WAKEUP: IndicatorState.SUSPENDED,
        Phase.FAULT: IndicatorState.FAULT,
    }[phase]


def manual_reset(s: ChargerState, codes: frozenset[FaultCode] | None = None) -> ChargerState:
    """An operator clears latched faults (all of them when ``codes`` is None). Only faults
    whose rule is a manual reset: a replug fault (an over-current car) is not the operator's to
    forgive. Conditions still present are raised again by the next step."""
    resettable = {f for f in s.faults if FAULT_RULES[f].recovery is Recovery.MANUAL_RESET}
    if codes is not None:
        resettable &= codes
    return replace(s, faults=s.faults - resettable)


def hardware_took_over(s: ChargerState, now: float) -> ChargerState:
    """Outside a step the contactor was opened and state F driven (the shell's fail-safe, a
    watchdog). The reclose delay and the weld check run from now, and the CP, which shows our
    −12 V, is not taken for the car's in the next step."""
    return replace(s, contactor=False, contactor_changed_at=now, pilot=STATE_F)
