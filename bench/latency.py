"""Event → command latencies of the connector: CP C→B → contactor open, limit → PWM duty.

The controller runs in this process on the sim board and a real asyncio loop on wall-clock time,
while a background task keeps that loop busy with JSON work. Each event arrives the way a
hardware edge would, as I/O on the loop: a separate trigger process (``bench.trigger``) takes t0
on CLOCK_MONOTONIC and writes it to a pipe that this process watches with ``loop.add_reader``, as
a real board watches a GPIO edge fd; the reader performs the event (the car opens S2, or a new
current limit arrives). The latency runs from t0 in the trigger process to the moment the
connector calls the HAL command, on the same clock. So it includes the pipe and the wait for the
busy loop, and no GIL of this process delays t0.

The events go one at a time: the trigger sleeps a random 5–30 ms after being told the previous
event has settled, so the edges do not lock onto the load. Unix only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from bench import Result, Spec, ms, percentile, trigger
from bench.trigger import now_ns
from firmware import logs
from firmware.app import freeze_startup_heap
from firmware.core.duty import duty_for_current
from firmware.core.limits import Limit, LimitSource
from firmware.evse.connector import Connector
from firmware.evse.limit_port import LimitPort
from firmware.store.db import Store
from hal.board import Board, load_board
from hal.clock import Clock, WallClock
from hal.hardware import Hardware, open_hardware
from hal.sim.backends import SimContactor, SimControlPilot
from hal.sim.ev import PROFILES
from hal.sim.plant import Plant

CONTACTOR = Spec("contactor", "CP C→B → contactor open command (JSON load)", "p99 ≤ 10 ms")
LIMIT = Spec("limit", "limit change → PWM duty applied (JSON load)", "p99 ≤ 50 ms")
CONTACTOR_TARGET_MS = 10.0
LIMIT_TARGET_MS = 50.0
MIN_EVENTS = 1000

# A car that reacts at once and never fills, so every stop/resume cycle is short and alike.
EV = PROFILES["compact_3p"].with_overrides({"reaction_s": 0.0, "battery_kwh": 100_000.0})
GAP_S = (0.005, 0.030)   # random pause between events, so triggers do not lock onto the load
CHUNK_S = 0.0015         # aim of one JSON chunk: the longest the loop is kept from the event
ANSWER_TIMEOUT_S = 2.0   # an event not answered within this (after its t0) counts as missed
SETTLE_TIMEOUT_S = 5.0   # also how long the trigger process may take to report a t0
STOPPED = "ev_stopped"   # the tag of a contactor opening caused by the car's stop


class Probe:
    """Pairs the HAL call that answers an event with the t0 the trigger process reports.

    Only a call carrying the expected tag counts, and only once the edge's reader has armed
    the probe, just before it performs the event; so an unrelated opening or duty change (a timer
    step, the start-up) can never pass for a fast answer. All of it runs on the loop.
    """

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.missed = 0
        self._tag: object = None
        self._armed = False
        self._answer: asyncio.Future[int] | None = None

    def expect(self, tag: object) -> None:
        """The next event answers with ``tag`` (before the trigger is told it may send it)."""
        self._tag = tag
        self._armed = False
        self._answer = asyncio.get_running_loop().create_future()

    def arm(self) -> None:
        """The edge arrived: from now on the expected call counts."""
        self._armed = True

    def hit(self, t: int, tag: object) -> None:
        answer = self._answer
        if not self._armed or tag != self._tag or answer is None or answer.done():
            return
        self._armed = False
        answer.set_result(t)

    async def wait(self, t0: int) -> None:
        """Record the latency from ``t0``, or a miss if no answer by ANSWER_TIMEOUT_S after it."""
        answer = self._answer
        assert answer is not None
        left_s = ANSWER_TIMEOUT_S - (now_ns() - t0) / 1e9
        if left_s > 0:
            await asyncio.wait([answer], timeout=left_s)
        if answer.done():
            self.latencies_ms.append((answer.result() - t0) / 1e6)
        else:
            self.missed += 1
        self._armed = False
        self._answer = None


class TimedContactor(SimContactor):
    def __init__(self, plant: Plant, probe: Probe) -> None:
        super().__init__(plant)
        self._probe = probe

    def open(self) -> None:
        t = now_ns()
        ev = self._plant.ev
        self._probe.hit(t, STOPPED if ev is not None and ev.user_stopped else None)
        super().open()


class TimedPilot(SimControlPilot):
    def __init__(self, plant: Plant, probe: Probe) -> None:
        super().__init__(plant)
        self._probe = probe

    def set_duty(self, percent: float) -> None:
        self._probe.hit(now_ns(), percent)
        super().set_duty(percent)


@dataclass
class Event:
    tag: object                   # what the answering HAL call carries
    perform: Callable[[], None]   # what the edge's reader does


@dataclass
class Rig:
    """The plant and port the events act on, and the event the next edge performs."""

    plant: Plant
    port: LimitPort
    probe: Probe
    pending: Event | None = None
    stray_edges: int = 0   # edges with no event pending (after a miss, say)

    def on_edge(self) -> bool:
        """An edge from the trigger process; whether it performed an event."""
        event, self.pending = self.pending, None
        if event is None:
            self.stray_edges += 1
            return False
        self.probe.arm()
        event.perform()
        return True


# The two kinds of event: what event ``i`` is, and how to get back to where the next can start.
MakeEvent = Callable[[Rig, int], Event]
Settle = Callable[[Rig], Awaitable[None]]


def _stop_event(rig: Rig, i: int) -> Event:
    return Event(STOPPED, rig.plant.ev_stop)


async def _resume(rig: Rig) -> None:
    plant = rig.plant
    # The open command is timed on entry; let it finish before the car asks again.
    await _until(lambda: not plant.contactor_closed, "the contactor did not open")
    plant.ev_resume()
    await _until(lambda: plant.contactor_closed, "the contactor did not close again")


def _limit_event(rig: Rig, i: int) -> Event:
    amps = 10.0 if i % 2 == 0 else 16.0
    limit = Limit.of(LimitSource.OCPP_TX, "bench", amps=amps)
    return Event(duty_for_current(amps), partial(rig.port.submit, limit))


async def _nothing(rig: Rig) -> None:
    return


# ---- the load ------------------------------------------------------------------------------


def _document() -> list[dict[str, Any]]:
    """About 100 kB of JSON: meter samples, the kind of thing an OCPP or MQTT adapter sends."""
    return [{"at": 1767225600.0 + i, "voltage_v": [230.1, 229.8, 231.0],
             "current_a": [16.0, 15.9, 16.1], "energy_wh": 1234.5 + i, "id": f"s{i:05d}"}
            for i in range(800)]


def _records_per_chunk(doc: list[dict[str, Any]]) -> int:
    """How many records make one chunk of about CHUNK_S on this machine."""
    times = []
    for _ in range(5):
        t = time.perf_counter()
        json.loads(json.dumps(doc))
        times.append(time.perf_counter() - t)
    return max(1, round(len(doc) * CHUNK_S / statistics.median(times)))


@dataclass
class Load:
    chunk_ms: list[float]
    busy_s: float = 0.0
    wall_s: float = 0.0
    # Full (generation 2) collections, which the load's allocations trigger: they stop the loop
    # thread for milliseconds, so they explain much of a latency tail.
    gc_full_ms: list[float] = field(default_factory=list)
    _gc_start: int = 0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_start = time.perf_counter_ns()
        else:
            self.gc_full_ms.append((time.perf_counter_ns() - self._gc_start) / 1e6)


async def _json_work(doc: list[dict[str, Any]], per_chunk: int, load: Load) -> None:
    start = time.perf_counter()
    gc.callbacks.append(load.on_gc)
    try:
        while True:
            for i in range(0, len(doc), per_chunk):
                t = time.perf_counter_ns()
                json.loads(json.dumps(doc[i:i + per_chunk]))
                load.chunk_ms.append((time.perf_counter_ns() - t) / 1e6)
                await asyncio.sleep(0)
    finally:
        gc.callbacks.remove(load.on_gc)
        load.wall_s = time.perf_counter() - start
        load.busy_s = sum(load.chunk_ms) / 1e3


# ---- the controller ----------------------------------------------------------------------


@contextlib.contextmanager
def logging_to(path: Path, clock: Clock) -> Iterator[None]:
    """Log as the running controller does (JSON lines to a file), and detach afterwards."""
    with open(path, "a", encoding="utf-8") as stream:
        root = logs.setup(clock, stream)
        try:
            yield
        finally:
            for handler in list(root.handlers):
                root.removeHandler(handler)


async def _until(condition: Callable[[], bool], what: str, poll_s: float = 0.001) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {SETTLE_TIMEOUT_S:g} s")
        await asyncio.sleep(poll_s)


async def _events(rig: Rig, events: int, make: MakeEvent, settle: Settle) -> None:
    """Have the trigger process send ``events`` edges, one at a time, and time each event."""
    loop = asyncio.get_running_loop()
    with trigger.started(seed=events, gap_s=GAP_S) as source:
        edge: asyncio.Future[int] | None = None

        def on_readable() -> None:
            for t0 in source.read_t0s():
                if rig.on_edge() and edge is not None and not edge.done():
                    edge.set_result(t0)

        loop.add_reader(source.fd, on_readable)
        try:
            for i in range(events):
                edge = loop.create_future()
                rig.pending = make(rig, i)
                rig.probe.expect(rig.pending.tag)
                source.ready()
                t0 = await asyncio.wait_for(edge, SETTLE_TIMEOUT_S)
                await rig.probe.wait(t0)
                rig.pending = None   # an edge still to come (after a miss) performs nothing
                await settle(rig)
        finally:
            loop.remove_reader(source.fd)


class Shell(Protocol):
    """An adapter started beside the connector (the dry-contact inputs, say)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


