"""SetChargingProfile sent by the CSMS → PWM duty changed on the pilot.

The whole controller (``firmware.app.Controller``: sim board, connector, OCPP station) runs in
this process on a real asyncio loop on wall-clock time, with the control pilot wrapped so that
every ``set_duty`` call is timed. The CSMS is built with the `ocpp` library (its v21/v201
ChargePoint, schema validation on) and runs in a process of its own, as it runs on another
machine in reality; the station connects to it on 127.0.0.1 (security profile 1, it negotiates
OCPP 2.1).

A car is plugged in and a card tapped; the CSMS accepts the Authorize, the transaction starts
and the car charges. Then, one at a time, the benchmark asks the CSMS process (a line on its
stdin) to send a SetChargingProfile: ChargingStationMaxProfile on EVSE 0, the same profile id
every time (so each one replaces the last), alternating 10 A and 16 A. The CSMS process takes
t0 on CLOCK_MONOTONIC right before the CALL frame goes to its websocket (after the library's own
validation of the request) and reports it with the response status. The latency runs from t0 to
the first ``set_duty`` call with the duty of the new limit, taken on the same clock here:
CLOCK_MONOTONIC is one clock for the whole machine, so no synchronisation between the two
processes is involved. It includes the loopback websocket, the station's frame handling and
schema check, the profile validation and storage (SQLite), the composite schedule, the limit
arbiter and the connector's step. The events are spaced by a random 10–50 ms after the previous
one has settled, so they do not lock onto the station's timers. There is no synthetic
background load on the loop: the station's own work (meter values, heartbeats) goes on as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ocpp.v21
import ocpp.v201
import websockets
from ocpp.charge_point import camel_to_snake_case
from ocpp.routing import on
from websockets.asyncio.server import ServerConnection, serve

from bench import (
    OCPP_IDENTITY,
    ROOT,
    Result,
    Spec,
    ms,
    ocpp_settings_file,
    percentile,
)
from bench.latency import Probe, TimedPilot, logging_to
from bench.trigger import now_ns
from firmware.app import Controller, RunOptions
from firmware.core.duty import duty_for_current
from hal.board import load_board
from hal.clock import WallClock

SPEC = Spec("ocpp_latency", "OCPP SetChargingProfile sent → PWM duty changed",
            "p99 ≤ 100 ms")
TARGET_MS = 100.0
EVENTS = 200
AMPS = (10.0, 16.0)
GAP_S = (0.010, 0.050)
CARD = "BENCH-CARD-1"
START_TIMEOUT_S = 60.0   # the CSMS process up, the station booted, the car charging
REPLY_TIMEOUT_S = 10.0   # for the CSMS's report of one SetChargingProfile
# A car that never fills, so it charges through the whole run.
EV = {"battery_kwh": 100_000.0}


# ---- the CSMS process --------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _charge_point_class(version: str) -> Any:
    """A CSMS-side ChargePoint of the `ocpp` library that answers what the station sends."""
    lib = ocpp.v21 if version == "ocpp2.1" else ocpp.v201
    result = lib.call_result

    class Cp(lib.ChargePoint):  # type: ignore[misc, name-defined]
        @on("BootNotification")  # type: ignore[untyped-decorator]
        def boot(self, **_: Any) -> Any:
            return result.BootNotification(current_time=_now_iso(), interval=300,
                                           status="Accepted")

        @on("Heartbeat")  # type: ignore[untyped-decorator]
        def heartbeat(self, **_: Any) -> Any:
            return result.Heartbeat(current_time=_now_iso())

        @on("StatusNotification")  # type: ignore[untyped-decorator]
        def status(self, **_: Any) -> Any:
            return result.StatusNotification()

        @on("Authorize")  # type: ignore[untyped-decorator]
        def authorize(self, **_: Any) -> Any:
            return result.Authorize(id_token_info={"status": "Accepted"})

        @on("TransactionEvent")  # type: ignore[untyped-decorator]
        def transaction_event(self, **_: Any) -> Any:
            return result.TransactionEvent()

        @on("MeterValues")  # type: ignore[untyped-decorator]
        def meter_values(self, **_: Any) -> Any:
            return result.MeterValues()

        @on("SecurityEventNotification")  # type: ignore[untyped-decorator]
        def security_event(self, **_: Any) -> Any:
            return result.SecurityEventNotification()

        @on("NotifyChargingLimit")  # type: ignore[untyped-decorator]
        def notify_limit(self, **_: Any) -> Any:
            return result.NotifyChargingLimit()

        @on("ClearedChargingLimit")  # type: ignore[untyped-decorator]
        def cleared_limit(self, **_: Any) -> Any:
            return result.ClearedChargingLimit()

    return Cp


class StampedSocket:
    """The CSMS's websocket as the ChargePoint sees it; t0 is taken right before a
    SetChargingProfile CALL is handed to the socket."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.t0 = 0

    async def recv(self) -> str | bytes:
        return await self.ws.recv()

    async def send(self, message: str) -> None:
        t = now_ns()
        if message.startswith("[2,") and '"SetChargingProfile"' in message[:80]:
            self.t0 = t
        await self.ws.send(message)


