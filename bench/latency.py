"""Event → command latencies of the connector: CP C→B → contactor open, limit → PWM duty.

The controller runs in this process on the sim board and a real asyncio loop on wall-clock time,
while a background task keeps that loop busy with JSON work. Each event is triggered from a
separate thread, the way an ADC or IRQ thread hands an edge to the loop, and the latency runs from
the trigger in that thread to the moment the connector calls the HAL command.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import Result, Spec, ms, percentile
from firmware import logs
from firmware.core.duty import duty_for_current
from firmware.core.limits import Limit, LimitSource
from firmware.evse.connector import Connector
from firmware.evse.limit_port import LimitPort
from firmware.store.db import Store
from hal.board import load_board
from hal.clock import Clock, WallClock
from hal.hardware import open_hardware
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
ANSWER_TIMEOUT_S = 2.0   # an event not answered within this counts as missed
SETTLE_TIMEOUT_S = 5.0
STOPPED = "ev_stopped"   # the tag of a contactor opening caused by the car's stop


class Probe:
    """Pairs the trigger time taken in the trigger thread with the call that answers it.

    Only a call carrying the expected tag counts, so an unrelated opening or duty change (a timer
    step, the start-up) can never pass for a fast answer.
    """

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.missed = 0
        self._answered = threading.Event()
        self._tag: object = None
        self._t0: int | None = None

    def arm(self, tag: object) -> None:
        self._answered.clear()
        self._tag = tag
        self._t0 = time.perf_counter_ns()

    def hit(self, t: int, tag: object) -> None:
        t0 = self._t0
        if t0 is None or tag != self._tag:
            return
        self._t0 = None
        self.latencies_ms.append((t - t0) / 1e6)
        self._answered.set()

    def wait(self) -> None:
        if not self._answered.wait(ANSWER_TIMEOUT_S):
            self._t0 = None
            self.missed += 1


class TimedContactor(SimContactor):
    def __init__(self, plant: Plant, probe: Probe) -> None:
        super().__init__(plant)
        self._probe = probe

    def open(self) -> None:
        t = time.perf_counter_ns()
        ev = self._plant.ev
        self._probe.hit(t, STOPPED if ev is not None and ev.user_stopped else None)
        super().open()


class TimedPilot(SimControlPilot):
    def __init__(self, plant: Plant, probe: Probe) -> None:
        super().__init__(plant)
        self._probe = probe

    def set_duty(self, percent: float) -> None:
        self._probe.hit(time.perf_counter_ns(), percent)
        super().set_duty(percent)


@dataclass
class Rig:
    """What the trigger thread may touch: the loop to hand events to, and the plant's state."""

    loop: asyncio.AbstractEventLoop
    plant: Plant
    port: LimitPort
    probe: Probe
    rng: random.Random
    # How much later than asked the trigger thread woke from its pauses. The thread needs the
    # GIL to run at all, and t0 is taken only once it has it, so this is the part of an edge's
    # delay that the measured latency cannot see.
    wake_late_ms: list[float] = field(default_factory=list)

    def pause(self) -> None:
        seconds = self.rng.uniform(*GAP_S)
        due = time.perf_counter() + seconds
        time.sleep(seconds)
        self.wake_late_ms.append((time.perf_counter() - due) * 1e3)


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


# ---- the triggers (run in their own thread) ------------------------------------------------


def _poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {SETTLE_TIMEOUT_S:g} s")
        time.sleep(0.0005)


def _stop_events(rig: Rig, events: int) -> None:
    plant = rig.plant
    for _ in range(events):
        rig.probe.arm(STOPPED)
        rig.loop.call_soon_threadsafe(plant.ev_stop)
        rig.probe.wait()
        # The open command is timed on entry; let it finish before the car asks again.
        _poll(lambda: not plant.contactor_closed, "the contactor did not open")
        rig.loop.call_soon_threadsafe(plant.ev_resume)
        _poll(lambda: plant.contactor_closed, "the contactor did not close again")
        rig.pause()


