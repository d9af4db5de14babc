"""Memory of the controller with its OCPP station over 24 hours of virtual time.

The whole controller (sim board, connector, OCPP station: ``firmware.app.Controller`` with an
``--ocpp`` settings file) runs on a virtual-time loop (``VirtualTimeLoop``), connected over real
websockets on 127.0.0.1 to a lightweight CSMS in the same loop. The CSMS answers what the station
sends (BootNotification, StatusNotification, Heartbeat, TransactionEvent, MeterValues, …) with
minimal valid responses and keeps counters only, so its own memory stays flat. Once the boot is
accepted it sets, through SetVariables, SampledDataCtrlr.TxUpdatedInterval = 1 s and
AuthCtrlr.Enabled = false (free charging). A car that starts empty (``empty_60kwh_3p``, about
3 hours at 22 kW) is plugged in and, whenever it is full, unplugged and replaced by another, so
a transaction is always open and a TransactionEvent goes through the durable queue every
virtual second: 86,400 of them a day, plus a transaction start and end every few hours.

VmRSS, RssAnon and VmSwap are read from /proc/self/status every virtual hour. The target is
judged on RssAnon + VmSwap, the memory the process allocated (heap, Python objects, SQLite's
cache), resident or swapped out: VmRSS also counts file-backed pages (the interpreter, shared
libraries), which the kernel drops and reloads under another process's memory pressure, so it
can move by megabytes with no change in the controller. The first hour is the warm-up (caches,
schema validators and SQLite pages fill); the target holds if every later sample stays within
±5 MB of the sample at its end. The benchmark process also holds the CSMS, so its RSS is an
upper bound of the controller's.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from bench import Result, Spec, ocpp_settings_file
from bench.latency import logging_to
from firmware.app import Controller, RunOptions
from firmware.virtual_time import VirtualTimeLoop
from hal.board import load_board
from hal.clock import Clock, VirtualClock, iso

SPEC = Spec("ocpp_memory", "Memory, controller + OCPP station, 24 h virtual time, 1 s sampling",
            "flat within ±5 MB")
HOURS = 24
WARM_UP_H = 1
TARGET_MB = 5.0
EV_PROFILE = "empty_60kwh_3p"
CHECK_EV_S = 60.0       # how often the car is looked at (full: replaced)
SETTLE_S = 30.0         # between unplugging a full car and plugging the next
HEARTBEAT_S = 300
# A slow or busy machine stops early (and misses the target) rather than run for ever.
WALL_BUDGET_S = 900.0

# Minimal valid responses (2.0.1 and 2.1) to what a charging station sends on its own.
_EMPTY_ANSWERS = frozenset({
    "StatusNotification", "TransactionEvent", "MeterValues", "NotifyReport",
    "SecurityEventNotification", "NotifyChargingLimit", "ClearedChargingLimit",
    "FirmwareStatusNotification", "LogStatusNotification", "NotifyEvent"})
SETTINGS = [("SampledDataCtrlr", "TxUpdatedInterval", "1"), ("AuthCtrlr", "Enabled", "false")]


@dataclass
class CsmsCounts:
    calls: Counter[str] = field(default_factory=Counter)
    tx_events: int = 0
    transactions: int = 0
    seq_gaps: int = 0         # a TransactionEvent whose seqNo is not the last one + 1
    errors_sent: int = 0      # CALLERRORs for actions it does not know
    settings_status: list[str] = field(default_factory=list)
    connections: int = 0


class LightCsms:
    """A CSMS in a few lines: raw OCPP-J frames on a websockets server, counters only."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.counts = CsmsCounts()
        self.configured = asyncio.Event()
        self._last_seq: dict[str, int] = {}

    def answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        now = iso(self.clock.now())
        if action == "BootNotification":
            return {"currentTime": now, "interval": HEARTBEAT_S, "status": "Accepted"}
        if action == "Heartbeat":
            return {"currentTime": now}
        if action == "TransactionEvent":
            self._transaction_event(payload)
            return {}
        if action == "Authorize":
            return {"idTokenInfo": {"status": "Accepted"}}
        return {} if action in _EMPTY_ANSWERS else None

    def _transaction_event(self, payload: dict[str, Any]) -> None:
        counts = self.counts
        counts.tx_events += 1
        tx = payload["transactionInfo"]["transactionId"]
        seq = payload["seqNo"]
        if payload["eventType"] == "Started":
            counts.transactions += 1
        if seq != self._last_seq.get(tx, -1) + 1:
            counts.seq_gaps += 1
        if payload["eventType"] == "Ended":
            self._last_seq.pop(tx, None)
        else:
            self._last_seq[tx] = seq

    async def handler(self, ws: ServerConnection) -> None:
        self.counts.connections += 1
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame[0] == 3 and frame[1] == "settings":
                    self.counts.settings_status = [
                        r["attributeStatus"] for r in frame[2]["setVariableResult"]]
                    self.configured.set()
                    continue
                if frame[0] != 2:
                    continue
                action = frame[2]
                self.counts.calls[action] += 1
                response = self.answer(action, frame[3])
                if response is None:
                    self.counts.errors_sent += 1
                    await ws.send(json.dumps([4, frame[1], "NotImplemented", action, {}]))
                    continue
                await ws.send(json.dumps([3, frame[1], response]))
                if action == "BootNotification":
                    await ws.send(json.dumps([2, "settings", "SetVariables", {
                        "setVariableData": [
                            {"component": {"name": c}, "variable": {"name": v},
                             "attributeValue": value} for c, v, value in SETTINGS]}]))
        except websockets.ConnectionClosed:
            return


