"""The offline queue: every transaction-related message is on disk before it is sent, and reaches
the CSMS in the order it was made, once as far as the CSMS can tell.

OCPP 2.0.1 part 2, block E (2.1 the same unless noted), and how this module meets it:

Durable before sent (E11 connection loss during a transaction, E12 offline transactions):
    ``enqueue`` commits the message before it returns (autocommit, WAL, synchronous=FULL), so
    whatever has been handed to the queue survives kill -9 and a power cut. Inside the caller's
    own database transaction it is a savepoint of it and is durable when the caller commits.

Order: transaction-related messages are delivered in the order they were generated; nothing
    newer is sent while an older message is undelivered. The queue is strictly head-of-line:
    while the oldest message waits out a retry interval, ``peek(now=...)`` answers None rather
    than the next message. Non-transaction messages queued under QueueAllMessages share the line.

Identity and exactly-once: each message gets its id when it is enqueued (a UUID, 36 characters:
    the OCPP-J limit) and that id is the CALL's unique id on every send, never regenerated. On the
    wire this is at-least-once: a send whose answer never came (a timeout, a dropped connection,
    the station killed mid-send) goes again, after the retry interval, the reconnect or the
    restart, with the same id. OCPP-J requires
    a CALL's id to differ from every other CALL of the same sender, so an id seen twice is the
    same CALL seen twice; a CSMS that follows that rule (our test CSMS does) answers it again
    without booking it again, and that is what makes delivery exactly-once at the CSMS.

Retries (E13 "Transaction-related message not accepted by CSMS"; OCPPCommCtrlr.MessageAttempts
    and MessageAttemptInterval, instance TransactionEvent): a CALLERROR or no answer within the
    message timeout is a failed attempt. After failed attempt k the message waits
    MessageAttemptInterval × k (E13.FR.02); once MessageAttempts attempts have failed, the spec has
    the station discard it and go on with the next (E13.FR.03). We do not drop it silently: it
    moves to a dead-letter table, shown by ``dead_letters()``, counted in
    ``counters().dead_lettered`` and logged as a warning. A lost connection is not an attempt:
    the message stays at the head and goes first after reconnect.

offline and seqNo belong to the station: it sets ``offline: true`` on events that happened while
    it was offline (the schema: "this transaction event happened when the Charging Station was
    offline") and numbers each transaction's events. The queue never edits a payload, so a
    re-send is the same CALL byte for byte. ``last_seq_no`` lets the station take the next number
    from the queue in the same database transaction that enqueues, so a crash can neither repeat
    nor skip one.

Thinning (a station offline for days): when more than ``thin_above`` messages wait, the queue
    drops never-sent TransactionEvent(Updated) messages whose triggerReason is a periodic meter
    reading (MeterValuePeriodic, MeterValueClock), keeping the first of each transaction and one
    in every ``thin_keep_one_in`` after it (counted in generation order, so the survivors are
    evenly spread). It never drops Started or Ended, an Updated with any other triggerReason
    (authorization, charging state, limits, remote commands: state the CSMS cannot rebuild),
    anything that is not a TransactionEvent, or a message whose send has started (the CSMS may
    hold it already). This is the latitude the spec gives a station that runs out of room for
    queued messages (QueueAllMessages in OCPPCommCtrlr; E11/E12): intermediate Updated
    messages may go, Started and Ended may not. 2.1 spells it out (intermediate messages first,
    and triggerReasons whose messages must be kept); periodic and clock-aligned meter readings
    only is the narrowest reading of both. Past the threshold the queue still grows with what
    may not be dropped: losing nothing of that beats a bounded size.

    seqNo is not renumbered. Thinning leaves gaps in a transaction's seqNo on purpose: seqNo is
    there so the CSMS can tell that messages are missing ("helps with determining if all messages
    of a transaction have been received"), and a gap is the truthful signal that samples were
    dropped; renumbering would hide the loss and rewrite payloads after enqueue. Every thinned
    message is counted (``counters().thinned``) and listed with its seqNo (``thinned()``).

One MessageQueue per database at a time, used from one thread (the event loop's).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from firmware import logs
from firmware.ocpp.db import transaction

log = logs.get("ocpp.queue")

TRANSACTION_EVENT = "TransactionEvent"
EVENT_TYPES = frozenset({"Started", "Updated", "Ended"})
PERIODIC_TRIGGERS = frozenset({"MeterValuePeriodic", "MeterValueClock"})

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS queue_messages (
        position INTEGER PRIMARY KEY AUTOINCREMENT,  -- generation order, never reused
        message_id TEXT NOT NULL UNIQUE,             -- the CALL's unique id on every send
        action TEXT NOT NULL,
        payload TEXT NOT NULL,
        tx_id TEXT,
        event_type TEXT,
        seq_no INTEGER,
        droppable INTEGER NOT NULL DEFAULT 0,        -- a periodic Updated thinning may drop
        sends INTEGER NOT NULL DEFAULT 0,            -- sends started
        attempts INTEGER NOT NULL DEFAULT 0,         -- failed attempts (E13)
        due_at REAL NOT NULL DEFAULT 0,
        last_error TEXT)""",
    "CREATE INDEX IF NOT EXISTS queue_messages_tx ON queue_messages(tx_id)",
    """CREATE INDEX IF NOT EXISTS queue_messages_droppable ON queue_messages(position)
        WHERE droppable = 1 AND sends = 0""",
    """CREATE TABLE IF NOT EXISTS queue_dead_letters (
        position INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        action TEXT NOT NULL,
        payload TEXT NOT NULL,
        tx_id TEXT,
        event_type TEXT,
        seq_no INTEGER,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        dead_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS queue_thinned (
        position INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        tx_id TEXT,
        seq_no INTEGER)""",
    # Per open transaction: the last seqNo enqueued and how many periodic Updated it has had.
    """CREATE TABLE IF NOT EXISTS queue_transactions (
        tx_id TEXT PRIMARY KEY,
        last_seq_no INTEGER NOT NULL,
        periodic INTEGER NOT NULL DEFAULT 0)""",
    "CREATE TABLE IF NOT EXISTS queue_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

