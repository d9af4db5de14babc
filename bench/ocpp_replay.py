"""Offline replay: 10,000 TransactionEvents queued while offline, replayed to a CSMS process.

One long transaction recorded offline (Started, 9,998 Updated, Ended; seqNo 0 … 9,999;
``offline: true``), each event carrying what our station sends by default: the
SampledDataCtrlr TxUpdatedMeasurands (energy register, power, current and voltage per phase:
8 sampled values) every TxUpdatedInterval (60 s). Each is checked against the 2.0.1 schema
and enqueued in the durable queue, as ``Station.enqueue_tx`` does (not timed); the
database is closed and reopened as after a restart.

The station side of the replay is the station's own: ``firmware.ocpp.connection.open_connection``
(security profile 1, subprotocol ocpp2.0.1), an ``Rpc`` reading the socket, and
``MessageQueue.drain`` with the station's send (``firmware.ocpp.station.queued_sender``):
``rpc.call(action, payload, unique_id=message_id, checked=True)``, one CALL in flight, each
answer awaited and validated against its schema, the queue's SQLite writes (send started,
delivered; WAL, synchronous=FULL) around every message. Logging goes to a file at INFO, as in
the running controller.

The CSMS is another machine in reality, so here it is another process (its own core and GIL):
a minimal websockets server that parses each frame, records the message id, seqNo and payload
and answers ``[3, id, {}]`` (a valid empty TransactionEventResponse) at once: the headline, as
the target is the station's replay rate. The replay runs a second time against a CSMS that first
validates each TransactionEventRequest with the `ocpp` library's schema (jsonschema in Python: a
millisecond or more a message, on its own core): OCPP-J allows one CALL in flight, so every
millisecond the CSMS spends per message is added to the station's cycle, and that rate is shown
beside the headline. The CSMS reports what it received on its stdout once the station closes
the connection.

Lost: queued ids the CSMS never received. Duplicated: receptions beyond the first of an id. Also
checked: seqNo arrives as 0 … N-1 in order, every payload arrives exactly as queued, the CSMS
refused none, and the queue ends empty with no dead letters. The rate is messages over the wall
time of the drain, connection set-up included.
"""

from __future__ import annotations

import asyncio
import json
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import websockets
from ocpp.messages import Call, get_validator
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from bench import OCPP_IDENTITY, OCPP_PASSWORD, ROOT, Result, Spec
from bench.latency import logging_to
from firmware.ocpp.connection import ConnectionConfig, open_connection
from firmware.ocpp.db import open_db
from firmware.ocpp.queue import MessageQueue, QueuedMessage, SendOutcome
from firmware.ocpp.rpc import Rpc, check_request
from firmware.ocpp.station import queued_sender
from hal.clock import WallClock, iso

SPEC = Spec("ocpp_replay", "OCPP offline replay of 10,000 queued TransactionEvents",
            "≥ 500 msg/s, 0 lost, 0 duplicated")
EVENTS = 10_000
TARGET_RATE = 500.0
T0 = 1767225600.0       # 2026-01-01T00:00:00Z, when the transaction starts
SAMPLE_S = 60.0         # SampledDataCtrlr.TxUpdatedInterval (our default)
TX_ID = "3f2c8a4e-6b1d-4c2e-9a77-0d5e8f1b2c3a"
PROTOCOL = "ocpp2.0.1"
THIN_OFF = 10 * EVENTS  # a thinning threshold above the load: the target counts every message
MESSAGE_TIMEOUT_S = 30.0
CSMS_TIMEOUT_S = 30.0   # for the CSMS process to come up, and to report once the link closes


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


# ---- the CSMS process ------------------------------------------------------------------------


@dataclass
class CsmsRecord:
    """What the CSMS process received, in arrival order."""

    ids: list[str] = field(default_factory=list)
    seq_nos: list[int] = field(default_factory=list)
    payloads: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0          # CALLs that failed the schema (answered with a CALLERROR)
    busy_s: float = 0.0       # spent parsing, validating and answering


async def _csms(validate: bool) -> CsmsRecord:
    """Serve one station connection; what arrived once it closes. The port goes to stdout."""
    record = CsmsRecord()
    done = asyncio.Event()
    validator = get_validator(Call.message_type_id, "TransactionEvent", "2.0.1") \
        if validate else None

    async def handler(ws: ServerConnection) -> None:
        try:
            async for raw in ws:
                start = time.perf_counter()
                frame = json.loads(raw)
                message_id, payload = frame[1], frame[3]
                if validator is not None and not validator.is_valid(payload):
                    record.refused += 1
                    answer = json.dumps([4, message_id, "FormatViolation", "schema", {}])
                else:
                    record.ids.append(message_id)
                    record.seq_nos.append(payload["seqNo"])
                    record.payloads.append(payload)
                    answer = json.dumps([3, message_id, {}])
                await ws.send(answer)
                record.busy_s += time.perf_counter() - start
        except websockets.ConnectionClosed:
            pass
        finally:
            done.set()

    async with serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol(PROTOCOL)]) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await done.wait()
    return record