@dataclass(frozen=True)
class Sample:
    hour: int         # virtual hours since the start
    rss_kb: int       # VmRSS: resident, file-backed pages included
    anon_kb: int      # RssAnon: resident, allocated by the process
    swap_kb: int      # VmSwap: allocated, swapped out
    wall_s: float     # since the start
    tx_events: int    # TransactionEvents the CSMS had received


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")



async def _cars(controller: Controller, plugged: Counter[str]) -> None:
    """Keep a car charging: plug one, and replace it whenever it is full."""
    plant = controller.hw.plant
    assert plant is not None
    while True:
        if plant.ev is None:
            controller.table.execute({"cmd": "plug", "profile": EV_PROFILE})
            plugged["cars"] += 1
        elif plant.ev.full:
            controller.table.execute({"cmd": "unplug"})
            await asyncio.sleep(SETTLE_S)
            continue
        await asyncio.sleep(CHECK_EV_S)


@dataclass
class Run:
    samples: list[Sample]
    counts: CsmsCounts
    cars: int
    exit_code: int
    vmhwm_kb: int


async def _run(data: Path, clock: VirtualClock, hours: int) -> Run:
    csms = LightCsms(clock)
    async with serve(csms.handler, "127.0.0.1", 0,
                     subprotocols=[Subprotocol("ocpp2.1"), Subprotocol("ocpp2.0.1")]) as server:
        port = server.sockets[0].getsockname()[1]
        opts = RunOptions(virtual_time=True, data_dir=data, status="off",
                          log=str(data / "voltpilot.log"),
                          ocpp=ocpp_settings_file(data / "ocpp.toml", port),
                          duration=(hours + 1) * 3600.0)
        controller = Controller(load_board("sim"), clock, opts, io.StringIO())
        loop = asyncio.get_running_loop()
        task = loop.create_task(controller.run())
        await asyncio.wait_for(csms.configured.wait(), 600)
        plugged: Counter[str] = Counter()
        cars = loop.create_task(_cars(controller, plugged))
        samples: list[Sample] = []
        start_v, start_wall = clock.now(), time.perf_counter()
        try:
            for hour in range(1, hours + 1):
                await asyncio.sleep(start_v + hour * 3600.0 - clock.now())
                samples.append(Sample(hour, _status_kb("VmRSS"), _status_kb("RssAnon"),
                                      _status_kb("VmSwap"),
                                      time.perf_counter() - start_wall, csms.counts.tx_events))
                if time.perf_counter() - start_wall > WALL_BUDGET_S:
                    break
        finally:
            cars.cancel()
            await asyncio.gather(cars, return_exceptions=True)
            controller.stop.set()
            code = await task
    return Run(samples, csms.counts, plugged["cars"], code, _status_kb("VmHWM"))


def _mb(kb: int) -> float:
    return kb * 1024 / 1e6


