"""Every CSMS request the station answers, by action: a thin layer from the request to the
module that decides (device model, authorization, smart charging, certificates, firmware,
DER) or to the EVSE (remote start and stop, reset, availability, unlock, trigger).

A handler returns the response payload; work the spec orders after the response (a
NotifyReport after GetBaseReport, the triggered message after TriggerMessage) is returned as
``After(response, then)`` so it goes out once the response is on the wire.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from firmware.ocpp import smart_charging as sc
from firmware.ocpp.device_model import RequestTooLargeError
from firmware.ocpp.rpc import After, OcppCallError, Payload
from firmware.ocpp.transactions import Stopped, Trigger

if TYPE_CHECKING:
    from firmware.ocpp.station import Station

Handler = Callable[[Payload], Awaitable[Payload | After]]

# NotifyReport size: no standard variable bounds it (ItemsPerMessage/BytesPerMessage GetReport
# bound the request); these keep each frame far below any CSMS's frame limit.
REPORT_ITEMS = 25
REPORT_BYTES = 32000


def _rejected(reason: str, info: str | None = None) -> Payload:
    status: Payload = {"reasonCode": reason}
    if info:
        status["additionalInfo"] = info[:512]  # the 2.0.1 schema's limit
    return status


def handlers_for(st: Station, version: str) -> dict[str, Handler]:
    evse = st.evse

    # ---- provisioning, device model (B) ------------------------------------------------------

    async def get_variables(p: Payload) -> Payload:
        try:
            return st.dm.get_variables(p)
        except RequestTooLargeError as exc:
            raise OcppCallError(exc.code.value, exc.description) from exc

    async def set_variables(p: Payload) -> Payload | After:
        try:
            response, changes = st.dm.set_variables(p)
        except RequestTooLargeError as exc:
            raise OcppCallError(exc.code.value, exc.description) from exc

        async def publish() -> None:
            # After the response: a subscriber that reconnects must not cut it off.
            st.dm.publish(changes)

        return After(response, publish)

    async def get_base_report(p: Payload) -> Payload | After:
        response, items = st.dm.get_base_report(p)
        return _report(response, items, p["requestId"])

    async def get_report(p: Payload) -> Payload | After:
        try:
            response, items = st.dm.get_report(p)
        except RequestTooLargeError as exc:
            raise OcppCallError(exc.code.value, exc.description) from exc
        return _report(response, items, p["requestId"])

    def _report(response: Payload, items: list[Payload], request_id: int) -> Payload | After:
        if response["status"] != "Accepted" or not items:
            return response
        messages = st.dm.chunk_report(items, request_id=request_id, generated_at=st.now_iso(),
                                      items_per_message=REPORT_ITEMS,
                                      bytes_per_message=REPORT_BYTES)

        async def send_all() -> None:
            for message in messages:
                await st.call("NotifyReport", message)

        return After(response, send_all)

    async def reset(p: Payload) -> Payload:
        if p.get("evseId") not in (None, 0):
            # Resetting one EVSE alone is not something a one-connector station can do apart
            # from the whole (B12).
            return {"status": "Rejected",
                    "statusInfo": _rejected("UnknownEvse", "only station resets are supported")}
        kind = p["type"]
        if evse.tx is not None and kind == "OnIdle":
            st.reset_pending = kind
            return {"status": "Scheduled"}
        if evse.tx is not None:
            evse.deauthorize(Trigger.RESET_COMMAND, Stopped.IMMEDIATE_RESET)
            evse.end_transaction(Trigger.RESET_COMMAND, Stopped.IMMEDIATE_RESET)
        st.restart_soon(kind)
        return {"status": "Accepted"}

    # ---- authorization (C, D) -------------------------------------------------------------------

    async def clear_cache(p: Payload) -> Payload:
        return st.auth.clear_cache()

    async def send_local_list(p: Payload) -> Payload:
        return st.auth.send_local_list(p)

    async def get_local_list_version(p: Payload) -> Payload:
        return st.auth.get_local_list_version()

    # ---- transactions and remote control (E, F, G) ---------------------------------------------

    async def request_start(p: Payload) -> Payload | After:
        evse_id = p.get("evseId", 1)
        if evse_id != 1 or evse.inoperative:
            return {"status": "Rejected",
                    "statusInfo": _rejected("UnknownEvse" if evse_id != 1 else "Unavailable")}
        profile = p.get("chargingProfile")
        if profile is not None and profile.get("chargingProfilePurpose") != "TxProfile":
            # F01.FR.12: only a TxProfile may come with a remote start.
            return {"status": "Rejected",
                    "statusInfo": _rejected("InvalidProfile", "expected a TxProfile")}
        if evse.tx is not None and st.connector.authorized:
            return {"status": "Rejected", "transactionId": evse.tx.id,
                    "statusInfo": _rejected("TxInProgress")}
        response: Payload = {"status": "Accepted"}
        if evse.tx is not None:
            response["transactionId"] = evse.tx.id

        async def start() -> None:
            await st.remote_start(p["idToken"], p["remoteStartId"], profile)

        return After(response, start)

    async def request_stop(p: Payload) -> Payload:
        tx = evse.tx
        if tx is None or tx.id != p["transactionId"]:
            return {"status": "Rejected", "statusInfo": _rejected("TxNotFound")}
        if st.connector.authorized:
            evse.deauthorize(Trigger.REMOTE_STOP, Stopped.REMOTE)
        else:
            evse.end_transaction(Trigger.REMOTE_STOP, Stopped.REMOTE)
        return {"status": "Accepted"}

    async def get_transaction_status(p: Payload) -> Payload:
        tx_id = p.get("transactionId")
        response: Payload = {"messagesInQueue": st.queue.has_pending(tx_id)}
        if tx_id is not None:
            response["ongoingIndicator"] = evse.tx is not None and evse.tx.id == tx_id
        return response

    async def change_availability(p: Payload) -> Payload:
        target = p["operationalStatus"]
        where = p.get("evse")
        if where is not None and (where["id"] not in (0, 1)
                                  or where.get("connectorId", 1) != 1):
            return {"status": "Rejected", "statusInfo": _rejected("UnknownEvse")}
        inoperative = target == "Inoperative"
        st.dm.set_internal("EVSE", "AvailabilityState",
                           "Unavailable" if inoperative else "Available", evse=1)
        evse.set_inoperative(inoperative)
        # G03: with a transaction running, the change waits for it to end.
        return {"status": "Scheduled" if inoperative and evse.tx is not None
                else "Accepted"}

    async def unlock_connector(p: Payload) -> Payload:
        if p["evseId"] != 1 or p["connectorId"] != 1:
            return {"status": "UnknownConnector"}
        if evse.tx is not None and st.connector.authorized:
            return {"status": "OngoingAuthorizedTransaction"}
        if not st.unlock():
            return {"status": "UnlockFailed",
                    "statusInfo": _rejected("NoLock", "this connector has no lock "
                                            "(tethered cable) or the lock did not open")}
        return {"status": "Unlocked"}

    async def trigger_message(p: Payload) -> Payload | After:
        what = p["requestedMessage"]
        where = p.get("evse")
        if where is not None and where.get("id") not in (0, 1):
            return {"status": "Rejected", "statusInfo": _rejected("UnknownEvse")}
        send = st.triggered(what, version)
        if send is True:
            return {"status": "NotImplemented"}
        if send is False:
            return {"status": "Rejected"}
        return After({"status": "Accepted"}, send)

    async def data_transfer(p: Payload) -> Payload:
        return {"status": "UnknownVendorId"}

    # ---- smart charging (K) ---------------------------------------------------------------------

    async def set_charging_profile(p: Payload) -> Payload:
        profile_id = p["chargingProfile"]["id"]
        previous = st.profiles.get(profile_id)
        response = sc.set_charging_profile(p, st.sc_context(version), st.profiles,
                                           st.clock.now())
        if response["status"] == "Accepted" and not st.apply_profiles():
            # A profile we cannot evaluate must not stay behind to stop every later charge;
            # the one it replaced comes back.
            st.profiles.remove([profile_id])
            if previous is not None:
                st.profiles.put(previous)
            st.apply_profiles()
            return {"status": "Rejected", "statusInfo": _rejected(
                "InvalidProfile", "the profile could not be evaluated")}
        st.count_profiles()
        return response

    async def clear_charging_profile(p: Payload) -> Payload:
        response = sc.clear_charging_profile(p, st.profiles)
        st.apply_profiles()
        st.count_profiles()
        return response

    async def get_charging_profiles(p: Payload) -> Payload | After:
        response, reports = sc.get_charging_profiles(p, st.profiles, version=version)
        if not reports:
            return response

        async def send_all() -> None:
            for report in reports:
                await st.call("ReportChargingProfiles", report)

        return After(response, send_all)

    async def get_composite_schedule(p: Payload) -> Payload:
        b = st.board.ratings
        return sc.get_composite_schedule(
            p, store=st.profiles, now=st.clock.now(), tx=st.tx_context(), phases=b.phases,
            voltage_v=b.nominal_voltage_v, n_evses=1,
            units=tuple(st.dm.get_list("SmartChargingCtrlr", "RateUnit")),
            rating_a=b.max_current_a, version=version)

    # ---- security and certificates (A, M) ------------------------------------------------------

    async def certificate_signed(p: Payload) -> Payload:
        return await st.on_certificate_signed(p)

    async def install_certificate(p: Payload) -> Payload:
        return st.certs.install_certificate(p, st.clock.now())

    async def get_installed_certificate_ids(p: Payload) -> Payload:
        return st.certs.get_installed_certificate_ids(p, version=version)

    async def delete_certificate(p: Payload) -> Payload:
        return st.certs.delete_certificate(p)

    # ---- firmware and logs (L, N) ---------------------------------------------------------------

    async def update_firmware(p: Payload) -> Payload:
        return st.firmware.update_firmware(p)

    async def get_log(p: Payload) -> Payload:
        return st.uploads.get_log(p)

    table: dict[str, Handler] = {
        "GetVariables": get_variables, "SetVariables": set_variables,
        "GetBaseReport": get_base_report, "GetReport": get_report, "Reset": reset,
        "ClearCache": clear_cache, "SendLocalList": send_local_list,
        "GetLocalListVersion": get_local_list_version,
        "RequestStartTransaction": request_start, "RequestStopTransaction": request_stop,
        "GetTransactionStatus": get_transaction_status,
        "ChangeAvailability": change_availability, "UnlockConnector": unlock_connector,
        "TriggerMessage": trigger_message, "DataTransfer": data_transfer,
        "SetChargingProfile": set_charging_profile,
        "ClearChargingProfile": clear_charging_profile,
        "GetChargingProfiles": get_charging_profiles,
        "GetCompositeSchedule": get_composite_schedule,
        "CertificateSigned": certificate_signed, "InstallCertificate": install_certificate,
        "GetInstalledCertificateIds": get_installed_certificate_ids,
        "DeleteCertificate": delete_certificate,
        "UpdateFirmware": update_firmware, "GetLog": get_log,
    }
    if version == "2.1":
        table.update(_der_handlers(st))
    return table


def _der_handlers(st: Station) -> dict[str, Handler]:
    async def set_der(p: Payload) -> Payload:
        response = st.der.set_der_control(p, st.clock.now())
        st.apply_grid_settings()
        return response

    async def get_der(p: Payload) -> Payload | After:
        response, reports = st.der.get_der_control(p, st.clock.now())
        if not reports:
            return response

        async def send_all() -> None:
            for report in reports:
                await st.call("ReportDERControl", report)

        return After(response, send_all)

    async def clear_der(p: Payload) -> Payload:
        response = st.der.clear_der_control(p)
        st.apply_grid_settings()
        return response

    async def allowed_energy_transfer(p: Payload) -> Payload:
        # 2.1 Q: the energy transfer modes the CSMS allows for this transaction; kept for the
        # ISO 15118 work, which offers them to the car.
        tx = st.evse.tx
        if tx is None or tx.id != p["transactionId"]:
            return {"status": "Rejected", "statusInfo": _rejected("TxNotFound")}
        st.allowed_energy_transfer = tuple(p["allowedEnergyTransfer"])
        return {"status": "Accepted"}

    return {"SetDERControl": set_der, "GetDERControl": get_der, "ClearDERControl": clear_der,
            "NotifyAllowedEnergyTransfer": allowed_energy_transfer}

