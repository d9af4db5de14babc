"""The safety supervisor's rules: which fault conditions hold now, and the thermal derating.

Pure functions of what the board reports and the time. The state machine calls ``supervise`` on
every step, before it decides anything else, and opens the contactor in that same step when a
fault is raised: no queue, no await, between a reading and the open command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from firmware.core.cp import CpState, diode_missing
from firmware.core.limits import Limit, LimitSource
from firmware.core.reasons import FAULT_RULES, FaultCode, Recovery
from hal.board import Board, Role, Safety
from hal.roles import ContactorFeedback, CpReading, LockState, MeterReading


class RcdTest(Enum):
    """Outcome of the RCD self-test for the current plug-in."""

    NOT_RUN = "not_run"
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Observation:
    """What the supervisor looks at in one step."""

    cp: CpState
    cp_reading: CpReading
    pwm_on: bool                 # the negative plateau (diode) is only visible with PWM
    observing_cp: bool           # False while we drive state F: the CP shows us, not the car
    contactor_closed_cmd: bool
    contactor_changed_at: float
    feedback: ContactorFeedback
    rcd_tripped: bool
    rcd_test: RcdTest
    lock: LockState | None
    lock_requested_at: float | None
    pp_fault: bool
    meter: MeterReading | None
    allowed_a: float             # the highest current the car may draw right now
    temperature_c: float | None


def supervise(obs: Observation, active: frozenset[FaultCode], overcurrent_since: float | None,
              now: float, board: Board
              ) -> tuple[frozenset[FaultCode], float | None, float | None]:
    """The fault conditions present at ``now``, the updated over-current timer, and when a
    condition would next appear if nothing else changed (so the shell looks again then).

    ``active`` is needed for hysteresis (an over-temperature stop holds until ``resume_c``).
    """
    due: list[float] = []
    found: set[FaultCode] = set()
    t = board.timing
    plugged = obs.cp in (CpState.B, CpState.C, CpState.D)

    if obs.observing_cp:
        if obs.cp is CpState.E:
            found.add(FaultCode.CP_SHORT)
        elif obs.cp in (CpState.INVALID, CpState.F):
            found.add(FaultCode.CP_INVALID)
        elif obs.pwm_on and plugged and diode_missing(obs.cp_reading):
            found.add(FaultCode.DIODE_MISSING)
        if obs.cp is CpState.D and not board.charging.ventilation:
            found.add(FaultCode.VENTILATION_NOT_AVAILABLE)

    if obs.rcd_tripped:
        found.add(FaultCode.RCD_TRIPPED)
    if obs.rcd_test is RcdTest.FAILED:
        found.add(FaultCode.RCD_SELF_TEST_FAILED)

    since = now - obs.contactor_changed_at
    fb = obs.feedback
    if not obs.contactor_closed_cmd and since >= t.weld_check_delay_s and (
            fb.voltage_present is True or fb.aux_closed is True):
        found.add(FaultCode.CONTACTOR_WELDED)
    # The auxiliary contact tells the contactor's own state; voltage after it also drops when
    # the grid does, so it counts only on boards without an auxiliary contact.
    if obs.contactor_closed_cmd and since >= t.contactor_feedback_s and (
            fb.aux_closed is False or (fb.aux_closed is None and fb.voltage_present is False)):
        found.add(FaultCode.CONTACTOR_NOT_CLOSING)

    if obs.lock is not None and obs.lock_requested_at is not None and plugged and (
            obs.lock is LockState.FAULT
            or (obs.lock is not LockState.LOCKED
                and now - obs.lock_requested_at >= t.lock_timeout_s)):
        found.add(FaultCode.LOCK_FAILURE)

    if obs.pp_fault and plugged:
        found.add(FaultCode.PROXIMITY_FAULT)

    if _too_hot(obs.temperature_c, FaultCode.OVER_TEMPERATURE in active, board):
        found.add(FaultCode.OVER_TEMPERATURE)

    # Checked whenever a car is plugged, not only while charging: a fault that opened the
    # contactor must not clear itself and let it close again into an unsupervised charge.
    if board.has(Role.METER) and plugged:
        if obs.meter is None or now - obs.meter.at > t.meter_stale_s:
            found.add(FaultCode.METER_LOST)
        else:
            due.append(obs.meter.at + t.meter_stale_s)

    overcurrent_since = _overcurrent_timer(obs, overcurrent_since, now, board.safety)
    if overcurrent_since is not None:
        if now - overcurrent_since >= board.safety.overcurrent_timeout_s:
            found.add(FaultCode.OVER_CURRENT)
        else:
            due.append(overcurrent_since + board.safety.overcurrent_timeout_s)
    return frozenset(found), overcurrent_since, min(due) if due else None


def _overcurrent_timer(obs: Observation, since: float | None, now: float,
                       s: Safety) -> float | None:
    if not obs.contactor_closed_cmd or obs.meter is None:
        return None
    ceiling = (obs.allowed_a * (1.0 + s.overcurrent_tolerance_pct / 100.0)
               + s.overcurrent_tolerance_a)
    if max(obs.meter.current_a, default=0.0) > ceiling:
        return now if since is None else since
    return None


def _too_hot(temp_c: float | None, already: bool, board: Board) -> bool:
    if not board.has(Role.TEMPERATURE):
        return False
    if temp_c is None:
        # A silent sensor on a board that has one: we cannot know we are cool, so stop.
        return True
    return temp_c >= (board.safety.resume_c if already else board.safety.stop_c)


def thermal_limit(temp_c: float | None, board: Board) -> Limit | None:
    """Linear derating from the board rating at ``derate_start_c`` to the minimum at ``stop_c``."""
    s = board.safety
    if temp_c is None or temp_c <= s.derate_start_c:
        return None
    top, bottom = board.ratings.max_current_a, board.charging.min_current_a
    share = min(1.0, (temp_c - s.derate_start_c) / (s.stop_c - s.derate_start_c))
    amps = math.floor((top - share * (top - bottom)) * 10) / 10  # down: never above the curve
    return Limit.of(LimitSource.THERMAL, f"derated at {temp_c:.0f} °C", amps=amps)


def clears(code: FaultCode, conditions: frozenset[FaultCode], cp: CpState,
           observing_cp: bool) -> bool:
    """Whether an active fault's recovery rule is met in this step.

    Nothing clears while we drive state F: the CP then shows our own −12 V, not the car.
    """
    if not observing_cp:
        return False
    rule = FAULT_RULES[code].recovery
    if rule is Recovery.AUTO:
        return code not in conditions
    if rule is Recovery.REPLUG:
        return cp is CpState.A
    return False
