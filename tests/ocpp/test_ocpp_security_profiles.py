"""A00/A02/A05 end to end: the station on security profiles 2 (TLS + Basic auth) and 3 (mutual
TLS) against the test CSMS, and a charging-station certificate renewed by the CSMS and used on
the next connection."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from ocpp_csms import Csms
from ocpp_pki import make_pki, sign_csr
from ocpp_station_rig import IDENTITY, PASSWORD, StationRig

# The virtual clock starts on 2026-01-01; the TLS stack checks against the real date: a year
# of validity either side satisfies both.
PKI_START = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
PKI_DAYS = 1000


def server_context(tmp_path: Path, *, mutual: bool) -> tuple[ssl.SSLContext, object]:
    pki = make_pki(tmp_path / "pki", identity=IDENTITY, now=PKI_START, days=PKI_DAYS)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca_cert)
    return ctx, pki


def test_a00_security_profile_2_tls_with_basic_auth(tmp_path):
    ctx, pki = server_context(tmp_path, mutual=False)

    async def body(rig: StationRig) -> None:
        await rig.csms.next_call("BootNotification")
        assert rig.csms.connections[0][0] == IDENTITY

    StationRig.run(tmp_path, body, csms_factory=lambda: Csms(password=PASSWORD,
                                                             ssl_context=ctx),
                   security_profile=2, ca_file=str(pki.ca_cert))


def test_a02_profile_3_certificate_renewed_by_the_csms_is_used_next(tmp_path):
    ctx, pki = server_context(tmp_path, mutual=True)

    async def body(rig: StationRig) -> None:
        csms = rig.csms
        await csms.next_call("StatusNotification")
        first = x509.load_der_x509_certificate(csms.peer_certs[0])
        assert first.subject.rfc4514_string().startswith(f"CN={IDENTITY}")
        answer = await csms.request(IDENTITY, "TriggerMessage",
                                    {"requestedMessage": "SignChargingStationCertificate"})
        assert answer["status"] == "Accepted"
        request = await csms.next_call("SignCertificate")
        assert "PRIVATE" not in request["csr"]
        chain = sign_csr(pki, request["csr"].encode(), now=PKI_START, days=PKI_DAYS)
        signed = await csms.request(IDENTITY, "CertificateSigned", {
            "certificateChain": chain.decode(),
            "certificateType": "ChargingStationCertificate"})
        assert signed["status"] == "Accepted"
        # A02.FR.08: the station reconnects and presents the new certificate.
        await csms.wait_for(lambda: len(csms.peer_certs) >= 2, timeout=120)
        second = x509.load_der_x509_certificate(csms.peer_certs[-1])
        assert second.serial_number != first.serial_number
        assert second.public_bytes(Encoding.PEM) in chain
        # A broken chain is refused and reported as a security event.
        bad = await csms.request(IDENTITY, "CertificateSigned", {
            "certificateChain": first.public_bytes(Encoding.PEM).decode(),
            "certificateType": "ChargingStationCertificate"})
        assert bad["status"] == "Rejected"
        event = await csms.next_call("SecurityEventNotification",
                                     where=lambda p: p["type"]
                                     == "InvalidChargingStationCertificate")
        assert "PRIVATE" not in str(event)

    StationRig.run(tmp_path, body, csms_factory=lambda: Csms(ssl_context=ctx),
                   security_profile=3, ca_file=str(pki.ca_cert),
                   client_cert_file=str(pki.client_cert),
                   client_key_file=str(pki.client_key))

