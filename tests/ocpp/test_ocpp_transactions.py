"""The pure transaction rules (TxStartPoint/TxStopPoint, seqNo, trigger reasons) and the meter
value helpers."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from firmware.core.iec61851 import Phase
from firmware.core.reasons import FaultCode, StopReason, SuspendReason
from firmware.ocpp import transactions as txm
from firmware.ocpp.meter_values import meter_value, next_aligned, next_periodic
from firmware.ocpp.transactions import (
    ChargingState,
    Conditions,
    Hint,
    Stopped,
    Trigger,
    TxPoint,
    parse_points,
)
from hal.roles import MeterReading

T0 = 1767225600.0
TOKEN = {"idToken": "CARD1", "type": "ISO14443"}
CONNECTED = frozenset({TxPoint.EV_CONNECTED, TxPoint.AUTHORIZED})
IDLE = Conditions()
PLUGGED = Conditions(ev_connected=True, charging_state=ChargingState.EV_CONNECTED)
AUTHORIZED = Conditions(ev_connected=True, authorized=True,
                        charging_state=ChargingState.SUSPENDED_EV)
CHARGING = Conditions(ev_connected=True, authorized=True, power_path_closed=True,
                      energy_transfer=True, charging_state=ChargingState.CHARGING)


def schema(version: str, name: str) -> dict[str, object]:
    base = Path(txm.__file__).parents[2] / ".venv/lib/python3.11/site-packages/ocpp"
    folder = base / ("v21" if version == "2.1" else "v201") / "schemas"
    data: dict[str, object] = json.loads((folder / f"{name}.json").read_text("utf-8-sig"))
    return data


def run(steps: list[tuple[Conditions, Hint]], start: frozenset[TxPoint] = CONNECTED,
        stop: frozenset[TxPoint] = CONNECTED) -> list[txm.TxEvent]:
    tx = None
    before = IDLE
    events: list[txm.TxEvent] = []
    for i, (cond, hint) in enumerate(steps):
        tx, more = txm.advance(tx, before, cond, start_points=start, stop_points=stop,
                               evse_id=1, now=T0 + i, hint=hint, new_id="tx-1")
        events += more
        before = cond
    return events


def test_e02_plug_then_authorize_then_charge_then_unplug() -> None:
    events = run([(PLUGGED, Hint()), (AUTHORIZED, Hint(id_token=TOKEN)), (CHARGING, Hint()),
                  (IDLE, Hint())])
    assert [(e.event_type, e.trigger, e.seq_no) for e in events] == [
        ("Started", Trigger.CABLE_PLUGGED_IN, 0),
        ("Updated", Trigger.AUTHORIZED, 1),
        ("Updated", Trigger.CHARGING_STATE_CHANGED, 2),  # EVConnected → SuspendedEV
        ("Updated", Trigger.CHARGING_STATE_CHANGED, 3),  # SuspendedEV → Charging
        ("Ended", Trigger.EV_COMMUNICATION_LOST, 4),
    ]
    assert events[-1].stopped is Stopped.EV_DISCONNECTED
    assert events[1].id_token == TOKEN


def test_e03_authorize_first_then_plug() -> None:
    authorized_only = Conditions(authorized=True)
    events = run([(authorized_only, Hint(id_token=TOKEN)), (AUTHORIZED, Hint())])
    assert events[0].event_type == "Started" and events[0].trigger is Trigger.AUTHORIZED
    assert events[0].id_token == TOKEN
    assert events[1].trigger is Trigger.CABLE_PLUGGED_IN


def test_start_point_power_path_closed_waits_for_the_contactor() -> None:
    points = frozenset({TxPoint.POWER_PATH_CLOSED})
    events = run([(PLUGGED, Hint()), (AUTHORIZED, Hint()), (CHARGING, Hint()), (IDLE, Hint())],
                 start=points, stop=frozenset({TxPoint.EV_CONNECTED}))
    assert events[0].event_type == "Started" and events[0].at == T0 + 2
    assert events[-1].event_type == "Ended"


def test_remote_stop_ends_with_remote_reason() -> None:
    deauthorized = Conditions(ev_connected=True, charging_state=ChargingState.SUSPENDED_EVSE)
    events = run([(PLUGGED, Hint()), (CHARGING, Hint(id_token=TOKEN)),
                  (deauthorized, Hint(trigger=Trigger.REMOTE_STOP, stopped=Stopped.REMOTE))])
    assert events[-1].event_type == "Ended"
    assert events[-1].trigger is Trigger.REMOTE_STOP and events[-1].stopped is Stopped.REMOTE


def test_remote_start_sets_remote_start_id() -> None:
    events = run([(Conditions(authorized=True), Hint(id_token=TOKEN, remote_start_id=7))])
    payload = txm.to_payload(events[0])
    assert payload["triggerReason"] == "RemoteStart"
    assert payload["transactionInfo"]["remoteStartId"] == 7


def test_time_spent_charging_counts_only_charging() -> None:
    events = run([(PLUGGED, Hint()), (CHARGING, Hint()), (AUTHORIZED, Hint()),
                  (CHARGING, Hint()), (IDLE, Hint())])
    ended = txm.to_payload(events[-1])
    assert ended["transactionInfo"]["timeSpentCharging"] == 2


@given(st.lists(st.sampled_from([IDLE, PLUGGED, AUTHORIZED, CHARGING,
                                 Conditions(authorized=True)]), max_size=30),
       st.sampled_from(list(TxPoint)), st.sampled_from(list(TxPoint)))
def test_every_transaction_is_started_once_gap_free_and_schema_valid(
        conds: list[Conditions], start: TxPoint, stop: TxPoint) -> None:
    events = run([(c, Hint(id_token=TOKEN)) for c in conds], frozenset({start}),
                 frozenset({stop}))
    by_tx: dict[str, list[txm.TxEvent]] = {}
    for e in events:
        by_tx.setdefault(e.tx.id, []).append(e)
    for version in ("2.0.1", "2.1"):
        s = schema(version, "TransactionEventRequest")
        for e in events:
            jsonschema.validate(txm.to_payload(e, offline=True), s)
    for tx_events in by_tx.values():
        # One id is reused by the test's new_id; a transaction restarts its count at 0.
        starts = [i for i, e in enumerate(tx_events) if e.event_type == "Started"]
        for n, i in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(tx_events)
            chunk = tx_events[i:end]
            assert [e.seq_no for e in chunk] == list(range(len(chunk)))
            assert all(e.event_type != "Started" for e in chunk[1:])
            assert all(e.event_type != "Ended" for e in chunk[:-1])


def test_charging_state_and_stop_reason_mapping() -> None:
    assert txm.charging_state(Phase.CHARGING, None) is ChargingState.CHARGING
    assert txm.charging_state(Phase.CONNECTED, SuspendReason.NOT_AUTHORIZED) \
        is ChargingState.EV_CONNECTED
    assert txm.charging_state(Phase.PAUSED_EVSE, SuspendReason.LIMIT_BELOW_MINIMUM) \
        is ChargingState.SUSPENDED_EVSE
    assert txm.charging_state(Phase.PAUSED_EV, None) is ChargingState.SUSPENDED_EV
    assert txm.stopped_for(StopReason.FAULT, frozenset({FaultCode.RCD_TRIPPED})) \
        is Stopped.GROUND_FAULT
    assert txm.stopped_for(StopReason.CONTROLLER_RESTART) is Stopped.POWER_LOSS
    assert parse_points("EVConnected, Authorized,Bogus") == CONNECTED


def test_j01_aligned_instants_are_wall_clock_boundaries() -> None:
    t = T0 + 3 * 3600 + 7 * 60 + 12.5  # 03:07:12.5
    assert next_aligned(t, 900) == T0 + 3 * 3600 + 15 * 60
    assert next_aligned(T0 + 900, 900) == T0 + 1800  # strictly after
    # An interval that does not divide a day restarts at midnight.
    assert next_aligned(T0 + 86400 - 10, 7 * 3600) == T0 + 86400
    assert next_periodic(T0 + 5, T0 + 100, 60) == T0 + 125


def test_meter_value_per_phase_and_units() -> None:
    reading = MeterReading(at=T0, voltage_v=(230.0, 231.0, 229.0), current_a=(16.0, 16.1, 15.9),
                           power_w=(3680.0, 3719.1, 3641.1), energy_wh=12345.6)
    mv = meter_value(reading, ["Energy.Active.Import.Register", "Power.Active.Import",
                               "Current.Import", "Voltage", "SoC"], "Sample.Clock", T0, soc=None)
    values = mv[0]["sampledValue"]
    assert [v["measurand"] for v in values].count("Current.Import") == 3
    assert {v.get("phase") for v in values if v["measurand"] == "Voltage"} == {
        "L1-N", "L2-N", "L3-N"}
    assert not any(v["measurand"] == "SoC" for v in values)
    for version in ("2.0.1", "2.1"):
        jsonschema.validate({"evseId": 1, "meterValue": mv}, schema(version, "MeterValuesRequest"))
