"""Management use cases through the whole station: M05 install a root, L01 a signed firmware
update with the restart and the Installed report, N01 log upload, K08 composite schedule, and
the 2.1 DER messages on a bidirectional and a plain board."""

from __future__ import annotations

import base64
import datetime as dt
import io
import tarfile
from dataclasses import replace

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from ocpp_station_rig import IDENTITY, StationRig, fast_board

from firmware.app import EXIT_RESTART

START = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(START).not_valid_after(START + dt.timedelta(days=1000))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def _image() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        data = b"voltpilot 0.2.0\n"
        info = tarfile.TarInfo("VERSION")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


async def _serve(routes: web.RouteTableDef) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def test_m05_l01_signed_firmware_update_installs_restarts_and_reports(tmp_path):
    root_key = ec.generate_private_key(ec.SECP256R1())
    signer_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("Maker root", root_key, "Maker root", root_key, ca=True)
    signer = _cert("Maker firmware signer", signer_key, "Maker root", root_key, ca=False)
    image = _image()
    routes = web.RouteTableDef()

    @routes.get("/fw.tar.gz")
    async def firmware(_: web.Request) -> web.Response:
        return web.Response(body=image)

    async def body(rig: StationRig) -> None:
        csms = rig.csms
        runner, port = await _serve(routes)
        try:
            await csms.next_call("StatusNotification")
            installed = await csms.request(IDENTITY, "InstallCertificate", {
                "certificateType": "ManufacturerRootCertificate",
                "certificate": root.public_bytes(Encoding.PEM).decode()})
            assert installed["status"] == "Accepted"
            answer = await csms.request(IDENTITY, "UpdateFirmware", {
                "requestId": 5, "retries": 1, "retryInterval": 5, "firmware": {
                    "location": f"http://127.0.0.1:{port}/fw.tar.gz",
                    "retrieveDateTime": "2026-01-01T00:00:00Z",
                    "signingCertificate": signer.public_bytes(Encoding.PEM).decode(),
                    "signature": base64.b64encode(signer_key.sign(
                        image, ec.ECDSA(hashes.SHA256()))).decode()}})
            assert answer["status"] == "Accepted"
            assert rig.task is not None
            assert await rig.task == EXIT_RESTART
            rig.controller = None
            await rig.start()
            await csms.next_call("FirmwareStatusNotification",
                                 where=lambda p: p["status"] == "Installed")
            statuses = [p["status"] for p in csms.calls("FirmwareStatusNotification")]
            # Nothing to schedule: retrieveDateTime is past and no transaction runs.
            assert statuses == ["Downloading", "Downloaded", "SignatureVerified", "Installing",
                                "InstallRebooting", "Installed"], statuses
            assert csms.calls("BootNotification")[-1]["reason"] == "FirmwareUpdate"
            await csms.next_call("SecurityEventNotification",
                                 where=lambda p: p["type"] == "FirmwareUpdated")
        finally:
            await runner.cleanup()

    # Real time: aiohttp resolves addresses in a thread, which virtual time would outrun.
    StationRig.run(tmp_path, body, virtual=False)


def test_n01_get_log_uploads_our_log(tmp_path):
    received: list[bytes] = []
    routes = web.RouteTableDef()

    @routes.put("/logs/{name}")
    async def upload(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=201)

    async def body(rig: StationRig) -> None:
        csms = rig.csms
        runner, port = await _serve(routes)
        try:
            await csms.next_call("StatusNotification")
            answer = await csms.request(IDENTITY, "GetLog", {
                "logType": "DiagnosticsLog", "requestId": 9,
                "log": {"remoteLocation": f"http://127.0.0.1:{port}/logs/"}})
            assert answer["status"] == "Accepted" and answer["filename"]
            await csms.next_call("LogStatusNotification",
                                 where=lambda p: p["status"] == "Uploaded")
            assert received and b'"event": "boot"' in received[0]
            assert b"correct-horse" not in received[0]
        finally:
            await runner.cleanup()

    StationRig.run(tmp_path, body, virtual=False)