def _profile(amps: float) -> dict[str, Any]:
    return {"evseId": 0, "chargingProfile": {
        "id": 1, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                              "startSchedule": "2025-01-01T00:00:00Z",
                              "chargingSchedulePeriod": [{"startPeriod": 0, "limit": amps}]}]}}


def _say(message: dict[str, Any]) -> None:
    os.write(sys.stdout.fileno(), (json.dumps(message) + "\n").encode())


async def _csms() -> None:
    """Serve the station; for each command line on stdin send a SetChargingProfile and report
    t0 and the answer on stdout. Ends at EOF on stdin."""
    loop = asyncio.get_running_loop()
    stations: asyncio.Queue[tuple[Any, StampedSocket, Any]] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        version = ws.subprotocol or "ocpp2.0.1"
        socket = StampedSocket(ws)
        cp = _charge_point_class(version)(OCPP_IDENTITY, socket)
        lib = ocpp.v21 if version == "ocpp2.1" else ocpp.v201
        await stations.put((cp, socket, lib))
        with contextlib.suppress(websockets.ConnectionClosed):
            await cp.start()

    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with serve(handler, "127.0.0.1", 0, subprotocols=[
            websockets.Subprotocol("ocpp2.1"), websockets.Subprotocol("ocpp2.0.1")]) as server:
        _say({"port": server.sockets[0].getsockname()[1]})
        cp, socket, lib = await stations.get()
        while line := await stdin.readline():
            command = json.loads(line)
            request = lib.call.SetChargingProfile(**camel_to_snake_case(
                _profile(command["amps"])))
            answer = await cp.call(request)
            _say({"i": command["i"], "t0": socket.t0, "status": answer.status})


def csms_main() -> int:
    """``python -m bench.ocpp_latency csms``: the CSMS process (run by the benchmark)."""
    asyncio.run(_csms())
    return 0


