"""PV surplus charging for one charge point: when to start, what current to offer, when to stop.

A pure function of (config, state, inputs, now). Every threshold is relative to the car's own
minimum power (min current × phases × voltage), so one set of defaults fits a 1-phase and a
3-phase car and a user never has to work out watts. The rules, in the order a user meets them:

- start (PV mode): the smoothed surplus covers ``start_cover`` × the minimum power without a
  break for ``enable_delay_s``, and the car has been off for ``min_off_s``;
- run: the offered current follows the smoothed surplus but moves only by ``deadband_a`` or
  more, so a cloud's flicker does not make it oscillate; short of the minimum the car keeps
  its minimum current and the grid covers the rest;
- stop (PV mode), while the surplus is short of the minimum: the grid import that keeping the
  minimum has cost within ``stop_window_s`` exceeds ``stop_import_wh`` (a deep cloud ends the
  charge soon, a short one is ridden out), or the shortfall has lasted ``disable_delay_s`` (a
  shallow one does not run for ever); never before the car has been on for ``min_on_s``.

``surplus_w`` None means the inputs behind it are stale: PV and min+PV then behave as if there
were no surplus (fail-safe), off and now are unaffected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from enum import Enum

from ems.model import Mode

# The stop window is kept as this many slots of import energy, so the state stays small
# whatever the cycle time (the window is exact to one slot).
_SLOTS = 10


@dataclass(frozen=True, slots=True)
class PvConfig:
    """The PV-mode tuning of a site (``[pv_mode]`` in the site file)."""

    # Time constant of the surplus smoothing (first-order low-pass); 0 switches it off.
    # The defaults were tuned on the shipped days against the oracle (docs/ems.md): slower
    # smoothing, a wider deadband or longer off times each cost PV without calming the current
    # further, since min_on_s and the import budget already ride out the clouds.
    smoothing_s: float = 15.0
    # Share of the car's minimum power the smoothed surplus must cover before PV mode starts:
    # 1.0 all of it, 0.8 accepts 20 % from the grid at the start, 1.2 asks for a margin.
    start_cover: float = 1.0
    enable_delay_s: float = 30.0
    # Grid import that keeping the minimum current may cost within stop_window_s before PV
    # mode pauses (15 min: the interval grid operators meter peaks in).
    stop_import_wh: float = 150.0
    stop_window_s: float = 900.0
    # The longest shortfall PV mode rides out however little it costs.
    disable_delay_s: float = 600.0
    min_on_s: float = 300.0
    min_off_s: float = 120.0
    # The offered current changes only when the surplus asks for at least this much more or less.
    deadband_a: float = 0.5
    # Aim this far above the smoothed surplus while charging (evcc's "residual power"): the
    # sun flickers faster than a car follows, so a car aimed exactly at the mean misses every
    # peak; a small bias buys the PV of the peaks with a little import in the dips.
    residual_w: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a finite number >= 0, got {value!r}")
        if self.start_cover <= 0:
            raise ValueError(f"start_cover must be > 0, got {self.start_cover!r}")
        if self.stop_window_s <= 0:
            raise ValueError(f"stop_window_s must be > 0, got {self.stop_window_s!r}")


class SurplusWhy(Enum):
    """The rule behind a decision."""

    OFF = "off"                        # mode off
    NOW = "now"                        # mode now: no PV limit
    SURPLUS = "surplus"                # charging from the surplus
    MINIMUM = "minimum"                # min+PV: the surplus is short, the minimum is kept
    SHORTFALL = "shortfall"            # PV: short of the minimum, riding it out
    MIN_ON = "min_on"                  # PV: a stop is due but the minimum on time holds it
    STOP_IMPORT = "stop_import"        # PV: paused, the grid import budget is spent
    STOP_SHORTFALL = "stop_shortfall"  # PV: paused, the shortfall lasted disable_delay_s
    WAITING = "waiting"                # PV: paused, the surplus is below the start threshold
    START_DELAY = "start_delay"        # PV: paused, the surplus must last enable_delay_s
    MIN_OFF = "min_off"                # PV: paused, the minimum off time holds the start
    STALE = "stale"                    # the surplus is unknown (inputs stale): no surplus
    BAD_INPUT = "bad_input"            # a non-number clock or impossible current/phases/voltage


@dataclass(frozen=True, slots=True)
class SurplusDecision:
    amps: float | None      # per phase; None: no PV limit (mode now); 0: paused
    charging: bool
    reason: str             # for the user: what the car gets and why
    why: SurplusWhy


@dataclass(frozen=True, slots=True)
class SurplusState:
    """What one charge point's PV logic remembers between cycles."""

    at: float | None = None              # time of the last decision
    smoothed_w: float | None = None      # None: no fresh surplus (restarts when data returns)
    cover_since: float | None = None     # the smoothed surplus covers the start threshold since
    low_since: float | None = None       # ... has been below the start threshold since
    short_since: float | None = None     # ... has been short of the minimum power since
    charging: bool = False
    on_since: float | None = None
    off_since: float | None = None
    offered_a: float | None = None       # the current last offered from the surplus
    import_wh: tuple[tuple[float, float], ...] = ()  # (slot start, Wh) within the stop window


