"""One EVSE as the CSMS sees it: connector status, the transaction, and its meter values.

It watches the connector (a step listener: called synchronously after every step of the safety
loop) and turns what changed into StatusNotification, TransactionEvent and MeterValues messages.
Transaction messages go to the durable queue in the same database transaction that stores the
transaction's next seqNo, so a kill -9 at any instant neither loses an event nor repeats a
number. The decisions themselves are pure (transactions.py, meter_values.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any, Protocol

from firmware import logs
from firmware.core.iec61851 import Phase, Step
from firmware.core.reasons import StopReason
from firmware.evse.connector import Connector
from firmware.evse.session import Session
from firmware.ocpp import transactions as txm
from firmware.ocpp.db import transaction
from firmware.ocpp.meter_values import measurand_list, meter_value, next_aligned, next_periodic
from firmware.ocpp.transactions import (
    ChargingState,
    Conditions,
    Hint,
    Stopped,
    Trigger,
    Tx,
    TxEvent,
    charging_state,
    parse_points,
    stopped_for,
)
from hal.clock import Clock, iso

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evse_tx (evse_id INTEGER PRIMARY KEY, tx TEXT NOT NULL);
"""


class ConnectorStatus(Enum):
    AVAILABLE = "Available"
    OCCUPIED = "Occupied"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class Settings(Protocol):
    """The device-model values this module reads (the device model implements it)."""

    def get_str(self, component: str, variable: str, *, instance: str | None = None) -> str: ...
    def get_int(self, component: str, variable: str, *, instance: str | None = None) -> int: ...
    def get_bool(self, component: str, variable: str, *, instance: str | None = None
                 ) -> bool: ...


