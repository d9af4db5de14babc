"""Security (A02-A05) and certificate management (M03-M05): the key store, CSRs, CertificateSigned
validation, the CA store, TLS files and security events, with every payload we produce checked
against the OCPP 2.0.1 and 2.1 schemas."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import itertools
import json
import logging
import ssl
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from ocpp_sec_ca import DAY, Ca, key_pem

from firmware import logs
from firmware.ocpp.certificates import CertificateStore, CertificateUse
from firmware.ocpp.db import open_db
from firmware.ocpp.security import (
    CRITICAL_EVENTS,
    ProfileChange,
    Rejection,
    SecurityEvent,
    SignRetry,
    StationSecurity,
    check_security_profile,
    is_critical,
    log_security_event,
    next_resend_at,
    renewal_due,
    resent,
    security_event_notification,
)
from hal.clock import VirtualClock

NOW = VirtualClock.DEFAULT_START
ID = "CS-0042"
ORG = "Voltpilot Test CSO"
CS = CertificateUse.CHARGING_STATION
SCHEMAS = Path(ocpp.__file__).parent


@cache
def _validator(version: str, name: str) -> Any:
    schema = json.loads((SCHEMAS / version / "schemas" / f"{name}.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def check(name: str, payload: dict[str, Any], versions: tuple[str, ...] = ("v201", "v21")) -> None:
    """``payload`` is a valid ``name`` (e.g. "InstallCertificateResponse") in every version."""
    for version in versions:
        _validator(version, name).validate(payload)


@dataclass
class Station:
    db_path: Path
    keys: Path
    store: CertificateStore
    security: StationSecurity

    def reopen(self) -> Station:
        return make_station(self.db_path, self.keys, self.store.max_entries)


def make_station(db_path: Path, keys: Path, max_entries: int = 50) -> Station:
    store = CertificateStore(open_db(db_path), keys, max_entries=max_entries)
    return Station(db_path, keys, store, StationSecurity(store))


@pytest.fixture
def station(tmp_path: Path) -> Station:
    return make_station(tmp_path / "ocpp.db", tmp_path / "keys")


@pytest.fixture(scope="module")
def root() -> Ca:
    return Ca.root("CSO Root", now=NOW)


def install(station: Station, kind: str, pem: str, now: float = NOW,
            versions: tuple[str, ...] = ("v201", "v21")) -> dict[str, Any]:
    request = {"certificateType": kind, "certificate": pem}
    check("InstallCertificateRequest", request, versions)
    response = station.store.install_certificate(request, now)
    check("InstallCertificateResponse", response)
    return response


def signed(station: Station, chain: str, *, cert_type: str | None = "ChargingStationCertificate",
           now: float = NOW, identity: str = ID, max_chain_size: int | None = None,
           secc_id: str | None = None) -> tuple[dict[str, Any], Any]:
    request: dict[str, Any] = {"certificateChain": chain}
    if cert_type is not None:
        request["certificateType"] = cert_type
    check("CertificateSignedRequest", request,
          ("v21",) if cert_type == "V2G20Certificate" else ("v201", "v21"))
    response, outcome = station.security.certificate_signed(
        request, identity=identity, now=now, max_chain_size=max_chain_size, secc_id=secc_id)
    check("CertificateSignedResponse", response)
    return response, outcome


def new_csr(station: Station, use: CertificateUse = CS, **kw: Any) -> str:
    request = station.security.sign_certificate_request(use, kw.pop("identity", ID), ORG, **kw)
    check("SignCertificateRequest", request,
          ("v21",) if "requestId" in request or use is CertificateUse.V2G20 else ("v201", "v21"))
    return str(request["csr"])


# ---- A02 / A03: the whole flow -------------------------------------------------------------


def test_a02_csr_signed_installed_and_usable_for_mutual_tls(tmp_path: Path) -> None:
    now = time.time()  # OpenSSL checks validity against the real clock
    station = make_station(tmp_path / "ocpp.db", tmp_path / "keys")
    ca = Ca.root("CSO Root", now=now)
    assert install(station, "CSMSRootCertificate", ca.pem, now) == {"status": "Accepted"}
    csr = new_csr(station)
    response, outcome = signed(station, ca.sign_csr(csr, now=now), now=now)
    assert response == {"status": "Accepted"}
    assert outcome.accepted and outcome.use is CS and outcome.reconnect and outcome.event is None

    tls = station.store.tls_material()
    assert tls.ca_file is not None and tls.client_cert_file and tls.client_key_file
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(tls.ca_file)
    client.load_cert_chain(tls.client_cert_file, tls.client_key_file)

    server_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "srv.pem").write_text(ca.leaf_for_key(server_key, "csms", now=now, server=True))
    (tmp_path / "srv.key").write_bytes(key_pem(server_key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    server.load_verify_locations(cadata=ca.pem)
    server.verify_mode = ssl.CERT_REQUIRED
    assert asyncio.run(_handshake(server, client)) == ID


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str:
    """Mutual TLS on 127.0.0.1; the commonName of the client certificate the server saw."""
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        seen.set_result(dict(x[0] for x in peer["subject"])["commonName"])
        writer.close()

    srv = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        result = await asyncio.wait_for(seen, 5)
        writer.close()
    return result


def test_key_files_are_private_and_written_once(station: Station) -> None:
    new_csr(station)
    keys = list(station.keys.glob("key-*.pem"))
    assert len(keys) == 1
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(station.keys.stat().st_mode) == 0o700
    assert not list(station.keys.glob(".tmp-*"))
    # A02.FR.02: a new request gets a new key; the replaced pending key is gone.
    new_csr(station)
    assert len(list(station.keys.glob("key-*.pem"))) == 1
    assert list(station.keys.glob("key-*.pem")) != keys


def test_csr_subject_and_key_types(tmp_path: Path) -> None:
    station = make_station(tmp_path / "a.db", tmp_path / "a")
    csr = x509.load_pem_x509_csr(station.security.make_csr(
        identity=ID, organization=ORG, use=CS).encode())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ID
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == ORG
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert csr.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]

    v2g = x509.load_pem_x509_csr(station.security.make_csr(
        identity="SECC-1", organization="Voltpilot ISO", use=CertificateUse.V2G,
        country="NL").encode())
    assert [a.value for a in v2g.subject.get_attributes_for_oid(NameOID.DOMAIN_COMPONENT)] == \
        ["CPO"]
    assert v2g.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "NL"

    from firmware.ocpp.security import KeyAlgorithm
    rsa_station = StationSecurity(station.store, key_algorithm=KeyAlgorithm.RSA_2048)
    rsa_csr = x509.load_pem_x509_csr(rsa_station.make_csr(
        identity=ID, organization=ORG, use=CS).encode())
    assert isinstance(rsa_csr.public_key(), rsa.RSAPublicKey)
    assert rsa_csr.public_key().key_size == 2048  # type: ignore[union-attr]
    assert rsa_csr.is_signature_valid


def test_v21_request_id_and_root_hash_on_renewal(station: Station, root: Ca) -> None:
    install(station, "CSMSRootCertificate", root.pem)
    signed(station, root.sign_csr(new_csr(station), now=NOW))
    request = station.security.sign_certificate_request(CS, ID, ORG, request_id=7,
                                                        include_root_hash=True)
    check("SignCertificateRequest", request, ("v21",))
    assert request["requestId"] == 7
    assert request["hashRootCertificate"]["serialNumber"] == format(root.cert.serial_number, "x")
    # The resend is the same request, with the same CSR (A02.FR.17-.19).
    assert station.security.pending_sign_request(CS) == request


def test_pending_key_survives_restart(station: Station, root: Ca) -> None:
    install(station, "CSMSRootCertificate", root.pem)
    chain = root.sign_csr(new_csr(station), now=NOW)
    again = station.reopen()
    response, _ = signed(again, chain)
    assert response["status"] == "Accepted"
    third = again.reopen()
    assert third.store.station_chain(CS) is not None
    tls = third.store.tls_material()
    assert tls.client_key_file is not None and tls.client_key_file.exists()
    assert third.store.get_installed_certificate_ids({})["status"] == "Accepted"


def test_chain_with_intermediate_is_accepted(station: Station, root: Ca) -> None:
    sub = root.sub_ca("CSO Sub-CA", now=NOW)
    install(station, "CSMSRootCertificate", root.pem)
    leaf = sub.sign_csr(new_csr(station), now=NOW)
    assert signed(station, leaf + sub.pem)[0] == {"status": "Accepted"}
    assert signed(station, sub.sign_csr(new_csr(station), now=NOW) + sub.pem + root.pem)[0] == \
        {"status": "Accepted"}


# ---- A02.FR.06/.07: what is rejected -------------------------------------------------------


def _wrong_key(station: Station, root: Ca) -> str:
    new_csr(station)
    other = make_station(station.db_path.with_name("other.db"), station.keys.with_name("other"))
    return root.sign_csr(new_csr(other), now=NOW)


def _broken_chain(station: Station, root: Ca) -> str:
    sub = root.sub_ca("CSO Sub-CA", now=NOW)
    stranger = Ca.root("Stranger", now=NOW)
    return sub.sign_csr(new_csr(station), now=NOW) + stranger.pem


REJECTIONS = {
    "wrong key": (_wrong_key, Rejection.KEY_MISMATCH),
    "expired": (lambda s, r: r.sign_csr(new_csr(s), now=NOW, start=NOW - 10 * DAY, days=2),
                Rejection.EXPIRED),
    "not yet valid": (lambda s, r: r.sign_csr(new_csr(s), now=NOW, start=NOW + 60, days=2),
                      Rejection.NOT_YET_VALID),
    "wrong CN": (lambda s, r: r.sign_csr(new_csr(s), now=NOW, cn="CS-9999"),
                 Rejection.WRONG_IDENTITY),
    "broken chain": (_broken_chain, Rejection.BROKEN_CHAIN),
    "unknown root": (lambda s, r: Ca.root("Other", now=NOW).sign_csr(new_csr(s), now=NOW),
                     Rejection.UNTRUSTED_ROOT),
    "sub-CA missing": (lambda s, r: r.sub_ca("Sub", now=NOW).sign_csr(new_csr(s), now=NOW),
                       Rejection.UNTRUSTED_ROOT),
    "not PEM": (lambda s, r: (new_csr(s), "-----BEGIN CERTIFICATE-----\nAAAA\n")[1],
                Rejection.NOT_PEM),
}


@pytest.mark.parametrize("case", REJECTIONS)
def test_a02_invalid_certificate_rejected_with_security_event(station: Station, root: Ca,
                                                              case: str) -> None:
    install(station, "CSMSRootCertificate", root.pem)
    make_chain, reason = REJECTIONS[case]
    response, outcome = signed(station, make_chain(station, root))
    assert response["status"] == "Rejected"
    assert response["statusInfo"]["reasonCode"] == "InvalidCertificate"
    assert outcome.rejection is reason and not outcome.reconnect
    assert outcome.event is SecurityEvent.INVALID_CHARGING_STATION_CERTIFICATE
    check("SecurityEventNotificationRequest",
          security_event_notification(outcome.event, NOW, outcome.tech_info))
    # Discarded: nothing installed, and the pending key still waits for the right certificate.
    assert station.store.station_chain(CS) is None
    assert signed(station, root.sign_csr(_current_csr(station), now=NOW))[0]["status"] == \
        "Accepted"


def _current_csr(station: Station) -> str:
    request = station.security.pending_sign_request(CS)
    assert request is not None
    return str(request["csr"])


def test_a02_chain_larger_than_max_certificate_chain_size(station: Station, root: Ca) -> None:
    install(station, "CSMSRootCertificate", root.pem)
    chain = root.sign_csr(new_csr(station), now=NOW)
    response, outcome = signed(station, chain, max_chain_size=len(chain) - 1)
    assert response["statusInfo"]["reasonCode"] == "TooLargeElement"
    assert outcome.event is SecurityEvent.INVALID_CHARGING_STATION_CERTIFICATE
    assert signed(station, chain, max_chain_size=len(chain))[0]["status"] == "Accepted"


def test_a02_type_and_pending_mismatches(station: Station, root: Ca) -> None:
    install(station, "CSMSRootCertificate", root.pem)
    install(station, "V2GRootCertificate", root.pem)
    chain = root.sign_csr(new_csr(station), now=NOW)
    assert signed(station, chain, cert_type="V2GCertificate")[1].rejection is \
        Rejection.TYPE_MISMATCH
    # certificateType is optional: the pending request holding the key decides.
    response, outcome = signed(station, chain, cert_type=None)
    assert response["status"] == "Accepted" and outcome.use is CS
    assert signed(station, chain)[1].rejection is Rejection.NO_PENDING_REQUEST


@pytest.mark.parametrize("use", [CertificateUse.V2G, CertificateUse.V2G20])
def test_v2g_certificate_chain_listed_and_deletable(station: Station, use: CertificateUse,
                                                    ) -> None:
    v2g_root = Ca.root("V2G Root", now=NOW)
    sub = v2g_root.sub_ca("CPO Sub-CA 1", now=NOW)
    install(station, "V2GRootCertificate", v2g_root.pem)
    csr = new_csr(station, use, identity="SECC-1")
    leaf = sub.sign_csr(csr, now=NOW) + sub.pem
    assert signed(station, leaf, cert_type=use.value)[1].rejection is Rejection.WRONG_IDENTITY
    response, outcome = signed(station, leaf, cert_type=None, secc_id="SECC-1")
    assert outcome.use is use
    assert response == {"status": "Accepted"} and not outcome.reconnect
    listed = station.store.get_installed_certificate_ids(
        {"certificateType": ["V2GCertificateChain"]})
    check("GetInstalledCertificateIdsResponse", listed)
    [entry] = listed["certificateHashDataChain"]
    assert entry["certificateType"] == "V2GCertificateChain"
    assert entry["childCertificateHashData"][0]["serialNumber"] == \
        format(sub.cert.serial_number, "x")
    delete = {"certificateHashData": entry["certificateHashData"]}
    check("DeleteCertificateRequest", delete)
    assert station.store.delete_certificate(delete) == {"status": "Accepted"}
    assert station.store.station_chain(use) is None
    assert not list(station.keys.glob("key-*.pem"))


# ---- switch-over and fallback (A02.FR.08/.10/.28) ------------------------------------------


def test_renewal_keeps_fallback_until_confirmed_or_reverted(station: Station, root: Ca) -> None:
    install(station, "CSMSRootCertificate", root.pem)
    signed(station, root.sign_csr(new_csr(station), now=NOW))
    first = station.store.tls_material()
    assert first.client_cert_file is not None and first.client_key_file is not None
    old_cert, old_key = first.client_cert_file.read_text(), first.client_key_file.read_bytes()

    signed(station, root.sign_csr(new_csr(station), now=NOW + DAY), now=NOW + DAY)
    new = station.store.tls_material()
    assert new.client_cert_file is not None and new.client_key_file is not None
    assert new.client_cert_file.read_text() != old_cert
    back = station.store.tls_material(fallback=True)
    assert back.client_cert_file is not None and back.client_key_file is not None
    assert back.client_cert_file.read_text() == old_cert
    assert back.client_key_file.read_bytes() == old_key

    assert station.store.revert_station_certificate()
    assert not new.client_key_file.exists()
    restored = station.store.tls_material()
    assert restored.client_cert_file is not None
    assert restored.client_cert_file.read_text() == old_cert
    assert not station.store.revert_station_certificate()

    signed(station, root.sign_csr(new_csr(station), now=NOW + 2 * DAY), now=NOW + 2 * DAY)
    station.store.confirm_station_certificate()
    assert station.store.tls_material(fallback=True).client_cert_file is None
    assert len(list(station.keys.glob("key-*.pem"))) == 1


# ---- M05 / M03 / M04 -----------------------------------------------------------------------


def test_m05_install_accepts_ca_and_rejects_others(station: Station, root: Ca) -> None:
    assert install(station, "CSMSRootCertificate", root.pem)["status"] == "Accepted"
    assert install(station, "CSMSRootCertificate", root.pem)["status"] == "Accepted"
    assert station.store.entries() == 1  # the same certificate again is not a new entry
    assert install(station, "MORootCertificate", root.pem)["status"] == "Accepted"
    assert station.store.entries() == 2

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    not_ca = root.leaf_for_key(leaf_key, "leaf", now=NOW)
    expired = Ca.root("Old", now=NOW, start=NOW - 20 * DAY, days=10)
    future = Ca.root("Future", now=NOW, start=NOW + DAY)
    for pem in (not_ca, expired.pem, future.pem, "garbage", root.pem + root.pem):
        response = install(station, "V2GRootCertificate", pem)
        assert response["status"] == "Rejected"
        assert response["statusInfo"]["reasonCode"] == "InvalidCertificate"
    assert station.store.entries() == 2


def test_m05_store_full_and_store_failure(tmp_path: Path, root: Ca) -> None:
    station = make_station(tmp_path / "ocpp.db", tmp_path / "keys", max_entries=2)
    assert install(station, "CSMSRootCertificate", root.pem)["status"] == "Accepted"
    assert install(station, "V2GRootCertificate", root.pem)["status"] == "Accepted"
    full = install(station, "MORootCertificate", root.pem)
    assert full["status"] == "Rejected" and full["statusInfo"]["reasonCode"] == "OutOfStorage"

    db = open_db(tmp_path / "ocpp.db")
    roomy = Station(tmp_path / "ocpp.db", tmp_path / "keys",
                    CertificateStore(db, tmp_path / "keys", max_entries=10), station.security)
    db.execute("PRAGMA query_only=ON")  # the store can no longer write
    failed = install(roomy, "MORootCertificate", Ca.root("Another", now=NOW).pem)
    assert failed["status"] == "Failed" and failed["statusInfo"]["reasonCode"] == "InternalError"
    db.execute("PRAGMA query_only=OFF")
    assert db.execute("SELECT COUNT(*) FROM certificates_ca").fetchone()[0] == 2


def test_m03_lists_by_type_with_spec_hash_data(station: Station) -> None:
    csms = Ca.root("CSMS Root", now=NOW, serial=0x01AB)
    v2g = Ca.root("V2G Root", now=NOW)
    install(station, "CSMSRootCertificate", csms.pem)
    install(station, "V2GRootCertificate", v2g.pem)
    request = {"certificateType": ["CSMSRootCertificate"]}
    check("GetInstalledCertificateIdsRequest", request)
    response = station.store.get_installed_certificate_ids(request)
    check("GetInstalledCertificateIdsResponse", response)
    [entry] = response["certificateHashDataChain"]
    spki_bits = csms.cert.public_key().public_bytes(serialization.Encoding.X962,
                                                    serialization.PublicFormat.UncompressedPoint)
    assert entry == {"certificateType": "CSMSRootCertificate", "certificateHashData": {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": hashlib.sha256(csms.cert.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": hashlib.sha256(spki_bits).hexdigest(),
        "serialNumber": "1ab"}}

    everything = station.store.get_installed_certificate_ids({})
    check("GetInstalledCertificateIdsResponse", everything)
    assert {e["certificateType"] for e in everything["certificateHashDataChain"]} == \
        {"CSMSRootCertificate", "V2GRootCertificate"}
    none = station.store.get_installed_certificate_ids({"certificateType": ["MORootCertificate"]})
    check("GetInstalledCertificateIdsResponse", none)
    assert none == {"status": "NotFound"}


def test_m03_oem_root_is_not_shown_to_a_201_csms(station: Station, root: Ca) -> None:
    install(station, "OEMRootCertificate", root.pem, versions=("v21",))
    v21 = station.store.get_installed_certificate_ids({})
    check("GetInstalledCertificateIdsResponse", v21, ("v21",))
    assert v21["certificateHashDataChain"][0]["certificateType"] == "OEMRootCertificate"
    v201 = station.store.get_installed_certificate_ids({}, version="2.0.1")
    check("GetInstalledCertificateIdsResponse", v201)
    assert v201 == {"status": "NotFound"}


def test_m04_delete_accepted_notfound_and_failed(station: Station, root: Ca) -> None:
    other = Ca.root("Second CSMS Root", now=NOW, serial=0x0F)
    install(station, "CSMSRootCertificate", root.pem)
    install(station, "CSMSRootCertificate", other.pem)
    listed = station.store.get_installed_certificate_ids({})["certificateHashDataChain"]
    target = next(e["certificateHashData"] for e in listed
                  if e["certificateHashData"]["serialNumber"] == "f")
    # Hex compared without regard to case, the serial with leading zeroes too.
    shouty = {**target, "issuerNameHash": target["issuerNameHash"].upper(),
              "issuerKeyHash": target["issuerKeyHash"].upper(), "serialNumber": "000F"}
    request = {"certificateHashData": shouty}
    check("DeleteCertificateRequest", request)
    assert station.store.delete_certificate(request) == {"status": "Accepted"}
    not_found = station.store.delete_certificate(request)
    check("DeleteCertificateResponse", not_found)
    assert not_found == {"status": "NotFound"}
    tls = station.store.tls_material()
    assert tls.ca_file is not None and tls.ca_file.read_text() == root.pem

    [last] = station.store.get_installed_certificate_ids({})["certificateHashDataChain"]
    refused = station.store.delete_certificate({"certificateHashData": last["certificateHashData"]})
    check("DeleteCertificateResponse", refused)
    assert refused["status"] == "Failed"

    # M04.FR.06: the station's own certificate cannot be deleted.
    leaf_pem = root.sign_csr(new_csr(station), now=NOW)
    signed(station, leaf_pem)
    from firmware.ocpp.certificates import hash_data
    own = hash_data(x509.load_pem_x509_certificate(leaf_pem.encode()), root.cert)
    refused = station.store.delete_certificate({"certificateHashData": own})
    check("DeleteCertificateResponse", refused)
    assert refused["status"] == "Failed"
    assert station.store.station_chain(CS) is not None

    for algorithm in ("SHA384", "SHA512"):
        other_hash = hash_data(root.cert, root.cert, algorithm)
        assert station.store.delete_certificate({"certificateHashData": other_hash})["status"] \
            == "Failed"  # found with the CSMS's algorithm; the last CSMS root stays


def test_m04_delete_fails_when_the_store_cannot_be_written(tmp_path: Path, root: Ca) -> None:
    db = open_db(tmp_path / "ocpp.db")
    store = CertificateStore(db, tmp_path / "keys")
    station = Station(tmp_path / "ocpp.db", tmp_path / "keys", store, StationSecurity(store))
    install(station, "V2GRootCertificate", root.pem)
    [entry] = store.get_installed_certificate_ids({})["certificateHashDataChain"]
    db.execute("PRAGMA query_only=ON")
    response = store.delete_certificate({"certificateHashData": entry["certificateHashData"]})
    check("DeleteCertificateResponse", response)
    assert response["status"] == "Failed"
    assert response["statusInfo"]["reasonCode"] == "InternalError"
    db.execute("PRAGMA query_only=OFF")
    assert store.entries() == 1


def test_firmware_signer_verified_against_manufacturer_root(station: Station) -> None:
    maker = Ca.root("Manufacturer Root", now=NOW)
    sub = maker.sub_ca("Firmware Signing CA", now=NOW)
    signer = sub.leaf_for_key(ec.generate_private_key(ec.SECP256R1()), "fw-signer", now=NOW)
    assert not station.store.verify_firmware_signer(signer + sub.pem, NOW)
    install(station, "ManufacturerRootCertificate", maker.pem)
    assert station.store.verify_firmware_signer(signer + sub.pem, NOW)
    assert not station.store.verify_firmware_signer(signer, NOW)  # sub-CA missing
    assert not station.store.verify_firmware_signer(signer + sub.pem, NOW + 400 * DAY)
    assert not station.store.verify_firmware_signer("not a certificate", NOW)
    install(station, "CSMSRootCertificate", sub.pem)
    direct = sub.leaf_for_key(ec.generate_private_key(ec.SECP256R1()), "fw", now=NOW)
    assert not station.store.verify_firmware_signer(direct, NOW)  # a CSMS root is no signer root


def test_store_survives_reopen_and_drops_stray_keys(station: Station, root: Ca) -> None:
    install(station, "CSMSRootCertificate", root.pem)
    install(station, "V2GRootCertificate", root.pem)
    stray = station.keys / "key-crashed-before-commit.pem"
    stray.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    again = station.reopen()
    assert not stray.exists()
    assert again.store.entries() == 2
    assert again.store.get_installed_certificate_ids({}) == \
        station.store.get_installed_certificate_ids({})
    tls = again.store.tls_material()
    assert tls.ca_file is not None and tls.client_cert_file is None


# ---- private keys stay private (A02.FR.05) -------------------------------------------------


@contextlib.contextmanager
def captured_logs(level: int = logging.INFO) -> Iterator[io.StringIO]:
    """Our JSON log lines in a string; the logging setup as it was afterwards."""
    root_logger = logging.getLogger(logs.ROOT)
    saved = (list(root_logger.handlers), root_logger.level, root_logger.propagate)
    stream = io.StringIO()
    logs.setup(VirtualClock(), stream, level)
    try:
        yield stream
    finally:
        for handler in list(root_logger.handlers):
            root_logger.removeHandler(handler)
        for handler in saved[0]:
            root_logger.addHandler(handler)
        root_logger.setLevel(saved[1])
        root_logger.propagate = saved[2]


def test_private_key_never_in_payloads_or_logs(station: Station, root: Ca) -> None:
    with captured_logs(logging.DEBUG) as stream:
        produced: list[Any] = [install(station, "CSMSRootCertificate", root.pem)]
        produced.append(station.security.sign_certificate_request(CS, ID, ORG))
        produced.append(station.security.pending_sign_request(CS))
        produced.extend(signed(station, root.sign_csr(_current_csr(station), now=NOW)))
        produced.append(station.store.get_installed_certificate_ids({}))
        produced.append(signed(station, "junk")[0])
        produced.append(station.store.tls_material())
        log_security_event(SecurityEvent.INVALID_CHARGING_STATION_CERTIFICATE, NOW, "x")
    [key_file] = station.keys.glob("key-*.pem")
    secret_lines = [line for line in key_file.read_text().splitlines() if "-----" not in line]
    wire = json.dumps(produced, default=str) + stream.getvalue()
    assert "certificate_installed" in stream.getvalue()
    assert "PRIVATE KEY" not in wire
    for line in secret_lines:
        assert line not in wire


# ---- A04 security events -------------------------------------------------------------------


def test_a04_every_event_is_a_valid_notification() -> None:
    names = {kind.value for kind in SecurityEvent}
    assert {"FirmwareUpdated", "FailedToAuthenticateAtCsms", "CsmsFailedToAuthenticate",
            "SettingSystemTime", "StartupOfTheDevice", "ResetOrReboot", "SecurityLogWasCleared",
            "ReconfigurationOfSecurityParameters", "MemoryExhaustion", "InvalidMessages",
            "AttemptedReplayAttacks", "TamperDetectionActivated", "InvalidFirmwareSignature",
            "InvalidFirmwareSigningCertificate", "InvalidCsmsCertificate",
            "InvalidChargingStationCertificate", "InvalidTLSVersion",
            "InvalidTLSCipherSuite"} <= names
    for kind in SecurityEvent:
        payload = security_event_notification(kind, NOW + 0.25, "é" * 300)
        check("SecurityEventNotificationRequest", payload)
        assert payload["type"] == kind.value
        assert payload["timestamp"] == "2026-01-01T00:00:00.250Z"
        assert len(payload["techInfo"]) == 255
    assert "techInfo" not in security_event_notification(SecurityEvent.RESET_OR_REBOOT, NOW)


def test_a04_criticality_follows_the_appendix() -> None:
    assert is_critical(SecurityEvent.STARTUP_OF_THE_DEVICE)
    assert is_critical(SecurityEvent.INVALID_CHARGING_STATION_CERTIFICATE)
    assert is_critical(SecurityEvent.TAMPER_DETECTION_ACTIVATED)
    assert not is_critical(SecurityEvent.INVALID_MESSAGES)
    assert not is_critical(SecurityEvent.FAILED_TO_AUTHENTICATE_AT_CSMS)
    assert len(CRITICAL_EVENTS) == len(SecurityEvent) - 5


def test_a04_security_log_line() -> None:
    with captured_logs() as stream:
        log_security_event(SecurityEvent.INVALID_MESSAGES, NOW, "bad frame")
    line = json.loads(stream.getvalue())
    assert line["logger"] == "voltpilot.ocpp.security_log"
    assert (line["type"], line["critical"], line["tech_info"]) == \
        ("InvalidMessages", False, "bad frame")


# ---- A02.FR.17-.19 resend rule, A03 renewal, A05 profiles ----------------------------------


def test_sign_certificate_resend_doubles_then_stops() -> None:
    retry = SignRetry(sent_at=100.0)
    times = []
    while (due := next_resend_at(retry, wait_minimum=60, repeat_times=3)) is not None:
        times.append(due)
        retry = resent(retry, due)
    assert times == [160.0, 280.0, 520.0]
    assert next_resend_at(SignRetry(0.0), wait_minimum=0, repeat_times=3) is None
    assert next_resend_at(SignRetry(0.0), wait_minimum=60, repeat_times=0) is None


@given(st.floats(0, 1e9), st.integers(1, 3600), st.integers(0, 10))
def test_resend_waits_grow_and_are_bounded(start: float, wait: int, repeat: int) -> None:
    retry, gaps = SignRetry(start), []
    while (due := next_resend_at(retry, wait_minimum=wait, repeat_times=repeat)) is not None:
        gaps.append(due - retry.sent_at)
        retry = resent(retry, due)
    assert len(gaps) == repeat
    assert all(b == pytest.approx(2 * a) for a, b in itertools.pairwise(gaps))


def test_a03_renewal_due_a_month_before_expiry(station: Station, root: Ca) -> None:
    install(station, "CSMSRootCertificate", root.pem)
    signed(station, root.sign_csr(new_csr(station), now=NOW, days=60))
    expiry = station.store.station_certificate_expiry()
    assert expiry is not None
    assert not renewal_due(expiry, NOW)
    assert renewal_due(expiry, expiry - 29 * DAY)


@pytest.mark.parametrize(("current", "requested", "downgrade", "expected"), [
    (1, 2, False, ProfileChange.ACCEPTED),
    (2, 3, False, ProfileChange.ACCEPTED),
    (3, 2, False, ProfileChange.NO_SECURITY_DOWNGRADE),
    (3, 2, True, ProfileChange.ACCEPTED),
    (3, 1, True, ProfileChange.NO_SECURITY_DOWNGRADE),
    (2, 1, True, ProfileChange.NO_SECURITY_DOWNGRADE),
])
def test_a05_downgrade_rules(current: int, requested: int, downgrade: bool,
                             expected: ProfileChange) -> None:
    assert check_security_profile(current=current, requested=requested,
                                  allow_downgrade=downgrade, basic_auth_password_set=True,
                                  csms_root_installed=True,
                                  client_certificate_valid=True) is expected


def test_a05_prerequisites_from_the_store(station: Station, root: Ca) -> None:
    def change(requested: int, password: bool = True) -> ProfileChange:
        return station.security.check_security_profile(
            current=1, requested=requested, allow_downgrade=False,
            basic_auth_password_set=password, now=NOW)

    assert change(2, password=False) is ProfileChange.NO_BASIC_AUTH_PASSWORD
    assert change(2) is ProfileChange.NO_CSMS_ROOT
    install(station, "CSMSRootCertificate", root.pem)
    assert change(2) is ProfileChange.ACCEPTED
    assert change(3, password=False) is ProfileChange.NO_CLIENT_CERTIFICATE
    signed(station, root.sign_csr(new_csr(station), now=NOW))
    assert change(3, password=False) is ProfileChange.ACCEPTED
    assert ProfileChange.NO_SECURITY_DOWNGRADE.reason_code == "NoSecurityDowngrade"