def decide(cfg: PvConfig, state: SurplusState, *, mode: Mode, surplus_w: float | None,
           now: float, min_a: float, max_a: float, phases: int,
           voltage_v: float) -> tuple[SurplusState, SurplusDecision]:
    """What this charge point may draw from the sun now. ``surplus_w`` is the power the sun
    leaves for this car including what it draws already; None when its inputs are stale."""
    if not math.isfinite(now):
        return state, _fallback(mode, "the clock is not a number")
    bad = _electrical_fault(min_a, max_a, phases, voltage_v)
    surplus = surplus_w if surplus_w is not None and math.isfinite(surplus_w) else None
    if bad is None:
        state = _observe(cfg, state, surplus, now, min_power=min_a * phases * voltage_v)
    if mode is Mode.OFF:
        return _stop(state, now), SurplusDecision(0.0, False, "mode off", SurplusWhy.OFF)
    if mode is Mode.NOW:
        return (replace(_start(state, now), offered_a=None),
                SurplusDecision(None, True, "mode now: no PV limit", SurplusWhy.NOW))
    if bad is not None:
        return state, _fallback(mode, bad)
    run = _Run(cfg, now, min_a, max_a, phases * voltage_v, state.smoothed_w)
    if mode is Mode.MIN_PV:
        return _min_pv(run, state)
    return _pv(run, state)


@dataclass(frozen=True, slots=True)
class _Run:
    """One decision's fixed inputs."""

    cfg: PvConfig
    now: float
    min_a: float
    max_a: float
    w_per_a: float               # watts per amp on the phases in use
    smoothed_w: float | None     # None: stale

    @property
    def min_w(self) -> float:
        return self.min_a * self.w_per_a

    def target_a(self, state: SurplusState) -> float:
        """The current to offer: the surplus's, clamped, moved only past the deadband."""
        if self.smoothed_w is None:
            return self.min_a
        target = min(self.max_a, max(self.min_a, (self.smoothed_w + self.cfg.residual_w)
                                     / self.w_per_a))
        offered = state.offered_a
        if (offered is None or not self.min_a <= offered <= self.max_a
                or abs(target - offered) >= self.cfg.deadband_a):
            return target
        return offered

    def surplus_text(self) -> str:
        if self.smoothed_w is None:
            return "PV surplus unknown (inputs stale)"
        return f"PV surplus {kw(self.smoothed_w)}"

    def shortfall_text(self, state: SurplusState) -> str:
        since = state.short_since if state.short_since is not None else self.now
        return (f"{self.surplus_text()} below {kw(self.min_w)} minimum for "
                f"{duration(self.now - since)}")


def _min_pv(run: _Run, state: SurplusState) -> tuple[SurplusState, SurplusDecision]:
    state = _start(state, run.now)
    amps = run.target_a(state)
    state = replace(state, offered_a=amps)
    if run.smoothed_w is None:
        return state, SurplusDecision(amps, True, f"min+PV: minimum {amps:.1f} A, "
                                      f"{run.surplus_text()}", SurplusWhy.STALE)
    if run.smoothed_w < run.min_w:
        return state, SurplusDecision(amps, True, f"min+PV: {amps:.1f} A (minimum "
                                      f"{run.min_a:g} A), {run.surplus_text()} below the "
                                      f"{kw(run.min_w)} minimum", SurplusWhy.MINIMUM)
    return state, SurplusDecision(amps, True, f"min+PV: {amps:.1f} A from "
                                  f"{run.surplus_text()}", SurplusWhy.SURPLUS)