def csms_main(argv: list[str]) -> int:
    """``python -m bench.ocpp_replay csms [--validate]``: the CSMS process. Prints its port,
    serves one connection, then prints what it received as one JSON line."""
    record = asyncio.run(_csms("--validate" in argv))
    print(json.dumps(asdict(record)), flush=True)
    return 0


class CsmsProcess:
    """The CSMS in a process of its own (its own interpreter, core and GIL)."""

    def __init__(self, validate: bool) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ocpp_replay", "csms",
             *(["--validate"] if validate else [])],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], CSMS_TIMEOUT_S)
        line = self._proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the CSMS process did not start within {CSMS_TIMEOUT_S:g} s")
        self.port = int(line)

    def report(self) -> CsmsRecord:
        """What it received (once the station has closed the connection)."""
        output, _ = self._proc.communicate(timeout=CSMS_TIMEOUT_S)
        if self._proc.returncode != 0:
            raise RuntimeError(f"the CSMS process failed (exit code {self._proc.returncode})")
        return CsmsRecord(**json.loads(output))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


# ---- the station side --------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    wall_s: float          # the drain, connection set-up included
    cpu_s: float           # this process's CPU time over the same span
    kept: frozenset[str]   # ids still in the queue or its dead letters: undelivered, not lost
    waiting: int
    dead_letters: int
    delivered: int
    failed_attempts: int
    record: CsmsRecord


async def _drain(queue: MessageQueue, url: str) -> None:
    connected = await open_connection(ConnectionConfig(
        csms_url=url, identity=OCPP_IDENTITY, security_profile=1, basic_auth_password=OCPP_PASSWORD,
        versions=(PROTOCOL,)))
    rpc = Rpc(connected.ws, connected.version, {}, timeout_s=lambda: MESSAGE_TIMEOUT_S)
    reader = asyncio.create_task(rpc.serve())
    try:
        # The station's own send; the answers carry no idTokenInfo to act on.
        send = queued_sender(rpc, lambda _request, _answer: None)
        await queue.drain(send, now=WallClock().now, sleep=asyncio.sleep,
                          attempts_allowed=lambda: 3, interval_s=lambda: 10.0)
    finally:
        reader.cancel()
        rpc.close()
        await connected.ws.close()
        await asyncio.gather(reader, return_exceptions=True)


def _replay(path: Path, validate: bool) -> Replay:
    csms = CsmsProcess(validate)
    try:
        db = open_db(path)   # replayed from disk, as after a restart while offline
        try:
            queue = MessageQueue(db, thin_above=THIN_OFF)
            start, cpu = time.perf_counter(), time.process_time()
            asyncio.run(_drain(queue, f"ws://127.0.0.1:{csms.port}/ocpp"))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            counters = queue.counters()
            waiting, dead = queue.messages(), queue.dead_letters()
            kept = frozenset([*(m.message_id for m in waiting),
                              *(d.message_id for d in dead)])
        finally:
            db.close()
        return Replay(wall, cpu, kept, len(waiting), len(dead), counters.delivered,
                      counters.failed_attempts, csms.report())
    finally:
        csms.close()


async def _answer_at_once(message: QueuedMessage) -> SendOutcome:
    return SendOutcome.DELIVERED


def _queue_alone(path: Path, events: int) -> float:
    """The drain rate with a send that answers at once: the queue's own work per message."""
    db = open_db(path)
    try:
        queue = MessageQueue(db, thin_above=THIN_OFF)
        start = time.perf_counter()
        asyncio.run(queue.drain(_answer_at_once, now=WallClock().now, sleep=asyncio.sleep,
                                attempts_allowed=lambda: 3, interval_s=lambda: 10.0))
        return events / (time.perf_counter() - start)
    finally:
        db.close()


def _enqueue(path: Path, payloads: list[dict[str, Any]]) -> tuple[list[str], float]:
    """Queue the events as Station.enqueue_tx does (schema-checked, then stored durably);
    their message ids and the seconds it took."""
    db = open_db(path)
    try:
        queue = MessageQueue(db, thin_above=THIN_OFF)
        start = time.perf_counter()
        ids = []
        for payload in payloads:
            check_request("TransactionEvent", payload, "2.0.1")
            ids.append(queue.enqueue("TransactionEvent", payload).message_id)
        return ids, time.perf_counter() - start
    finally:
        db.close()   # the last connection: SQLite checkpoints the WAL into the file


@dataclass(frozen=True)
class Check:
    lost: int
    duplicated: int
    problems: list[str]


