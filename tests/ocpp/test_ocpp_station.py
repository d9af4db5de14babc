"""The station end to end: the controller on the sim board against a CSMS built with the `ocpp`
library on real websockets. Test names carry the spec's use-case ids."""

from __future__ import annotations

from ocpp_csms import Csms, ProxiedCsms
from ocpp_station_rig import IDENTITY, PASSWORD, StationRig

from firmware.app import EXIT_RESTART


def test_b01_boot_status_and_heartbeat(tmp_path):
    async def body(rig: StationRig) -> None:
        boot = await rig.csms.next_call("BootNotification")
        assert boot["reason"] == "PowerUp"
        assert boot["chargingStation"]["vendorName"] == "voltpilot"
        status = await rig.csms.next_call("StatusNotification")
        assert status["connectorStatus"] == "Available"
        assert rig.csms.connections[0] == (IDENTITY, "ocpp2.1")
        await rig.csms.next_call("Heartbeat", timeout=400)

    StationRig.run(tmp_path, body)


def test_e02_transaction_with_card_and_meter_values(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        rig.do("plug", profile="compact_3p")
        await csms.next_call("StatusNotification", where=lambda p: p["connectorStatus"]
                             == "Occupied")
        csms.tokens["CARD1"] = "Accepted"
        rig.do("tap", id_token="CARD1")
        started = await csms.next_call("TransactionEvent",
                                       where=lambda p: p["eventType"] == "Started")
        assert started["seqNo"] == 0
        assert started["triggerReason"] in ("ChargingStateChanged", "Authorized")
        await csms.next_call("TransactionEvent",
                             where=lambda p: p["triggerReason"] == "MeterValuePeriodic",
                             timeout=120)
        rig.do("unplug")
        ended = await csms.next_call("TransactionEvent",
                                     where=lambda p: p["eventType"] == "Ended")
        assert ended["transactionInfo"]["stoppedReason"] == "EVDisconnected"
        events = csms.calls("TransactionEvent")
        assert [e["seqNo"] for e in events] == list(range(len(events)))
        energy = [v for e in events for mv in e.get("meterValue", [])
                  for v in mv["sampledValue"] if v["measurand"]
                  == "Energy.Active.Import.Register"]
        assert energy and energy[-1]["value"] > energy[0]["value"]

    StationRig.run(tmp_path, body)


def test_b02_pending_boot_is_retried_after_the_interval(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("BootNotification")
        csms.boot_status = "Accepted"
        await csms.wait_for(lambda: len(csms.calls("BootNotification")) >= 2, timeout=120)
        # Nothing but the boot while it is not accepted (B02.FR.xx).
        actions = [f[2] for _, f in csms.frames if f[0] == 2]
        assert actions[:2] == ["BootNotification", "BootNotification"]
        await csms.next_call("StatusNotification")

    def pending_csms() -> Csms:
        csms = Csms(password=PASSWORD, interval=60)
        csms.boot_status = "Pending"
        return csms

    StationRig.run(tmp_path, body, csms_factory=pending_csms)


def test_b05_b06_b07_variables_and_base_report(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        answer = await csms.request(IDENTITY, "SetVariables", {"setVariableData": [
            {"component": {"name": "SampledDataCtrlr"},
             "variable": {"name": "TxUpdatedInterval"}, "attributeValue": "30"},
            {"component": {"name": "SecurityCtrlr"},
             "variable": {"name": "SecurityProfile"}, "attributeValue": "0"},
            {"component": {"name": "NoSuchCtrlr"}, "variable": {"name": "X"},
             "attributeValue": "1"}]})
        statuses = [r["attributeStatus"] for r in answer["setVariableResult"]]
        assert statuses == ["Accepted", "Rejected", "UnknownComponent"]
        got = await csms.request(IDENTITY, "GetVariables", {"getVariableData": [
            {"component": {"name": "SampledDataCtrlr"},
             "variable": {"name": "TxUpdatedInterval"}},
            {"component": {"name": "SecurityCtrlr"},
             "variable": {"name": "BasicAuthPassword"}}]})
        results = got["getVariableResult"]
        assert results[0]["attributeValue"] == "30"
        assert results[1]["attributeStatus"] == "Rejected" and "attributeValue" not in results[1]
        report = await csms.request(IDENTITY, "GetBaseReport",
                                    {"requestId": 7, "reportBase": "FullInventory"})
        assert report["status"] == "Accepted"
        await csms.next_call("NotifyReport", where=lambda p: not p.get("tbc", False))
        chunks = csms.calls("NotifyReport")
        assert [c["seqNo"] for c in chunks] == list(range(len(chunks)))
        assert all(c["requestId"] == 7 for c in chunks)
        text = str(chunks)
        assert PASSWORD not in text and "HeartbeatInterval" in text

    StationRig.run(tmp_path, body)


def test_e07_same_card_stops_and_c_rejected_card_does_not_start(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        rig.do("plug", profile="compact_3p")
        rig.do("tap", id_token="STRANGER")
        await rig.sleep(5)
        assert not rig.status()["authorized"] and not csms.calls("TransactionEvent")
        csms.tokens["CARD1"] = "Accepted"
        rig.do("tap", id_token="CARD1")
        await csms.next_call("TransactionEvent", where=lambda p: p["eventType"] == "Started")
        rig.do("tap", id_token="CARD1")
        ended = await csms.next_call("TransactionEvent",
                                     where=lambda p: p["eventType"] == "Ended")
        assert ended["triggerReason"] == "StopAuthorized"
        assert ended["transactionInfo"]["stoppedReason"] == "Local"
        await rig.until(lambda: not rig.status()["contactor"])

    StationRig.run(tmp_path, body)


def test_f01_f03_remote_start_and_stop(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        rig.do("plug", profile="compact_3p")
        answer = await csms.request(IDENTITY, "RequestStartTransaction", {
            "idToken": {"idToken": "APP-USER", "type": "Central"}, "remoteStartId": 42})
        assert answer["status"] == "Accepted"
        started = await csms.next_call("TransactionEvent",
                                       where=lambda p: p["eventType"] == "Started")
        tx_id = started["transactionInfo"]["transactionId"]
        await rig.until(lambda: rig.status()["contactor"])
        events = csms.calls("TransactionEvent")
        assert any(e.get("transactionInfo", {}).get("remoteStartId") == 42 for e in events)
        stop = await csms.request(IDENTITY, "RequestStopTransaction", {"transactionId": tx_id})
        assert stop["status"] == "Accepted"
        ended = await csms.next_call("TransactionEvent",
                                     where=lambda p: p["eventType"] == "Ended")
        assert ended["triggerReason"] == "RemoteStop"
        assert ended["transactionInfo"]["stoppedReason"] == "Remote"
        await rig.until(lambda: not rig.status()["contactor"])
        wrong = await csms.request(IDENTITY, "RequestStopTransaction", {"transactionId": "nope"})
        assert wrong["status"] == "Rejected"

    StationRig.run(tmp_path, body)


def test_k01_set_charging_profile_reaches_the_pwm(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await rig.plug_and_tap()
        await rig.until(lambda: rig.status()["contactor"])
        assert rig.status()["offered_a"] > 30
        answer = await csms.request(IDENTITY, "SetChargingProfile", {
            "evseId": 0, "chargingProfile": {
            "id": 1, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                                  "startSchedule": "2025-12-31T00:00:00Z",
                                  "chargingSchedulePeriod": [{"startPeriod": 0,
                                                              "limit": 10.0}]}]}})
        assert answer["status"] == "Accepted"
        status = rig.status()
        assert status["limit"]["source"] == "ocpp_station_max"
        assert 9.9 <= status["offered_a"] <= 10.0  # the duty is floored to 0.1 %
        assert abs(status["pilot"]["duty"] - 16.6) < 0.2
        cleared = await csms.request(IDENTITY, "ClearChargingProfile", {"chargingProfileId": 1})
        assert cleared["status"] == "Accepted"
        assert rig.status()["offered_a"] > 30

    StationRig.run(tmp_path, body)


def test_k12_a_local_limit_is_reported_to_the_csms(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await rig.plug_and_tap()
        await rig.until(lambda: rig.status()["contactor"])
        rig.do("limit", source="grid_14a", amps=6, reason="§14a dimming")
        notify = await csms.next_call("NotifyChargingLimit")
        assert notify["chargingLimit"] == {"chargingLimitSource": "SO", "isGridCritical": True}
        assert notify["customData"]["reason"] == "§14a dimming"
        rig.do("clear_limit", source="grid_14a")
        cleared = await csms.next_call("ClearedChargingLimit")
        assert cleared["chargingLimitSource"] == "SO"

    StationRig.run(tmp_path, body)


def test_b11_reset_immediate_ends_the_transaction_and_reboots(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await rig.plug_and_tap()
        await csms.next_call("TransactionEvent", where=lambda p: p["eventType"] == "Started")
        answer = await csms.request(IDENTITY, "Reset", {"type": "Immediate"})
        assert answer["status"] == "Accepted"
        ended = await csms.next_call("TransactionEvent",
                                     where=lambda p: p["eventType"] == "Ended")
        assert ended["triggerReason"] == "ResetCommand"
        assert ended["transactionInfo"]["stoppedReason"] == "ImmediateReset"
        assert rig.task is not None
        assert await rig.task == EXIT_RESTART
        rig.controller = None
        await rig.start()
        boots = await csms.wait_for(lambda: len(csms.calls("BootNotification")) >= 2 and
                                    csms.calls("BootNotification"))
        assert boots[-1]["reason"] == "RemoteReset"

    StationRig.run(tmp_path, body)


def test_b12_reset_on_idle_waits_for_the_transaction(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await rig.plug_and_tap()
        await csms.next_call("TransactionEvent", where=lambda p: p["eventType"] == "Started")
        answer = await csms.request(IDENTITY, "Reset", {"type": "OnIdle"})
        assert answer["status"] == "Scheduled"
        await rig.sleep(30)
        assert rig.task is not None and not rig.task.done()
        rig.do("unplug")
        assert await rig.task == EXIT_RESTART
        rig.controller = None

    StationRig.run(tmp_path, body)


def test_g03_change_availability_and_f06_trigger_message(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        answer = await csms.request(IDENTITY, "ChangeAvailability",
                                    {"operationalStatus": "Inoperative"})
        assert answer["status"] == "Accepted"
        await csms.next_call("StatusNotification",
                             where=lambda p: p["connectorStatus"] == "Unavailable")
        csms.tokens["CARD1"] = "Accepted"
        rig.do("plug", profile="compact_3p")
        rig.do("tap", id_token="CARD1")
        await rig.sleep(5)
        assert not rig.status()["contactor"]
        trig = await csms.request(IDENTITY, "TriggerMessage",
                                  {"requestedMessage": "MeterValues"})
        assert trig["status"] == "Accepted"
        await csms.next_call("MeterValues")
        boot = await csms.request(IDENTITY, "TriggerMessage",
                                  {"requestedMessage": "BootNotification"})
        assert boot["status"] == "Rejected"
        answer = await csms.request(IDENTITY, "ChangeAvailability",
                                    {"operationalStatus": "Operative"})
        assert answer["status"] == "Accepted"
        rig.do("tap", id_token="CARD1")
        await rig.until(lambda: rig.status()["contactor"])

    StationRig.run(tmp_path, body)


def test_e04_offline_transaction_is_queued_and_replayed_in_order(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        csms.tokens["CARD1"] = "Accepted"
        rig.do("plug", profile="compact_3p")
        rig.do("tap", id_token="CARD1")  # online: asked and cached
        await csms.next_call("TransactionEvent", where=lambda p: p["eventType"] == "Started")
        await csms.down()
        await rig.sleep(600)  # ten periodic meter values while the CSMS is away
        rig.do("unplug")
        await rig.sleep(5)
        rig.do("plug", profile="compact_3p")
        rig.do("tap", id_token="CARD1")  # offline: the cache says yes (C12)
        await rig.until(lambda: rig.status()["contactor"])
        await rig.sleep(120)
        rig.do("unplug")
        await rig.sleep(5)
        offline_at = len(csms.frames)
        await csms.up()
        await csms.wait_for(lambda: sum(
            1 for e in csms.transaction_events() if e["eventType"] == "Ended") == 2,
            timeout=600)
        events = csms.transaction_events()
        by_tx: dict[str, list[dict]] = {}
        for e in events:
            by_tx.setdefault(e["transactionInfo"]["transactionId"], []).append(e)
        assert len(by_tx) == 2
        for tx_events in by_tx.values():
            assert [e["seqNo"] for e in tx_events] == list(range(len(tx_events)))
            assert tx_events[0]["eventType"] == "Started"
            assert tx_events[-1]["eventType"] == "Ended"
        replayed = [f[3] for _, f in csms.frames[offline_at:]
                    if f[0] == 2 and f[2] == "TransactionEvent"]
        assert replayed and all(e.get("offline") for e in replayed)
        assert len(csms.call_ids("TransactionEvent")) == len(
            set(csms.call_ids("TransactionEvent")))

    StationRig.run(tmp_path, body)


def test_half_open_connection_is_detected_within_two_ping_intervals(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        assert isinstance(csms, ProxiedCsms) and csms.proxy is not None
        await csms.next_call("StatusNotification")
        answer = await csms.request(IDENTITY, "SetVariables", {"setVariableData": [
            {"component": {"name": "OCPPCommCtrlr"},
             "variable": {"name": "WebSocketPingInterval"}, "attributeValue": "10"}]})
        assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
        # The interval applies to the next connection: restart the station.
        await csms.request(IDENTITY, "Reset", {"type": "Immediate"})
        assert rig.task is not None and await rig.task == EXIT_RESTART
        rig.controller = None
        await rig.start()
        await rig.until(lambda: rig.station.online)
        boots = len(csms.calls("BootNotification"))
        csms.proxy.frozen = True
        frozen_at = rig.clock.now()
        await rig.until(lambda: not rig.station.online, timeout=60)
        assert rig.clock.now() - frozen_at <= 2 * 10 + 0.5
        csms.proxy.frozen = False
        await csms.wait_for(lambda: len(csms.calls("BootNotification")) > boots, timeout=120)

    StationRig.run(tmp_path, body, csms_factory=lambda: ProxiedCsms(password=PASSWORD))


def test_c_free_charging_when_authorization_is_disabled(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        answer = await csms.request(IDENTITY, "SetVariables", {"setVariableData": [
            {"component": {"name": "AuthCtrlr"}, "variable": {"name": "Enabled"},
             "attributeValue": "false"}]})
        assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
        rig.do("plug", profile="compact_3p")
        started = await csms.next_call("TransactionEvent",
                                       where=lambda p: p["eventType"] == "Started")
        assert "idToken" not in started
        rig.do("unplug")
        await csms.next_call("TransactionEvent", where=lambda p: p["eventType"] == "Ended")

    StationRig.run(tmp_path, body)


def test_c15_e05_offline_unknown_token_then_refused_by_the_csms(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        answer = await csms.request(IDENTITY, "SetVariables", {"setVariableData": [
            {"component": {"name": "AuthCtrlr"},
             "variable": {"name": "OfflineTxForUnknownIdEnabled"}, "attributeValue": "true"},
            {"component": {"name": "TxCtrlr"}, "variable": {"name": "StopTxOnInvalidId"},
             "attributeValue": "true"}]})
        assert all(r["attributeStatus"] == "Accepted" for r in answer["setVariableResult"])
        await csms.down()
        rig.do("plug", profile="compact_3p")
        await rig.sleep(1)
        rig.do("tap", id_token="NEVER-SEEN")
        await rig.until(lambda: rig.status()["contactor"])  # C15: charging while offline
        csms.tx_answer = {"status": "Invalid"}
        await csms.up()
        ended = await csms.next_call("TransactionEvent", timeout=120,
                                     where=lambda p: p["eventType"] == "Ended")
        assert ended["transactionInfo"]["stoppedReason"] == "DeAuthorized"
        await rig.until(lambda: not rig.status()["contactor"])

    StationRig.run(tmp_path, body)


def test_e03_authorized_first_then_no_car_within_the_connection_timeout(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        answer = await csms.request(IDENTITY, "SetVariables", {"setVariableData": [
            {"component": {"name": "TxCtrlr"}, "variable": {"name": "TxStartPoint"},
             "attributeValue": "Authorized,EVConnected"},
            {"component": {"name": "TxCtrlr"}, "variable": {"name": "EVConnectionTimeOut"},
             "attributeValue": "30"}]})
        assert all(r["attributeStatus"] == "Accepted" for r in answer["setVariableResult"])
        csms.tokens["CARD1"] = "Accepted"
        rig.do("tap", id_token="CARD1")
        started = await csms.next_call("TransactionEvent",
                                       where=lambda p: p["eventType"] == "Started")
        assert started["triggerReason"] == "Authorized" and started["idToken"]["idToken"] == "CARD1"
        ended = await csms.next_call("TransactionEvent", timeout=60,
                                     where=lambda p: p["eventType"] == "Ended")
        assert ended["triggerReason"] == "EVConnectTimeout"
        assert ended["transactionInfo"]["stoppedReason"] == "Timeout"
        assert not rig.status()["authorized"]

    StationRig.run(tmp_path, body)


def test_e_a_ground_fault_is_the_stop_reason_not_the_cable(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await rig.plug_and_tap()
        await rig.until(lambda: rig.status()["contactor"])
        rig.do("fault", name="rcd_trip")
        await rig.until(lambda: not rig.status()["contactor"])
        await csms.next_call("StatusNotification",
                             where=lambda p: p["connectorStatus"] == "Faulted")
        rig.do("unplug")
        ended = await csms.next_call("TransactionEvent",
                                     where=lambda p: p["eventType"] == "Ended")
        assert ended["transactionInfo"]["stoppedReason"] == "GroundFault"

    StationRig.run(tmp_path, body)


def test_review_fixes_inoperative_beats_free_charging_and_lockout_profiles_are_refused(
        tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        assert (rig.data_dir / "ocpp.db").stat().st_mode & 0o077 == 0  # it holds the password
        answer = await csms.request(IDENTITY, "SetVariables", {"setVariableData": [
            {"component": {"name": "AuthCtrlr"}, "variable": {"name": "Enabled"},
             "attributeValue": "false"},
            {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "SecurityProfile"},
             "attributeValue": "2"}]})
        # A05: no wss:// URL and no CSMS root: the station would lock itself out.
        assert [r["attributeStatus"] for r in answer["setVariableResult"]] == [
            "Accepted", "Rejected"]
        unavailable = await csms.request(IDENTITY, "ChangeAvailability",
                                         {"operationalStatus": "Inoperative"})
        assert unavailable["status"] == "Accepted"
        rig.do("plug", profile="compact_3p")
        await rig.sleep(10)
        assert not rig.status()["authorized"] and not rig.status()["contactor"]
        rig.do("tap", id_token="X", type="Central")  # not presentable at a reader
        await rig.sleep(2)
        assert not rig.status()["authorized"]

    StationRig.run(tmp_path, body)