def _pv(run: _Run, state: SurplusState) -> tuple[SurplusState, SurplusDecision]:
    if not state.charging:
        return _pv_paused(run, state)
    cfg, now = run.cfg, run.now
    used_wh = _window_wh(state.import_wh, now, cfg.stop_window_s)
    short = state.short_since is not None
    stop: tuple[SurplusWhy, str] | None = None
    if short and used_wh > cfg.stop_import_wh:
        stop = (SurplusWhy.STOP_IMPORT,
                f"{used_wh:.0f} Wh from the grid in {duration(cfg.stop_window_s)} to keep the "
                f"{kw(run.min_w)} minimum (budget {cfg.stop_import_wh:g} Wh)")
    elif (state.short_since is not None
          and now - state.short_since >= cfg.disable_delay_s):
        stop = (SurplusWhy.STOP_SHORTFALL, run.shortfall_text(state))
    on_left = _left(cfg.min_on_s, state.on_since, now)
    if stop is not None and on_left <= 0:
        why, text = stop
        return _stop(state, now), SurplusDecision(0.0, False, f"PV paused: {text}", why)
    amps = run.target_a(state)
    state = replace(state, offered_a=amps)
    if stop is not None:
        return state, SurplusDecision(amps, True, f"minimum on time, {duration(on_left)} "
                                      f"left: {stop[1]}", SurplusWhy.MIN_ON)
    if short:
        return state, SurplusDecision(
            amps, True, f"{run.shortfall_text(state)}: {amps:.1f} A, {used_wh:.0f} of "
            f"{cfg.stop_import_wh:g} Wh grid import used", SurplusWhy.SHORTFALL)
    return state, SurplusDecision(amps, True, f"{run.surplus_text()}: {amps:.1f} A",
                                  SurplusWhy.SURPLUS)


def _pv_paused(run: _Run, state: SurplusState) -> tuple[SurplusState, SurplusDecision]:
    cfg, now = run.cfg, run.now
    state = replace(state, offered_a=None)
    start_w = cfg.start_cover * run.min_w
    threshold = "minimum" if cfg.start_cover == 1 else "start threshold"
    if run.smoothed_w is None:
        return state, _pause(f"PV paused: {run.surplus_text()}", SurplusWhy.STALE)
    if state.cover_since is None:
        since = state.low_since if state.low_since is not None else now
        return state, _pause(f"{run.surplus_text()} below {kw(start_w)} {threshold} for "
                             f"{duration(now - since)}", SurplusWhy.WAITING)
    start_left = _left(cfg.enable_delay_s, state.cover_since, now)
    if start_left > 0:
        return state, _pause(f"{run.surplus_text()} covers the {kw(start_w)} {threshold}: "
                             f"waiting {duration(cfg.enable_delay_s)} of surplus before "
                             f"start, {duration(start_left)} left", SurplusWhy.START_DELAY)
    off_left = _left(cfg.min_off_s, state.off_since, now)
    if off_left > 0:
        return state, _pause(f"minimum off time, {duration(off_left)} left",
                             SurplusWhy.MIN_OFF)
    state = _start(state, now)
    amps = run.target_a(state)
    return replace(state, offered_a=amps), SurplusDecision(
        amps, True, f"{run.surplus_text()}: {amps:.1f} A", SurplusWhy.SURPLUS)


def _pause(reason: str, why: SurplusWhy) -> SurplusDecision:
    return SurplusDecision(0.0, False, reason, why)


