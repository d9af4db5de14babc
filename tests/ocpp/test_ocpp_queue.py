"""The offline queue: durable before sent, in order, no duplicates, E13 retries with visible dead
letters, thinning that never touches Started/Ended, and replay to a real CSMS (websockets + the
`ocpp` library) that sees every message booked exactly once across a dropped connection and a
killed station."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from firmware.ocpp.db import open_db
from firmware.ocpp.queue import (
    MessageQueue,
    QueuedMessage,
    RetryAction,
    RetryDecision,
    SendOutcome,
    retry_decision,
)
from hal.clock import iso

T0 = 1767225600.0  # 2026-01-01T00:00:00Z
SCHEMAS = Path(ocpp.__file__).resolve().parent
ROOT = Path(__file__).resolve().parents[2]


def tx_event(tx_id: str, seq_no: int, event_type: str = "Updated",
             trigger: str = "MeterValuePeriodic", *, offline: bool = True) -> dict[str, Any]:
    """A TransactionEvent as the station makes it, with a meter reading."""
    at = iso(T0 + 60.0 * seq_no)
    info: dict[str, Any] = {"transactionId": tx_id, "chargingState": "Charging"}
    payload: dict[str, Any] = {
        "eventType": event_type, "timestamp": at, "triggerReason": trigger, "seqNo": seq_no,
        "transactionInfo": info, "evse": {"id": 1, "connectorId": 1},
        "meterValue": [{"timestamp": at, "sampledValue": [{
            "value": 250.0 * seq_no, "context": "Sample.Periodic",
            "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}}]}]}
    if offline:
        payload["offline"] = True
    if event_type == "Started":
        payload["idToken"] = {"idToken": "04A2B3C4D5", "type": "ISO14443"}
    if event_type == "Ended":
        info["chargingState"] = "EVConnected"
        info["stoppedReason"] = "EVDisconnected"
    return payload


def transaction(tx_id: str, updates: int, *, state_changes: tuple[int, ...] = ()
                ) -> list[dict[str, Any]]:
    """Started, ``updates`` Updated (periodic, or ChargingStateChanged at the given seqNos),
    Ended; seqNo 0 … updates + 1."""
    events = [tx_event(tx_id, 0, "Started", "Authorized")]
    for seq in range(1, updates + 1):
        trigger = "ChargingStateChanged" if seq in state_changes else "MeterValuePeriodic"
        events.append(tx_event(tx_id, seq, "Updated", trigger))
    events.append(tx_event(tx_id, updates + 1, "Ended", "EVDeparted"))
    return events


def enqueue_all(queue: MessageQueue, events: list[dict[str, Any]]) -> list[QueuedMessage]:
    return [queue.enqueue("TransactionEvent", e) for e in events]


def ids(messages: list[QueuedMessage]) -> list[str]:
    return [m.message_id for m in messages]


class VirtualTime:
    def __init__(self, start: float = T0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


def scripted(outcomes: dict[str, list[SendOutcome]], sent: list[str]
             ) -> Callable[[QueuedMessage], Awaitable[SendOutcome]]:
    """A send that answers each message id with its scripted outcomes, then DELIVERED."""
    async def send(message: QueuedMessage) -> SendOutcome:
        sent.append(message.message_id)
        script = outcomes.get(message.message_id, [])
        return script.pop(0) if script else SendOutcome.DELIVERED
    return send


async def drain(queue: MessageQueue, send: Callable[[QueuedMessage], Awaitable[SendOutcome]],
                clock: VirtualTime, *, attempts: int = 3, interval_s: float = 10.0) -> None:
    await queue.drain(send, now=clock.now, sleep=clock.sleep, attempts_allowed=lambda: attempts,
                      interval_s=lambda: interval_s)


# ---- payloads -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v201", "v21"])
def test_payload_builders_give_valid_transaction_events(version: str) -> None:
    schema = json.loads((SCHEMAS / version / "schemas" / "TransactionEventRequest.json")
                        .read_text(encoding="utf-8-sig"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    for payload in [*transaction("tx-1", 2, state_changes=(2,)),
                    tx_event("tx-1", 3, trigger="MeterValueClock", offline=False)]:
        validator.validate(payload)


# ---- enqueue, order, durability -------------------------------------------------------------


def test_enqueue_gives_fixed_ids_and_generation_order() -> None:
    queue = MessageQueue(open_db(":memory:"))
    queued = enqueue_all(queue, transaction("tx-1", 3))
    assert len(set(ids(queued))) == 5
    assert all(len(i) == 36 for i in ids(queued))  # OCPP-J: a message id is at most 36 chars
    assert [m.position for m in queued] == sorted(m.position for m in queued)
    assert ids(queue.messages()) == ids(queued)
    assert queue.messages()[0].payload == transaction("tx-1", 3)[0]
    assert queue.size() == 5
    assert queue.peek() == queued[0]
    assert queue.next_due_at() == 0.0


def test_order_and_ids_survive_a_crash_and_a_message_in_doubt_goes_again(tmp_path: Path) -> None:
    path = tmp_path / "ocpp.db"
    db = open_db(path)
    queue = MessageQueue(db)
    events = transaction("tx-a", 10) + transaction("tx-b", 10)
    queued = enqueue_all(queue, events)
    queue.delivered(queue.sending(queued[0].message_id).message_id)
    in_flight = queue.sending(queued[1].message_id)   # the answer never arrives: crash
    db.close()

    db = open_db(path)
    queue = MessageQueue(db)
    assert ids(queue.messages()) == ids(queued[1:])
    head = queue.peek()
    assert head is not None and head.message_id == in_flight.message_id
    assert head.sends == 1 and head.attempts == 0 and head.payload == events[1]
    sent: list[str] = []
    asyncio.run(drain(queue, scripted({}, sent), VirtualTime()))
    assert sent == ids(queued[1:])                    # same ids, same order, each once
    assert queue.size() == 0
    db.close()

    db = open_db(path)
    queue = MessageQueue(db)
    assert queue.peek() is None                       # nothing delivered comes back
    counters = queue.counters()
    assert (counters.enqueued, counters.delivered, counters.waiting) == (len(events),
                                                                         len(events), 0)


def test_only_the_oldest_message_may_be_sent() -> None:
    queue = MessageQueue(open_db(":memory:"))
    first, second = enqueue_all(queue, transaction("tx-1", 0))
    with pytest.raises(ValueError, match="oldest"):
        queue.sending(second.message_id)
    with pytest.raises(KeyError):
        queue.sending("no-such-id")
    with pytest.raises(KeyError):
        queue.delivered("no-such-id")
    queue.sending(first.message_id)


def test_enqueue_inside_the_callers_transaction_commits_and_rolls_back_with_it() -> None:
    db = open_db(":memory:")
    queue = MessageQueue(db)
    db.execute("CREATE TABLE station_tx (id TEXT PRIMARY KEY, next_seq INTEGER)")
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO station_tx VALUES ('tx-1', 1)")
    queue.enqueue("TransactionEvent", tx_event("tx-1", 0, "Started", "Authorized"))
    with pytest.raises(ValueError):   # a bad message leaves the caller's transaction usable
        queue.enqueue("TransactionEvent", {"eventType": "Updated"})
    db.execute("ROLLBACK")
    assert queue.size() == 0 and queue.last_seq_no("tx-1") is None

    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO station_tx VALUES ('tx-1', 1)")
    queue.enqueue("TransactionEvent", tx_event("tx-1", 0, "Started", "Authorized"))
    db.execute("COMMIT")
    assert queue.size() == 1 and queue.last_seq_no("tx-1") == 0


def test_seq_no_bookkeeping_and_messages_in_queue() -> None:
    queue = MessageQueue(open_db(":memory:"))
    assert not queue.has_pending()
    queue.enqueue("StatusNotification", {"connectorStatus": "Occupied"})
    assert not queue.has_pending()                   # not transaction-related
    queued = enqueue_all(queue, transaction("tx-1", 2)[:-1])
    assert queue.last_seq_no("tx-1") == 2 and queue.has_pending("tx-1")
    queue.enqueue("TransactionEvent", tx_event("tx-1", 3, "Ended", "EVDeparted"))
    assert queue.last_seq_no("tx-1") is None          # the transaction is over
    queue.delivered(queue.sending(queue.messages()[0].message_id).message_id)
    for message in queued:
        queue.delivered(queue.sending(message.message_id).message_id)
    assert queue.has_pending("tx-1") and queue.has_pending()  # its Ended still waits
    queue.delivered(queue.sending(queue.messages()[0].message_id).message_id)
    assert not queue.has_pending("tx-1") and not queue.has_pending("tx-2")
    assert not queue.has_pending()


def test_bad_input_is_refused() -> None:
    queue = MessageQueue(open_db(":memory:"))
    good = tx_event("tx-1", 0, "Started", "Authorized")
    with pytest.raises(ValueError, match="tx_id"):
        queue.enqueue("TransactionEvent", good, tx_id="tx-2")
    with pytest.raises(ValueError, match="event_type"):
        queue.enqueue("TransactionEvent", good, event_type="Ended")
    with pytest.raises(ValueError, match="seqNo"):
        queue.enqueue("TransactionEvent", {**good, "seqNo": -1})
    with pytest.raises(ValueError):
        queue.enqueue("TransactionEvent", {**good, "meterValue": math.nan})
    with pytest.raises(ValueError):
        queue.enqueue("", {})
    with pytest.raises(ValueError, match="autocommit"):
        MessageQueue(sqlite3.connect(":memory:"))
    assert queue.size() == 0
    queue.enqueue("StatusNotification", {"connectorStatus": "Available"})  # QueueAllMessages
    assert queue.size() == 1


# ---- E13 retries and dead letters -------------------------------------------------------------


def test_retry_schedule_is_interval_times_attempt_number() -> None:
    assert retry_decision(1, now=100.0, attempts_allowed=3, interval_s=10.0) == \
        RetryDecision(RetryAction.RETRY_AT, 1, 110.0)
    assert retry_decision(2, now=200.0, attempts_allowed=3, interval_s=10.0) == \
        RetryDecision(RetryAction.RETRY_AT, 2, 220.0)
    assert retry_decision(3, now=300.0, attempts_allowed=3, interval_s=10.0) == \
        RetryDecision(RetryAction.DEAD_LETTER, 3)
    # MessageAttempts 0 still means the one attempt; a negative interval means "at once".
    assert retry_decision(1, now=0.0, attempts_allowed=0, interval_s=10.0).action is \
        RetryAction.DEAD_LETTER
    assert retry_decision(1, now=5.0, attempts_allowed=2, interval_s=-1.0).at == 5.0
    with pytest.raises(ValueError):
        retry_decision(0, now=0.0, attempts_allowed=3, interval_s=1.0)


def test_a_waiting_retry_blocks_newer_messages_then_becomes_a_visible_dead_letter(
        tmp_path: Path) -> None:
    path = tmp_path / "ocpp.db"
    queue = MessageQueue(open_db(path))
    first, second = enqueue_all(queue, transaction("tx-1", 0))
    queue.sending(first.message_id)
    decision = queue.failed(first.message_id, now=100.0, attempts_allowed=3, interval_s=10.0,
                            error="rejected")
    assert decision == RetryDecision(RetryAction.RETRY_AT, 1, 110.0)
    assert queue.peek(now=109.9) is None              # the newer message may not overtake
    assert queue.next_due_at() == 110.0
    head = queue.peek(now=110.0)
    assert head is not None and head.message_id == first.message_id and head.attempts == 1
    assert head.last_error == "rejected"
    queue.sending(first.message_id)
    assert queue.failed(first.message_id, now=112.0, attempts_allowed=3, interval_s=10.0,
                        error="timeout").at == 132.0
    queue.sending(first.message_id)
    assert queue.failed(first.message_id, now=140.0, attempts_allowed=3, interval_s=10.0,
                        error="rejected").action is RetryAction.DEAD_LETTER

    queue = MessageQueue(open_db(path))               # dead letters outlive a restart
    [dead] = queue.dead_letters()
    assert (dead.message_id, dead.attempts, dead.error, dead.dead_at) == (
        first.message_id, 3, "rejected", 140.0)
    assert dead.payload == first.payload and dead.seq_no == 0 and dead.tx_id == "tx-1"
    assert ids(queue.messages()) == [second.message_id]
    counters = queue.counters()
    assert (counters.failed_attempts, counters.dead_lettered, counters.waiting) == (3, 1, 1)


def test_drain_waits_interval_times_attempt_and_sends_in_order() -> None:
    queue = MessageQueue(open_db(":memory:"))
    a, b, c = enqueue_all(queue, transaction("tx-1", 1))
    sent: list[str] = []
    clock = VirtualTime()
    outcomes = {a.message_id: [SendOutcome.REJECTED, SendOutcome.TIMEOUT]}
    asyncio.run(drain(queue, scripted(outcomes, sent), clock, attempts=3, interval_s=10.0))
    assert sent == [a.message_id, a.message_id, a.message_id, b.message_id, c.message_id]
    assert clock.sleeps == [10.0, 20.0]
    assert queue.size() == 0 and queue.dead_letters() == []


def test_drain_moves_on_after_a_dead_letter() -> None:
    queue = MessageQueue(open_db(":memory:"))
    a, b, c = enqueue_all(queue, transaction("tx-1", 1))
    sent: list[str] = []
    outcomes = {b.message_id: [SendOutcome.REJECTED] * 2}
    asyncio.run(drain(queue, scripted(outcomes, sent), VirtualTime(), attempts=2))
    assert sent == [a.message_id, b.message_id, b.message_id, c.message_id]
    assert [d.message_id for d in queue.dead_letters()] == [b.message_id]
    assert queue.counters().dead_lettered == 1 and queue.size() == 0


def test_a_send_that_raises_is_a_failed_attempt_not_a_blocked_queue() -> None:
    queue = MessageQueue(open_db(":memory:"))
    a, b = enqueue_all(queue, transaction("tx-1", 0))
    sent: list[str] = []

    async def send(message: QueuedMessage) -> SendOutcome:
        sent.append(message.message_id)
        if message.message_id == a.message_id:
            raise ValueError("refusing to send an invalid TransactionEvent")
        return SendOutcome.DELIVERED

    clock = VirtualTime()
    asyncio.run(drain(queue, send, clock, attempts=2, interval_s=10.0))
    assert sent == [a.message_id, a.message_id, b.message_id] and clock.sleeps == [10.0]
    [dead] = queue.dead_letters()
    assert dead.message_id == a.message_id and dead.error == "send raised ValueError"


def test_a_lost_connection_is_not_an_attempt() -> None:
    queue = MessageQueue(open_db(":memory:"))
    a, b = enqueue_all(queue, transaction("tx-1", 0))
    sent: list[str] = []
    outcomes = {a.message_id: [SendOutcome.DISCONNECTED] * 5}
    for _ in range(5):   # more disconnects than MessageAttempts: still no dead letter
        asyncio.run(drain(queue, scripted(outcomes, sent), VirtualTime(), attempts=2))
        head = queue.peek()
        assert head is not None and head.message_id == a.message_id and head.attempts == 0
    asyncio.run(drain(queue, scripted(outcomes, sent), VirtualTime(), attempts=2))
    assert sent == [a.message_id] * 6 + [b.message_id]
    assert queue.size() == 0 and queue.dead_letters() == []


def test_wake_cuts_a_wait_short_and_drain_runs_once_at_a_time() -> None:
    async def main() -> None:
        queue = MessageQueue(open_db(":memory:"))
        [a] = enqueue_all(queue, [tx_event("tx-1", 0, "Started", "Authorized")])
        clock = VirtualTime()
        sent: list[str] = []
        outcomes = {a.message_id: [SendOutcome.TIMEOUT]}
        task = asyncio.create_task(queue.drain(
            scripted(outcomes, sent), now=clock.now, sleep=asyncio.sleep,
            attempts_allowed=lambda: 3, interval_s=lambda: 3600.0))
        while not sent:
            await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already"):
            await queue.drain(scripted({}, []), now=clock.now, sleep=asyncio.sleep,
                              attempts_allowed=lambda: 3, interval_s=lambda: 1.0)
        await asyncio.sleep(0.01)
        assert not task.done()                        # waiting out the hour
        clock.t += 3600.0
        queue.wake()
        await asyncio.wait_for(task, 2.0)             # no real hour passed
        assert sent == [a.message_id, a.message_id] and queue.size() == 0

    asyncio.run(main())


# ---- thinning -------------------------------------------------------------------------------


def test_thinning_keeps_started_ended_state_changes_one_in_n_and_order() -> None:
    queue = MessageQueue(open_db(":memory:"), thin_above=20, thin_keep_one_in=5)
    events = transaction("tx-1", 60, state_changes=(7, 33)) + transaction("tx-2", 12)
    queued = enqueue_all(queue, events)
    left = queue.messages()
    kept = {(m.tx_id, m.seq_no) for m in left}
    thinned = queue.thinned()
    assert thinned, "the threshold was crossed"
    assert {(t.tx_id, t.seq_no) for t in thinned}.isdisjoint(kept)
    assert len(thinned) + len(left) == len(events)
    # Never dropped: Started, Ended, state changes.
    for e in events:
        if e["eventType"] != "Updated" or e["triggerReason"] != "MeterValuePeriodic":
            assert (e["transactionInfo"]["transactionId"], e["seqNo"]) in kept
    # Periodic survivors: the first of each transaction, then one in five, evenly.
    periodic = [seq for seq in range(1, 61) if seq not in (7, 33)]
    assert [m.seq_no for m in left if m.tx_id == "tx-1" and m.event_type == "Updated"
            and m.seq_no not in (7, 33)] == periodic[::5]
    # Order unchanged, seqNo gaps are exactly the thinned ones, counted.
    assert [m.position for m in left] == sorted(m.position for m in left)
    assert [m.position for m in left] == [m.position for m in queued
                                          if (m.tx_id, m.seq_no) in kept]
    gaps = {t.seq_no for t in queue.thinned("tx-1")}
    assert gaps == set(range(62)) - {m.seq_no for m in left if m.tx_id == "tx-1"}
    assert queue.counters().thinned == len(thinned) and queue.size() == len(left)


def test_no_thinning_at_or_below_the_threshold() -> None:
    queue = MessageQueue(open_db(":memory:"), thin_above=40, thin_keep_one_in=5)
    enqueue_all(queue, transaction("tx-1", 38))       # 40 messages
    assert queue.size() == 40 and queue.thinned() == []
    queue.enqueue("TransactionEvent", tx_event("tx-2", 0, "Started", "Authorized"))
    assert queue.thinned() != []


def test_thinning_spares_a_message_whose_send_has_started_and_other_actions(
        tmp_path: Path) -> None:
    path = tmp_path / "ocpp.db"
    queue = MessageQueue(open_db(path), thin_above=1000, thin_keep_one_in=2)
    started, kept, droppable = enqueue_all(queue, transaction("tx-1", 3)[:3])
    queue.delivered(queue.sending(started.message_id).message_id)
    queue.delivered(queue.sending(kept.message_id).message_id)
    queue.sending(droppable.message_id)               # in flight when the station restarts
    queue.enqueue("MeterValues", {"evseId": 1, "meterValue": []})

    queue = MessageQueue(open_db(path), thin_above=2, thin_keep_one_in=2)
    for seq in range(3, 9):
        queue.enqueue("TransactionEvent", tx_event("tx-1", seq))
    left = queue.messages()
    assert left[0].message_id == droppable.message_id
    assert left[1].action == "MeterValues"
    # The transaction's periodic count went on across the restart: seqNo 3 is its third
    # periodic Updated (ordinal 2, kept), 4 the fourth (dropped), and so on.
    assert [m.seq_no for m in left[2:]] == [3, 5, 7]
    assert [t.seq_no for t in queue.thinned()] == [4, 6, 8]


# ---- a model of the queue under enqueue / deliver / fail / lost answers / crashes -------------


@dataclass
class Modelled:
    message_id: str
    tx_id: str
    seq_no: int
    droppable: bool
    attempts: int = 0
    sends: int = 0
    due_at: float = 0.0


@dataclass
class OpenTx:
    tx_id: str
    next_seq: int = 1
    periodic: int = 0


KEEP_ONE_IN = 3
THIN_ABOVE = 8
INTERVAL_S = 5.0


@dataclass
class Book:
    waiting: list[Modelled] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    thinned: list[str] = field(default_factory=list)


class QueueMachine(RuleBasedStateMachine):
    """The queue against a list: after every step the queue holds exactly the model's messages,
    in the model's order, with its attempts and sends; crashes change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="voltpilot-queue-"))
        self.db = self._connect()
        self.queue = self._open()
        self.book = Book()
        self.open: dict[str, OpenTx] = {}
        self.generation = 0
        self.now = T0

    def _connect(self) -> sqlite3.Connection:
        db = open_db(self.dir / "ocpp.db")
        # A "crash" here closes and reopens the file in this process, which needs no fsync;
        # kill -9 with the real settings is the subprocess test's job. Keeps 150 runs fast.
        db.execute("PRAGMA synchronous=OFF")
        return db

    def _open(self) -> MessageQueue:
        return MessageQueue(self.db, thin_above=THIN_ABOVE, thin_keep_one_in=KEEP_ONE_IN)

    @rule(name=st.sampled_from(["a", "b"]),
          kind=st.sampled_from(["periodic", "periodic", "clock", "state", "end"]))
    def enqueue(self, name: str, kind: str) -> None:
        tx = self.open.get(name)
        droppable = False
        if tx is None:
            self.generation += 1
            tx = self.open[name] = OpenTx(f"{name}-{self.generation}")
            payload, seq = tx_event(tx.tx_id, 0, "Started", "Authorized"), 0
        elif kind == "end":
            payload, seq = tx_event(tx.tx_id, tx.next_seq, "Ended", "EVDeparted"), tx.next_seq
            del self.open[name]
        else:
            trigger = {"periodic": "MeterValuePeriodic", "clock": "MeterValueClock",
                       "state": "ChargingStateChanged"}[kind]
            payload, seq = tx_event(tx.tx_id, tx.next_seq, "Updated", trigger), tx.next_seq
            if kind != "state":
                droppable = tx.periodic % KEEP_ONE_IN != 0
                tx.periodic += 1
            tx.next_seq += 1
        message = self.queue.enqueue("TransactionEvent", payload)
        self.book.waiting.append(Modelled(message.message_id, tx.tx_id, seq, droppable))
        if len(self.book.waiting) > THIN_ABOVE:
            gone = [m for m in self.book.waiting if m.droppable and m.sends == 0]
            self.book.thinned += [m.message_id for m in gone]
            self.book.waiting = [m for m in self.book.waiting if m not in gone]

    @rule(seconds=st.sampled_from([0.0, 1.0, 5.0, 12.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.book.waiting and self.book.waiting[0].due_at <= self.now)
    @rule()
    def deliver(self) -> None:
        head = self.book.waiting.pop(0)
        self.queue.delivered(self.queue.sending(head.message_id).message_id)
        self.book.delivered.append(head.message_id)

    @precondition(lambda self: self.book.waiting and self.book.waiting[0].due_at <= self.now)
    @rule(allowed=st.integers(min_value=1, max_value=3))
    def fail(self, allowed: int) -> None:
        head = self.book.waiting[0]
        self.queue.sending(head.message_id)
        head.sends += 1
        decision = self.queue.failed(head.message_id, now=self.now, attempts_allowed=allowed,
                                     interval_s=INTERVAL_S, error="rejected")
        head.attempts += 1
        if head.attempts >= allowed:
            assert decision.action is RetryAction.DEAD_LETTER
            self.book.waiting.pop(0)
            self.book.dead.append(head.message_id)
        else:
            head.due_at = self.now + INTERVAL_S * head.attempts
            assert decision == RetryDecision(RetryAction.RETRY_AT, head.attempts, head.due_at)

    @precondition(lambda self: self.book.waiting and self.book.waiting[0].due_at <= self.now)
    @rule()
    def answer_lost(self) -> None:
        head = self.book.waiting[0]
        self.queue.sending(head.message_id)
        head.sends += 1

    @rule()
    def crash(self) -> None:
        self.db.close()
        self.db = self._connect()
        self.queue = self._open()

    @invariant()
    def queue_matches_the_model(self) -> None:
        waiting = self.queue.messages()
        assert [(m.message_id, m.tx_id, m.seq_no, m.attempts, m.sends, m.due_at)
                for m in waiting] == [(m.message_id, m.tx_id, m.seq_no, m.attempts, m.sends,
                                       m.due_at) for m in self.book.waiting]
        assert self.queue.size() == len(waiting)
        assert [d.message_id for d in self.queue.dead_letters()] == self.book.dead
        assert [t.message_id for t in self.queue.thinned()] == self.book.thinned
        counters = self.queue.counters()
        assert (counters.delivered, counters.dead_lettered, counters.thinned) == (
            len(self.book.delivered), len(self.book.dead), len(self.book.thinned))
        every = (ids(waiting) + self.book.dead + self.book.delivered + self.book.thinned)
        assert len(every) == len(set(every)) == counters.enqueued
        head = self.queue.peek(now=self.now)
        due = bool(self.book.waiting) and self.book.waiting[0].due_at <= self.now
        assert (head is not None) == due
        # Within each transaction, what is waiting is in seqNo order.
        for tx_id in {m.tx_id for m in waiting}:
            seqs = [m.seq_no or 0 for m in waiting if m.tx_id == tx_id]
            assert seqs == sorted(seqs)

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestQueueModel = QueueMachine.TestCase
# Thirty steps reach every rule several times (thinning needs nine waiting messages); the
# example count comes from the profile (make soak runs many more).
TestQueueModel.settings = settings(stateful_step_count=30)


# ---- kill -9 while enqueueing ---------------------------------------------------------------

CHILD = """
import sys
from firmware.ocpp.db import open_db
from firmware.ocpp.queue import MessageQueue

queue = MessageQueue(open_db(sys.argv[1]), thin_above=10**9)
print("ready", flush=True)
seq = 0
while True:
    payload = {"eventType": "Updated", "timestamp": "2026-01-01T00:00:00Z",
               "triggerReason": "MeterValuePeriodic", "seqNo": seq,
               "transactionInfo": {"transactionId": "tx-kill"}, "offline": True}
    message = queue.enqueue("TransactionEvent", payload)
    print(message.message_id, flush=True)   # acknowledged: enqueue has returned
    seq += 1
"""


def test_every_acknowledged_enqueue_survives_kill_9(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for round_ in range(3):
        path = tmp_path / f"kill-{round_}.db"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout is not None and child.stderr is not None
        assert child.stdout.readline() == b"ready\n", child.stderr.read().decode()
        asyncio.run(asyncio.sleep(rng.uniform(0.02, 0.3)))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
        assert child.returncode == -signal.SIGKILL
        acknowledged = [line.decode() for line in out.split(b"\n")[:-1]]  # complete lines
        assert acknowledged, f"seed {seed}: the child acknowledged nothing"

        db = open_db(path)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = MessageQueue(db).messages()
        db.close()
        stored_ids = ids(stored)
        assert len(set(stored_ids)) == len(stored_ids), f"seed {seed}: duplicates"
        # All acknowledged, in order; at most the one enqueue that committed unacknowledged.
        assert stored_ids[: len(acknowledged)] == acknowledged, f"seed {seed}"
        assert len(stored_ids) - len(acknowledged) in (0, 1), f"seed {seed}"
        assert [m.seq_no for m in stored] == list(range(len(stored))), f"seed {seed}"


# ---- replay to a real CSMS: at-least-once on the wire, exactly once at the CSMS --------------


@dataclass
class CsmsBook:
    wire: list[str] = field(default_factory=list)                 # every CALL id received
    booked: dict[str, tuple[str, int]] = field(default_factory=dict)  # id → (tx, seqNo)
    drop_once: set[str] = field(default_factory=set)    # close the socket instead of answering
    hold_once: set[str] = field(default_factory=set)    # book, then answer only when released
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def csms_class() -> Any:
    from ocpp.routing import on
    from ocpp.v201 import ChargePoint, call_result

    class Csms(ChargePoint):  # type: ignore[misc]
        """Books each TransactionEvent once, by its CALL id (the OCPP-J unique id)."""

        def __init__(self, identity: str, connection: Any, book: CsmsBook) -> None:
            super().__init__(identity, connection)
            self.book = book

        @on("TransactionEvent")  # type: ignore[untyped-decorator]
        async def on_transaction_event(self, call_unique_id: str, seq_no: int,
                                       transaction_info: dict[str, Any], **_: Any) -> Any:
            self.book.wire.append(call_unique_id)
            self.book.booked.setdefault(call_unique_id,
                                        (transaction_info["transaction_id"], seq_no))
            if call_unique_id in self.book.drop_once:
                self.book.drop_once.discard(call_unique_id)
                await self._connection.close()
            if call_unique_id in self.book.hold_once:
                self.book.hold_once.discard(call_unique_id)
                self.book.held.set()
                await self.book.release.wait()
            return call_result.TransactionEvent()

    return Csms


class Station:
    """The station's side of one connection: the `ocpp` library's ChargePoint sending each
    queued message with the queue's id as the CALL's unique id."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> Station:
        from ocpp.v201 import ChargePoint
        from websockets.asyncio.client import connect
        from websockets.typing import Subprotocol

        self.ws = await connect(self.url, subprotocols=[Subprotocol("ocpp2.0.1")])
        self.cp = ChargePoint("cs-queue", self.ws, response_timeout=5)
        self.reader = asyncio.create_task(self.cp.start())
        return self

    async def __aexit__(self, *_: object) -> None:
        self.reader.cancel()
        await self.ws.close()
        await asyncio.gather(self.reader, return_exceptions=True)

    async def send(self, message: QueuedMessage) -> SendOutcome:
        from ocpp.charge_point import camel_to_snake_case
        from ocpp.exceptions import OCPPError
        from ocpp.v201 import call
        from websockets.exceptions import ConnectionClosed

        request = call.TransactionEvent(**camel_to_snake_case(message.payload))
        calling = asyncio.ensure_future(
            self.cp.call(request, suppress=False, unique_id=message.message_id))
        try:
            await asyncio.wait({calling, self.reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not calling.done():      # the connection went, or we are being killed
                calling.cancel()
                await asyncio.gather(calling, return_exceptions=True)
        if calling.cancelled():
            return SendOutcome.DISCONNECTED
        try:
            calling.result()
        except OCPPError:
            return SendOutcome.REJECTED
        except TimeoutError:
            return SendOutcome.TIMEOUT
        except ConnectionClosed:
            return SendOutcome.DISCONNECTED
        return SendOutcome.DELIVERED


def test_replay_to_a_real_csms_is_exactly_once_across_a_drop_and_a_kill(tmp_path: Path) -> None:
    async def main() -> None:
        from websockets.asyncio.server import ServerConnection, serve
        from websockets.exceptions import ConnectionClosed
        from websockets.typing import Subprotocol

        book = CsmsBook()
        csms = csms_class()

        async def handler(ws: ServerConnection) -> None:
            try:
                await csms("cs-queue", ws, book).start()
            except ConnectionClosed:
                return

        path = tmp_path / "ocpp.db"
        db = open_db(path)
        queue = MessageQueue(db)
        events = transaction("tx-replay", 8)          # made offline: offline: true, seqNo 0..9
        queued = enqueue_all(queue, events)
        book.drop_once.add(queued[2].message_id)      # booked, but the answer is lost
        book.hold_once.add(queued[5].message_id)      # booked, then the station is killed
        clock = VirtualTime()

        async with serve(handler, "127.0.0.1", 0,
                         subprotocols=[Subprotocol("ocpp2.0.1")]) as server:
            port = server.sockets[0].getsockname()[1]
            url = f"ws://127.0.0.1:{port}/cs-queue"
            async with Station(url) as station:
                await drain(queue, station.send, clock)  # returns on DISCONNECTED
            head = queue.peek()
            assert head is not None and head.message_id == queued[2].message_id
            assert head.sends == 1 and head.attempts == 0
            assert ids(queue.messages()) == ids(queued[2:])

            async with Station(url) as station:           # reconnect
                draining = asyncio.create_task(drain(queue, station.send, clock))
                await asyncio.wait_for(book.held.wait(), 5.0)
                draining.cancel()                          # kill -9 while awaiting the answer
                await asyncio.gather(draining, return_exceptions=True)
                db.close()
                book.release.set()

            db = open_db(path)                             # restart
            queue = MessageQueue(db)
            head = queue.peek()
            assert head is not None and head.message_id == queued[5].message_id
            assert head.sends == 1
            async with Station(url) as station:
                await drain(queue, station.send, clock)
        assert queue.size() == 0 and queue.dead_letters() == []
        # On the wire: the two messages in doubt went twice, with the same ids.
        twice = [queued[2].message_id, queued[5].message_id]
        assert sorted(book.wire) == sorted([*ids(queued), *twice])
        # At the CSMS: every message booked once, in order, seqNo gap-free.
        assert list(book.booked) == ids(queued)
        assert [seq for _, seq in book.booked.values()] == list(range(len(events)))
        db.close()

    asyncio.run(main())