class CsmsProcess:
    """The benchmark's end of the CSMS process: commands on its stdin, reports from its
    stdout, which the loop watches with add_reader."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.ocpp_latency", "csms"],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self._partial = b""
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        data = os.read(self.fd, 65536)
        if not data:
            asyncio.get_running_loop().remove_reader(self.fd)
            waiting: list[asyncio.Future[Any]] = [self.port, *self._replies.values()]
            for future in waiting:
                if not future.done():
                    future.set_exception(RuntimeError("the CSMS process ended"))
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "port" in message:
                self.port.set_result(int(message["port"]))
                continue
            reply = self._replies.pop(int(message["i"]), None)
            if reply is not None and not reply.done():
                reply.set_result(message)

    def send_profile(self, i: int, amps: float) -> asyncio.Future[dict[str, Any]]:
        """Have the CSMS send event ``i``; its report (t0, status) arrives in the future."""
        assert self.proc.stdin is not None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[i] = future
        self.proc.stdin.write(json.dumps({"i": i, "amps": amps}).encode() + b"\n")
        return future

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.fd)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---- the station side --------------------------------------------------------------------


@dataclass
class Outcome:
    probe: Probe
    rejected: list[str] = field(default_factory=list)   # statuses other than Accepted
    version: str = ""


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {START_TIMEOUT_S:g} s")
        await asyncio.sleep(0.01)



@contextlib.contextmanager
def _csms_process() -> Iterator[CsmsProcess]:
    csms = CsmsProcess()
    try:
        yield csms
    finally:
        csms.close()


async def _measure(data: Path, clock: WallClock, events: int) -> Outcome:
    probe = Probe()
    outcome = Outcome(probe)
    rng = random.Random(events)
    with _csms_process() as csms:
        port = await asyncio.wait_for(csms.port, START_TIMEOUT_S)
        opts = RunOptions(data_dir=data, status="off", log=str(data / "voltpilot.log"),
                          ocpp=ocpp_settings_file(data / "ocpp.toml", port))
        controller = Controller(load_board("sim"), clock, opts, io.StringIO())
        plant = controller.hw.plant
        assert plant is not None
        controller.hw.control_pilot = TimedPilot(plant, probe)
        task = asyncio.get_running_loop().create_task(controller.run())
        try:
            await _until(lambda: controller.station is not None and controller.station.online,
                         "the station did not boot")
            assert controller.station is not None and controller.station.rpc is not None
            outcome.version = controller.station.rpc.version
            for command in ({"cmd": "plug", "profile": "compact_3p", "ev": EV},
                            {"cmd": "tap", "id_token": CARD}):
                answer = controller.table.execute(command)
                if not answer["ok"]:
                    raise RuntimeError(f"{command['cmd']}: {answer.get('error')}")
            await _until(lambda: plant.contactor_closed, "the car did not start charging")
            for i in range(events):
                amps = AMPS[i % len(AMPS)]
                probe.expect(duty_for_current(amps))
                probe.arm()
                reply = await asyncio.wait_for(csms.send_profile(i, amps), REPLY_TIMEOUT_S)
                if reply["status"] != "Accepted":
                    outcome.rejected.append(str(reply["status"]))
                await probe.wait(int(reply["t0"]))
                await asyncio.sleep(rng.uniform(*GAP_S))
        finally:
            controller.stop.set()
            await task
    return outcome


def run(events: int = EVENTS) -> Result:
    clock = WallClock()
    with tempfile.TemporaryDirectory(prefix="voltpilot-bench-") as tmp, \
            logging_to(Path(tmp) / "voltpilot.log", clock):
        data = Path(tmp) / "data"
        data.mkdir()
        outcome = asyncio.run(_measure(data, clock, events))
    probe = outcome.probe
    lat = probe.latencies_ms
    values: dict[str, Any] = {"events": events, "answered": len(lat), "missed": probe.missed,
                              "rejected": len(outcome.rejected), "ocpp_version": outcome.version,
                              "target_p99_ms": TARGET_MS}
    if not lat:
        return Result(SPEC, f"no duty change seen ({probe.missed} missed)", False, values)
    p50, p99, top = percentile(lat, 50), percentile(lat, 99), max(lat)
    values.update(p50_ms=p50, p99_ms=p99, max_ms=top)
    notes = [f"{len(lat)} of {events} profiles changed the duty, {probe.missed} missed (no "
             f"duty change within 2 s of t0), {len(outcome.rejected)} not Accepted",
             f"OCPP {outcome.version}; ChargingStationMaxProfile on EVSE 0 alternating "
             f"{AMPS[0]:g} A / {AMPS[1]:g} A; t0 in the CSMS process (the `ocpp` library, its "
             "own process) right before the frame goes to its websocket, the duty change timed "
             "in set_duty here; both on CLOCK_MONOTONIC, one clock for the machine",
             f"random {GAP_S[0] * 1e3:g}–{GAP_S[1] * 1e3:g} ms pause between events; no "
             "synthetic load on the controller's loop"]
    met = p99 <= TARGET_MS and probe.missed == 0 and not outcome.rejected
    return Result(SPEC, f"p50 {ms(p50)}, p99 {ms(p99)}, max {ms(top)}", met, values, notes)


if __name__ == "__main__":
    if sys.argv[1:] != ["csms"]:
        sys.exit("usage: python -m bench.ocpp_latency csms (run by the benchmark)")
    sys.exit(csms_main())
