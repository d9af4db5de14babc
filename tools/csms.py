"""``python -m tools.csms``: a demo CSMS to try the station against, built with the `ocpp` library.

It accepts every station and every token, answers what a station sends, and prints one line per
message it receives. It is for trying voltpilot out on one machine, not for operating chargers:
it checks no password and keeps nothing.

    .venv/bin/python -m tools.csms --port 9000
    .venv/bin/voltpilot run --board sim --ocpp docs/ocpp.example.toml
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import ocpp.v21
import ocpp.v201
from ocpp.routing import on
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

Handler = Callable[..., Any]


def _on(action: str) -> Callable[[Handler], Handler]:
    """The library's (untyped) handler decorator, typed."""
    decorator: Callable[[Handler], Handler] = on(action)
    return decorator


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _station_class(lib: Any) -> Any:
    result = lib.call_result
    accepted = {"status": "Accepted"}

    class Station(lib.ChargePoint):  # type: ignore[misc]
        async def route_message(self, raw: str) -> None:
            frame = json.loads(raw)
            if frame and frame[0] == 2:
                print(f"{_now()} {self.id} {frame[2]} {json.dumps(frame[3])[:160]}", flush=True)
            await super().route_message(raw)

        @_on("BootNotification")
        def boot(self, **_: Any) -> Any:
            return result.BootNotification(current_time=_now(), interval=300, status="Accepted")

        @_on("Heartbeat")
        def heartbeat(self, **_: Any) -> Any:
            return result.Heartbeat(current_time=_now())

        @_on("StatusNotification")
        def status(self, **_: Any) -> Any:
            return result.StatusNotification()

        @_on("Authorize")
        def authorize(self, **_: Any) -> Any:
            return result.Authorize(id_token_info=accepted)

        @_on("TransactionEvent")
        def transaction(self, **kw: Any) -> Any:
            if "id_token" in kw:
                return result.TransactionEvent(id_token_info=accepted)
            return result.TransactionEvent()

        @_on("MeterValues")
        def meter_values(self, **_: Any) -> Any:
            return result.MeterValues()

        @_on("NotifyReport")
        def notify_report(self, **_: Any) -> Any:
            return result.NotifyReport()

        @_on("SecurityEventNotification")
        def security_event(self, **_: Any) -> Any:
            return result.SecurityEventNotification()

        @_on("FirmwareStatusNotification")
        def firmware_status(self, **_: Any) -> Any:
            return result.FirmwareStatusNotification()

        @_on("LogStatusNotification")
        def log_status(self, **_: Any) -> Any:
            return result.LogStatusNotification()

        @_on("NotifyChargingLimit")
        def notify_limit(self, **_: Any) -> Any:
            return result.NotifyChargingLimit()

        @_on("ClearedChargingLimit")
        def cleared_limit(self, **_: Any) -> Any:
            return result.ClearedChargingLimit()

        @_on("ReportChargingProfiles")
        def report_profiles(self, **_: Any) -> Any:
            return result.ReportChargingProfiles()

        @_on("SignCertificate")
        def sign_certificate(self, **_: Any) -> Any:
            # No CA here: say so instead of leaving the station waiting.
            return result.SignCertificate(status="Rejected")

    return Station


STATIONS = {"ocpp2.1": _station_class(ocpp.v21), "ocpp2.0.1": _station_class(ocpp.v201)}


async def _handle(ws: ServerConnection) -> None:
    identity = ws.request.path.rstrip("/").rsplit("/", 1)[-1] if ws.request else "?"
    protocol = ws.subprotocol or "ocpp2.0.1"
    print(f"{_now()} {identity} connected ({protocol})", flush=True)
    try:
        await STATIONS[protocol](identity, ws).start()
    except Exception as exc:
        print(f"{_now()} {identity} disconnected ({type(exc).__name__})", flush=True)


async def _serve(host: str, port: int) -> None:
    protocols = [Subprotocol(p) for p in STATIONS]
    async with serve(_handle, host, port, subprotocols=protocols) as server:
        print(f"demo CSMS on ws://{host}:{port}/ocpp (stations connect to .../ocpp/<identity>)",
              flush=True)
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.csms", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    args = p.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
