"""The simulated plant: grid, cable, contactor, RCD, lock, meter, sensors and one car.

Deterministic on an injected clock. Time passes only through ``advance(now)``, which integrates
energy piecewise between the instants where something changes (a car reacting to the pilot,
the battery reaching its target), so a long session gives the same kWh on a 1 s step or a 10 s
step. Whatever changes the CP level or trips the RCD calls the listeners at once, as a board's
edge callback would; a listener that is busy (the connector, inside its own step) notes the call
and runs again when it is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from hal.clock import Clock
from hal.roles import CpReading, GridReading, IndicatorState, LockState, MeterReading
from hal.sim.ev import PROFILES, Ev, EvProfile, Output, Quirk

# Nominal positive CP plateau for each load the car presents (IEC 61851-1 Table A.4).
CP_LEVEL_V = {"A": 12.0, "B": 9.0, "C": 6.0, "D": 3.0}
# PP–PE resistor of a Type 2 cable by its ampacity (IEC 61851-1 Table B.2).
PP_OHM = {13.0: 1500.0, 20.0: 680.0, 32.0: 220.0, 63.0: 100.0}
INPUT_NAMES = ("in1", "in2", "in3", "in4")


class PlantFault(Enum):
    CONTACTOR_WELD = "contactor_weld"          # the contacts stay closed once closed
    CONTACTOR_NO_CLOSE = "contactor_no_close"  # the coil does not pull in
    RCD_TRIP = "rcd_trip"                      # a residual current flows
    RCD_SELF_TEST_FAIL = "rcd_self_test_fail"  # the RCD does not trip on its test current
    LOCK_FAIL = "lock_fail"                    # the lock motor does not lock
    PP_CUT = "pp_cut"                          # the cable's PP line is open
    METER_SILENT = "meter_silent"              # the meter stops answering
    TEMP_SENSOR_LOST = "temp_sensor_lost"
    PHASE_RELAY_STUCK = "phase_relay_stuck"    # the 1p/3p relay does not move


Listener = Callable[[], None]


@dataclass
class _Watchdog:
    timeout_s: float = 0.0
    last_kick: float = 0.0
    tripped: bool = False

    def deadline(self) -> float | None:
        """When it trips unless kicked; None while disarmed or already tripped."""
        if self.timeout_s <= 0 or self.tripped:
            return None
        return self.last_kick + self.timeout_s


@dataclass
class Plant:
    clock: Clock
    cable_a: float = 32.0
    phases: int = 3
    nominal_voltage_v: float = 230.0
    default_profile: str = "compact_3p"
    max_step_s: float = 1.0  # longest stretch integrated at one current while the car tapers
    # Called with the absolute time of the plant's next internal event, so a driver can wake it.
    wake_at: Callable[[float], None] = field(default=lambda t: None)

    output: Output = Output.X1
    duty: float = 0.0
    ev: Ev | None = None
    contactor_cmd: bool = False
    contactor_closed: bool = False
    lock_state: LockState = LockState.UNLOCKED
    indicator: IndicatorState = IndicatorState.OFF
    grid_v: tuple[float, ...] = ()
    grid_hz: float = 50.0
    temperature_c: float = 25.0
    inputs: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(INPUT_NAMES, False))
    # Inputs whose wire is cut. Every simulated input has an end-of-line resistor, so a
    # supervised one reads a third level then, and an unsupervised one reads the contact open.
    cut_inputs: set[str] = field(default_factory=set)
    faults: set[PlantFault] = field(default_factory=set)
    rcd_latched: bool = False
    meter_energy_wh: float = 0.0
    meter_sample: MeterReading | None = None
    watchdog: _Watchdog = field(default_factory=_Watchdog)
    # The 1p/3p relay behind the contactor: how many of the wired phases it energises (0: all),
    # how often it moved, and how often it moved with the contactor closed or commanded closed:
    # a switch under load, which must never happen (some cars' chargers do not survive it).
    relay_phases: int = 0
    relay_switches: int = 0
    switched_under_load: int = 0
    last_t: float = 0.0
    _cp_listeners: list[Listener] = field(default_factory=list)
    _rcd_listeners: list[Listener] = field(default_factory=list)
    _input_listeners: list[Listener] = field(default_factory=list)
    _last_cp: CpReading | None = None

    def __post_init__(self) -> None:
        if not self.grid_v:
            self.grid_v = (self.nominal_voltage_v,) * 3
        if not self.relay_phases:
            self.relay_phases = self.phases
        self.last_t = self.clock.now()
        self._sample_meter(self.last_t)
        self._last_cp = self.cp_reading()

    # ---- time -------------------------------------------------------------------------------

    def advance(self, now: float | None = None) -> None:
        """Let time pass up to ``now``, event by event."""
        now = self.clock.now() if now is None else now
        if now <= self.last_t:
            return
        while self.last_t < now:
            nxt = now
            ev = self.ev
            if ev is not None:
                due = ev.next_due()
                if due is not None and self.last_t < due < nxt:
                    nxt = due
                power = self._ev_power_w()
                to_full = ev.seconds_to_target(power)
                if to_full is not None and self.last_t + to_full < nxt:
                    nxt = self.last_t + to_full
                if power > 0 and ev.soc > ev.profile.taper_soc:
                    nxt = min(nxt, self.last_t + self.max_step_s)
            trips_at = self.watchdog.deadline()
            if trips_at is not None and self.last_t < trips_at < nxt:
                nxt = trips_at  # it opens the contactor then, not at the end
            if nxt <= self.last_t:
                # A crossing closer than one float step: integrate to the end in one go.
                nxt = now
            self._integrate(nxt - self.last_t)
            self.last_t = nxt
            self._check_watchdog(nxt)
            if ev is not None:
                ev.apply_due(nxt)
                ev.sense(self.output, self.duty, nxt)
        self._sample_meter(now)
        self._announce()

    def _integrate(self, dt: float) -> None:
        if dt <= 0 or self.ev is None:
            return
        wh = self._ev_power_w() * dt / 3600.0
        if wh > 0:
            self.meter_energy_wh += self.ev.charge(wh)

    def _ev_power_w(self) -> float:
        return sum(self._phase_power_w())

    def _phase_currents(self) -> tuple[float, float, float]:
        ev = self.ev
        if ev is None or not self._powered():
            return (0.0, 0.0, 0.0)
        amps = ev.draw_a(True)
        used = min(ev.profile.phases, self.energised_phases())
        return tuple(amps if i < used else 0.0 for i in range(3))  # type: ignore[return-value]

    def _phase_power_w(self) -> tuple[float, ...]:
        return tuple(v * i for v, i in zip(self.grid_v, self._phase_currents(), strict=True))

    def energised_phases(self) -> int:
        return min(self.relay_phases, self.phases)

    def grid_live(self) -> bool:
        return any(v > 0.5 * self.nominal_voltage_v for v in self.grid_v)

    def _powered(self) -> bool:
        return self.contactor_closed and self.grid_live()

    def _sample_meter(self, now: float) -> None:
        if PlantFault.METER_SILENT in self.faults:
            return
        currents = self._phase_currents()
        self.meter_sample = MeterReading(
            at=now, voltage_v=self.grid_v, current_a=currents,
            power_w=tuple(v * i for v, i in zip(self.grid_v, currents, strict=True)),
            energy_wh=self.meter_energy_wh)

    def next_event(self) -> float | None:
        """When the plant next changes by itself; a driver advances it then."""
        candidates: list[float] = []
        trips_at = self.watchdog.deadline()
        if trips_at is not None:
            candidates.append(trips_at)
        ev = self.ev
        if ev is not None:
            due = ev.next_due()
            if due is not None:
                candidates.append(due)
            power = self._ev_power_w()
            to_full = ev.seconds_to_target(power)
            if to_full is not None:
                candidates.append(self.last_t + to_full)
                if ev.soc > ev.profile.taper_soc:
                    candidates.append(self.last_t + self.max_step_s)
        return min(candidates) if candidates else None

    # ---- what the controller drives ---------------------------------------------------------

    def drive_pilot(self, output: Output, duty: float = 0.0) -> None:
        self.advance()
        if self.watchdog.tripped:
            output, duty = Output.F, 0.0
        self.output, self.duty = output, duty
        if self.ev is not None:
            self.ev.sense(output, duty, self.last_t)
        self._changed()

    def drive_contactor(self, closed: bool) -> None:
        self.advance()
        self.contactor_cmd = closed
        if closed and not self.watchdog.tripped:
            if PlantFault.CONTACTOR_NO_CLOSE not in self.faults:
                self.contactor_closed = True
        elif PlantFault.CONTACTOR_WELD not in self.faults or not self.contactor_closed:
            self.contactor_closed = False
        self._changed()

    def drive_phase_relay(self, phases: int) -> None:
        if phases not in (1, 3) or phases > self.phases:
            raise PlantError(f"the phase relay energises 1 or {self.phases} phases, not {phases}")
        self.advance()
        if phases != self.relay_phases:
            if self.contactor_cmd or self.contactor_closed:
                self.switched_under_load += 1  # asked under load, whether it moves or not
            if PlantFault.PHASE_RELAY_STUCK not in self.faults:
                self.relay_phases = phases
                self.relay_switches += 1
        self._changed()

    def drive_lock(self, locked: bool) -> None:
        if locked and PlantFault.LOCK_FAIL in self.faults:
            return
        if locked and self.ev is None:
            return
        self.lock_state = LockState.LOCKED if locked else LockState.UNLOCKED

    # ---- what the controller reads ----------------------------------------------------------

    def cp_reading(self) -> CpReading:
        ev = self.ev
        if ev is not None and ev.has(Quirk.CP_SHORT):
            return CpReading(0.0, 0.0)
        if self.output is Output.F:
            return CpReading(-12.0, -12.0)
        if ev is None:
            load = "A"
        elif not ev.s2_closed:
            load = "B"
        else:
            load = "D" if ev.has(Quirk.VENTILATION) else "C"
        high = CP_LEVEL_V[load]
        if self.output is Output.X1:
            return CpReading(high, high)
        low = -high if (ev is not None and ev.has(Quirk.MISSING_DIODE)) else -12.0
        return CpReading(high, low)

    def pp_ohm(self) -> float | None:
        if self.ev is None or PlantFault.PP_CUT in self.faults:
            return None
        return PP_OHM[self.cable_a]

    def rcd_tripped(self) -> bool:
        return self.rcd_latched

    def grid_reading(self) -> GridReading:
        return GridReading(at=self.last_t, voltage_v=self.grid_v, frequency_hz=self.grid_hz)

    def temperature(self) -> float | None:
        return None if PlantFault.TEMP_SENSOR_LOST in self.faults else self.temperature_c

    # ---- listeners ---------------------------------------------------------------------------

    def on_cp_change(self, callback: Listener) -> None:
        self._cp_listeners.append(callback)

    def on_rcd_trip(self, callback: Listener) -> None:
        self._rcd_listeners.append(callback)

    def on_input_change(self, callback: Listener) -> None:
        self._input_listeners.append(callback)

    def set_input(self, name: str, closed: bool) -> None:
        """Close or open a dry contact; listeners hear of it at once, as of a GPIO edge."""
        self._need_input(name)
        self.advance()
        if self.inputs[name] != closed:
            self.inputs[name] = closed
            self._input_changed()

    def cut_input(self, name: str, cut: bool) -> None:
        """Cut or mend the wire to an input."""
        self._need_input(name)
        self.advance()
        if (name in self.cut_inputs) != cut:
            if cut:
                self.cut_inputs.add(name)
            else:
                self.cut_inputs.discard(name)
            self._input_changed()

    def _need_input(self, name: str) -> None:
        if name not in self.inputs:
            raise PlantError(f"no input {name!r}; the plant has {', '.join(self.inputs)}")

    def _input_changed(self) -> None:
        for cb in self._input_listeners:
            cb()

    def _changed(self) -> None:
        self._sample_meter(self.last_t)
        self._announce()

    def _announce(self) -> None:
        reading = self.cp_reading()
        if reading != self._last_cp:
            self._last_cp = reading
            for cb in self._cp_listeners:
                cb()
        nxt = self.next_event()
        if nxt is not None:
            self.wake_at(nxt)

    # ---- watchdog -----------------------------------------------------------------------------

    def arm_watchdog(self, timeout_s: float) -> None:
        self.watchdog = _Watchdog(timeout_s=timeout_s, last_kick=self.clock.now())

    def kick_watchdog(self) -> None:
        self.watchdog.last_kick = self.clock.now()

    def _check_watchdog(self, now: float) -> None:
        w = self.watchdog
        trips_at = w.deadline()
        if trips_at is not None and now >= trips_at:
            # What the hardware does when the host goes silent: PWM off, contactor open.
            w.tripped = True
            self.output, self.duty = Output.F, 0.0
            if PlantFault.CONTACTOR_WELD not in self.faults:
                self.contactor_closed = False
            if self.ev is not None:
                self.ev.sense(self.output, self.duty, now)

    # ---- what a test, a jig or a scenario does -----------------------------------------------

    def plug(self, profile: EvProfile | None = None) -> None:
        if self.ev is not None:
            raise PlantError("a car is already plugged in; unplug it first")
        self.advance()
        self.ev = Ev.plug(profile or PROFILES[self.default_profile])
        self.ev.sense(self.output, self.duty, self.last_t)
        self._changed()

    def unplug(self) -> None:
        if self.ev is None:
            raise PlantError("no car is plugged in")
        self.advance()
        self.ev = None
        self._changed()

    def ev_stop(self) -> None:
        """The driver stops charging from the car (the car opens S2)."""
        ev = self._need_ev()
        self.advance()
        ev.user_stopped = True
        ev.sense(self.output, self.duty, self.last_t)
        self._changed()

    def ev_resume(self) -> None:
        ev = self._need_ev()
        self.advance()
        ev.user_stopped = False
        ev.sense(self.output, self.duty, self.last_t)
        self._changed()

    def set_quirk(self, quirk: Quirk, on: bool) -> None:
        ev = self._need_ev()
        self.advance()
        quirks = set(ev.profile.quirks)
        (quirks.add if on else quirks.discard)(quirk)
        ev.profile = replace(ev.profile, quirks=frozenset(quirks))
        ev.sense(self.output, self.duty, self.last_t)
        self._changed()

    def set_fault(self, fault: PlantFault, on: bool) -> None:
        self.advance()
        if on:
            self.faults.add(fault)
        else:
            self.faults.discard(fault)
        if fault is PlantFault.RCD_TRIP and on:
            self.rcd_latched = True
            for cb in self._rcd_listeners:
                cb()
        if fault is PlantFault.CONTACTOR_NO_CLOSE and on:
            self.contactor_closed = False
        if fault is PlantFault.LOCK_FAIL and on and self.lock_state is LockState.LOCKED:
            self.lock_state = LockState.FAULT
        self._changed()

    def reset_rcd(self) -> None:
        self.rcd_latched = PlantFault.RCD_TRIP in self.faults

    def rcd_self_test_passes(self) -> bool:
        return PlantFault.RCD_SELF_TEST_FAIL not in self.faults

    def set_grid(self, voltage_v: tuple[float, ...] | None, frequency_hz: float | None) -> None:
        self.advance()
        if voltage_v is not None:
            self.grid_v = voltage_v
        if frequency_hz is not None:
            self.grid_hz = frequency_hz
        self._changed()

    def _need_ev(self) -> Ev:
        if self.ev is None:
            raise PlantError("no car is plugged in")
        return self.ev

    def snapshot(self) -> dict[str, Any]:
        """Everything a test or a jig may want to look at, as plain JSON values."""
        self.advance()
        ev = self.ev
        cp = self.cp_reading()
        m = self.meter_sample
        return {
            "time": self.last_t,
            "pilot": {"output": self.output.value, "duty": self.duty,
                      "high_v": cp.high_v, "low_v": cp.low_v},
            "contactor": {"commanded": self.contactor_cmd, "closed": self.contactor_closed},
            "lock": self.lock_state.value,
            "indicator": self.indicator.value,
            "rcd_tripped": self.rcd_latched,
            "grid": {"voltage_v": list(self.grid_v), "frequency_hz": self.grid_hz},
            "temperature_c": self.temperature_c,
            "inputs": dict(self.inputs),
            "cut_inputs": sorted(self.cut_inputs),
            "faults": sorted(f.value for f in self.faults),
            "watchdog_tripped": self.watchdog.tripped,
            "phase_relay": {"phases": self.energised_phases(), "switches": self.relay_switches,
                            "switched_under_load": self.switched_under_load},
            "meter": None if m is None else {
                "at": m.at, "current_a": list(m.current_a), "power_w": list(m.power_w),
                "energy_wh": m.energy_wh},
            "cable_a": self.cable_a,
            "ev": None if ev is None else {
                "profile": ev.profile.name, "soc": ev.soc, "target_soc": ev.profile.target_soc,
                "battery_kwh": ev.profile.battery_kwh, "phases": ev.profile.phases,
                "max_current_a": ev.profile.max_current_a, "s2_closed": ev.s2_closed,
                "asleep": ev.asleep, "user_stopped": ev.user_stopped,
                "current_a": ev.draw_a(self._powered()), "energy_wh": ev.energy_wh,
                "quirks": sorted(q.value for q in ev.profile.quirks)},
        }


class PlantError(Exception):
    """A plant command that makes no sense in the plant's present state."""
