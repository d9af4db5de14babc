"""A perfect board for driving the pure state machine by hand: the CP reading follows the car's
load and our pilot, the contactor and lock feedback follow our commands unless a test says
otherwise. Time moves only when the test moves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from firmware.core import iec61851 as core
from firmware.core.duty import Pilot, PilotMode
from firmware.core.iec61851 import ChargerState, Inputs, Step
from firmware.core.limits import Limit, LimitSource, arbitrate
from firmware.core.safety import RcdTest
from hal.board import Board, Role
from hal.roles import ContactorFeedback, CpReading, LockState, MeterReading

LEVEL = {"A": 12.0, "B": 9.0, "C": 6.0, "D": 3.0}


def cp_reading(load: str, pilot: Pilot, diode: bool = True) -> CpReading:
    """What the CP shows with the car presenting ``load`` (A-D, E for a short, or a voltage)."""
    if load == "E":
        return CpReading(0.0, 0.0)
    if pilot.mode is PilotMode.F:
        return CpReading(-12.0, -12.0)
    high = LEVEL[load] if load in LEVEL else float(load)
    if pilot.mode is PilotMode.X1:
        return CpReading(high, high)
    return CpReading(high, -12.0 if diode or load == "A" else -high)


@dataclass
class CoreBench:
    board: Board
    now: float = 1000.0
    state: ChargerState = field(default_factory=ChargerState)
    load: str = "A"
    limits: list[Limit] = field(default_factory=list)
    authorized: bool = True
    diode: bool = True
    rcd_tripped: bool = False
    rcd_test: RcdTest = RcdTest.PASSED
    welded: bool = False               # the contacts stay closed once they have closed
    stuck_closed: bool = False         # the contacts are closed whatever we command
    no_close: bool = False
    lock_fails: bool = False
    pp_fault: bool = False
    temperature_c: float | None = 25.0
    current_a: float | None = None       # measured per phase; None: follows the offer
    meter_silent_since: float | None = None
    last: Step | None = None
    history: list[Step] = field(default_factory=list)

    def limit_amps(self, amps: float, source: LimitSource = LimitSource.OCPP_TX) -> None:
        self.limits = [lim for lim in self.limits if lim.source is not source]
        self.limits.append(Limit.of(source, "test", amps=amps))

    def inputs(self) -> Inputs:
        s = self.state
        closed = s.contactor or self.stuck_closed or (self.welded and self._ever_closed())
        if self.no_close:
            closed = False
        rating = Limit.of(LimitSource.BOARD_RATING, "rating",
                          amps=self.board.ratings.max_current_a)
        limit = arbitrate([rating, *self.limits], self.now, phases=self.board.ratings.phases,
                          voltage_v=230.0)
        lock = None
        if self.last is not None and self.board.has(Role.LOCK):
            lock = (LockState.LOCKED if self.last.command.lock and not self.lock_fails
                    else LockState.UNLOCKED)
        elif self.board.has(Role.LOCK):
            lock = LockState.UNLOCKED
        amps = self.current_a if self.current_a is not None else (
            s.offered_a if s.contactor else 0.0)
        meter_at = self.now if self.meter_silent_since is None else self.meter_silent_since
        meter = MeterReading(at=meter_at, voltage_v=(230.0,) * 3, current_a=(amps,) * 3,
                             power_w=(230.0 * amps,) * 3, energy_wh=0.0)
        return Inputs(cp=cp_reading(self.load, s.pilot, self.diode), limit=limit,
                      authorized=self.authorized,
                      feedback=ContactorFeedback(aux_closed=closed, voltage_present=closed),
                      rcd_tripped=self.rcd_tripped, rcd_test=self.rcd_test, lock=lock,
                      pp_fault=self.pp_fault, meter=meter, temperature_c=self.temperature_c)

    def _ever_closed(self) -> bool:
        return any(step.command.contactor for step in self.history)

    def step(self, dt: float = 0.0, **changes: Any) -> Step:
        """Advance time by ``dt``, apply attribute changes, then run one step."""
        self.now += dt
        for key, value in changes.items():
            setattr(self, key, value)
        result = core.step(self.state, self.inputs(), self.now, self.board)
        self.state, self.last = result.state, result
        self.history.append(result)
        return result

    def settle(self, steps: int = 3, dt: float = 0.0) -> Step:
        """A few steps, as the shell does when the CP changes after a new pilot."""
        result = self.step(dt)
        for _ in range(steps - 1):
            result = self.step()
        return result

    def run_for(self, seconds: float, tick: float = 0.05) -> Step:
        end = self.now + seconds
        result = self.step()
        while self.now + tick <= end + 1e-9:
            result = self.step(tick)
        return result

    def charging(self) -> Step:
        """Plug in a car and bring it to C2 with the contactor closed."""
        self.step(load="B")
        self.settle()
        self.step(load="C")
        result = self.settle()
        assert result.state.phase is core.Phase.CHARGING, result.state
        return result