def _limit_events(rig: Rig, events: int) -> None:
    for i in range(events):
        amps = 10.0 if i % 2 == 0 else 16.0
        limit = Limit.of(LimitSource.OCPP_TX, "bench", amps=amps)
        rig.probe.arm(duty_for_current(amps))
        rig.loop.call_soon_threadsafe(rig.port.submit, limit)
        rig.probe.wait()
        rig.pause()


# ---- the controller ----------------------------------------------------------------------


@contextlib.contextmanager
def _logging_to(path: Path, clock: Clock) -> Iterator[None]:
    """Log as the running controller does (JSON lines to a file), and detach afterwards."""
    with open(path, "a", encoding="utf-8") as stream:
        root = logs.setup(clock, stream)
        try:
            yield
        finally:
            for handler in list(root.handlers):
                root.removeHandler(handler)


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {SETTLE_TIMEOUT_S:g} s")
        await asyncio.sleep(0.01)


async def _measure(events: int, trigger: Callable[[Rig, int], None]) -> tuple[Rig, Load]:
    board = load_board("sim")
    board = replace(board, timing=replace(board.timing, contactor_min_reclose_s=0.0))
    clock = WallClock()
    probe = Probe()
    hw = open_hardware(board, clock)
    plant = hw.plant
    assert plant is not None
    hw.contactor = TimedContactor(plant, probe)
    hw.control_pilot = TimedPilot(plant, probe)
    doc = _document()
    load = Load([])
    with tempfile.TemporaryDirectory(prefix="voltpilot-bench-") as tmp, \
            _logging_to(Path(tmp) / "voltpilot.log", clock):
        store = Store(Path(tmp) / "voltpilot.db")
        port = LimitPort()
        connector = Connector(1, board, hw, clock, store, port)
        hw.start()
        connector.start()
        work = asyncio.create_task(_json_work(doc, _records_per_chunk(doc), load))
        try:
            plant.plug(EV)
            await _until(lambda: plant.contactor_closed, "the car did not start charging")
            rig = Rig(asyncio.get_running_loop(), plant, port, probe, random.Random(events))
            await asyncio.to_thread(trigger, rig, events)
        finally:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
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
    late = rig.wake_late_ms
    notes = [f"{len(lat)} events answered, {probe.missed} missed "
             f"(no answer within {ANSWER_TIMEOUT_S:g} s)",
             f"JSON load: {len(chunks)} chunks, p50 {ms(percentile(chunks, 50))}, "
             f"max {ms(max(chunks))}; busy {100 * load.busy_s / load.wall_s:.0f} % of the loop's "
             f"{load.wall_s:.1f} s; {len(load.gc_full_ms)} full GC pauses (they hold the GIL), "
             f"max {ms(max(load.gc_full_ms, default=0.0))}",
             f"trigger thread woke late from its pauses (GIL wait, not in the latency): "
             f"p50 {ms(percentile(late, 50))}, p99 {ms(percentile(late, 99))}, "
             f"max {ms(max(late))}"]
    if len(lat) < MIN_EVENTS:
        notes.append(f"fewer than the {MIN_EVENTS} events the target is defined over")
    return Result(spec, f"p50 {ms(p50)}, p99 {ms(p99)}, max {ms(top)}", met, {
        "events": events, "answered": len(lat), "missed": probe.missed,
        "p50_ms": p50, "p99_ms": p99, "max_ms": top, "target_p99_ms": target_ms,
        "load_chunks": len(chunks), "load_chunk_p50_ms": percentile(chunks, 50),
        "load_chunk_max_ms": max(chunks), "load_busy_fraction": load.busy_s / load.wall_s,
        "gc_full_pauses": len(load.gc_full_ms),
        "gc_full_max_ms": max(load.gc_full_ms, default=0.0),
        "trigger_wake_late_p50_ms": percentile(late, 50),
        "trigger_wake_late_p99_ms": percentile(late, 99),
        "trigger_wake_late_max_ms": max(late),
    }, notes)


def contactor_latency(events: int) -> Result:
    rig, load = asyncio.run(_measure(events, _stop_events))
    return _result(CONTACTOR, CONTACTOR_TARGET_MS, events, rig, load)


def limit_latency(events: int) -> Result:
    rig, load = asyncio.run(_measure(events, _limit_events))
    return _result(LIMIT, LIMIT_TARGET_MS, events, rig, load)
