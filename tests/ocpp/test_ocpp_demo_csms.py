"""The demo CSMS of the README (`python -m tools.csms`): a station boots against it and a card
starts a transaction."""

from __future__ import annotations

from typing import Any

from ocpp_station_rig import StationRig
from websockets.asyncio.server import serve
from websockets.typing import Subprotocol

from tools import csms as demo


class DemoCsms:
    def __init__(self) -> None:
        self.server: Any = None
        self.url = ""

    async def __aenter__(self) -> DemoCsms:
        self.server = await serve(demo._handle, "127.0.0.1", 0,
                                  subprotocols=[Subprotocol(p) for p in demo.STATIONS])
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ocpp"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


def test_demo_csms_accepts_a_station_and_its_cards(tmp_path, capsys):
    async def body(rig: StationRig) -> None:
        await rig.until(lambda: rig.station.online)
        rig.do("plug", profile="compact_3p")
        rig.do("tap", id_token="ANY-CARD")
        await rig.until(lambda: rig.status()["contactor"])

    StationRig.run(tmp_path, body, csms_factory=DemoCsms)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "BootNotification" in out and '"eventType": "Started"' in out
