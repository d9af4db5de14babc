"""OCPP transactions as a pure function: what is true on the EVSE now → which TransactionEvents.

A transaction starts when the first of the TxStartPoint conditions becomes true and ends when one
of the TxStopPoint conditions that was true stops being true (OCPP 2.0.1 E01, E06; TxCtrlr). Our
session (plug to unplug) and the OCPP transaction are separate things: with TxStartPoint
"Authorized" a transaction can begin before the plug is in, with "PowerPathClosed" after it.

Every event gets the next seqNo of its transaction at the moment it is made (E03, gap-free,
starting at 0); the station persists the transaction with its next seqNo in the same database
transaction that queues the message, so a crash can neither skip nor repeat a number.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from firmware.core.iec61851 import Phase
from firmware.core.reasons import FaultCode, StopReason, SuspendReason
from hal.clock import iso


class TxPoint(Enum):
    PARKING_BAY_OCCUPANCY = "ParkingBayOccupancy"
    EV_CONNECTED = "EVConnected"
    AUTHORIZED = "Authorized"
    DATA_SIGNED = "DataSigned"
    POWER_PATH_CLOSED = "PowerPathClosed"
    ENERGY_TRANSFER = "EnergyTransfer"


class ChargingState(Enum):
    CHARGING = "Charging"
    EV_CONNECTED = "EVConnected"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    IDLE = "Idle"


class Trigger(Enum):
    AUTHORIZED = "Authorized"
    CABLE_PLUGGED_IN = "CablePluggedIn"
    CHARGING_RATE_CHANGED = "ChargingRateChanged"
    CHARGING_STATE_CHANGED = "ChargingStateChanged"
    DEAUTHORIZED = "Deauthorized"
    ENERGY_LIMIT_REACHED = "EnergyLimitReached"
    EV_COMMUNICATION_LOST = "EVCommunicationLost"
    EV_CONNECT_TIMEOUT = "EVConnectTimeout"
    METER_VALUE_CLOCK = "MeterValueClock"
    METER_VALUE_PERIODIC = "MeterValuePeriodic"
    TIME_LIMIT_REACHED = "TimeLimitReached"
    TRIGGER = "Trigger"
    UNLOCK_COMMAND = "UnlockCommand"
    STOP_AUTHORIZED = "StopAuthorized"
    EV_DEPARTED = "EVDeparted"
    EV_DETECTED = "EVDetected"
    REMOTE_STOP = "RemoteStop"
    REMOTE_START = "RemoteStart"
    ABNORMAL_CONDITION = "AbnormalCondition"
    SIGNED_DATA_RECEIVED = "SignedDataReceived"
    RESET_COMMAND = "ResetCommand"


class Stopped(Enum):
    """ReasonEnumType: why a transaction ended."""

    DEAUTHORIZED = "DeAuthorized"
    EMERGENCY_STOP = "EmergencyStop"
    ENERGY_LIMIT_REACHED = "EnergyLimitReached"
    EV_DISCONNECTED = "EVDisconnected"
    GROUND_FAULT = "GroundFault"
    IMMEDIATE_RESET = "ImmediateReset"
    LOCAL = "Local"
    OTHER = "Other"
    OVERCURRENT_FAULT = "OvercurrentFault"
    POWER_LOSS = "PowerLoss"
    POWER_QUALITY = "PowerQuality"
    REBOOT = "Reboot"
    REMOTE = "Remote"
    STOPPED_BY_EV = "StoppedByEV"
    TIMEOUT = "Timeout"


@dataclass(frozen=True, slots=True)
class Conditions:
    """What is true on the EVSE at one instant."""

    ev_connected: bool = False
    authorized: bool = False
    power_path_closed: bool = False
    energy_transfer: bool = False
    charging_state: ChargingState = ChargingState.IDLE

    def holds(self, point: TxPoint) -> bool:
        return {
            TxPoint.EV_CONNECTED: self.ev_connected,
            TxPoint.AUTHORIZED: self.authorized,
            TxPoint.POWER_PATH_CLOSED: self.power_path_closed,
            TxPoint.ENERGY_TRANSFER: self.energy_transfer,
            # No parking-bay sensor and no signed meter: these follow the cable.
            TxPoint.PARKING_BAY_OCCUPANCY: self.ev_connected,
            TxPoint.DATA_SIGNED: self.ev_connected,
        }[point]


@dataclass(frozen=True, slots=True)
class Tx:
    id: str
    evse_id: int
    started_at: float
    next_seq: int
    charging_state: ChargingState
    id_token: dict[str, Any] | None = None
    remote_start_id: int | None = None
    charging_s: float = 0.0
    charging_since: float | None = None


@dataclass(frozen=True, slots=True)
class TxEvent:
    event_type: str  # Started | Updated | Ended
    seq_no: int
    at: float
    trigger: Trigger
    tx: Tx
    charging_state: ChargingState | None = None  # set when it changed (E02)
    stopped: Stopped | None = None
    id_token: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Hint:
    """Why conditions changed, when the station knows better than the conditions can tell."""

    trigger: Trigger | None = None
    stopped: Stopped | None = None
    id_token: dict[str, Any] | None = None
    remote_start_id: int | None = None


def parse_points(text: str) -> frozenset[TxPoint]:
    """A TxStartPoint/TxStopPoint value ("EVConnected,Authorized"); unknown names are ignored
    because the device model has already checked the list against its valuesList."""
    known = {p.value: p for p in TxPoint}
    return frozenset(known[name.strip()] for name in text.split(",") if name.strip() in known)


def charging_state(phase: Phase, suspend: SuspendReason | None) -> ChargingState:
    if phase is Phase.IDLE:
        return ChargingState.IDLE
    if phase is Phase.CHARGING:
        return ChargingState.CHARGING
    if phase in (Phase.READY, Phase.PAUSED_EV, Phase.WAKEUP):
        return ChargingState.SUSPENDED_EV
    if phase is Phase.CONNECTED and suspend in (None, SuspendReason.NOT_AUTHORIZED):
        return ChargingState.EV_CONNECTED
    return ChargingState.SUSPENDED_EVSE


def stopped_for(reason: StopReason, faults: frozenset[FaultCode] = frozenset()) -> Stopped:
    """Our typed stop reason (and the session's faults) as the OCPP stoppedReason: a fault
    that ended charging is the reason even when the cable comes out afterwards."""
    if FaultCode.RCD_TRIPPED in faults:
        return Stopped.GROUND_FAULT
    if FaultCode.OVER_CURRENT in faults:
        return Stopped.OVERCURRENT_FAULT
    if reason in (StopReason.EV_DISCONNECTED, StopReason.EV_DISCONNECTED_UNDER_LOAD):
        return Stopped.OTHER if faults else Stopped.EV_DISCONNECTED
    if reason is StopReason.CONTROLLER_SHUTDOWN:
        return Stopped.REBOOT
    if reason is StopReason.CONTROLLER_RESTART:
        return Stopped.POWER_LOSS
    return Stopped.OTHER


_START_TRIGGER = {
    TxPoint.EV_CONNECTED: Trigger.CABLE_PLUGGED_IN,
    TxPoint.PARKING_BAY_OCCUPANCY: Trigger.EV_DETECTED,
    TxPoint.DATA_SIGNED: Trigger.SIGNED_DATA_RECEIVED,
    TxPoint.AUTHORIZED: Trigger.AUTHORIZED,
    TxPoint.POWER_PATH_CLOSED: Trigger.CHARGING_STATE_CHANGED,
    TxPoint.ENERGY_TRANSFER: Trigger.CHARGING_STATE_CHANGED,
}

_STOP = {
    TxPoint.EV_CONNECTED: (Trigger.EV_COMMUNICATION_LOST, Stopped.EV_DISCONNECTED),
    TxPoint.PARKING_BAY_OCCUPANCY: (Trigger.EV_DEPARTED, Stopped.EV_DISCONNECTED),
    TxPoint.DATA_SIGNED: (Trigger.EV_COMMUNICATION_LOST, Stopped.EV_DISCONNECTED),
    TxPoint.AUTHORIZED: (Trigger.DEAUTHORIZED, Stopped.DEAUTHORIZED),
    TxPoint.POWER_PATH_CLOSED: (Trigger.CHARGING_STATE_CHANGED, Stopped.STOPPED_BY_EV),
    TxPoint.ENERGY_TRANSFER: (Trigger.CHARGING_STATE_CHANGED, Stopped.STOPPED_BY_EV),
}

# The order in which simultaneous changes are looked at: the cable first, as a person would.
_ORDER = (TxPoint.PARKING_BAY_OCCUPANCY, TxPoint.EV_CONNECTED, TxPoint.DATA_SIGNED,
          TxPoint.AUTHORIZED, TxPoint.POWER_PATH_CLOSED, TxPoint.ENERGY_TRANSFER)


def advance(tx: Tx | None, before: Conditions, now_cond: Conditions, *,
            start_points: frozenset[TxPoint], stop_points: frozenset[TxPoint], evse_id: int,
            now: float, hint: Hint = Hint(), new_id: str | None = None,
            ) -> tuple[Tx | None, list[TxEvent]]:
    """The transaction after a change of conditions, and the events that tell the CSMS."""
    if tx is None:
        started = [p for p in _ORDER if p in start_points and now_cond.holds(p)
                   and not before.holds(p)]
        if not started:
            return None, []
        tx = Tx(id=new_id or str(uuid.uuid4()), evse_id=evse_id, started_at=now, next_seq=0,
                charging_state=now_cond.charging_state,
                id_token=hint.id_token if now_cond.authorized else None,
                remote_start_id=hint.remote_start_id)
        tx = _track_charging(tx, now_cond.charging_state, now)
        trigger = hint.trigger or _START_TRIGGER[started[0]]
        if trigger is Trigger.AUTHORIZED and hint.remote_start_id is not None:
            trigger = Trigger.REMOTE_START
        return _emit(tx, "Started", trigger, now, charging_state=now_cond.charging_state,
                     id_token=tx.id_token)

    ended = [p for p in _ORDER if p in stop_points and before.holds(p)
             and not now_cond.holds(p)]
    if ended:
        trigger, stopped = _STOP[ended[0]]
        tx = _track_charging(tx, now_cond.charging_state, now)
        changed = (now_cond.charging_state
                   if now_cond.charging_state is not tx.charging_state else None)
        tx = replace(tx, charging_state=now_cond.charging_state)
        _, last = _emit(tx, "Ended", hint.trigger or trigger, now, charging_state=changed,
                        stopped=hint.stopped or stopped, id_token=hint.id_token)
        return None, last

    events: list[TxEvent] = []
    if now_cond.ev_connected and not before.ev_connected:
        tx, more = _emit(tx, "Updated", Trigger.CABLE_PLUGGED_IN, now)
        events += more
    if now_cond.authorized and not before.authorized:
        tx = replace(tx, id_token=hint.id_token or tx.id_token,
                     remote_start_id=hint.remote_start_id or tx.remote_start_id)
        trigger = (Trigger.REMOTE_START if hint.remote_start_id is not None
                   else Trigger.AUTHORIZED)
        tx, more = _emit(tx, "Updated", hint.trigger or trigger, now, id_token=hint.id_token)
        events += more
    if now_cond.charging_state is not tx.charging_state:
        tx = _track_charging(tx, now_cond.charging_state, now)
        tx = replace(tx, charging_state=now_cond.charging_state)
        tx, more = _emit(tx, "Updated", Trigger.CHARGING_STATE_CHANGED, now,
                         charging_state=now_cond.charging_state)
        events += more
    return tx, events


def update(tx: Tx, trigger: Trigger, now: float) -> tuple[Tx, TxEvent]:
    """An Updated event the station decides on (periodic and clock meter values, a changed
    charging rate, a TriggerMessage)."""
    tx, events = _emit(tx, "Updated", trigger, now)
    return tx, events[0]


def end(tx: Tx, trigger: Trigger, stopped: Stopped, now: float,
        id_token: dict[str, Any] | None = None) -> TxEvent:
    """Ended by a decision of the station rather than by a stop point (reset, reboot,
    a transaction left open by a crash)."""
    tx = _track_charging(tx, ChargingState.IDLE, now)
    _, events = _emit(tx, "Ended", trigger, now, stopped=stopped, id_token=id_token)
    return events[0]


def time_spent_charging(tx: Tx, now: float) -> int:
    running = now - tx.charging_since if tx.charging_since is not None else 0.0
    return int(tx.charging_s + running)


def _track_charging(tx: Tx, state: ChargingState, now: float) -> Tx:
    if state is ChargingState.CHARGING and tx.charging_since is None:
        return replace(tx, charging_since=now)
    if state is not ChargingState.CHARGING and tx.charging_since is not None:
        return replace(tx, charging_s=tx.charging_s + now - tx.charging_since,
                       charging_since=None)
    return tx


def _emit(tx: Tx, event_type: str, trigger: Trigger, now: float, *,
          charging_state: ChargingState | None = None, stopped: Stopped | None = None,
          id_token: dict[str, Any] | None = None) -> tuple[Tx, list[TxEvent]]:
    event = TxEvent(event_type=event_type, seq_no=tx.next_seq, at=now, trigger=trigger, tx=tx,
                    charging_state=charging_state, stopped=stopped, id_token=id_token)
    return replace(tx, next_seq=tx.next_seq + 1), [event]


def to_payload(event: TxEvent, *, meter_value: list[dict[str, Any]] | None = None,
               offline: bool = False, phases_used: int | None = None) -> dict[str, Any]:
    """The TransactionEventRequest for an event."""
    info: dict[str, Any] = {"transactionId": event.tx.id}
    if event.charging_state is not None:
        info["chargingState"] = event.charging_state.value
    if event.event_type == "Ended" or event.trigger is Trigger.CHARGING_STATE_CHANGED:
        info["timeSpentCharging"] = time_spent_charging(event.tx, event.at)
    if event.stopped is not None:
        info["stoppedReason"] = event.stopped.value
    # F01: the first event after the remote start carries its id, whichever it is.
    if event.tx.remote_start_id is not None and (
            event.trigger is Trigger.REMOTE_START or event.event_type == "Started"):
        info["remoteStartId"] = event.tx.remote_start_id
    payload: dict[str, Any] = {
        "eventType": event.event_type, "timestamp": iso(event.at),
        "triggerReason": event.trigger.value, "seqNo": event.seq_no, "transactionInfo": info,
        "evse": {"id": event.tx.evse_id, "connectorId": 1},
    }
    if event.id_token is not None:
        payload["idToken"] = event.id_token
    if offline:
        payload["offline"] = True
    if phases_used is not None:
        payload["numberOfPhasesUsed"] = phases_used
    if meter_value:
        payload["meterValue"] = meter_value
    return payload