def _check(replay: Replay, queued_ids: list[str], payloads: list[dict[str, Any]]) -> Check:
    record = replay.record
    received = set(record.ids)
    # Lost: neither received nor still held by the queue. One still held is undelivered (the
    # drain ended early, e.g. on a dropped connection) and goes with the next drain.
    lost = sum(1 for i in queued_ids if i not in received and i not in replay.kept)
    duplicated = len(record.ids) - len(received)
    problems = []
    if record.seq_nos != list(range(len(payloads))):
        problems.append("seqNo did not arrive as 0 … N-1 in order")
    sent = dict(zip(queued_ids, payloads, strict=True))
    altered = sum(1 for i, p in zip(record.ids, record.payloads, strict=True) if sent.get(i) != p)
    if altered:
        problems.append(f"{altered} payloads arrived different from how they were queued")
    if record.refused:
        problems.append(f"the CSMS refused {record.refused} requests (schema)")
    if replay.waiting or replay.dead_letters:
        problems.append(f"undelivered: the drain ended with {replay.waiting} messages still "
                        f"queued and {replay.dead_letters} dead letters ({replay.delivered} "
                        f"delivered, {replay.failed_attempts} failed attempts)")
    return Check(lost, duplicated, problems)


def _per_msg_ms(seconds: float, events: int) -> str:
    return f"{seconds / events * 1e3:.2f} ms/msg"


def run(events: int = EVENTS) -> Result:
    payloads = transaction_events(events)
    with tempfile.TemporaryDirectory(prefix="voltpilot-bench-") as tmp:
        base = Path(tmp)
        queued = base / "queued.db"
        with logging_to(base / "voltpilot.log", WallClock()):
            queued_ids, enqueue_s = _enqueue(queued, payloads)
            runs: dict[bool, Replay] = {}
            for validate in (False, True):
                copy = base / f"replay-{validate}.db"
                shutil.copyfile(queued, copy)
                runs[validate] = _replay(copy, validate)
            shutil.copyfile(queued, base / "alone.db")
            queue_rate = _queue_alone(base / "alone.db", events)

    head, checked = runs[False], runs[True]
    check = _check(head, queued_ids, payloads)
    checked_check = _check(checked, queued_ids, payloads)
    rate, checked_rate = events / head.wall_s, events / checked.wall_s
    notes = list(check.problems)
    notes += [f"against a CSMS that validates each request first: {checked_rate:.0f} msg/s "
              f"({events} in {checked.wall_s:.1f} s), lost {checked_check.lost}, duplicated "
              f"{checked_check.duplicated}"
              + (f" ({'; '.join(checked_check.problems)})" if checked_check.problems else ""),
              f"station process CPU {_per_msg_ms(head.cpu_s, events)} "
              f"({100 * head.cpu_s / head.wall_s:.0f} % of the drain's wall time), CSMS process "
              f"busy {_per_msg_ms(head.record.busy_s, events)} (parse, record, answer); with "
              f"the validating CSMS: station {_per_msg_ms(checked.cpu_s, events)}, CSMS "
              f"{_per_msg_ms(checked.record.busy_s, events)}",
              f"the queue alone (a send that answers at once): {queue_rate:.0f} msg/s; enqueue "
              f"with the station's schema check (not part of the replay): "
              f"{events / enqueue_s:.0f} msg/s",
              f"queue counters after the replay: delivered {head.delivered}, failed attempts "
              f"{head.failed_attempts}; thinning off (threshold above the load): the target "
              "counts every message",
              "station: open_connection (profile 1, ocpp2.0.1) + Rpc + MessageQueue.drain with "
              "the station's queued_sender (checked=True); CSMS: a separate process, a raw "
              "websockets server answering [3, id, {}]"]
    # Losing or repeating a message fails the target in either run; the rate is the headline's.
    met = (all(not c.problems and c.lost == 0 and c.duplicated == 0
               for c in (check, checked_check)) and rate >= TARGET_RATE)
    undelivered = len(head.kept) + len(checked.kept)
    return Result(SPEC, f"{rate:.0f} msg/s ({events} in {head.wall_s:.1f} s; {checked_rate:.0f} "
                  f"msg/s with a validating CSMS); lost {check.lost}, duplicated "
                  f"{check.duplicated}" + (f", undelivered {undelivered}" if undelivered else ""),
                  met, {
                      "events": events, "wall_s": head.wall_s, "rate_msg_s": rate,
                      "station_cpu_s": head.cpu_s, "csms_busy_s": head.record.busy_s,
                      "rate_validating_csms_msg_s": checked_rate,
                      "wall_validating_csms_s": checked.wall_s,
                      "lost_validating_csms": checked_check.lost,
                      "duplicated_validating_csms": checked_check.duplicated,
                      "enqueue_s": enqueue_s, "queue_alone_msg_s": queue_rate,
                      "lost": check.lost, "duplicated": check.duplicated,
                      "problems": check.problems + checked_check.problems,
                      "waiting": head.waiting, "dead_letters": head.dead_letters,
                      "undelivered_validating_csms": len(checked.kept),
                      "target_rate_msg_s": TARGET_RATE}, notes)


if __name__ == "__main__":
    if sys.argv[1:2] != ["csms"]:
        sys.exit("usage: python -m bench.ocpp_replay csms [--validate] (run by the benchmark)")
    sys.exit(csms_main(sys.argv[2:]))
