"""One connector's shell around the core: read the board, step the state machine, drive the board.

Every step is a plain synchronous call chain: HAL reads → ``core.step`` → HAL commands. It runs
on a timer (every ``tick_s``, sooner when the core asks) and directly on every event that matters
for safety or limits: a CP level change, an RCD trip, a new limit. That is the first line of
safety: a CP change becomes a contactor-open command without a queue or an await in between.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware import logs
from firmware.core import iec61851 as core
from firmware.core import phase_switch
from firmware.core.duty import PilotMode
from firmware.core.iec61851 import ChargerState, Command, EventKind, Inputs, Phase, Step
from firmware.core.limits import EffectiveLimit, Limit, LimitSource, arbitrate
from firmware.core.phase_switch import (
    PhaseEvent,
    PhaseEventKind,
    PhaseInputs,
    PhaseRequest,
    PhaseStep,
    PhaseSwitchState,
    energised_phases,
)
from firmware.core.proximity import cable_ampacity
from firmware.core.reasons import FAULT_RULES, FaultCode, Recovery, StopReason, SuspendReason
from firmware.core.safety import RcdTest, thermal_limit
from firmware.evse.limit_port import LimitPort
from firmware.evse.session import Session
from firmware.store.db import Store, StoreError
from hal.board import Board
from hal.clock import Clock, iso
from hal.hardware import Hardware
from hal.roles import IndicatorState, MeterReading

# An open session's energy is written to the store this often (clock seconds), so a crash
# loses at most this much of its record.
CHECKPOINT_S = 60.0
# A phase carrying more than this is energised: above meter noise and a car's standby draw.
DRAWING_A = 1.0


@dataclass(frozen=True, slots=True)
class View:
    """What a status line, the web page or MQTT shows of a connector."""

    iec: str
    state: ChargerState
    limit: EffectiveLimit
    meter: MeterReading | None
    session: Session | None
    phases: int                          # energised now: what watts are converted over
    phase_switch: PhaseSwitchState       # stage, switches so far, refusal, last outcome
    phase_request: PhaseRequest | None


class Connector:
    def __init__(self, number: int, board: Board, hw: Hardware, clock: Clock, store: Store,
                 limits: LimitPort) -> None:
        self.number = number
        self.board = board
        self.hw = hw
        self.clock = clock
        self.store = store
        self.limits = limits
        self.log = logs.get(f"connector{number}")
        self.authorized = board.charging.free_mode
        latched = _known_faults(store.latched(number), store)
        self.state = ChargerState(faults=latched)
        self.session: Session | None = None
        self.last: Step | None = None
        self.limit = EffectiveLimit(0.0, None, (), False)
        self.meter: MeterReading | None = None
        self.rcd_test = RcdTest.NOT_RUN
        self.phase_switch = PhaseSwitchState()
        self.relay_phases: int | None = None  # the phase relay's latest feedback
        self.phases = board.ratings.phases    # what watts are converted over
        self._relay_distrusted = False        # the meter contradicted the relay this session
        self.session_listeners: list[Callable[[Session], None]] = []
        # Called after every step with its result: status pushers (and the soak test) use it.
        self.step_listeners: list[Callable[[Step], None]] = []
        self._rating = Limit.of(LimitSource.BOARD_RATING, f"board {board.name} rating",
                                amps=board.ratings.max_current_a)
        self._applied: Command | None = None
        self._wake_at: float | None = None
        self._stepping = False
        self._again = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rcd_task: asyncio.Task[None] | None = None
        self._checkpoint_at = 0.0
        self._stopped = False
        if latched:
            logs.log(self.log, "latched_faults_loaded", logging.WARNING, connector=number,
                     faults=sorted(f.value for f in latched))

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Begin supervising (on the running loop): subscribe to events, arm the watchdog."""
        self._loop = asyncio.get_running_loop()
        self.hw.control_pilot.subscribe(self.step)
        if self.hw.rcd is not None:
            self.hw.rcd.subscribe(self.step)
        self.limits.subscribe(self.step)
        if self.hw.watchdog is not None and self.board.timing.watchdog_s > 0:
            self.hw.watchdog.arm(self.board.timing.watchdog_s)
        self.step()

    def shutdown(self, reason: StopReason = StopReason.CONTROLLER_SHUTDOWN) -> None:
        """Contactor open first, then the pilot, then the rest; close the session record."""
        self._stopped = True
        self.hw.contactor.open()
        self.hw.control_pilot.set_x1()
        if self._timer is not None:
            self._timer.cancel()
        if self._rcd_task is not None:
            self._rcd_task.cancel()
        if self.hw.watchdog is not None:
            self.hw.watchdog.disarm()
        if self.hw.indicator is not None:
            self.hw.indicator.show(IndicatorState.OFF)
        now = self.clock.now()
        if self.session is not None:
            self.session.on_meter(self._read_meter())
            self._end_session(reason, now)
        logs.log(self.log, "connector_stopped", connector=self.number, reason=reason)

    def authorize(self, on: bool) -> None:
        """Allow (or withdraw) charging for the car plugged in; OCPP will call this."""
        if on != self.authorized:
            self.authorized = on
            logs.log(self.log, "authorization", connector=self.number, authorized=on)
            self.step()

    def reset_faults(self, codes: frozenset[FaultCode] | None = None) -> list[str]:
        """An operator's manual reset. Conditions still present are raised again at once."""
        cleared = self.store.unlatch(self.number, None if codes is None
                                     else [c.value for c in codes])
        if self.hw.rcd is not None and (codes is None or FaultCode.RCD_TRIPPED in codes):
            self.hw.rcd.reset()
        self.state = core.manual_reset(self.state, codes)
        logs.log(self.log, "faults_reset", connector=self.number, faults=cleared)
        self.step()
        return cleared

    # ---- the step ------------------------------------------------------------------------------

    def step(self) -> None:
        """Evaluate now. Safe to call from any event callback; never re-enters itself."""
        if self._stopped:
            return
        if self._stepping:
            self._again = True
            return
        self._stepping = True
        try:
            self._again = True
            while self._again:
                self._again = False
                try:
                    self._step_once()
                except Exception as exc:
                    self._fail_safe(exc)
                    return
        finally:
            self._stepping = False

    def _fail_safe(self, exc: Exception) -> None:
        """A step that failed (a HAL read that raised, a bug): open the contactor, show state F,
        and try again at the next tick. Charging resumes only through a clean step."""
        logs.log(self.log, "step_failed", logging.ERROR, connector=self.number, error=repr(exc),
                 trace="".join(traceback.format_exception(exc)))
        for action in (self.hw.contactor.open, self.hw.control_pilot.set_f):
            try:
                action()
            except Exception as again:  # keep trying the other action regardless
                logs.log(self.log, "fail_safe_action_failed", logging.CRITICAL,
                         connector=self.number, action=action.__name__, error=repr(again))
        now = self.clock.now()
        self._opened_behind_the_core(now)
        self._wake_at = None
        self._reschedule(now)

    def _opened_behind_the_core(self, now: float) -> None:
        self.state = core.hardware_took_over(self.state, now)
        self._applied = None  # the next step drives every output again

    def _step_once(self) -> None:
        now = self.clock.now()
        inputs = self._read(now)
        # After the reads: on the sim board reading lets time pass, which may trip it.
        self._take_over_from_watchdog(now)
        result = core.step(self.state, inputs, now, self.board)
        self._apply(result.command)
        self.state = result.state
        switch = self._step_phases(result, inputs, now)
        self.last = result
        self._record(result, now)
        self._record_phases(switch.events)
        if self.hw.watchdog is not None:
            self.hw.watchdog.kick()
        wakes = [w for w in (result.wake_at, switch.wake_at) if w is not None]
        self._wake_at = min(wakes) if wakes else None
        self._reschedule(now)
        for listener in self.step_listeners:
            listener(result)

    def _step_phases(self, result: Step, inputs: Inputs, now: float) -> PhaseStep:
        """The phase-switch sequence, after the state machine has decided about the contactor:
        it sees this step's contactor command and commands the relay only behind it."""
        fb = inputs.feedback
        reads_open = fb.aux_closed is not True and fb.voltage_present is not True
        s = result.state
        before = phase_switch.hold(self.phase_switch, self.board)
        switch = phase_switch.step(self.phase_switch, PhaseInputs(
            request=self.limits.phase_request(), relay=self.relay_phases,
            contactor=result.command.contactor, contactor_changed_at=s.contactor_changed_at,
            contactor_reads_open=reads_open,
            held=s.suspend is SuspendReason.PHASE_SWITCH or not s.plugged,
            charging=s.phase is Phase.CHARGING, plugged=s.plugged, faulted=bool(s.faults)),
            now, self.board)
        if switch.relay is not None:
            self._switch_relay(switch.relay, reads_open)
        self.phase_switch = switch.state
        if switch.relay is not None or phase_switch.hold(switch.state, self.board) != before:
            self._again = True  # the state machine takes up the hold, we read the relay: now
        return switch

    def _switch_relay(self, phases: int, reads_open: bool) -> None:
        relay, applied = self.hw.phase_switch, self._applied
        if relay is None or applied is None or applied.contactor or not reads_open:
            # The sequence never asks for this; if it did, the step fails safe (contactor open,
            # state F) rather than move the relay under load.
            raise RuntimeError(f"phase relay to {phases} refused: the contactor is not open")
        try:
            relay.set_phases(phases)
        except Exception as exc:
            # The contactor is open, so nothing is at risk: the sequence sees the feedback not
            # follow and gives this request up (relay_not_following) instead of failing the
            # step, which would show state F and retry after every dwell.
            logs.log(self.log, "phase_relay_failed", logging.ERROR, connector=self.number,
                     phases=phases, error=repr(exc))

    def _take_over_from_watchdog(self, now: float) -> None:
        watchdog = self.hw.watchdog
        if watchdog is None or self.board.timing.watchdog_s <= 0 or not watchdog.tripped():
            return
        # We were silent too long (a stall, a run of failed steps) and the hardware opened the
        # contactor and drove state F. We are running again: re-arm and take charge.
        logs.log(self.log, "watchdog_tripped", logging.WARNING, connector=self.number)
        watchdog.arm(self.board.timing.watchdog_s)
        self._opened_behind_the_core(now)

    def _read_meter(self) -> MeterReading | None:
        return self.hw.meter.read() if self.hw.meter is not None else None

    def _read(self, now: float) -> Inputs:
        hw, board = self.hw, self.board
        self.meter = self._read_meter()
        temp = hw.temperature.read_c() if hw.temperature is not None else None
        active = [self._rating, *self.limits.limits()]
        pp_fault = False
        if board.connector.cable == "tethered":
            cable_a: float | None = board.connector.tethered_cable_a
        else:
            cable_a = cable_ampacity(hw.proximity.read_ohm() if hw.proximity else None)
            pp_fault = cable_a is None
        if cable_a is not None:
            active.append(Limit.of(LimitSource.CABLE, f"cable coded for {cable_a:g} A",
                                   amps=cable_a))
        derate = thermal_limit(temp, board)
        if derate is not None:
            active.append(derate)
        self.relay_phases = hw.phase_switch.phases() if hw.phase_switch is not None else None
        self.phases = self._energised()
        self.limit = arbitrate(active, now, phases=self.phases,
                               voltage_v=board.ratings.nominal_voltage_v,
                               boost=self.limits.boost)
        return Inputs(
            cp=hw.control_pilot.read(), limit=self.limit, authorized=self.authorized,
            feedback=hw.contactor.feedback(),
            rcd_tripped=hw.rcd.tripped() if hw.rcd is not None else False,
            rcd_test=self.rcd_test,
            lock=hw.lock.state() if hw.lock is not None else None,
            pp_fault=pp_fault, meter=self.meter, temperature_c=temp,
            hold=phase_switch.hold(self.phase_switch, board))

    def _energised(self) -> int:
        """Watts become amps over the phases really energised, never over a wish: the relay's
        feedback, unless the meter has seen current on more phases this session. Then the
        feedback is wrong, and until the car is unplugged all the board's phases count (fewer
        amps per phase), rather than flip back each time the car pauses."""
        phases = energised_phases(self.relay_phases, self.board)
        drawing = sum(1 for a in self.meter.current_a if a > DRAWING_A) if self.meter else 0
        if drawing > phases and not self._relay_distrusted:
            self._relay_distrusted = True
            logs.log(self.log, "phase_relay_feedback_wrong", logging.ERROR,
                     connector=self.number, relay=self.relay_phases, drawing=drawing)
        return self.board.ratings.phases if self._relay_distrusted else phases

    def _apply(self, cmd: Command) -> None:
        hw, prev = self.hw, self._applied
        if not cmd.contactor and (prev is None or prev.contactor):
            hw.contactor.open()  # opening comes before anything else
        if prev is None or cmd.pilot != prev.pilot:
            if cmd.pilot.mode is PilotMode.PWM:
                hw.control_pilot.set_duty(cmd.pilot.duty)
            elif cmd.pilot.mode is PilotMode.F:
                hw.control_pilot.set_f()
            else:
                hw.control_pilot.set_x1()
        if cmd.contactor and (prev is None or not prev.contactor):
            hw.contactor.close()
        if hw.lock is not None and (prev is None or cmd.lock != prev.lock):
            (hw.lock.lock if cmd.lock else hw.lock.unlock)()
        if hw.indicator is not None and (prev is None or cmd.indicator != prev.indicator):
            hw.indicator.show(cmd.indicator)
        self._applied = cmd

    def _reschedule(self, now: float) -> None:
        if self._loop is None:
            return
        due = now + self.board.timing.tick_s
        if self._wake_at is not None and self._wake_at < due:
            due = self._wake_at
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(max(0.0, due - now), self.step)

    # ---- what happened ---------------------------------------------------------------------------

    def _record(self, result: Step, now: float) -> None:
        for event in result.events:
            kind = event.kind
            if kind is EventKind.PLUGGED:
                self._start_session(now)
            session = self.session
            data: dict[str, Any] = {k: v for k, v in (
                ("phase", event.phase), ("suspend", event.suspend), ("fault", event.fault),
                ("stop", event.stop), ("amps", event.amps), ("attempt", event.attempt))
                if v is not None}
            logs.log(self.log, kind.value, connector=self.number,
                     session=session.id if session else None, iec=result.iec, **data)
            self.store.add_event(session.id if session else None, self.number, iso(event.at),
                                 kind.value, {k: getattr(v, "value", v) for k, v in data.items()})
            if kind is EventKind.FAULT_RAISED and event.fault is not None:
                if session is not None and event.fault not in session.faults:
                    session.faults.append(event.fault)
                if FAULT_RULES[event.fault].recovery is Recovery.MANUAL_RESET:
                    self.store.latch(self.number, event.fault.value, iso(event.at))
            elif kind is EventKind.WAKEUP_ATTEMPT and session is not None:
                session.wakeups += 1
            elif kind is EventKind.PHASE and session is not None and event.phase is not None:
                session.on_phase(event.phase, event.suspend, now)
            elif kind is EventKind.UNPLUGGED and session is not None:
                session.on_meter(self.meter)
                self._end_session(event.stop or StopReason.EV_DISCONNECTED, now)
        if self.session is not None:
            self.session.on_meter(self.meter)
            if now >= self._checkpoint_at:
                self._checkpoint(self.session)
                self._checkpoint_at = now + CHECKPOINT_S
        self._maybe_test_rcd()

    def _record_phases(self, events: tuple[PhaseEvent, ...]) -> None:
        for event in events:
            session = self.session
            data: dict[str, Any] = {k: getattr(v, "value", v) for k, v in (
                ("target", event.target), ("phases", event.phases), ("refusal", event.refusal),
                ("abort", event.abort), ("outcome", event.outcome), ("count", event.count),
                ("reason", event.reason)) if v is not None}
            level = logging.WARNING if event.kind is PhaseEventKind.ABORTED else logging.INFO
            logs.log(self.log, event.kind.value, level, connector=self.number,
                     session=session.id if session else None, **data)
            self.store.add_event(session.id if session else None, self.number, iso(event.at),
                                 event.kind.value, data)
            if event.kind is PhaseEventKind.SWITCHED and session is not None:
                session.phase_switches += 1

    def _start_session(self, now: float) -> None:
        self.session = Session(connector=self.number, started_at=now,
                               meter_start_wh=self.meter.energy_wh if self.meter else None)
        self.rcd_test = RcdTest.NOT_RUN
        self.store.open_session(self.session.id, self.number, iso(now))
        self._checkpoint_at = now + CHECKPOINT_S

    def _checkpoint(self, s: Session) -> None:
        self.store.update_session(s.id, at=iso(self.clock.now()), energy_wh=s.energy_wh,
                                  max_power_w=s.max_power_w, wakeups=s.wakeups,
                                  faults=[f.value for f in s.faults])

    def _end_session(self, reason: StopReason, now: float) -> None:
        s = self.session
        if s is None:
            return
        s.finish(reason, now)
        self.store.close_session(s.id, ended_at=iso(now), stop_reason=reason.value,
                                 energy_wh=s.energy_wh, max_power_w=s.max_power_w,
                                 wakeups=s.wakeups, faults=[f.value for f in s.faults])
        logs.log(self.log, "session_finished", connector=self.number, session=s.id,
                 stop=reason, energy_wh=round(s.energy_wh, 1), wakeups=s.wakeups,
                 phase_switches=s.phase_switches, faults=[f.value for f in s.faults])
        self.session = None
        self.rcd_test = RcdTest.NOT_RUN
        self._relay_distrusted = False
        if self._rcd_task is not None:
            self._rcd_task.cancel()
            self._rcd_task = None
        for listener in self.session_listeners:
            listener(s)

    def _maybe_test_rcd(self) -> None:
        if (self.state.plugged and self.rcd_test is RcdTest.NOT_RUN and self.hw.rcd is not None
                and self.board.charging.rcd_self_test_on_plug and self._loop is not None
                and not self.state.faults):
            self.rcd_test = RcdTest.PENDING
            self._rcd_task = self._loop.create_task(self._test_rcd())

    async def _test_rcd(self) -> None:
        assert self.hw.rcd is not None
        try:
            ok = await self.hw.rcd.self_test()
        except Exception as exc:  # a test that cannot run counts as failed: fail safe
            logs.log(self.log, "rcd_self_test_error", logging.ERROR, connector=self.number,
                     error=repr(exc))
            ok = False
        self.rcd_test = RcdTest.PASSED if ok else RcdTest.FAILED
        self._rcd_task = None
        logs.log(self.log, "rcd_self_test", connector=self.number, passed=ok)
        self.step()

    def view(self) -> View:
        last = self.last
        return View(iec=last.iec if last else "A", state=self.state, limit=self.limit,
                    meter=self.meter, session=self.session,
                    phases=self.phases,
                    phase_switch=self.phase_switch, phase_request=self.limits.phase_request())


def _known_faults(codes: list[str], store: Store) -> frozenset[FaultCode]:
    known = {f.value: f for f in FaultCode}
    unknown = [c for c in codes if c not in known]
    if unknown:
        # Written by another voltpilot version: we cannot tell what it guards, so we do not
        # start rather than charge past it.
        raise StoreError(f"{store.path}: latched fault {unknown[0]!r} is unknown to this "
                         "voltpilot; clear it with `voltpilot faults --reset "
                         f"{unknown[0]}` once the cause is checked")
    return frozenset(known[c] for c in codes)
