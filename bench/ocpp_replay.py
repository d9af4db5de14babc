"""Offline replay: 10,000 TransactionEvents queued while offline, replayed to a real CSMS.

One long transaction recorded offline (Started, 9,998 Updated, Ended; seqNo 0 … 9,999;
``offline: true``), each event carrying what our station sends by default: the
SampledDataCtrlr TxUpdatedMeasurands (energy register, power, current and voltage per phase:
8 sampled values) every TxUpdatedInterval (60 s). It is enqueued in the durable queue, the
database is closed and reopened as after a restart, and the queue is drained to a CSMS on
127.0.0.1: a websockets server running the `ocpp` library's v201 ChargePoint, schema validation
on. The station side is the library's v201 ChargePoint too (validation on), sending each queued
message with the queue's message id as the CALL's unique id, one in flight at a time, each
answer awaited, with the queue's SQLite writes (send started, delivered; WAL, synchronous=FULL)
around every message as on the device.

The CSMS records every CALL id, seqNo and payload it receives. Lost: queued ids it never
received. Duplicated: receptions beyond the first of an id. Also checked: seqNo arrives as
0 … N-1 in order, every payload arrives exactly as queued, and the queue ends empty with no dead
letters. The rate is messages over the wall time of the drain (connection set-up included).

For the reader of a miss, two more numbers: the queue alone (the same drain with a send that
answers at once: its SQLite work per message) and the time one schema validation of such a
request takes (the library does one at each end of every message).
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, get_validator
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from bench import Result, Spec
from firmware.ocpp.db import open_db
from firmware.ocpp.queue import MessageQueue, QueuedMessage, SendOutcome
from hal.clock import WallClock, iso

SPEC = Spec("ocpp_replay", "OCPP offline replay of 10,000 queued TransactionEvents",
            "≥ 500 msg/s, 0 lost, 0 duplicated")
EVENTS = 10_000
TARGET_RATE = 500.0
T0 = 1767225600.0       # 2026-01-01T00:00:00Z, when the transaction starts
SAMPLE_S = 60.0         # SampledDataCtrlr.TxUpdatedInterval (our default)
TX_ID = "3f2c8a4e-6b1d-4c2e-9a77-0d5e8f1b2c3a"
IDENTITY = "bench-cs"
PROTOCOL = "ocpp2.0.1"
THIN_OFF = 10 * EVENTS  # a thinning threshold above the load: the target counts every message


def _sample(measurand: str, value: float, unit: str, phase: str | None = None
            ) -> dict[str, Any]:
    sample: dict[str, Any] = {"value": value, "context": "Sample.Periodic",
                              "measurand": measurand, "unitOfMeasure": {"unit": unit}}
    if phase is not None:
        sample["phase"] = phase
    return sample


def transaction_events(count: int) -> list[dict[str, Any]]:
    """One offline transaction of ``count`` events as the station records them."""
    events = []
    for seq in range(count):
        at = iso(T0 + SAMPLE_S * seq)
        energy = round(11_000.0 * SAMPLE_S * seq / 3600.0, 3)
        samples = [_sample("Energy.Active.Import.Register", energy, "Wh"),
                   _sample("Power.Active.Import", 11_000.0, "W"),
                   *[_sample("Current.Import", 16.0, "A", p) for p in ("L1", "L2", "L3")],
                   *[_sample("Voltage", 230.0, "V", p) for p in ("L1-N", "L2-N", "L3-N")]]
        info: dict[str, Any] = {"transactionId": TX_ID, "chargingState": "Charging"}
        event: dict[str, Any] = {
            "eventType": "Updated", "timestamp": at, "triggerReason": "MeterValuePeriodic",
            "seqNo": seq, "offline": True, "transactionInfo": info,
            "meterValue": [{"timestamp": at, "sampledValue": samples}]}
        if seq == 0:
            event.update(eventType="Started", triggerReason="Authorized",
                         evse={"id": 1, "connectorId": 1},
                         idToken={"idToken": "04A2B3C4D5E6F7", "type": "ISO14443"})
        elif seq == count - 1:
            event.update(eventType="Ended", triggerReason="EVDeparted")
            info.update(chargingState="EVConnected", stoppedReason="EVDisconnected")
        events.append(event)
    return events


@dataclass
class CsmsRecord:
    ids: list[str] = field(default_factory=list)
    seq_nos: list[int] = field(default_factory=list)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # as the handler got them


class Csms(ChargePoint):  # type: ignore[misc]
    """The CSMS end: answers every TransactionEvent and records what arrived."""

    def __init__(self, identity: str, connection: Any, record: CsmsRecord) -> None:
        super().__init__(identity, connection)
        self.record = record

    @on("TransactionEvent")  # type: ignore[untyped-decorator]
    def on_transaction_event(self, call_unique_id: str, **fields: Any) -> Any:
        self.record.ids.append(call_unique_id)
        self.record.seq_nos.append(fields["seq_no"])
        self.record.fields.setdefault(call_unique_id, fields)
        return call_result.TransactionEvent()


async def _replay(db: sqlite3.Connection, record: CsmsRecord) -> tuple[float, MessageQueue]:
    """Drain the queue to the CSMS; the wall seconds it took."""

    async def handler(ws: ServerConnection) -> None:
        try:
            await Csms(IDENTITY, ws, record).start()
        except ConnectionClosed:
            return

    queue = MessageQueue(db, thin_above=THIN_OFF)
    clock = WallClock()
    async with serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol(PROTOCOL)]) as server:
        port = server.sockets[0].getsockname()[1]
        start = time.perf_counter()
        async with connect(f"ws://127.0.0.1:{port}/{IDENTITY}",
                           subprotocols=[Subprotocol(PROTOCOL)]) as ws:
            station = ChargePoint(IDENTITY, ws, response_timeout=30)
            reader = asyncio.create_task(station.start())

            async def send(message: QueuedMessage) -> SendOutcome:
                request = call.TransactionEvent(**camel_to_snake_case(message.payload))
                try:
                    await station.call(request, suppress=False, unique_id=message.message_id)
                except OCPPError:
                    return SendOutcome.REJECTED
                except TimeoutError:
                    return SendOutcome.TIMEOUT
                except ConnectionClosed:
                    return SendOutcome.DISCONNECTED
                return SendOutcome.DELIVERED

            await _drain(queue, send, clock)
            wall = time.perf_counter() - start
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return wall, queue


async def _drain(queue: MessageQueue, send: Callable[[QueuedMessage], Awaitable[SendOutcome]],
                 clock: WallClock) -> None:
    await queue.drain(send, now=clock.now, sleep=asyncio.sleep, attempts_allowed=lambda: 3,
                      interval_s=lambda: 10.0)


async def _answer_at_once(message: QueuedMessage) -> SendOutcome:
    return SendOutcome.DELIVERED


def _queue_alone(path: Path, payloads: list[dict[str, Any]]) -> float:
    """The drain rate with a CSMS that answers at once: the queue's own work per message."""
    db = open_db(path)
    try:
        queue = MessageQueue(db, thin_above=THIN_OFF)
        for payload in payloads:
            queue.enqueue("TransactionEvent", payload)
        start = time.perf_counter()
        asyncio.run(_drain(queue, _answer_at_once, WallClock()))
        return len(payloads) / (time.perf_counter() - start)
    finally:
        db.close()


