"""1-phase / 3-phase switching for one charge point: a pure function of (config, state, inputs,
now).

What the field taught (flapping in clouds, never switching back up, cars that do not take a
switch well) sets the rules:

- the thresholds sit around the car's 3-phase minimum power (3 × min current × voltage): up to 3
  phases when the smoothed surplus reaches it plus ``up_margin_w``, down to 1 when it falls
  below it minus ``down_margin_w`` — a power hysteresis;
- the condition must hold without a break for ``up_delay_s`` / ``down_delay_s``, and no switch
  follows another within ``min_dwell_s`` — a time hysteresis;
- a session (plug-in to unplug) has ``max_switches_per_session`` switches; a switch down is only
  made while one is left to come back up, so the car is never stranded on one phase when the
  sun returns;
- a charge point that does not follow a switch within ``follow_timeout_s`` is left alone for
  the rest of the session;
- stale inputs, ``enabled`` false or a ``never_switch`` car: no switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from enum import Enum

from ems.surplus import duration, kw


@dataclass(frozen=True, slots=True)
class PhaseConfig:
    """1p/3p switching of a site (``[phase_switch]``); a charge point also opts in with its
    ``phase_switching`` flag. ``never_switch`` is for a car (or a session) known not to take a
    switch: the caller sets it on a copy for that car."""

    enabled: bool = True
    never_switch: bool = False
    up_margin_w: float = 400.0
    down_margin_w: float = 200.0
    # Time constant of this module's own surplus smoothing (a switch is costlier than a current
    # step, so it looks at a slower average than the PV current does).
    smoothing_s: float = 60.0
    # Going up waits long (a cloudy day's surplus often crosses the 3-phase minimum for a few
    # minutes): each switch pauses the car and spends the session's budget, and a car stuck on
    # three phases under clouds captures far less than one left on one phase (docs/ems.md).
    up_delay_s: float = 900.0
    # min+PV goes up sooner: the grid tops up the 3-phase minimum anyway, so three phases pay
    # as soon as the sun gives more than one phase can take (the manager passes this delay).
    up_delay_minpv_s: float = 300.0
    down_delay_s: float = 120.0
    min_dwell_s: float = 300.0
    max_switches_per_session: int = 6
    follow_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a finite number >= 0, got {value!r}")
        if self.up_margin_w + self.down_margin_w <= 0:
            raise ValueError("up_margin_w + down_margin_w must be > 0 (the power hysteresis)")
        if self.follow_timeout_s <= 0:
            raise ValueError(f"follow_timeout_s must be > 0, got {self.follow_timeout_s!r}")


class PhaseWhy(Enum):
    """The rule behind a phase decision."""

    DISABLED = "disabled"
    NEVER_SWITCH = "never_switch"
    NO_CAR = "no_car"
    STALE = "stale"                    # the surplus is unknown: no switch
    STAY = "stay"                      # the surplus is on this side of the hysteresis
    PENDING = "pending"                # a switch is due once the surplus has lasted the delay
    DWELL = "dwell"                    # a switch is due but the last one is too recent
    BUDGET = "budget"                  # a switch is due but the session's switches are used
    SWITCH_UP = "switch_up"
    SWITCH_DOWN = "switch_down"
    FOLLOWING = "following"            # waiting for the charge point to carry out a switch
    NOT_FOLLOWED = "not_followed"      # it did not: no more switching this session
    BAD_INPUT = "bad_input"


@dataclass(frozen=True, slots=True)
class PhaseDecision:
    phases: int          # 1 or 3
    reason: str
    why: PhaseWhy


@dataclass(frozen=True, slots=True)
class PhaseState:
    """What one charge point's switching remembers between cycles."""

    connected: bool = False               # as seen last cycle: False→True starts a session
    session_start: float | None = None    # the session marker
    phases: int | None = None             # what is asked for (None: whatever is energised)
    switches: int = 0                     # this session
    last_switch_at: float | None = None
    awaiting_since: float | None = None   # a switch not yet carried out, asked for then
    not_followed: bool = False            # the charge point ignored a switch this session
    pending: int | None = None            # the phase count the surplus asks for...
    pending_since: float | None = None    # ...without a break since
    smoothed_w: float | None = None
    at: float | None = None


