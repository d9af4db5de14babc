"""The real connector on the real simulated plant, in virtual time, for scenario tests.

    def test_something(tmp_path):
        async def scenario(rig: Rig) -> None:
            rig.plant.plug(PROFILES["compact_3p"])
            await rig.until(10.0)
            assert rig.plant.contactor_closed
        Rig.run(tmp_path, scenario)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from firmware.core.iec61851 import Phase
from firmware.evse.connector import Connector
from firmware.evse.limit_port import LimitPort
from firmware.evse.session import Session
from firmware.store.db import Store
from firmware.virtual_time import run_virtual
from hal.board import Board, load_board
from hal.clock import VirtualClock
from hal.hardware import open_hardware
from hal.sim.ev import PROFILES
from hal.sim.plant import Plant


class Rig:
    def __init__(self, tmp_path: Path, board: Board | None = None) -> None:
        self.board = board or load_board("sim")
        self.clock = VirtualClock()
        self.t0 = self.clock.now()
        self.hw = open_hardware(self.board, self.clock)
        assert self.hw.plant is not None
        self.plant: Plant = self.hw.plant
        self.store = Store(tmp_path / "voltpilot.db")
        self.limits = LimitPort()
        self.connector = Connector(1, self.board, self.hw, self.clock, self.store, self.limits)
        self.finished: list[Session] = []
        self.connector.session_listeners.append(self.finished.append)
        # When the controller commanded the contactor open/closed (clock time).
        self.open_commands: list[float] = []
        self.close_commands: list[float] = []
        contactor = self.hw.contactor
        opener, closer = contactor.open, contactor.close

        def record_open() -> None:
            self.open_commands.append(self.clock.now())
            opener()

        def record_close() -> None:
            self.close_commands.append(self.clock.now())
            closer()

        contactor.open = record_open  # type: ignore[method-assign]
        contactor.close = record_close  # type: ignore[method-assign]

    @property
    def t(self) -> float:
        """Seconds since the rig started."""
        return self.clock.now() - self.t0

    async def until(self, t: float) -> None:
        """Let the simulation run until ``t`` seconds after start."""
        if t > self.t:
            await asyncio.sleep(t - self.t)

    async def wait_for(self, condition: Callable[[], bool], limit_s: float,
                       step_s: float = 0.01) -> float:
        """Run until ``condition`` holds; returns the time it took. Fails after ``limit_s``."""
        start = self.t
        while not condition():
            if self.t - start > limit_s:
                raise AssertionError(f"condition not met within {limit_s} s")
            await asyncio.sleep(step_s)
        return self.t - start

    async def charging(self, profile: str = "compact_3p") -> None:
        """Plug a car of ``profile`` in and run until the contactor has closed."""
        self.plant.plug(PROFILES[profile])
        await self.wait_for(lambda: self.plant.contactor_closed, 5.0)

    @property
    def phase(self) -> Phase:
        return self.connector.state.phase

    @classmethod
    def run(cls, tmp_path: Path, scenario: Callable[[Rig], Awaitable[None]],
            board: Board | None = None) -> Rig:
        rig = cls(tmp_path, board)

        async def main() -> None:
            rig.hw.start()
            rig.connector.start()
            try:
                await scenario(rig)
            finally:
                rig.connector.shutdown()
                rig.hw.stop()

        run_virtual(main, rig.clock)
        rig.store.close()
        return rig