class Outbox(Protocol):
    def enqueue_tx(self, payload: dict[str, Any], tx_id: str, event_type: str,
                   persist: Callable[[], None]) -> None:
        """Queue a TransactionEvent durably; ``persist`` runs in the same database
        transaction."""
        ...

    def send_now(self, action: str, payload: dict[str, Any]) -> None:
        """Send a message that is not transaction-related, if online (dropped otherwise unless
        QueueAllMessages)."""
        ...

    @property
    def online(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Stored:
    id: str
    evse_id: int
    started_at: float
    next_seq: int
    charging_state: str
    id_token: dict[str, Any] | None
    remote_start_id: int | None
    charging_s: float
    charging_since: float | None


class OcppEvse:
    def __init__(self, evse_id: int, connector: Connector, db: sqlite3.Connection,
                 settings: Settings, outbox: Outbox, clock: Clock) -> None:
        self.evse_id = evse_id
        self.connector = connector
        self.db = db
        self.settings = settings
        self.outbox = outbox
        self.clock = clock
        self.log = logs.get("ocpp.evse")
        db.executescript(_SCHEMA)
        self.tx: Tx | None = self._load()
        self.conditions = Conditions()
        self.status: ConnectorStatus | None = None
        self.inoperative = False
        self.soc: float | None = None
        self._hint = Hint()
        # The token (and remote start) behind the current authorization: a transaction that
        # starts later (TxStartPoint PowerPathClosed) still reports who authorized it.
        self._authorized_by = Hint()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.tx_listeners: list[Callable[[Tx | None], None]] = []
        self._last_session: Session | None = None

    @property
    def free_charging(self) -> bool:
        """AuthCtrlr.Enabled = false, read at every use so no lost notification can leave it
        on."""
        return not self.settings.get_bool("AuthCtrlr", "Enabled")

    # ---- start-up -----------------------------------------------------------------------

    def recover(self) -> None:
        """End a transaction the last run left open (a crash or a power cut): the CSMS must
        not wait forever for its Ended event. Its seqNo continues where the store says."""
        tx = self.tx
        if tx is None:
            return
        now = self.clock.now()
        event = txm.end(tx, Trigger.ABNORMAL_CONDITION, Stopped.POWER_LOSS, now)
        logs.log(self.log, "transaction_closed_after_restart", logging.WARNING, tx=tx.id,
                 seq=event.seq_no)
        self._queue([event], None)
        self.tx = None

    def start(self) -> None:
        self.connector.step_listeners.append(self.on_step)
        self.connector.session_listeners.append(self._on_session_end)
        self.on_step(None)
        self._arm_aligned()

    def _on_session_end(self, session: Session) -> None:
        # The connector ends its session (plug to unplug) before its step listeners run; the
        # faults of that session still explain why the transaction ends.
        self._last_session = session

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self.on_step in self.connector.step_listeners:
            self.connector.step_listeners.remove(self.on_step)
        if self._on_session_end in self.connector.session_listeners:
            self.connector.session_listeners.remove(self._on_session_end)

    # ---- what the connector tells us ------------------------------------------------------

    def on_step(self, step: Step | None) -> None:
        """Called inside the connector's step: a failure here is logged and contained, never
        raised into the safety loop (which would fail safe and stop charging over a reporting
        problem)."""
        try:
            self._observe()
        except Exception as exc:
            logs.log(self.log, "observe_failed", logging.ERROR, error=repr(exc),
                     trace=traceback.format_exc(limit=8))

    def _observe(self) -> None:
        state = self.connector.state
        plugged = state.plugged
        authorized = self.connector.authorized and (plugged or not self.free_charging)
        now_cond = Conditions(
            ev_connected=plugged, authorized=authorized, power_path_closed=state.contactor,
            energy_transfer=state.phase is Phase.CHARGING,
            charging_state=charging_state(state.phase, state.suspend))
        before, self.conditions = self.conditions, now_cond
        if plugged:
            self._cancel("connect")
            if not before.ev_connected:
                self._last_session = None
        if now_cond != before:
            try:
                self._advance(before, now_cond)
            except Exception:
                # Nothing of this change was stored (one database transaction): look again
                # at the next step rather than lose it.
                self.conditions = before
                raise
        self._update_status()
        if (plugged and not self.inoperative and not self.connector.authorized
                and self.free_charging):
            self.connector.authorize(True)

    def _advance(self, before: Conditions, now_cond: Conditions) -> None:
        now = self.clock.now()
        hint, self._hint = self._hint, Hint()
        if self.tx is None and now_cond.authorized and hint.id_token is None:
            hint = Hint(trigger=hint.trigger, stopped=hint.stopped,
                        id_token=self._authorized_by.id_token,
                        remote_start_id=self._authorized_by.remote_start_id)
        if not now_cond.authorized:
            self._authorized_by = Hint()
        if self.tx is not None and hint.stopped is None:
            # Why charging may end now, in OCPP's words: a fault of ours outranks the cable.
            faults = self.connector.state.faults or frozenset(
                self._last_session.faults if self._last_session else ())
            if faults:
                hint = Hint(trigger=hint.trigger, stopped=stopped_for(StopReason.FAULT,
                                                                      frozenset(faults)),
                            id_token=hint.id_token)
        tx, events = txm.advance(
            self.tx, before, now_cond,
            start_points=parse_points(self.settings.get_str("TxCtrlr", "TxStartPoint")),
            stop_points=parse_points(self.settings.get_str("TxCtrlr", "TxStopPoint")),
            evse_id=self.evse_id, now=now, hint=hint)
        if events:
            self._queue(events, tx)
        if tx is None and self.tx is not None:
            self._cancel("periodic")
            self.tx = None
            self._on_tx_ended()
        elif tx is not None and self.tx is None:
            self.tx = tx
            self._arm_periodic(tx)
            self._notify_tx()
        else:
            self.tx = tx

    def _on_tx_ended(self) -> None:
        # A new transaction needs a new authorization (except in free charging).
        if not self.free_charging and self.connector.authorized:
            self.connector.authorize(False)
        self._notify_tx()

    def _notify_tx(self) -> None:
        for listener in self.tx_listeners:
            listener(self.tx)

    # ---- the station's decisions --------------------------------------------------------------

    def authorize(self, id_token: dict[str, Any] | None, *,
                  remote_start_id: int | None = None) -> None:
        """Charging allowed for this token (local decision, CSMS answer or remote start)."""
        if self.connector.authorized:
            if self.tx is not None and remote_start_id is not None:
                self._updated(Trigger.REMOTE_START)
            return
        self._hint = self._authorized_by = Hint(id_token=id_token,
                                                remote_start_id=remote_start_id)
        self.connector.authorize(True)
        self._hint = Hint()
        if not self.connector.state.plugged:
            # E03: authorized first; the car has EVConnectionTimeOut to arrive.
            timeout = self.settings.get_int("TxCtrlr", "EVConnectionTimeOut")
            self._at("connect", self.clock.now() + timeout, self._connect_timeout)

    def _connect_timeout(self) -> None:
        if not self.connector.state.plugged and self.connector.authorized:
            logs.log(self.log, "ev_connect_timeout")
            self.deauthorize(Trigger.EV_CONNECT_TIMEOUT, Stopped.TIMEOUT)

    def deauthorize(self, trigger: Trigger, stopped: Stopped,
                    id_token: dict[str, Any] | None = None) -> None:
        """Stop charging in this transaction (local or remote stop, token rejected, reset)."""
        if not self.connector.authorized:
            return
        self._hint = Hint(trigger=trigger, stopped=stopped, id_token=id_token)
        self.connector.authorize(False)
        self._hint = Hint()

    def local_stop(self, id_token: dict[str, Any]) -> None:
        """E07: the card that started the transaction is presented again."""
        self.deauthorize(Trigger.STOP_AUTHORIZED, Stopped.LOCAL, id_token)

    def refused(self) -> None:
        """The CSMS refused the transaction's token after it started (E05, StopTxOnInvalidId)."""
        if self.connector.authorized:
            self.deauthorize(Trigger.DEAUTHORIZED, Stopped.DEAUTHORIZED)
        else:
            self.end_transaction(Trigger.DEAUTHORIZED, Stopped.DEAUTHORIZED)

    def shutdown(self) -> None:
        """The controller stops (the contactor is already open): the transaction ends here
        rather than be found open at the next start."""
        self.end_transaction(Trigger.ABNORMAL_CONDITION, Stopped.REBOOT)

    def end_transaction(self, trigger: Trigger, stopped: Stopped) -> None:
        """End the transaction now whatever its stop points say (Reset, shutdown)."""
        tx = self.tx
        if tx is None:
            return
        event = txm.end(tx, trigger, stopped, self.clock.now())
        self._queue([event], None)
        self.tx = None
        self._cancel("periodic")
        self._notify_tx()

    def trigger_transaction_event(self) -> bool:
        if self.tx is None:
            return False
        self._updated(Trigger.TRIGGER)
        return True

    def set_inoperative(self, inoperative: bool) -> None:
        self.inoperative = inoperative
        if inoperative and self.tx is None and self.connector.authorized:
            self.connector.authorize(False)
        self._update_status()

    # ---- status ------------------------------------------------------------------------------

    def connector_status(self) -> ConnectorStatus:
        state = self.connector.state
        if state.phase is Phase.FAULT or (state.faults and not state.plugged):
            return ConnectorStatus.FAULTED
        if state.plugged:
            return ConnectorStatus.OCCUPIED
        if self.inoperative:
            return ConnectorStatus.UNAVAILABLE
        return ConnectorStatus.AVAILABLE

    def _update_status(self, *, force: bool = False) -> None:
        status = self.connector_status()
        if status is self.status and not force:
            return
        self.status = status
        self.outbox.send_now("StatusNotification", self.status_payload())

    def status_payload(self) -> dict[str, Any]:
        return {"timestamp": iso(self.clock.now()),
                "connectorStatus": (self.status or self.connector_status()).value,
                "evseId": self.evse_id, "connectorId": 1}

    # ---- meter values --------------------------------------------------------------------------

    def _measurands(self, component: str, variable: str) -> list[str]:
        return measurand_list(self.settings.get_str(component, variable))

    def _meter_for(self, event: TxEvent) -> list[dict[str, Any]]:
        reading = self.connector.meter
        if reading is None:
            return []
        offered = self.connector.state.offered_a
        if event.event_type == "Started":
            return meter_value(reading, self._measurands("SampledDataCtrlr",
                                                         "TxStartedMeasurands"),
                               "Transaction.Begin", event.at, self.soc, offered)
        if event.event_type == "Ended":
            return meter_value(reading, self._measurands("SampledDataCtrlr",
                                                         "TxEndedMeasurands"),
                               "Transaction.End", event.at, self.soc, offered)
        if event.trigger is Trigger.METER_VALUE_PERIODIC:
            return meter_value(reading, self._measurands("SampledDataCtrlr",
                                                         "TxUpdatedMeasurands"),
                               "Sample.Periodic", event.at, self.soc, offered)
        if event.trigger is Trigger.METER_VALUE_CLOCK:
            return meter_value(reading, self._measurands("AlignedDataCtrlr", "Measurands"),
                               "Sample.Clock", event.at, self.soc, offered)
        if event.trigger is Trigger.TRIGGER:
            return meter_value(reading, self._measurands("SampledDataCtrlr",
                                                         "TxUpdatedMeasurands"),
                               "Trigger", event.at, self.soc, offered)
        return []

    def meter_values_payload(self, context: str) -> dict[str, Any] | None:
        """A MeterValues request outside a transaction (aligned while idle, or triggered)."""
        reading = self.connector.meter
        if reading is None:
            return None
        values = meter_value(reading, self._measurands("AlignedDataCtrlr", "Measurands"),
                             context, self.clock.now(), self.soc,
                             self.connector.state.offered_a)
        return {"evseId": self.evse_id, "meterValue": values} if values else None

    def _arm_periodic(self, tx: Tx) -> None:
        interval = self.settings.get_int("SampledDataCtrlr", "TxUpdatedInterval")
        if interval <= 0 or not self.settings.get_bool("SampledDataCtrlr", "Enabled"):
            return
        self._at("periodic", next_periodic(tx.started_at, self.clock.now(), interval),
                 self._periodic)

    def _periodic(self) -> None:
        if self.tx is not None:
            self._updated(Trigger.METER_VALUE_PERIODIC)
            self._arm_periodic(self.tx)

    def rearm_periodic(self) -> None:
        self._cancel("periodic")
        if self.tx is not None:
            self._arm_periodic(self.tx)

    def rearm_aligned(self) -> None:
        self._cancel("aligned")
        self._arm_aligned()

    def _arm_aligned(self) -> None:
        interval = self.settings.get_int("AlignedDataCtrlr", "Interval")
        if interval <= 0 or not self.settings.get_bool("AlignedDataCtrlr", "Enabled"):
            return
        self._at("aligned", next_aligned(self.clock.now(), interval), self._aligned)

    def _aligned(self) -> None:
        if self.tx is not None:
            self._updated(Trigger.METER_VALUE_CLOCK)
        elif self.settings.get_bool("AlignedDataCtrlr", "SendDuringIdle"):
            payload = self.meter_values_payload("Sample.Clock")
            if payload is not None:
                self.outbox.send_now("MeterValues", payload)
        self._arm_aligned()

    def _at(self, name: str, when: float, fn: Callable[[], None]) -> None:
        self._cancel(name)
        loop = asyncio.get_running_loop()
        self._timers[name] = loop.call_later(max(0.0, when - self.clock.now()), fn)

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    # ---- queueing ------------------------------------------------------------------------------

    def _updated(self, trigger: Trigger) -> None:
        if self.tx is None:
            return
        tx, event = txm.update(self.tx, trigger, self.clock.now())
        self._queue([event], tx)
        self.tx = tx

    def _queue(self, events: list[TxEvent], tx_after: Tx | None) -> None:
        with transaction(self.db):
            self._queue_all(events, tx_after)

    def _queue_all(self, events: list[TxEvent], tx_after: Tx | None) -> None:
        offline = not self.outbox.online
        phases = self.connector.board.ratings.phases
        for i, event in enumerate(events):
            # The stored transaction advances with each event; after the last one it is the
            # transaction as it now stands, or gone when it ended.
            stored: Tx | None
            if event.event_type == "Ended":
                stored = None
            elif i == len(events) - 1:
                stored = tx_after
            else:
                stored = replace(event.tx, next_seq=event.seq_no + 1)
            payload = txm.to_payload(event, meter_value=self._meter_for(event),
                                     offline=offline, phases_used=phases
                                     if event.event_type == "Started" else None)

            def persist(stored: Tx | None = stored) -> None:
                if stored is None:
                    self.db.execute("DELETE FROM evse_tx WHERE evse_id=?", (self.evse_id,))
                else:
                    self._save(stored)

            self.outbox.enqueue_tx(payload, event.tx.id, event.event_type, persist)
            logs.log(self.log, "transaction_event", tx=event.tx.id, type=event.event_type,
                     seq=event.seq_no, trigger=event.trigger.value, offline=offline)

    def _save(self, tx: Tx) -> None:
        stored = _Stored(tx.id, tx.evse_id, tx.started_at, tx.next_seq, tx.charging_state.value,
                         tx.id_token, tx.remote_start_id, tx.charging_s, tx.charging_since)
        self.db.execute("INSERT OR REPLACE INTO evse_tx (evse_id, tx) VALUES (?, ?)",
                        (self.evse_id, json.dumps(asdict(stored))))

    def _load(self) -> Tx | None:
        row = self.db.execute("SELECT tx FROM evse_tx WHERE evse_id=?",
                              (self.evse_id,)).fetchone()
        if row is None:
            return None
        s = _Stored(**json.loads(row[0]))
        return Tx(id=s.id, evse_id=s.evse_id, started_at=s.started_at, next_seq=s.next_seq,
                  charging_state=ChargingState(s.charging_state), id_token=s.id_token,
                  remote_start_id=s.remote_start_id, charging_s=s.charging_s,
                  charging_since=s.charging_since)