def decide_phases(cfg: PhaseConfig, state: PhaseState, *, available_w: float | None,
                  current_phases: int, now: float, connected: bool, min_a: float,
                  max_a: float, voltage_v: float,
                  pays_at_w: float | None = None) -> tuple[PhaseState, PhaseDecision]:
    """The phase count this charge point should use. ``available_w`` is the surplus this car
    may use (including its own draw); None when its inputs are stale; ``current_phases`` what
    the charge point reports energised. ``pays_at_w``: the surplus from which three phases
    pay — by default the 3-phase minimum power (PV mode must not import for it); min+PV, which
    lets the grid top up the minimum anyway, passes the 1-phase maximum."""
    energised = current_phases if current_phases in (1, 3) else None
    if not math.isfinite(now):
        return state, _keep(state, energised, "the clock is not a number", PhaseWhy.BAD_INPUT)
    if not connected:
        state = replace(state, connected=False, phases=None, awaiting_since=None, pending=None,
                        pending_since=None)
        return state, PhaseDecision(energised or 3, "1p/3p: no car", PhaseWhy.NO_CAR)
    if not state.connected:
        state = PhaseState(connected=True, session_start=now, smoothed_w=state.smoothed_w,
                           at=state.at)
    if not cfg.enabled or cfg.never_switch:
        why = PhaseWhy.DISABLED if not cfg.enabled else PhaseWhy.NEVER_SWITCH
        text = "switching disabled" if not cfg.enabled else "this car is never switched"
        return (replace(state, phases=None, awaiting_since=None, pending=None,
                        pending_since=None),
                PhaseDecision(energised or 3, f"1p/3p: {text}", why))
    if energised is None:
        return state, _keep(state, None, f"the charge point reports {current_phases!r} phases",
                            PhaseWhy.BAD_INPUT)
    if not (math.isfinite(min_a) and math.isfinite(max_a) and 0 < min_a <= max_a
            and math.isfinite(voltage_v) and voltage_v > 0):
        return state, _keep(state, energised, f"impossible current {min_a!r}..{max_a!r} A or "
                            f"voltage {voltage_v!r} V", PhaseWhy.BAD_INPUT)

    state = _observe(cfg, state, available_w, now)
    if state.not_followed:
        return state, PhaseDecision(energised, "1p/3p: the charge point did not follow a "
                                    "switch: no more switching this session",
                                    PhaseWhy.NOT_FOLLOWED)
    target = state.phases if state.phases is not None else energised
    if state.awaiting_since is not None:
        if energised != target:
            if now - state.awaiting_since >= cfg.follow_timeout_s:
                state = replace(state, phases=energised, awaiting_since=None,
                                not_followed=True, pending=None, pending_since=None)
                return state, PhaseDecision(
                    energised, f"1p/3p: the charge point still has {_n(energised)} "
                    f"{duration(cfg.follow_timeout_s)} after the switch to {_n(target)}: no "
                    "more switching this session", PhaseWhy.NOT_FOLLOWED)
            return state, PhaseDecision(target, f"1p/3p: switching to {_n(target)}",
                                        PhaseWhy.FOLLOWING)
        state = replace(state, awaiting_since=None)
    elif energised != target:
        # Switched by someone else (a user at the charge point): that is where we are now.
        target = energised
    state = replace(state, phases=target)
    if state.smoothed_w is None:
        return state, PhaseDecision(target, f"1p/3p: PV surplus unknown (inputs stale), "
                                    f"staying on {_n(target)}", PhaseWhy.STALE)
    return _hysteresis(cfg, state, target, now,
                       3 * min_a * voltage_v if pays_at_w is None else pays_at_w)


