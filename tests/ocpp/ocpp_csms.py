"""A CSMS for the tests, built with the `ocpp` library on real websockets (127.0.0.1).

It accepts the station, answers what a charging station sends, records every frame it receives
(camelCase, as on the wire), and makes CSMS-initiated calls with ``request(action, payload)``.
Behaviour can be changed while running: ``boot_status``, ``tx_answer`` (idTokenInfo for
TransactionEvent), ``silent`` (stop answering and stop reading, as a half-open peer would).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import ocpp.v21
import ocpp.v201
from ocpp.charge_point import camel_to_snake_case, remove_nones, snake_to_camel_case
from ocpp.routing import on
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _make_cp(version: str) -> type:
    lib = ocpp.v21 if version == "ocpp2.1" else ocpp.v201
    result = lib.call_result

    class Cp(lib.ChargePoint):  # type: ignore[misc, name-defined]
        csms: Csms

        async def route_message(self, raw: str) -> None:
            frame = json.loads(raw)
            self.csms._record(self.id, frame)
            if self.csms.silent:
                return
            await super().route_message(raw)

        @on("BootNotification")
        def boot(self, **_: Any) -> Any:
            return result.BootNotification(current_time=_now(), interval=self.csms.interval,
                                           status=self.csms.boot_status)

        @on("Heartbeat")
        def heartbeat(self, **_: Any) -> Any:
            return result.Heartbeat(current_time=_now())

        @on("StatusNotification")
        def status(self, **_: Any) -> Any:
            return result.StatusNotification()

        @on("TransactionEvent")
        def tx(self, **kw: Any) -> Any:
            if self.csms.reject_tx_events:
                raise ocpp.exceptions.InternalError(description="test CSMS refuses")
            if "id_token" in kw:
                return result.TransactionEvent(id_token_info=self.csms.tx_answer)
            return result.TransactionEvent()

        @on("MeterValues")
        def meter_values(self, **_: Any) -> Any:
            return result.MeterValues()

        @on("Authorize")
        def authorize(self, **kw: Any) -> Any:
            token = kw["id_token"]["id_token"]
            return result.Authorize(id_token_info={"status": self.csms.tokens.get(
                token, "Invalid")})

        @on("NotifyReport")
        def notify_report(self, **_: Any) -> Any:
            return result.NotifyReport()

        @on("SecurityEventNotification")
        def security_event(self, **_: Any) -> Any:
            return result.SecurityEventNotification()

        @on("FirmwareStatusNotification")
        def firmware_status(self, **_: Any) -> Any:
            return result.FirmwareStatusNotification()

        @on("LogStatusNotification")
        def log_status(self, **_: Any) -> Any:
            return result.LogStatusNotification()

        @on("NotifyChargingLimit")
        def notify_limit(self, **_: Any) -> Any:
            return result.NotifyChargingLimit()

        @on("ClearedChargingLimit")
        def cleared_limit(self, **_: Any) -> Any:
            return result.ClearedChargingLimit()

        @on("ReportChargingProfiles")
        def report_profiles(self, **_: Any) -> Any:
            return result.ReportChargingProfiles()

        @on("SignCertificate")
        def sign_certificate(self, **_: Any) -> Any:
            return result.SignCertificate(status="Accepted")

    if version == "ocpp2.1":
        @on("ReportDERControl")
        def report_der(self: Any, **_: Any) -> Any:
            return result.ReportDERControl()

        Cp.report_der = report_der
    return Cp


class Csms:
    def __init__(self, versions: tuple[str, ...] = ("ocpp2.1", "ocpp2.0.1"), *,
                 password: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 interval: int = 300) -> None:
        self.versions = versions
        self.password = password
        self.ssl_context = ssl_context
        self.interval = interval
        self.boot_status = "Accepted"
        self.tx_answer: dict[str, Any] = {"status": "Accepted"}
        self.tokens: dict[str, str] = {}
        self.silent = False
        self.reject_tx_events = False
        self.frames: list[tuple[str, list[Any]]] = []
        self.connections: list[tuple[str, str]] = []  # (identity, subprotocol)
        self.peer_certs: list[bytes | None] = []  # the client certificate of each connection
        self.cps: dict[str, Any] = {}
        self._changed = asyncio.Condition()
        self._server: Any = None
        self.port = 0

    async def __aenter__(self) -> Csms:
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

    async def up(self) -> None:
        """Listen (again, on the same port after a down())."""
        self._server = await serve(self._handle, "127.0.0.1", self.port,
                                   subprotocols=self.versions, process_request=self._check_auth,
                                   ssl=self.ssl_context, ping_interval=None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop listening and drop every connection (a CSMS outage)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ocpp"

    def _check_auth(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.password is None:
            return None
        identity = request.path.rsplit("/", 1)[-1]
        expected = "Basic " + base64.b64encode(
            f"{identity}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return conn.respond(401, "bad credentials\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        identity = ws.request.path.rsplit("/", 1)[-1] if ws.request else "?"
        version = ws.subprotocol or "none"
        cp = _make_cp(version)(identity, ws)
        cp.csms = self
        self.cps[identity] = cp
        self.connections.append((identity, version))
        ssl_object = ws.transport.get_extra_info("ssl_object")
        self.peer_certs.append(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
        await self._notify()
        try:
            await cp.start()
        except Exception:
            return
        finally:
            if self.cps.get(identity) is cp:
                del self.cps[identity]

    def _record(self, identity: str, frame: list[Any]) -> None:
        self.frames.append((identity, frame))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- reading what arrived ------------------------------------------------------------

    def calls(self, action: str | None = None) -> list[dict[str, Any]]:
        return [f[3] for _, f in self.frames
                if f[0] == 2 and (action is None or f[2] == action)]

    def call_ids(self, action: str) -> list[str]:
        return [f[1] for _, f in self.frames if f[0] == 2 and f[2] == action]

    def transaction_events(self) -> list[dict[str, Any]]:
        """TransactionEvents as a CSMS that follows OCPP-J keeps them: a message id seen
        before is a re-send of the same message, not a new event."""
        seen: set[str] = set()
        out = []
        for _, f in self.frames:
            if f[0] == 2 and f[2] == "TransactionEvent" and f[1] not in seen:
                seen.add(f[1])
                out.append(f[3])
        return out

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        async def until() -> Any:
            async with self._changed:
                while True:
                    value = predicate()
                    if value:
                        return value
                    await self._changed.wait()

        return await asyncio.wait_for(until(), timeout)

    async def next_call(self, action: str, *, after: int = 0, timeout: float = 10.0,
                        where: Callable[[dict[str, Any]], bool] = lambda p: True
                        ) -> dict[str, Any]:
        """The first ``action`` payload beyond the first ``after`` ones that satisfies
        ``where``."""
        def find() -> list[dict[str, Any]] | None:
            # Wrapped in a list: an empty payload (Heartbeat) is a find, though falsy.
            for payload in self.calls(action)[after:]:
                if where(payload):
                    return [payload]
            return None

        found: list[dict[str, Any]] = await self.wait_for(find, timeout)
        return found[0]

    async def connected(self, identity: str, timeout: float = 10.0) -> Any:
        return await self.wait_for(lambda: self.cps.get(identity), timeout)

    # ---- calling the station ------------------------------------------------------------

    async def request(self, identity: str, action: str, payload: dict[str, Any],
                      timeout: float = 10.0) -> dict[str, Any]:
        cp = await self.connected(identity, timeout)
        lib = ocpp.v21 if isinstance(cp, ocpp.v21.ChargePoint) else ocpp.v201
        message = getattr(lib.call, action)(**camel_to_snake_case(payload))
        answer = await asyncio.wait_for(cp.call(message, suppress=False), timeout)
        out: dict[str, Any] = snake_to_camel_case(remove_nones(asdict(answer)))
        return out



class FreezableProxy:
    """A TCP proxy that can stop forwarding in both directions without closing anything: the
    CSMS as a station sees it across a dead NAT or a pulled cable (a half-open connection)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                while self.frozen:
                    await asyncio.sleep(0.05)
                dst.write(data)
                await dst.drain()
            dst.close()

        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


class ProxiedCsms(Csms):
    """The test CSMS behind a FreezableProxy: the station's URL is the proxy's."""

    proxy: FreezableProxy | None = None

    async def up(self) -> None:
        await super().up()
        if self.proxy is None:
            self.proxy = await FreezableProxy(self.port).__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        if self.proxy is not None:
            await self.proxy.__aexit__(*exc)

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url