def test_k08_composite_schedule_of_the_installed_profiles(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        for purpose, stack, limit in (("ChargingStationMaxProfile", 0, 20.0),
                                      ("TxDefaultProfile", 1, 12.0)):
            answer = await csms.request(IDENTITY, "SetChargingProfile", {
                "evseId": 0 if purpose.startswith("ChargingStation") else 1,
                "chargingProfile": {
                    "id": stack + 10, "stackLevel": stack, "chargingProfilePurpose": purpose,
                    "chargingProfileKind": "Recurring", "recurrencyKind": "Daily",
                    "chargingSchedule": [{
                        "id": stack + 1, "chargingRateUnit": "A",
                        "startSchedule": "2025-12-31T22:00:00Z",
                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit},
                                                   {"startPeriod": 4 * 3600, "limit": 32.0}]}]}})
            assert answer["status"] == "Accepted", answer
        composite = await csms.request(IDENTITY, "GetCompositeSchedule",
                                       {"evseId": 1, "duration": 6 * 3600,
                                        "chargingRateUnit": "A"})
        assert composite["status"] == "Accepted"
        periods = composite["schedule"]["chargingSchedulePeriod"]
        # 00:00-02:00 still in the 22:00 window (TxDefault 12 A under the 20 A cap), then 32 A
        # under the cap's 32 A, until the window repeats at 22:00 (beyond the 6 h asked for).
        assert periods[0]["startPeriod"] == 0 and periods[0]["limit"] == 12.0
        assert periods[1]["startPeriod"] == 2 * 3600 and periods[1]["limit"] == 32.0
        rig.do("plug", profile="compact_3p")
        rig.do("authorize", on=True)
        assert rig.status()["limit"]["source"] == "ocpp_tx_default"

    StationRig.run(tmp_path, body)


def test_r_der_controls_on_a_bidirectional_board_and_not_supported_elsewhere(tmp_path):
    base = fast_board()
    v2g = replace(base, ratings=replace(base.ratings, bidirectional=True))
    control = {"isDefault": True, "controlType": "LimitMaxDischarge", "controlId": "d1",
               "limitMaxDischarge": {"priority": 1, "pctMaxDischargePower": 50.0}}

    async def body_v2g(rig: StationRig) -> None:
        await rig.csms.next_call("StatusNotification")
        answer = await rig.csms.request(IDENTITY, "SetDERControl", control)
        assert answer["status"] == "Accepted", answer
        assert rig.station.grid_settings.discharge_limit_w is not None
        got = await rig.csms.request(IDENTITY, "GetDERControl", {"requestId": 3})
        assert got["status"] == "Accepted"
        await rig.csms.next_call("ReportDERControl")

    async def body_plain(rig: StationRig) -> None:
        await rig.csms.next_call("StatusNotification")
        answer = await rig.csms.request(IDENTITY, "SetDERControl", control)
        assert answer["status"] == "NotSupported"

    StationRig.run(tmp_path / "v2g", body_v2g, board=v2g)
    StationRig.run(tmp_path / "plain", body_plain)


def test_q_notify_allowed_energy_transfer_for_the_running_transaction(tmp_path):
    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await rig.plug_and_tap()
        started = await csms.next_call("TransactionEvent",
                                       where=lambda p: p["eventType"] == "Started")
        tx_id = started["transactionInfo"]["transactionId"]
        modes = ["AC_three_phase", "AC_BPT"]
        answer = await csms.request(IDENTITY, "NotifyAllowedEnergyTransfer",
                                    {"transactionId": tx_id, "allowedEnergyTransfer": modes})
        assert answer["status"] == "Accepted"
        assert rig.station.allowed_energy_transfer == tuple(modes)
        wrong = await csms.request(IDENTITY, "NotifyAllowedEnergyTransfer",
                                   {"transactionId": "other", "allowedEnergyTransfer": modes})
        assert wrong["status"] == "Rejected"

    StationRig.run(tmp_path, body)