# Builds the shell from the hardware and the limit port, given the clock.
MakeShell = Callable[[Hardware, LimitPort, Clock], Shell]


async def measure(events: int, make: MakeEvent, settle: Settle, board: Board | None = None,
                  make_shell: MakeShell | None = None) -> tuple[Rig, Load]:
    """``events`` events on the sim board (or ``board``) under the JSON load, with an
    optional shell started before the connector, as the controller starts its adapters."""
    board = board or load_board("sim")
    board = replace(board, timing=replace(board.timing, contactor_min_reclose_s=0.0))
    clock = WallClock()
    probe = Probe()
    hw = open_hardware(board, clock)
    plant = hw.plant
    assert plant is not None
    hw.contactor = TimedContactor(plant, probe)
    hw.control_pilot = TimedPilot(plant, probe)
    load = Load([])
    with tempfile.TemporaryDirectory(prefix="voltpilot-bench-") as tmp, \
            logging_to(Path(tmp) / "voltpilot.log", clock):
        store = Store(Path(tmp) / "voltpilot.db")
        port = LimitPort()
        shell = make_shell(hw, port, clock) if make_shell is not None else None
        connector = Connector(1, board, hw, clock, store, port)
        if shell is not None:
            shell.start()
        hw.start()
        connector.start()
        freeze_startup_heap()  # as `voltpilot run` does once it is up; the load comes after
        doc = _document()
        work = asyncio.create_task(_json_work(doc, _records_per_chunk(doc), load))
        try:
            plant.plug(EV)
            await _until(lambda: plant.contactor_closed, "the car did not start charging", 0.01)
            rig = Rig(plant, port, probe)
            await _events(rig, events, make, settle)
        finally:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            if shell is not None:
                shell.stop()
            connector.shutdown()
            hw.stop()
            store.close()
    return rig, load