_COLUMNS = ("position, message_id, action, payload, tx_id, event_type, seq_no, attempts, sends, "
            "due_at, last_error")


class SendOutcome(Enum):
    DELIVERED = "delivered"        # a CALLRESULT
    REJECTED = "rejected"          # a CALLERROR from the CSMS
    TIMEOUT = "timeout"            # no answer within the message timeout
    DISCONNECTED = "disconnected"  # the connection went before an answer came


class RetryAction(Enum):
    RETRY_AT = "retry_at"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    action: RetryAction
    attempts: int              # failed attempts so far, the latest included
    at: float | None = None    # RETRY_AT: when the message may go again

    @classmethod
    def retry_at(cls, at: float, attempts: int) -> RetryDecision:
        return cls(RetryAction.RETRY_AT, attempts, at)

    @classmethod
    def dead_letter(cls, attempts: int) -> RetryDecision:
        return cls(RetryAction.DEAD_LETTER, attempts)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    position: int              # generation order
    message_id: str            # the CALL's unique id, on every send
    action: str
    payload: dict[str, Any]
    tx_id: str | None
    event_type: str | None
    seq_no: int | None
    attempts: int              # failed attempts (CALLERROR or no answer)
    sends: int                 # sends started; more than attempts: an answer is outstanding or lost
    due_at: float              # the next attempt may start at this time (0: at once)
    last_error: str | None     # the outcome of the last failed attempt


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the spec had us discard after MessageAttempts failures (E13.FR.03), kept."""

    position: int
    message_id: str
    action: str
    payload: dict[str, Any]
    tx_id: str | None
    event_type: str | None
    seq_no: int | None
    attempts: int
    error: str                 # the outcome of the last attempt
    dead_at: float


@dataclass(frozen=True, slots=True)
class Thinned:
    position: int
    message_id: str
    tx_id: str | None
    seq_no: int | None


@dataclass(frozen=True, slots=True)
class QueueCounters:
    """Totals since the database was created."""

    enqueued: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    thinned: int = 0

    @property
    def waiting(self) -> int:
        return self.enqueued - self.delivered - self.dead_lettered - self.thinned


_COUNTER_NAMES = tuple(f.name for f in fields(QueueCounters))


def retry_decision(attempts: int, *, now: float, attempts_allowed: int,
                   interval_s: float) -> RetryDecision:
    """What follows failed attempt number ``attempts`` (1 for the first).

    E13.FR.02: wait MessageAttemptInterval × the number of attempts made so far; E13.FR.03: after
    MessageAttempts attempts, give up on the message. A MessageAttempts below 1 still allows the
    one attempt every message gets; a negative interval counts as 0.
    """
    if attempts < 1:
        raise ValueError(f"attempts counts from 1, got {attempts}")
    if attempts >= max(1, attempts_allowed):
        return RetryDecision.dead_letter(attempts)
    return RetryDecision.retry_at(now + max(0.0, interval_s) * attempts, attempts)


def _transaction_fields(payload: dict[str, Any], tx_id: str | None, event_type: str | None
                        ) -> tuple[str, str, int, str]:
    """transactionId, eventType, seqNo and triggerReason of a TransactionEvent payload."""
    info = payload.get("transactionInfo")
    found_tx = info.get("transactionId") if isinstance(info, dict) else None
    found_type = payload.get("eventType")
    seq_no = payload.get("seqNo")
    trigger = payload.get("triggerReason")
    if not isinstance(found_tx, str) or not found_tx:
        raise ValueError("TransactionEvent without transactionInfo.transactionId")
    if found_type not in EVENT_TYPES:
        raise ValueError(f"TransactionEvent with eventType {found_type!r}")
    if not isinstance(seq_no, int) or isinstance(seq_no, bool) or seq_no < 0:
        raise ValueError(f"TransactionEvent with seqNo {seq_no!r}")
    if not isinstance(trigger, str):
        raise ValueError(f"TransactionEvent with triggerReason {trigger!r}")
    if tx_id is not None and tx_id != found_tx:
        raise ValueError(f"tx_id {tx_id!r} but the payload says {found_tx!r}")
    if event_type is not None and event_type != found_type:
        raise ValueError(f"event_type {event_type!r} but the payload says {found_type!r}")
    return found_tx, str(found_type), seq_no, trigger


def _message(row: tuple[Any, ...]) -> QueuedMessage:
    (position, message_id, action, payload, tx_id, event_type, seq_no, attempts, sends, due,
     last_error) = row
    return QueuedMessage(position=position, message_id=message_id, action=action,
                         payload=json.loads(payload), tx_id=tx_id, event_type=event_type,
                         seq_no=seq_no, attempts=attempts, sends=sends, due_at=due,
                         last_error=last_error)


class MessageQueue:
    def __init__(self, db: sqlite3.Connection, *, thin_above: int = 5000,
                 thin_keep_one_in: int = 10) -> None:
        if db.isolation_level is not None:
            raise ValueError("the queue needs an autocommit connection (firmware.ocpp.db.open_db)")
        if thin_above < 0 or thin_keep_one_in < 1:
            raise ValueError("thin_above must be >= 0 and thin_keep_one_in >= 1")
        self._db = db
        self._thin_above = thin_above
        self._keep_one_in = thin_keep_one_in
        self._draining = False
        self._woken = False
        self._waiters: set[asyncio.Future[None]] = set()
        with transaction(self._db):
            for statement in _SCHEMA:
                db.execute(statement)
            db.executemany("INSERT OR IGNORE INTO queue_counters (name, value) VALUES (?, 0)",
                           [(name,) for name in _COUNTER_NAMES])
        in_doubt = db.execute(
            "SELECT COUNT(*) FROM queue_messages WHERE sends > attempts").fetchone()[0]
        if in_doubt:
            # Sent before a crash or a lost connection, answer never seen: they go again with
            # the same ids, and the CSMS recognises them.
            logs.log(log, "queue_resend_in_doubt", logging.INFO, messages=in_doubt)

    # ---- writing ------------------------------------------------------------------------------

    def enqueue(self, action: str, payload: dict[str, Any], *, tx_id: str | None = None,
                event_type: str | None = None) -> QueuedMessage:
        """Store a message for sending; it is on disk when this returns (or, inside the caller's
        database transaction, when that commits). TransactionEvents give their transaction and
        event type from the payload; ``tx_id``/``event_type``, when given, must agree."""
        if not action:
            raise ValueError("a message needs an action")
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        seq_no: int | None = None
        trigger: str | None = None
        if action == TRANSACTION_EVENT:
            tx_id, event_type, seq_no, trigger = _transaction_fields(payload, tx_id, event_type)
        message_id = str(uuid.uuid4())
        with transaction(self._db):
            droppable = False
            if action == TRANSACTION_EVENT and tx_id is not None and seq_no is not None:
                droppable = self._note_transaction(tx_id, str(event_type), seq_no, trigger)
            # fetchall: a RETURNING statement is finished only once its rows are read.
            [(position,)] = self._db.execute(
                "INSERT INTO queue_messages (message_id, action, payload, tx_id, event_type, "
                "seq_no, droppable) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING position",
                (message_id, action, text, tx_id, event_type, seq_no, int(droppable))
            ).fetchall()
            self._count("enqueued")
            if self._waiting() > self._thin_above:
                self._thin()
        logs.log(log, "queue_enqueued", logging.DEBUG, message_id=message_id, action=action,
                 tx_id=tx_id, seq_no=seq_no)
        return QueuedMessage(position=position, message_id=message_id, action=action,
                             payload=json.loads(text), tx_id=tx_id, event_type=event_type,
                             seq_no=seq_no, attempts=0, sends=0, due_at=0.0, last_error=None)

    def sending(self, message_id: str) -> QueuedMessage:
        """Record, before the bytes go out, that a send of the head message starts: from now on
        thinning keeps it, and after a crash it is known to be in doubt."""
        rows = self._db.execute(
            f"UPDATE queue_messages SET sends = sends + 1 WHERE message_id = ? AND position = "
            f"(SELECT MIN(position) FROM queue_messages) RETURNING {_COLUMNS}",
            (message_id,)).fetchall()
        if not rows:
            self._require(message_id)
            raise ValueError(f"message {message_id} is not the oldest waiting message")
        return _message(rows[0])

    def delivered(self, message_id: str) -> None:
        """The CSMS answered with a CALLRESULT: the message is done."""
        with transaction(self._db):
            gone = self._db.execute("DELETE FROM queue_messages WHERE message_id = ? "
                                    "RETURNING position", (message_id,)).fetchall()
            if not gone:
                raise KeyError(message_id)
            self._count("delivered")
        logs.log(log, "queue_delivered", logging.DEBUG, message_id=message_id)

    def failed(self, message_id: str, *, now: float, attempts_allowed: int, interval_s: float,
               error: str) -> RetryDecision:
        """A send was answered with a CALLERROR or not at all: schedule the retry (E13.FR.02)
        or, after the last allowed attempt, move the message to the dead letters (E13.FR.03)."""
        with transaction(self._db):
            message = self._require(message_id)
            attempts = message.attempts + 1
            decision = retry_decision(attempts, now=now, attempts_allowed=attempts_allowed,
                                      interval_s=interval_s)
            self._count("failed_attempts")
            if decision.action is RetryAction.RETRY_AT:
                self._db.execute("UPDATE queue_messages SET attempts = ?, due_at = ?, "
                                 "last_error = ? WHERE message_id = ?",
                                 (attempts, decision.at, error, message_id))
            else:
                self._db.execute(
                    "INSERT INTO queue_dead_letters (position, message_id, action, payload, "
                    "tx_id, event_type, seq_no, attempts, error, dead_at) SELECT position, "
                    "message_id, action, payload, tx_id, event_type, seq_no, ?, ?, ? "
                    "FROM queue_messages WHERE message_id = ?",
                    (attempts, error, now, message_id))
                self._db.execute("DELETE FROM queue_messages WHERE message_id = ?",
                                 (message_id,))
                self._count("dead_lettered")
        if decision.action is RetryAction.RETRY_AT:
            logs.log(log, "queue_retry", logging.INFO, message_id=message_id, attempts=attempts,
                     at=decision.at, error=error)
        else:
            logs.log(log, "queue_dead_letter", logging.WARNING, message_id=message_id,
                     action=message.action, tx_id=message.tx_id, seq_no=message.seq_no,
                     attempts=attempts, error=error)
        return decision

    # ---- reading ------------------------------------------------------------------------------

    def peek(self, *, now: float | None = None) -> QueuedMessage | None:
        """The oldest waiting message; with ``now``, None while it waits out a retry interval
        (nothing newer may overtake it)."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM queue_messages ORDER BY position LIMIT 1").fetchone()
        if row is None:
            return None
        message = _message(row)
        if now is not None and message.due_at > now:
            return None
        return message

    def next_due_at(self) -> float | None:
        """When the oldest waiting message may be sent (0: at once); None when the queue is
        empty."""
        row = self._db.execute(
            "SELECT due_at FROM queue_messages ORDER BY position LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def size(self) -> int:
        """Messages waiting to be delivered (not delivered, dead-lettered or thinned)."""
        return self._waiting()

    def messages(self) -> list[QueuedMessage]:
        """Every waiting message, oldest first."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM queue_messages ORDER BY position")
        return [_message(row) for row in rows]

    def has_pending(self, tx_id: str | None = None) -> bool:
        """Whether messages of this transaction, or without one any TransactionEvent, are still
        waiting (GetTransactionStatus messagesInQueue, E14)."""
        if tx_id is None:
            row = self._db.execute("SELECT 1 FROM queue_messages WHERE action = ? LIMIT 1",
                                   (TRANSACTION_EVENT,)).fetchone()
        else:
            row = self._db.execute("SELECT 1 FROM queue_messages WHERE tx_id = ? LIMIT 1",
                                   (tx_id,)).fetchone()
        return row is not None

    def last_seq_no(self, tx_id: str) -> int | None:
        """The seqNo of the transaction's latest enqueued event; None before its first and
        after its Ended."""
        row = self._db.execute("SELECT last_seq_no FROM queue_transactions WHERE tx_id = ?",
                               (tx_id,)).fetchone()
        return None if row is None else int(row[0])

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._db.execute(
            "SELECT position, message_id, action, payload, tx_id, event_type, seq_no, attempts, "
            "error, dead_at FROM queue_dead_letters ORDER BY position")
        return [DeadLetter(position, message_id, action, json.loads(payload), tx_id, event_type,
                           seq_no, attempts, error, dead_at)
                for (position, message_id, action, payload, tx_id, event_type, seq_no, attempts,
                     error, dead_at) in rows]

    def thinned(self, tx_id: str | None = None) -> list[Thinned]:
        """The messages thinning dropped (of one transaction, or all), oldest first."""
        sql = "SELECT position, message_id, tx_id, seq_no FROM queue_thinned"
        rows = (self._db.execute(sql + " ORDER BY position") if tx_id is None else
                self._db.execute(sql + " WHERE tx_id = ? ORDER BY position", (tx_id,)))
        return [Thinned(*row) for row in rows]

    def counters(self) -> QueueCounters:
        values = dict(self._db.execute("SELECT name, value FROM queue_counters").fetchall())
        return QueueCounters(**{name: int(values.get(name, 0)) for name in _COUNTER_NAMES})

    # ---- delivery -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Cut a draining queue's wait short, so it looks at the queue again (call it after
        enqueueing, from the event loop's thread)."""
        self._woken = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self, send: Callable[[QueuedMessage], Awaitable[SendOutcome]], *,
                    now: Callable[[], float], sleep: Callable[[float], Awaitable[None]],
                    attempts_allowed: Callable[[], int],
                    interval_s: Callable[[], float]) -> None:
        """Send the waiting messages oldest first, one at a time, each outcome awaited.

        Returns when the queue is empty or on DISCONNECTED (the message stays at the head, the
        attempt is not counted). REJECTED and TIMEOUT are failed attempts (E13): the message
        waits its retry interval (nothing overtakes it) or becomes a dead letter, and the next
        one goes. A ``send`` that raises is a failed attempt too, logged as an error, so one
        message our side cannot send does not hold up everything behind it for ever.
        ``attempts_allowed`` and ``interval_s`` are read at each failure, so a SetVariables
        applies to the next decision."""
        if self._draining:
            raise RuntimeError("the queue is already being drained")
        self._draining = True
        try:
            while (head := self.peek()) is not None:
                wait = head.due_at - now()
                if wait > 0:
                    await self._pause(sleep, wait)
                    continue
                message = self.sending(head.message_id)
                try:
                    outcome = await send(message)
                except Exception as exc:
                    logs.log(log, "queue_send_raised", logging.ERROR,
                             message_id=message.message_id, error=repr(exc))
                    error = f"send raised {type(exc).__name__}"
                else:
                    if outcome is SendOutcome.DELIVERED:
                        self.delivered(message.message_id)
                        continue
                    if outcome is SendOutcome.DISCONNECTED:
                        logs.log(log, "queue_drain_disconnected", logging.INFO,
                                 message_id=message.message_id, waiting=self.size())
                        return
                    error = outcome.value
                self.failed(message.message_id, now=now(), attempts_allowed=attempts_allowed(),
                            interval_s=interval_s(), error=error)
        finally:
            self._draining = False

    async def _pause(self, sleep: Callable[[float], Awaitable[None]], seconds: float) -> None:
        """``sleep(seconds)``, or less if ``wake()`` is called meanwhile (or was since the last
        pause)."""
        if self._woken:
            self._woken = False
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        sleeper = asyncio.ensure_future(sleep(seconds))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiters.discard(waiter)
            waiter.cancel()
            sleeper.cancel()
        self._woken = False
        if sleeper.done() and not sleeper.cancelled():
            sleeper.result()

    # ---- internals ----------------------------------------------------------------------------

    def _note_transaction(self, tx_id: str, event_type: str, seq_no: int,
                          trigger: str | None) -> bool:
        """Track the transaction's seqNo and periodic count; whether this event may be thinned."""
        row = self._db.execute("SELECT last_seq_no, periodic FROM queue_transactions "
                               "WHERE tx_id = ?", (tx_id,)).fetchone()
        last, periodic = (None, 0) if row is None else (int(row[0]), int(row[1]))
        if last is not None and seq_no <= last:
            logs.log(log, "queue_seq_no_not_increasing", logging.WARNING, tx_id=tx_id,
                     seq_no=seq_no, last_seq_no=last)
        droppable = False
        if event_type == "Updated" and trigger in PERIODIC_TRIGGERS:
            droppable = periodic % self._keep_one_in != 0
            periodic += 1
        if event_type == "Ended":
            self._db.execute("DELETE FROM queue_transactions WHERE tx_id = ?", (tx_id,))
        else:
            self._db.execute(
                "INSERT INTO queue_transactions (tx_id, last_seq_no, periodic) VALUES (?, ?, ?) "
                "ON CONFLICT (tx_id) DO UPDATE SET last_seq_no = excluded.last_seq_no, "
                "periodic = excluded.periodic", (tx_id, seq_no, periodic))
        return droppable

    def _thin(self) -> None:
        rows = self._db.execute(
            "DELETE FROM queue_messages WHERE droppable = 1 AND sends = 0 "
            "RETURNING position, message_id, tx_id, seq_no").fetchall()
        if not rows:
            return
        self._db.executemany("INSERT INTO queue_thinned (position, message_id, tx_id, seq_no) "
                             "VALUES (?, ?, ?, ?)", rows)
        self._count("thinned", len(rows))
        logs.log(log, "queue_thinned", logging.WARNING, messages=len(rows),
                 transactions=sorted({row[2] for row in rows}), waiting=self._waiting())

    def _require(self, message_id: str) -> QueuedMessage:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM queue_messages WHERE message_id = ?",
                               (message_id,)).fetchone()
        if row is None:
            raise KeyError(message_id)
        return _message(row)

    def _waiting(self) -> int:
        return self.counters().waiting

    def _count(self, name: str, by: int = 1) -> None:
        self._db.execute("UPDATE queue_counters SET value = value + ? WHERE name = ?",
                         (by, name))