def run(hours: int = HOURS) -> Result:
    clock = VirtualClock()
    with tempfile.TemporaryDirectory(prefix="voltpilot-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        wall = time.perf_counter()
        with logging_to(data / "voltpilot.log", clock):
            loop = VirtualTimeLoop(clock)
            try:
                result = loop.run_until_complete(_run(data, clock, hours))
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
        wall = time.perf_counter() - wall
    return _result(result, hours, wall)


def _result(r: Run, hours: int, wall_s: float) -> Result:
    after = [s for s in r.samples if s.hour >= WARM_UP_H]
    if not after:
        return Result(SPEC, "error: no sample after the warm-up", False)
    held = [s.anon_kb + s.swap_kb for s in after]
    base = held[0]
    deviation = max(abs(_mb(kb - base)) for kb in held)
    spread = _mb(max(held) - min(held))
    swapped = max(s.swap_kb for s in r.samples)
    counts = r.counts
    ran_h = r.samples[-1].hour
    expected_tx = ran_h * 3600.0   # one Updated a second, give or take starts and ends
    problems = []
    if ran_h < hours:
        problems.append(f"stopped after {ran_h:g} of {hours:g} virtual hours: over the "
                        f"{WALL_BUDGET_S:g} s wall budget")
    if counts.seq_gaps:
        problems.append(f"{counts.seq_gaps} TransactionEvents out of seqNo order")
    if counts.tx_events < 0.95 * expected_tx:
        problems.append(f"only {counts.tx_events} TransactionEvents for {expected_tx:.0f} s")
    if counts.settings_status != ["Accepted"] * len(SETTINGS):
        problems.append(f"SetVariables answered {counts.settings_status}")
    if r.exit_code != 0:
        problems.append(f"controller exit code {r.exit_code}")
    met = not problems and deviation <= TARGET_MB
    per_hour = ", ".join(f"{s.hour:g} h {_mb(s.anon_kb + s.swap_kb):.1f}" for s in r.samples)
    rss = [s.rss_kb for s in after]
    notes = [
        *problems,
        f"RssAnon + VmSwap after the {WARM_UP_H} h warm-up: {_mb(base):.1f} MB; largest "
        f"deviation from it {deviation:.2f} MB, spread (max - min) {spread:.2f} MB over "
        f"{after[-1].hour - after[0].hour:g} h; VmHWM {_mb(r.vmhwm_kb):.1f} MB (of the whole "
        "bench process: with `make bench` the other benchmarks ran in it first); "
        "MB = 10^6 bytes",
        f"hourly RssAnon + VmSwap (MB): {per_hour}; largest VmSwap {_mb(swapped):.1f} MB",
        f"VmRSS (file-backed pages included) after the warm-up: {_mb(rss[0]):.1f} MB, "
        f"min {_mb(min(rss)):.1f}, max {_mb(max(rss)):.1f} MB",
        f"{ran_h:g} virtual hours in {wall_s:.0f} s wall; the CSMS received "
        f"{counts.tx_events} TransactionEvents in {counts.transactions} transactions "
        f"({r.cars} cars), {counts.calls['MeterValues']} MeterValues, "
        f"{counts.calls['Heartbeat']} Heartbeats, {counts.calls['StatusNotification']} "
        f"StatusNotifications over {counts.connections} connection(s)",
        "one process: controller + station + a lightweight in-loop CSMS (counters only) on real "
        "websockets; virtual-time loop",
    ]
    return Result(SPEC, f"RssAnon+VmSwap {_mb(base):.1f} MB after {WARM_UP_H} h, max deviation "
                  f"{deviation:.2f} MB, spread {spread:.2f} MB over {ran_h:g} h", met, {
                      "hours": ran_h, "warm_up_h": WARM_UP_H, "wall_s": wall_s,
                      "baseline_kb": base, "max_swap_kb": swapped, "max_deviation_mb": deviation,
                      "spread_mb": spread, "vmhwm_kb": r.vmhwm_kb,
                      "hourly_rss_kb": [s.rss_kb for s in r.samples],
                      "hourly_anon_kb": [s.anon_kb for s in r.samples],
                      "hourly_swap_kb": [s.swap_kb for s in r.samples],
                      "hourly_wall_s": [s.wall_s for s in r.samples],
                      "tx_events": counts.tx_events, "transactions": counts.transactions,
                      "seq_gaps": counts.seq_gaps, "cars": r.cars,
                      "calls": dict(counts.calls), "target_mb": TARGET_MB}, notes)