def _result(spec: Spec, target_ms: float, events: int, rig: Rig, load: Load) -> Result:
    probe = rig.probe
    lat = probe.latencies_ms
    if not lat:
        return Result(spec, f"no event answered ({probe.missed} missed)", False,
                      {"events": events, "answered": 0, "missed": probe.missed})
    p50, p99, top = percentile(lat, 50), percentile(lat, 99), max(lat)
    met = p99 <= target_ms and probe.missed == 0 and len(lat) >= MIN_EVENTS
    chunks = load.chunk_ms
    notes = [f"{len(lat)} events answered, {probe.missed} missed "
             f"(no answer within {ANSWER_TIMEOUT_S:g} s)",
             f"JSON load: {len(chunks)} chunks, p50 {ms(percentile(chunks, 50))}, "
             f"max {ms(max(chunks))}; busy {100 * load.busy_s / load.wall_s:.0f} % of the loop's "
             f"{load.wall_s:.1f} s; {len(load.gc_full_ms)} full GC pauses (they hold the GIL), "
             f"max {ms(max(load.gc_full_ms, default=0.0))}",
             f"trigger: an edge written to a pipe by a separate process and watched with "
             f"loop.add_reader, like a GPIO edge fd; t0 taken in that process on "
             f"CLOCK_MONOTONIC just before it writes, random "
             f"{GAP_S[0] * 1e3:g}–{GAP_S[1] * 1e3:g} ms pause per event"]
    if rig.stray_edges:
        notes.append(f"{rig.stray_edges} edges came with no event pending")
    if len(lat) < MIN_EVENTS:
        notes.append(f"fewer than the {MIN_EVENTS} events the target is defined over")
    return Result(spec, f"p50 {ms(p50)}, p99 {ms(p99)}, max {ms(top)}", met, {
        "events": events, "answered": len(lat), "missed": probe.missed,
        "p50_ms": p50, "p99_ms": p99, "max_ms": top, "target_p99_ms": target_ms,
        "load_chunks": len(chunks), "load_chunk_p50_ms": percentile(chunks, 50),
        "load_chunk_max_ms": max(chunks), "load_busy_fraction": load.busy_s / load.wall_s,
        "gc_full_pauses": len(load.gc_full_ms),
        "gc_full_max_ms": max(load.gc_full_ms, default=0.0),
        "stray_edges": rig.stray_edges,
    }, notes)


def contactor_latency(events: int) -> Result:
    rig, load = asyncio.run(measure(events, _stop_event, _resume))
    return _result(CONTACTOR, CONTACTOR_TARGET_MS, events, rig, load)


def limit_latency(events: int) -> Result:
    rig, load = asyncio.run(measure(events, _limit_event, _nothing))
    return _result(LIMIT, LIMIT_TARGET_MS, events, rig, load)