def _fallback(mode: Mode, fault: str) -> SurplusDecision:
    """The decision when the inputs cannot be reasoned about: off and now as asked, PV modes
    paused (a current cannot be derived from impossible numbers)."""
    if mode is Mode.OFF:
        return SurplusDecision(0.0, False, "mode off", SurplusWhy.OFF)
    if mode is Mode.NOW:
        return SurplusDecision(None, True, "mode now: no PV limit", SurplusWhy.NOW)
    return SurplusDecision(0.0, False, f"PV paused: {fault}", SurplusWhy.BAD_INPUT)


def _electrical_fault(min_a: float, max_a: float, phases: int, voltage_v: float) -> str | None:
    if not (math.isfinite(min_a) and math.isfinite(max_a) and 0 < min_a <= max_a):
        return f"impossible current range {min_a!r}..{max_a!r} A"
    if isinstance(phases, bool) or not isinstance(phases, int) or not 1 <= phases <= 3:
        return f"impossible phase count {phases!r}"
    if not math.isfinite(voltage_v) or voltage_v <= 0:
        return f"impossible voltage {voltage_v!r} V"
    return None


def _observe(cfg: PvConfig, state: SurplusState, surplus: float | None, now: float,
             min_power: float) -> SurplusState:
    """Fold one sample into the smoothing, the threshold timers and the import window."""
    dt = 0.0 if state.at is None else min(max(0.0, now - state.at), cfg.stop_window_s)
    smoothed: float | None
    if surplus is None:
        smoothed = None
    elif state.smoothed_w is None or cfg.smoothing_s == 0:
        smoothed = surplus
    else:
        smoothed = state.smoothed_w + (surplus - state.smoothed_w) * (
            1.0 - math.exp(-dt / cfg.smoothing_s))
    covered = smoothed is not None and smoothed >= cfg.start_cover * min_power
    short = smoothed is None or smoothed < min_power
    import_wh = state.import_wh
    if state.charging:
        # Only the import the car's minimum causes counts: a house drawing more than the sun
        # gives is not the car's doing.
        sun_w = 0.0 if surplus is None else surplus
        deficit_w = min(min_power, max(0.0, min_power - sun_w))
        import_wh = _window_add(import_wh, now, deficit_w * dt / 3600.0, cfg.stop_window_s)
    return replace(
        state, at=now, smoothed_w=smoothed,
        cover_since=_since(state.cover_since, now) if covered else None,
        low_since=None if covered else _since(state.low_since, now),
        short_since=_since(state.short_since, now) if short else None,
        import_wh=import_wh)


def _since(since: float | None, now: float) -> float:
    return now if since is None else since


def _left(span_s: float, since: float | None, now: float) -> float:
    """Seconds of ``span_s`` still to run from ``since`` (0 when it never started)."""
    return 0.0 if since is None else span_s - max(0.0, now - since)


def _start(state: SurplusState, now: float) -> SurplusState:
    if state.charging:
        return state
    return replace(state, charging=True, on_since=now, import_wh=())


def _stop(state: SurplusState, now: float) -> SurplusState:
    if not state.charging:
        return replace(state, offered_a=None)
    return replace(state, charging=False, off_since=now, offered_a=None, import_wh=())


def _window_add(slots: tuple[tuple[float, float], ...], now: float, wh: float,
                window_s: float) -> tuple[tuple[float, float], ...]:
    slot_s = window_s / _SLOTS
    kept = tuple(s for s in slots if s[0] + slot_s > now - window_s)
    if wh <= 0:
        return kept
    if kept and now < kept[-1][0] + slot_s:
        return (*kept[:-1], (kept[-1][0], kept[-1][1] + wh))
    return (*kept, (now, wh))


def _window_wh(slots: tuple[tuple[float, float], ...], now: float, window_s: float) -> float:
    slot_s = window_s / _SLOTS
    return sum(wh for start, wh in slots if start + slot_s > now - window_s)


def kw(watts: float) -> str:
    """Power as a user reads it: ``2.1 kW``."""
    if math.isinf(watts):
        return "unlimited" if watts > 0 else "none"
    return f"{watts / 1000.0:.1f} kW"


def duration(seconds: float) -> str:
    """A span as a user reads it: whole seconds below two minutes (rounded up, so a wait never
    reads as over before it is), else whole minutes."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{math.ceil(seconds)} s"
    return f"{round(seconds / 60.0)} min"