def _validation_ms(payload: dict[str, Any], runs: int = 200) -> float:
    validator = get_validator(Call.message_type_id, "TransactionEvent", "2.0.1")
    start = time.perf_counter()
    for _ in range(runs):
        validator.validate(payload)
    return (time.perf_counter() - start) / runs * 1000.0


def run(events: int = EVENTS) -> Result:
    payloads = transaction_events(events)
    record = CsmsRecord()
    with tempfile.TemporaryDirectory(prefix="voltpilot-bench-") as tmp:
        path = Path(tmp) / "ocpp.db"
        db = open_db(path)
        queue = MessageQueue(db, thin_above=THIN_OFF)
        start = time.perf_counter()
        queued = [queue.enqueue("TransactionEvent", p) for p in payloads]
        enqueue_s = time.perf_counter() - start
        db.close()
        db = open_db(path)   # replayed from disk, as after a restart while offline
        try:
            wall, queue = asyncio.run(_replay(db, record))
            waiting, dead = queue.size(), len(queue.dead_letters())
            counters = queue.counters()
        finally:
            db.close()
        queue_rate = _queue_alone(Path(tmp) / "alone.db", payloads)
    validation_ms = _validation_ms(payloads[1])

    queued_ids = [m.message_id for m in queued]
    received = set(record.ids)
    lost = sum(1 for i in queued_ids if i not in received)
    duplicated = len(record.ids) - len(received)
    in_order = record.seq_nos == list(range(events))
    altered = sum(1 for i, p in zip(queued_ids, payloads, strict=True)
                  if i in record.fields and snake_to_camel_case(record.fields[i]) != p)
    rate = events / wall
    notes = []
    if not in_order:
        notes.append("seqNo did not arrive as 0 … N-1 in order")
    if altered:
        notes.append(f"{altered} payloads arrived different from how they were queued")
    if waiting or dead:
        notes.append(f"queue not empty after the replay: {waiting} waiting, {dead} dead letters")
    ok = not notes and lost == 0 and duplicated == 0
    notes += [f"enqueue (durable, one commit each): {events / enqueue_s:.0f} msg/s; "
              f"the queue alone (instant CSMS): {queue_rate:.0f} msg/s; one schema validation "
              f"of an 8-sample TransactionEvent: {validation_ms:.2f} ms (the `ocpp` library "
              "validates each request at both ends)",
              f"queue counters after the replay: delivered {counters.delivered}, "
              f"failed attempts {counters.failed_attempts}, thinned {counters.thinned}",
              "thinning off for this run (threshold above the load): the target counts "
              "every message"]
    return Result(SPEC, f"{rate:.0f} msg/s ({events} in {wall:.1f} s); lost {lost}, "
                  f"duplicated {duplicated}", ok and rate >= TARGET_RATE, {
                      "events": events, "wall_s": wall, "rate_msg_s": rate,
                      "enqueue_s": enqueue_s, "queue_alone_msg_s": queue_rate,
                      "validation_ms": validation_ms, "lost": lost, "duplicated": duplicated,
                      "seq_in_order": in_order, "altered": altered, "waiting": waiting,
                      "dead_letters": dead, "target_rate_msg_s": TARGET_RATE}, notes)
