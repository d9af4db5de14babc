"""The whole controller (sim board, connector, OCPP station) against a CSMS on real websockets,
in one event loop: virtual time by default, so a day of meter values takes a second.

    def test_x(tmp_path):
        async def body(rig: StationRig) -> None:
            await rig.csms.connected("CP1")
            rig.do("plug", profile="compact_3p")
            ...
        StationRig.run(tmp_path, body)
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ocpp_csms import Csms

from firmware import logs
from firmware.app import Controller, RunOptions
from firmware.virtual_time import VirtualTimeLoop
from hal.board import Board, load_board
from hal.clock import Clock, VirtualClock, WallClock

IDENTITY = "CP1"
PASSWORD = "correct-horse-battery"


def fast_board() -> Board:
    """The sim board with its RCD self-test left to the safety tests: sessions start at once."""
    board = load_board("sim")
    return replace(board, charging=replace(board.charging, rcd_self_test_on_plug=False))


def settings_file(path: Path, url: str, *, identity: str = IDENTITY, **extra: Any) -> Path:
    lines = ["[ocpp]", f'csms_url = "{url}"', f'identity = "{identity}"']
    for key, value in extra.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, list | tuple):
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        else:
            lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


class StationRig:
    def __init__(self, tmp_path: Path, csms: Csms, clock: Clock, *, board: Board | None,
                 virtual: bool, settings: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.csms = csms
        self.clock = clock
        self.board = board or fast_board()
        self.virtual = virtual
        self.settings = settings
        self.data_dir = tmp_path / "data"
        self.controller: Controller | None = None
        self.task: asyncio.Task[int] | None = None
        self.out = io.StringIO()

    # ---- the controller ------------------------------------------------------------------

    async def start(self) -> Controller:
        settings = dict(self.settings)
        url = settings.pop("csms_url", None) or self.csms.url
        path = settings_file(self.tmp_path / "ocpp.toml", url, **settings)
        opts = RunOptions(virtual_time=self.virtual, data_dir=self.data_dir, status="off",
                          log=str(self.data_dir / "voltpilot.log"), ocpp=path,
                          duration=30 * 86400.0 if self.virtual else None)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.controller = Controller(self.board, self.clock, opts, self.out)
        self.task = asyncio.get_running_loop().create_task(self.controller.run())
        while self.controller.station is None or self.controller.connector is None:
            await asyncio.sleep(0.001)
        return self.controller

    async def stop(self) -> int:
        assert self.controller is not None and self.task is not None
        self.controller.stop.set()
        code = await self.task
        self.controller = None
        return code

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def station(self) -> Any:
        assert self.controller is not None
        return self.controller.station

    def do(self, cmd: str, **args: Any) -> dict[str, Any]:
        """A plant or controller command, as the control socket would run it."""
        assert self.controller is not None
        answer: dict[str, Any] = self.controller.table.execute({"cmd": cmd, **args})
        assert answer["ok"], answer
        return answer

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.do("status")["status"]
        return status

    async def plug_and_tap(self, token: str = "CARD1") -> None:
        """The usual start once booted: the CSMS knows the card, a car plugs in, the card is
        presented at the reader."""
        await self.csms.next_call("StatusNotification")
        self.csms.tokens[token] = "Accepted"
        self.do("plug", profile="compact_3p")
        self.do("tap", id_token=token)

    async def until(self, condition: Callable[[], Any], timeout: float = 30.0,
                    step: float = 0.01) -> Any:
        async def poll() -> Any:
            while not (value := condition()):
                await asyncio.sleep(step)
            return value

        return await asyncio.wait_for(poll(), timeout)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    # ---- running a test ----------------------------------------------------------------------

    @staticmethod
    def run(tmp_path: Path, body: Callable[[StationRig], Awaitable[None]], *,
            virtual: bool = True, board: Board | None = None,
            versions: tuple[str, ...] = ("ocpp2.1", "ocpp2.0.1"),
            csms_factory: Callable[[], Csms] | None = None, **settings: Any) -> None:
        clock: Clock
        if virtual:
            vclock = VirtualClock()
            clock = vclock
            loop: asyncio.AbstractEventLoop = VirtualTimeLoop(vclock)
        else:
            clock = WallClock()
            loop = asyncio.new_event_loop()
        (tmp_path / "data").mkdir(parents=True, exist_ok=True)
        # The controller's own log file, as `voltpilot run` would write it (GetLog uploads it).
        with open(tmp_path / "data" / "voltpilot.log", "a", encoding="utf-8") as log_stream:
            logs.setup(clock, log_stream)

            async def main() -> None:
                csms = csms_factory() if csms_factory else Csms(versions, password=PASSWORD)
                settings.setdefault("password", PASSWORD)
                async with csms:
                    rig = StationRig(tmp_path, csms, clock, board=board, virtual=virtual,
                                     settings=settings)
                    await rig.start()
                    try:
                        await body(rig)
                    finally:
                        if rig.controller is not None:
                            await rig.stop()

            try:
                loop.run_until_complete(main())
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