def _hysteresis(cfg: PhaseConfig, state: PhaseState, target: int, now: float,
                min3_w: float) -> tuple[PhaseState, PhaseDecision]:
    smoothed = state.smoothed_w
    assert smoothed is not None
    up_w, down_w = min3_w + cfg.up_margin_w, min3_w - cfg.down_margin_w
    surplus = f"PV surplus {kw(smoothed)}"
    if target == 1:
        want = 3 if smoothed >= up_w else 1
        case = f"{surplus} {'reaches' if want == 3 else 'below'} the {kw(up_w)} for 3 phases"
    else:
        want = 1 if smoothed < down_w else 3
        case = f"{surplus} {'below' if want == 1 else 'reaches'} the {kw(down_w)} to stay on 3"
    if want == target:
        return (replace(state, pending=None, pending_since=None),
                PhaseDecision(target, f"1p/3p: {_n(target)}, {case}", PhaseWhy.STAY))
    since = state.pending_since if state.pending == want and state.pending_since is not None \
        else now
    state = replace(state, pending=want, pending_since=since)
    delay = cfg.up_delay_s if want == 3 else cfg.down_delay_s
    left = delay - max(0.0, now - since)
    if left > 0:
        return state, PhaseDecision(target, f"1p/3p: {case}: switching to {_n(want)} if it "
                                    f"lasts {duration(left)} more", PhaseWhy.PENDING)
    if state.last_switch_at is not None:
        dwell_left = cfg.min_dwell_s - max(0.0, now - state.last_switch_at)
        if dwell_left > 0:
            return state, PhaseDecision(target, f"1p/3p: {case}: last switch "
                                        f"{duration(now - state.last_switch_at)} ago, the "
                                        f"next in {duration(dwell_left)} at the earliest",
                                        PhaseWhy.DWELL)
    left_n = cfg.max_switches_per_session - state.switches
    if left_n < (1 if want == 3 else 2):
        kept = " (the last one is kept to come back to 3 phases)" if left_n > 0 else ""
        return state, PhaseDecision(target, f"1p/3p: {case}: {state.switches} of "
                                    f"{cfg.max_switches_per_session} switches used this "
                                    f"session{kept}", PhaseWhy.BUDGET)
    state = replace(state, phases=want, switches=state.switches + 1, last_switch_at=now,
                    awaiting_since=now, pending=None, pending_since=None)
    why = PhaseWhy.SWITCH_UP if want == 3 else PhaseWhy.SWITCH_DOWN
    return state, PhaseDecision(want, f"1p/3p: {case}: switching to {_n(want)}", why)


def _observe(cfg: PhaseConfig, state: PhaseState, available_w: float | None,
             now: float) -> PhaseState:
    if available_w is None or math.isnan(available_w):
        # Stale: the smoothing restarts from fresh data and a pending switch needs new evidence.
        return replace(state, smoothed_w=None, pending=None, pending_since=None, at=now)
    dt = 0.0 if state.at is None else max(0.0, now - state.at)
    previous = state.smoothed_w
    if previous is None or cfg.smoothing_s == 0 or math.isinf(previous) or math.isinf(
            available_w):
        # Infinity is a caller's "unlimited" (mode now): it is taken as it is, not averaged.
        smoothed = available_w
    else:
        smoothed = previous + (available_w - previous) * (1.0 - math.exp(-dt / cfg.smoothing_s))
    return replace(state, smoothed_w=smoothed, at=now)


def _keep(state: PhaseState, energised: int | None, fault: str,
          why: PhaseWhy) -> PhaseDecision:
    phases = state.phases or energised or 3
    return PhaseDecision(phases, f"1p/3p: {fault}: staying on {_n(phases)}", why)


def _n(phases: int) -> str:
    return "1 phase" if phases == 1 else f"{phases} phases"
