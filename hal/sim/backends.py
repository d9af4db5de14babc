"""The HAL roles played by the simulated plant, and the driver that lets its time pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hal.roles import (
    ContactorFeedback,
    CpReading,
    GridReading,
    IndicatorState,
    LockState,
    MeterReading,
)
from hal.sim.ev import Output
from hal.sim.plant import Plant

RCD_SELF_TEST_S = 0.2  # a test current is applied for about this long


class SimControlPilot:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def set_duty(self, percent: float) -> None:
        self._plant.drive_pilot(Output.PWM, percent)

    def set_x1(self) -> None:
        self._plant.drive_pilot(Output.X1)

    def set_f(self) -> None:
        self._plant.drive_pilot(Output.F)

    def read(self) -> CpReading:
        self._plant.advance()
        return self._plant.cp_reading()

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._plant.on_cp_change(callback)


class SimProximityPilot:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def read_ohm(self) -> float | None:
        return self._plant.pp_ohm()


class SimContactor:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def close(self) -> None:
        self._plant.drive_contactor(True)

    def open(self) -> None:
        self._plant.drive_contactor(False)

    def feedback(self) -> ContactorFeedback:
        p = self._plant
        return ContactorFeedback(aux_closed=p.contactor_closed,
                                 voltage_present=p.contactor_closed and p.grid_live())


class SimRcd:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def tripped(self) -> bool:
        return self._plant.rcd_tripped()

    def reset(self) -> None:
        self._plant.reset_rcd()

    async def self_test(self) -> bool:
        await asyncio.sleep(RCD_SELF_TEST_S)
        return self._plant.rcd_self_test_passes()

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._plant.on_rcd_trip(callback)


class SimLock:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def lock(self) -> None:
        self._plant.drive_lock(True)

    def unlock(self) -> None:
        self._plant.drive_lock(False)

    def state(self) -> LockState:
        return self._plant.lock_state


class SimIndicator:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def show(self, state: IndicatorState) -> None:
        self._plant.indicator = state


class SimMeter:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def read(self) -> MeterReading | None:
        self._plant.advance()
        return self._plant.meter_sample


class SimGridMonitor:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def read(self) -> GridReading | None:
        self._plant.advance()
        return self._plant.grid_reading()


class SimInputs:
    """The plant's inputs; those in ``supervised`` use the plant's end-of-line resistors."""

    def __init__(self, plant: Plant, supervised: frozenset[str] = frozenset()) -> None:
        self._plant = plant
        self._supervised = supervised

    def names(self) -> tuple[str, ...]:
        return tuple(self._plant.inputs)

    def read(self, name: str) -> bool | None:
        if name in self._plant.cut_inputs:
            return None if name in self._supervised else False
        return self._plant.inputs[name]

    def supervised(self) -> frozenset[str]:
        return self._supervised

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._plant.on_input_change(callback)


class SimTemperature:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def read_c(self) -> float | None:
        return self._plant.temperature()


class SimWatchdog:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def arm(self, timeout_s: float) -> None:
        self._plant.arm_watchdog(timeout_s)

    def kick(self) -> None:
        self._plant.advance()  # a kick after the window has run out must not save it
        self._plant.kick_watchdog()

    def disarm(self) -> None:
        self._plant.arm_watchdog(0.0)

    def tripped(self) -> bool:
        self._plant.advance()
        return self._plant.watchdog.tripped


class SimPhaseSwitch:
    def __init__(self, plant: Plant) -> None:
        self._plant = plant

    def set_phases(self, n: int) -> None:
        self._plant.drive_phase_relay(n)

    def phases(self) -> int:
        return self._plant.energised_phases()


class PlantDriver:
    """Runs the plant on the event loop: it advances the plant whenever the plant says it will
    change by itself (a car reacting, a battery filling, a watchdog running out)."""

    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        self._timer: asyncio.TimerHandle | None = None
        self._due: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.plant.wake_at = self._wake_at
        nxt = self.plant.next_event()
        if nxt is not None:
            self._wake_at(nxt)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._due = None
        self.plant.wake_at = lambda t: None

    def _wake_at(self, when: float) -> None:
        if self._loop is None or (self._due is not None and self._due <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._due = when
        delay = max(0.0, when - self.plant.clock.now())
        self._timer = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = self._due = None
        self.plant.advance()
        nxt = self.plant.next_event()
        if nxt is not None:
            self._wake_at(nxt)
