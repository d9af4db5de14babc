"""The core station scenarios against an independent CSMS: npm `ocpp-rpc` in strict mode.

The other end-to-end tests use a CSMS built with the same `ocpp` library as the station, which
cannot catch what that library gets wrong. Here the peer (tests/ocpp/ocpp_rpc_peer.py) validates
every CALL the station sends and every CALLRESULT it gives against the official schemas, with
its own validator (ajv), once for OCPP 2.0.1 and once for 2.1, the peer offering only that
version. Each test ends with ``peer.errors == []``: no schema violation, no malformed frame, no
action the peer did not expect, in either direction.

The peer is a separate process, so the controller runs in real time (virtual time would race
ahead while node answers); the sim board steps every 0.1 s to keep that quick. Test names carry
the spec's use-case ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from ocpp_csms import Csms
from ocpp_rpc_peer import Event, OcppRpcPeer
from ocpp_station_rig import IDENTITY, PASSWORD, StationRig, fast_board

from firmware import logs
from hal.board import Board
from hal.clock import WallClock, iso

PROTOCOLS = ["ocpp2.0.1", "ocpp2.1"]
TIMEOUT_S = 10.0


def quick_board() -> Board:
    board = fast_board()
    return replace(board, timing=replace(board.timing, tick_s=0.1))


Body = Callable[[StationRig, OcppRpcPeer], Awaitable[None]]


def run_against_peer(tmp_path: Path, protocol: str, body: Body, *,
                     heartbeat_interval: int = 300) -> None:
    """The controller (sim board, real time) connected to the ocpp-rpc peer offering only
    ``protocol``; ``body`` runs once the station is connected, then the peer must have seen
    no error."""
    clock = WallClock()
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        async with OcppRpcPeer((protocol,), password=PASSWORD,
                               heartbeat_interval=heartbeat_interval) as peer:
            # The rig takes its CSMS address from a Csms; this one never listens, it only
            # names the peer's port (the peer takes the identity from the last path segment).
            address = Csms((protocol,))
            address.port = peer.port
            rig = StationRig(tmp_path, address, clock, board=quick_board(), virtual=False,
                             settings={"password": PASSWORD})
            await rig.start()
            try:
                assert await peer.wait_connected(IDENTITY, timeout=TIMEOUT_S) == protocol
                await body(rig, peer)
            finally:
                await rig.stop()
            assert peer.errors == [], peer.errors

    with open(data_dir / "voltpilot.log", "a", encoding="utf-8") as log_stream:
        logs.setup(clock, log_stream)
        asyncio.run(main())


async def next_event(peer: OcppRpcPeer, action: str, where: Callable[[dict[str, Any]], bool],
                     timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """The payload of the next ``action`` call (in arrival order) that satisfies ``where``."""
    async def find() -> dict[str, Any]:
        while True:
            event: Event = await peer.next_call(action, timeout=timeout, identity=IDENTITY)
            payload: dict[str, Any] = event["payload"]
            if where(payload):
                return payload

    return await asyncio.wait_for(find(), timeout)


async def set_variable(peer: OcppRpcPeer, component: str, variable: str, value: str) -> None:
    answer = await peer.call(IDENTITY, "SetVariables", {"setVariableData": [
        {"component": {"name": component}, "variable": {"name": variable},
         "attributeValue": value}]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted", answer


async def charging(rig: StationRig) -> None:
    await rig.until(lambda: rig.status()["contactor"], timeout=TIMEOUT_S)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_b01_g01_boot_status_and_heartbeat(tmp_path: Path, protocol: str) -> None:
    async def body(rig: StationRig, peer: OcppRpcPeer) -> None:
        boot = await next_event(peer, "BootNotification", lambda p: True)
        assert boot["reason"] == "PowerUp"
        assert boot["chargingStation"]["vendorName"] == "voltpilot"
        status = await next_event(peer, "StatusNotification", lambda p: True)
        assert (status["evseId"], status["connectorId"], status["connectorStatus"]) == (
            1, 1, "Available")
        # The interval in the CSMS's BootNotification answer (1 s) is the heartbeat's (B01).
        await next_event(peer, "Heartbeat", lambda p: True, timeout=5)
        rig.do("plug", profile="compact_3p")
        occupied = await next_event(peer, "StatusNotification", lambda p: True)
        assert occupied["connectorStatus"] == "Occupied"
        assert [e["action"] for e in peer.calls(identity=IDENTITY)][:2] == [
            "BootNotification", "StatusNotification"]

    run_against_peer(tmp_path, protocol, body, heartbeat_interval=1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_b05_b06_b07_variables_and_base_report(tmp_path: Path, protocol: str) -> None:
    async def body(rig: StationRig, peer: OcppRpcPeer) -> None:
        await next_event(peer, "StatusNotification", lambda p: True)
        answer = await peer.call(IDENTITY, "SetVariables", {"setVariableData": [
            {"component": {"name": "SampledDataCtrlr"},
             "variable": {"name": "TxUpdatedInterval"}, "attributeValue": "30"},
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"},
             "attributeValue": "not a number"},
            {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "SecurityProfile"},
             "attributeValue": "0"},
            {"component": {"name": "NoSuchCtrlr"}, "variable": {"name": "X"},
             "attributeValue": "1"},
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "NoSuchVariable"},
             "attributeValue": "1"}]})
        assert [r["attributeStatus"] for r in answer["setVariableResult"]] == [
            "Accepted", "Rejected", "Rejected", "UnknownComponent", "UnknownVariable"]
        got = await peer.call(IDENTITY, "GetVariables", {"getVariableData": [
            {"component": {"name": "SampledDataCtrlr"},
             "variable": {"name": "TxUpdatedInterval"}},
            {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"}},
            {"component": {"name": "EVSE", "evse": {"id": 1}},
             "variable": {"name": "AvailabilityState"}},
            {"component": {"name": "NoSuchCtrlr"}, "variable": {"name": "X"}}]})
        results = got["getVariableResult"]
        assert results[0]["attributeValue"] == "30"
        assert results[1]["attributeStatus"] == "Rejected" and "attributeValue" not in results[1]
        assert results[2]["attributeValue"] == "Available"
        assert results[3]["attributeStatus"] == "UnknownComponent"

        report = await peer.call(IDENTITY, "GetBaseReport",
                                 {"requestId": 7, "reportBase": "FullInventory"})
        assert report["status"] == "Accepted"
        chunks = [await next_event(peer, "NotifyReport", lambda p: True)]
        while chunks[-1].get("tbc", False):
            chunks.append(await next_event(peer, "NotifyReport", lambda p: True))
        assert [c["seqNo"] for c in chunks] == list(range(len(chunks)))
        assert {c["requestId"] for c in chunks} == {7}
        reported = {(d["component"]["name"], d["variable"]["name"])
                    for c in chunks for d in c["reportData"]}
        assert {("OCPPCommCtrlr", "HeartbeatInterval"),
                ("SampledDataCtrlr", "TxUpdatedInterval"),
                ("SmartChargingCtrlr", "Enabled")} <= reported
        assert PASSWORD not in str(chunks)

    run_against_peer(tmp_path, protocol, body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_f01_e02_j02_remote_start_transaction_with_meter_values(tmp_path: Path,
                                                                 protocol: str) -> None:
    async def body(rig: StationRig, peer: OcppRpcPeer) -> None:
        await next_event(peer, "StatusNotification", lambda p: True)
        await set_variable(peer, "SampledDataCtrlr", "TxUpdatedInterval", "1")
        rig.do("plug", profile="compact_3p")
        await next_event(peer, "StatusNotification",
                         lambda p: p["connectorStatus"] == "Occupied")
        answer = await peer.call(IDENTITY, "RequestStartTransaction", {
            "idToken": {"idToken": "APP-USER-1", "type": "Central"}, "remoteStartId": 42,
            "evseId": 1})
        assert answer["status"] == "Accepted"
        started = await next_event(peer, "TransactionEvent",
                                   lambda p: p["eventType"] == "Started")
        assert started["seqNo"] == 0
        assert started["transactionInfo"]["remoteStartId"] == 42
        tx_id = started["transactionInfo"]["transactionId"]
        await charging(rig)
        periodic = await next_event(peer, "TransactionEvent",
                                    lambda p: p["triggerReason"] == "MeterValuePeriodic")
        assert periodic["eventType"] == "Updated"
        measurands = {v.get("measurand", "Energy.Active.Import.Register")
                      for mv in periodic["meterValue"] for v in mv["sampledValue"]}
        assert "Energy.Active.Import.Register" in measurands
        rig.do("unplug")
        ended = await next_event(peer, "TransactionEvent", lambda p: p["eventType"] == "Ended")
        assert ended["transactionInfo"]["stoppedReason"] == "EVDisconnected"
        events = [e["payload"] for e in peer.calls("TransactionEvent", IDENTITY)]
        assert {e["transactionInfo"]["transactionId"] for e in events} == {tx_id}
        assert [e["seqNo"] for e in events] == list(range(len(events)))
        assert "Charging" in [e["transactionInfo"].get("chargingState") for e in events]
        energy = [v["value"] for e in events for mv in e.get("meterValue", [])
                  for v in mv["sampledValue"]
                  if v.get("measurand", "Energy.Active.Import.Register")
                  == "Energy.Active.Import.Register"]
        assert energy[-1] > energy[0]
        await next_event(peer, "StatusNotification",
                         lambda p: p["connectorStatus"] == "Available")

    run_against_peer(tmp_path, protocol, body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_c01_e03_e07_local_card_authorized_by_the_csms(tmp_path: Path, protocol: str) -> None:
    async def body(rig: StationRig, peer: OcppRpcPeer) -> None:
        await next_event(peer, "StatusNotification", lambda p: True)
        rig.do("tap", id_token="CARD-7")
        authorize = await next_event(peer, "Authorize", lambda p: True)
        assert authorize["idToken"]["idToken"] == "CARD-7"
        rig.do("plug", profile="compact_3p")
        started = await next_event(peer, "TransactionEvent",
                                   lambda p: p["eventType"] == "Started")
        await charging(rig)
        token_events = [e["payload"] for e in peer.calls("TransactionEvent", IDENTITY)
                        if "idToken" in e["payload"]]
        assert token_events and token_events[0]["idToken"]["idToken"] == "CARD-7"
        rig.do("tap", id_token="CARD-7")
        ended = await next_event(peer, "TransactionEvent", lambda p: p["eventType"] == "Ended")
        assert ended["transactionInfo"]["transactionId"] == (
            started["transactionInfo"]["transactionId"])
        assert ended["transactionInfo"]["stoppedReason"] == "Local"
        rig.do("unplug")

    run_against_peer(tmp_path, protocol, body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_k01_k08_k09_k10_charging_profile_changes_the_offered_current(tmp_path: Path,
                                                                  protocol: str) -> None:
    async def body(rig: StationRig, peer: OcppRpcPeer) -> None:
        await next_event(peer, "StatusNotification", lambda p: True)
        rig.do("plug", profile="compact_3p")
        await peer.call(IDENTITY, "RequestStartTransaction", {
            "idToken": {"idToken": "APP-USER-2", "type": "Central"}, "remoteStartId": 43})
        await charging(rig)
        assert rig.status()["offered_a"] > 30
        start = iso(rig.clock.now() - 60)
        answer = await peer.call(IDENTITY, "SetChargingProfile", {"evseId": 0, "chargingProfile": {
            "id": 11, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "A", "startSchedule": start,
                                  "chargingSchedulePeriod": [{"startPeriod": 0,
                                                              "limit": 10.0}]}]}})
        assert answer["status"] == "Accepted"
        # Applied before the answer went out (the composite reaches the arbiter at once).
        status = rig.status()
        assert status["limit"]["source"] == "ocpp_station_max"
        assert 9.9 <= status["offered_a"] <= 10.0
        composite = await peer.call(IDENTITY, "GetCompositeSchedule",
                                    {"duration": 600, "evseId": 1, "chargingRateUnit": "A"})
        assert composite["status"] == "Accepted"
        periods = composite["schedule"]["chargingSchedulePeriod"]
        assert periods[0]["startPeriod"] == 0 and periods[0]["limit"] <= 10.0
        profiles = await peer.call(IDENTITY, "GetChargingProfiles", {
            "requestId": 5, "chargingProfile": {"chargingProfileId": [11]}})
        assert profiles["status"] == "Accepted"
        report = await next_event(peer, "ReportChargingProfiles", lambda p: True)
        assert [p["id"] for p in report["chargingProfile"]] == [11]
        cleared = await peer.call(IDENTITY, "ClearChargingProfile", {"chargingProfileId": 11})
        assert cleared["status"] == "Accepted"
        assert rig.status()["offered_a"] > 30
        rig.do("unplug")
        await next_event(peer, "TransactionEvent", lambda p: p["eventType"] == "Ended")

    run_against_peer(tmp_path, protocol, body)
