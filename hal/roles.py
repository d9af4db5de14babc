"""The hardware roles a board provides, as typing.Protocol interfaces, and the values they trade.

Reads return the latest sample the backend holds (a backend that talks over a bus keeps its own
copy fresh in its own task), and commands return at once. That keeps the safety path a chain of
plain calls: a CP edge can become a contactor-open command without waiting on any I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CpReading:
    """Control-pilot voltage: the positive plateau and the negative plateau of the PWM.

    With a steady output (X1 or F) both plateaus are the same level.
    """

    high_v: float
    low_v: float


@dataclass(frozen=True, slots=True)
class ContactorFeedback:
    """What the board can see of the contactor; ``None`` where it has no such sensor."""

    aux_closed: bool | None
    voltage_present: bool | None


class LockState(Enum):
    UNLOCKED = "unlocked"
    LOCKED = "locked"
    FAULT = "fault"


class IndicatorState(Enum):
    OFF = "off"
    IDLE = "idle"
    CONNECTED = "connected"
    CHARGING = "charging"
    SUSPENDED = "suspended"
    DISCHARGING_TO_GRID = "discharging_to_grid"
    FAULT = "fault"


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One sample of the meter that sees what flows to the car (per phase L1..L3)."""

    at: float
    voltage_v: tuple[float, ...]
    current_a: tuple[float, ...]
    power_w: tuple[float, ...]
    energy_wh: float

    @property
    def total_power_w(self) -> float:
        return sum(self.power_w)


@dataclass(frozen=True, slots=True)
class GridReading:
    at: float
    voltage_v: tuple[float, ...]
    frequency_hz: float


class ControlPilot(Protocol):
    def set_duty(self, percent: float) -> None:
        """Oscillate ±12 V at 1 kHz with this duty cycle (state x2)."""
        ...

    def set_x1(self) -> None:
        """Steady +12 V: no PWM (state x1, 'not available / pause')."""
        ...

    def set_f(self) -> None:
        """Steady −12 V: state F, 'EVSE not available'."""
        ...

    def read(self) -> CpReading: ...

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called on the event loop when the CP level changes."""
        ...


class ProximityPilot(Protocol):
    def read_ohm(self) -> float | None:
        """PP–PE resistance, or None when no cable is inserted (open circuit)."""
        ...


class Contactor(Protocol):
    def close(self) -> None: ...

    def open(self) -> None: ...

    def feedback(self) -> ContactorFeedback: ...


class Rcd(Protocol):
    def tripped(self) -> bool: ...

    def reset(self) -> None: ...

    async def self_test(self) -> bool:
        """Inject a test residual current; True when the device tripped as it must."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called on the event loop when the RCD trips."""
        ...


class ConnectorLock(Protocol):
    def lock(self) -> None: ...

    def unlock(self) -> None: ...

    def state(self) -> LockState: ...


class Indicator(Protocol):
    def show(self, state: IndicatorState) -> None: ...


class PowerMeter(Protocol):
    def read(self) -> MeterReading | None:
        """The latest sample, or None when the meter has never answered."""
        ...


class GridMonitor(Protocol):
    def read(self) -> GridReading | None: ...


class DigitalInputs(Protocol):
    """Dry-contact inputs (a grid operator's control box, a ripple-control receiver)."""

    def names(self) -> tuple[str, ...]: ...

    def read(self, name: str) -> bool | None:
        """True while the contact is closed; None when the input cannot be read (a supervised
        input that sees a broken wire)."""
        ...

    def supervised(self) -> frozenset[str]:
        """The inputs whose wiring the hardware supervises (an end-of-line resistor gives a
        third level when the wire is cut); only these can report a broken wire."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called on the event loop when an input changes."""
        ...


class TemperatureSensor(Protocol):
    def read_c(self) -> float | None:
        """The hottest monitored point in °C, or None when the sensor is not answering."""
        ...


class Watchdog(Protocol):
    """Hardware that turns PWM off and opens the contactor when the controller goes silent.

    Once it has tripped it holds that safe state until it is armed again.
    """

    def arm(self, timeout_s: float) -> None: ...

    def kick(self) -> None: ...

    def disarm(self) -> None: ...

    def tripped(self) -> bool: ...


class PhaseSwitch(Protocol):
    """The relay (often called C2) that energises one or all three phases behind the main
    contactor. It must only be switched while the main contactor is open: the controller's
    sequence guarantees that, the role does not."""

    def set_phases(self, n: int) -> None:
        """Energise ``n`` phases (1 or 3)."""
        ...

    def phases(self) -> int:
        """How many phases the relay's feedback says are energised now."""
        ...
