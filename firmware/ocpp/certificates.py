"""The station's certificate and key store.

Holds three things, indexed in the OCPP SQLite store (tables ``certificates_*``) with the PEM
files in one keys directory (mode 0700):

- CA certificates by type, managed by the CSMS with InstallCertificate, GetInstalledCertificateIds
  and DeleteCertificate (use cases M05, M03, M04; OEMRootCertificate is 2.1 only);
- the station's own certificates (ChargingStationCertificate for the CSMS connection, V2G and
  2.1 V2G20 for ISO 15118), each with its private key, an ``active`` one and a ``fallback`` one
  that is kept while a renewed certificate is being tried (A02.FR.08/.10/.28);
- the pending private key of each certificate signing request (A02/A03) until the matching
  certificate arrives or a newer request replaces it.

This module is the key store: private keys are generated in security.py, handed here once, and
written atomically with mode 0600. They are never logged and never part of a payload; the only
thing that leaves this module is the key file's path, for the TLS layer (A02.FR.05).

Switch-over of the ChargingStationCertificate: an accepted certificate becomes ``active`` at once
and the previous one becomes ``fallback``; ``tls_material()`` serves the active one, so the
reconnect the station makes after an Accepted CertificateSigned uses it (A02.FR.08). Once a
connection with it succeeds the station calls ``confirm_station_certificate()`` and the fallback
is discarded (A02.FR.10); if no connection succeeds with it, ``revert_station_certificate()``
restores the previous certificate and discards the new one (A02.FR.28; the station then reports
DiscardedRenewedClientCertificate, A02.FR.29). ``tls_material(fallback=True)`` serves the previous
certificate for a station that alternates between the two while reconnecting (B10.FR.08).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509 import ocsp

from firmware import logs
from firmware.ocpp.db import transaction
from hal.clock import utc

log = logs.get("ocpp.certificates")

Payload = dict[str, Any]

# SecurityCtrlr.CertificateEntries has no standard maxLimit; a small station stores a handful of
# roots per type, and the limit keeps a misbehaving CSMS from filling the flash.
DEFAULT_MAX_ENTRIES = 50

# GetInstalledCertificateIds: at most 4 childCertificateHashData per chain (schema maxItems).
MAX_CHILDREN = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates_ca (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    fingerprint TEXT NOT NULL,      -- SHA-256 of the DER: the same certificate twice is one entry
    pem TEXT NOT NULL,
    UNIQUE (type, fingerprint)
);
CREATE TABLE IF NOT EXISTS certificates_station (
    use TEXT NOT NULL,              -- CertificateSigningUseEnumType
    slot TEXT NOT NULL,             -- 'active' or 'fallback'
    chain_pem TEXT NOT NULL,        -- leaf first, then the sub-CAs as the CSMS sent them
    key_file TEXT NOT NULL,         -- file name in the keys directory
    PRIMARY KEY (use, slot)
);
CREATE TABLE IF NOT EXISTS certificates_pending (
    use TEXT PRIMARY KEY,
    key_file TEXT NOT NULL,
    public_key BLOB NOT NULL,       -- SubjectPublicKeyInfo DER, to match the signed certificate
    request TEXT NOT NULL           -- the SignCertificateRequest payload (JSON), for resends
);
"""

_KEY_PREFIX = "key-"


class CertificateType(Enum):
    """GetCertificateIdUseEnumType (InstallCertificateUseEnumType is the same minus the chain)."""

    V2G_ROOT = "V2GRootCertificate"
    MO_ROOT = "MORootCertificate"
    CSMS_ROOT = "CSMSRootCertificate"
    MANUFACTURER_ROOT = "ManufacturerRootCertificate"
    OEM_ROOT = "OEMRootCertificate"
    V2G_CHAIN = "V2GCertificateChain"


# What a 2.0.1 connection may see: OEMRootCertificate is new in 2.1.
_TYPES_201 = frozenset(CertificateType) - {CertificateType.OEM_ROOT}


class CertificateUse(Enum):
    """CertificateSigningUseEnumType: which of the station's own certificates."""

    CHARGING_STATION = "ChargingStationCertificate"
    V2G = "V2GCertificate"
    V2G20 = "V2G20Certificate"


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Files for the CSMS connection: CA bundle to verify the CSMS, client certificate chain and
    its key for security profile 3. None where the store has nothing to offer."""

    ca_file: Path | None
    client_cert_file: Path | None
    client_key_file: Path | None


@dataclass(frozen=True, slots=True)
class PendingRequest:
    use: CertificateUse
    public_key: bytes               # SubjectPublicKeyInfo, DER
    request: Payload


@dataclass(frozen=True, slots=True)
class _Installed:
    """One certificate the CSMS can list and delete."""

    type: CertificateType | None    # None: the ChargingStationCertificate, which is not listed
    cert: x509.Certificate
    issuer: x509.Certificate
    children: tuple[tuple[x509.Certificate, x509.Certificate], ...]
    ca_id: int | None               # row in certificates_ca, None for a station certificate
    use: CertificateUse | None
    slot: str | None

    @property
    def label(self) -> str:
        if self.type is not None:
            return self.type.value
        assert self.use is not None
        return self.use.value


class CertificateStore:
    """CA certificates, station certificates, their keys, and the TLS files (see module doc)."""

    def __init__(self, db: sqlite3.Connection, keys_dir: Path, *,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._db = db
        self.keys_dir = keys_dir
        self.max_entries = max_entries
        keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        db.executescript(_SCHEMA)
        self._remove_unreferenced_keys()

    # ---- M05 InstallCertificate ----------------------------------------------------------

    def install_certificate(self, payload: Payload, now: float) -> Payload:
        """InstallCertificateResponse for a (schema-valid) InstallCertificateRequest."""
        kind = CertificateType(payload["certificateType"])
        try:
            certs = x509.load_pem_x509_certificates(payload["certificate"].encode())
        except ValueError:
            return _status("Rejected", "InvalidCertificate", "not a PEM X.509 certificate")
        if len(certs) != 1:
            # One root per request: a bundle would install CAs the CSMS never names one by one.
            return _status("Rejected", "InvalidCertificate", "expected exactly one certificate")
        cert = certs[0]
        problem = _ca_problem(cert, now)
        if problem is not None:
            return _status("Rejected", "InvalidCertificate", problem)
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        try:
            exists = self._db.execute(
                "SELECT 1 FROM certificates_ca WHERE type=? AND fingerprint=?",
                (kind.value, fingerprint)).fetchone()
            if exists:
                return _status("Accepted")
            if self.entries() >= self.max_entries:
                return _status("Rejected", "OutOfStorage",
                               f"store holds {self.max_entries} certificates")
            with transaction(self._db):
                self._db.execute(
                    "INSERT INTO certificates_ca (type, fingerprint, pem) VALUES (?, ?, ?)",
                    (kind.value, fingerprint, _pem(cert)))
                if kind is CertificateType.CSMS_ROOT:
                    self._write_ca_bundle()
        except (sqlite3.Error, OSError) as exc:
            logs.log(log, "certificate_install_failed", logging.ERROR, type=kind.value,
                     error=type(exc).__name__)
            return _status("Failed", "InternalError", "could not store the certificate")
        logs.log(log, "certificate_installed", type=kind.value,
                 subject=cert.subject.rfc4514_string(), serial=_serial(cert))
        return _status("Accepted")

    # ---- M03 GetInstalledCertificateIds --------------------------------------------------

    def get_installed_certificate_ids(self, payload: Payload, *, version: str = "2.1") -> Payload:
        """GetInstalledCertificateIdsResponse; ``version`` is the connection's ("2.0.1" or "2.1"),
        so a 2.0.1 CSMS is never shown a type its schema does not know."""
        allowed = frozenset(CertificateType) if version == "2.1" else _TYPES_201
        wanted = (frozenset(CertificateType(t) for t in payload["certificateType"])
                  if payload.get("certificateType") else allowed) & allowed
        chains = [_hash_chain(item) for item in self._installed() if item.type in wanted]
        if not chains:
            return {"status": "NotFound"}
        return {"status": "Accepted", "certificateHashDataChain": chains}

    # ---- M04 DeleteCertificate -----------------------------------------------------------

    def delete_certificate(self, payload: Payload) -> Payload:
        """DeleteCertificateResponse: Accepted, NotFound, or Failed when the certificate must stay
        (the station's own certificate, the last CSMS root) or the store cannot be written."""
        wanted = payload["certificateHashData"]
        match = next((item for item in self._installed()
                      if _matches(item.cert, item.issuer, wanted)), None)
        if match is None:
            return _status("NotFound")
        refusal = self._refusal(match)
        if refusal is not None:
            return _status("Failed", "InvalidValue", refusal)
        try:
            self._delete(match)
        except (sqlite3.Error, OSError) as exc:
            logs.log(log, "certificate_delete_failed", logging.ERROR, certificate=match.label,
                     error=type(exc).__name__)
            return _status("Failed", "InternalError", "could not delete the certificate")
        logs.log(log, "certificate_deleted", certificate=match.label,
                 subject=match.cert.subject.rfc4514_string(), serial=_serial(match.cert))
        return _status("Accepted")

    def _refusal(self, item: _Installed) -> str | None:
        """Why ``item`` must stay installed, or None."""
        if item.use is CertificateUse.CHARGING_STATION:
            # M04.FR.06: the CSMS cannot delete the certificate the station authenticates with.
            return "the ChargingStationCertificate cannot be deleted"
        if item.type is CertificateType.CSMS_ROOT and len(self.roots(item.type)) == 1:
            # Without a CSMS root a station on profile 2 or 3 can never reconnect to be given a
            # new one (the 1.6 security whitepaper's M04.FR.06 makes the same rule).
            return "the last CSMSRootCertificate cannot be deleted"
        return None

    def _delete(self, item: _Installed) -> None:
        if item.ca_id is None:
            assert item.use is not None and item.slot is not None
            self._delete_station(item.use, item.slot)
            return
        with transaction(self._db):
            self._db.execute("DELETE FROM certificates_ca WHERE id=?", (item.ca_id,))
            if item.type is CertificateType.CSMS_ROOT:
                self._write_ca_bundle()

    def _delete_station(self, use: CertificateUse, slot: str) -> None:
        self._db.execute("DELETE FROM certificates_station WHERE use=? AND slot=?",
                         (use.value, slot))
        self._station_changed(use)

    def _station_changed(self, use: CertificateUse) -> None:
        self._remove_unreferenced_keys()
        if use is CertificateUse.CHARGING_STATION:
            self._write_client_chain()

    # ---- SecurityCtrlr.CertificateEntries and queries for security.py --------------------

    def entries(self) -> int:
        """SecurityCtrlr.CertificateEntries: CA certificates plus the station's active ones."""
        ca = self._db.execute("SELECT COUNT(*) FROM certificates_ca").fetchone()[0]
        own = self._db.execute(
            "SELECT COUNT(*) FROM certificates_station WHERE slot='active'").fetchone()[0]
        return int(ca) + int(own)

    def roots(self, kind: CertificateType) -> list[x509.Certificate]:
        rows = self._db.execute("SELECT pem FROM certificates_ca WHERE type=? ORDER BY id",
                                (kind.value,)).fetchall()
        return [x509.load_pem_x509_certificate(row[0].encode()) for row in rows]

    def has_valid_root(self, kind: CertificateType, now: float) -> bool:
        return any(valid_at(cert, now) for cert in self.roots(kind))

    def station_chain(self, use: CertificateUse, *, fallback: bool = False,
                      ) -> list[x509.Certificate] | None:
        row = self._station_row(use, "fallback" if fallback else "active")
        return None if row is None else x509.load_pem_x509_certificates(row[0].encode())

    def root_of(self, chain: Sequence[x509.Certificate], kind: CertificateType,
                ) -> x509.Certificate | None:
        """The installed root of ``kind`` that anchors ``chain`` (leaf first), if any."""
        top = chain[-1]
        for root in self.roots(kind):
            if root == top or issued_by(top, root):
                return root
        return None

    def verify_firmware_signer(self, certificate_pem: str, now: float) -> bool:
        """L01: the firmware signing certificate (leaf first, optionally with its sub-CAs) is
        valid at ``now`` and chains up to an installed ManufacturerRootCertificate."""
        try:
            chain = x509.load_pem_x509_certificates(certificate_pem.encode())
        except ValueError:
            return False
        if not all(valid_at(cert, now) for cert in chain):
            return False
        if not all(issued_by(cert, issuer) and is_ca(issuer)
                   for cert, issuer in itertools.pairwise(chain)):
            return False
        root = self.root_of(chain, CertificateType.MANUFACTURER_ROOT)
        return root is not None and valid_at(root, now)

    # ---- pending keys and the station's own certificates (A02/A03) ------------------------

    def put_pending(self, use: CertificateUse, key: PrivateKeyTypes, request: Payload) -> None:
        """Keep ``key`` (the private half of a CSR just made) until its certificate arrives; it
        replaces an older pending key of the same use (A02.FR.02: a new key per request)."""
        key_file = self._write_key(key)
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        self._db.execute(
            "INSERT OR REPLACE INTO certificates_pending (use, key_file, public_key, request) "
            "VALUES (?, ?, ?, ?)", (use.value, key_file, public, json.dumps(request)))
        self._remove_unreferenced_keys()

    def pending(self, use: CertificateUse) -> PendingRequest | None:
        row = self._db.execute(
            "SELECT public_key, request FROM certificates_pending WHERE use=?",
            (use.value,)).fetchone()
        if row is None:
            return None
        return PendingRequest(use, bytes(row[0]), json.loads(row[1]))

    def pending_uses(self) -> list[CertificateUse]:
        rows = self._db.execute("SELECT use FROM certificates_pending ORDER BY use").fetchall()
        return [CertificateUse(row[0]) for row in rows]

    def activate(self, use: CertificateUse, chain: Sequence[x509.Certificate]) -> None:
        """Install ``chain`` (leaf first, already validated) with the pending key of ``use`` as
        the active certificate; the active one so far becomes the fallback."""
        chain_pem = "".join(_pem(cert) for cert in chain)
        with transaction(self._db):
            row = self._db.execute("SELECT key_file FROM certificates_pending WHERE use=?",
                                   (use.value,)).fetchone()
            if row is None:
                raise LookupError(f"no pending key for {use.value}")
            self._db.execute("DELETE FROM certificates_station WHERE use=? AND slot='fallback'",
                             (use.value,))
            self._db.execute("UPDATE certificates_station SET slot='fallback' "
                             "WHERE use=? AND slot='active'", (use.value,))
            self._db.execute(
                "INSERT INTO certificates_station (use, slot, chain_pem, key_file) "
                "VALUES (?, 'active', ?, ?)", (use.value, chain_pem, row[0]))
            self._db.execute("DELETE FROM certificates_pending WHERE use=?", (use.value,))
        self._station_changed(use)
        logs.log(log, "station_certificate_installed", use=use.value,
                 subject=chain[0].subject.rfc4514_string(), serial=_serial(chain[0]))

    def confirm_station_certificate(self, use: CertificateUse = CertificateUse.CHARGING_STATION,
                                    ) -> None:
        """A connection with the active certificate worked: discard the fallback (A02.FR.10)."""
        self._delete_station(use, "fallback")

    def revert_station_certificate(self, use: CertificateUse = CertificateUse.CHARGING_STATION,
                                   ) -> bool:
        """No connection worked with the renewed certificate: discard it and make the fallback
        active again (A02.FR.28). False when there is no fallback to return to."""
        if self._station_row(use, "fallback") is None:
            return False
        with transaction(self._db):
            self._db.execute("DELETE FROM certificates_station WHERE use=? AND slot='active'",
                             (use.value,))
            self._db.execute("UPDATE certificates_station SET slot='active' "
                             "WHERE use=? AND slot='fallback'", (use.value,))
        self._station_changed(use)
        logs.log(log, "station_certificate_reverted", use=use.value)
        return True

    def station_certificate_expiry(self, use: CertificateUse = CertificateUse.CHARGING_STATION,
                                   ) -> float | None:
        """notAfter of the active certificate (seconds since the epoch), for A03 renewal."""
        chain = self.station_chain(use)
        return None if chain is None else chain[0].not_valid_after_utc.timestamp()

    # ---- TLS files -----------------------------------------------------------------------

    def tls_material(self, *, fallback: bool = False) -> TlsMaterial:
        """The files the CSMS connection needs, (re)written atomically when their content
        changed. ``fallback`` serves the previous client certificate, if one is kept."""
        ca_file = self._write_ca_bundle()
        slot = "fallback" if fallback else "active"
        row = self._station_row(CertificateUse.CHARGING_STATION, slot)
        if row is None:
            return TlsMaterial(ca_file, None, None)
        cert_file = self._write_if_changed(f"station-cert-{slot}.pem", row[0].encode(), 0o644)
        return TlsMaterial(ca_file, cert_file, self.keys_dir / row[1])

    def _write_ca_bundle(self) -> Path | None:
        roots = self.roots(CertificateType.CSMS_ROOT)
        path = self.keys_dir / "csms-roots.pem"
        if not roots:
            path.unlink(missing_ok=True)
            return None
        return self._write_if_changed(path.name, "".join(_pem(c) for c in roots).encode(), 0o644)

    def _write_client_chain(self) -> None:
        for slot in ("active", "fallback"):
            row = self._station_row(CertificateUse.CHARGING_STATION, slot)
            if row is None:
                (self.keys_dir / f"station-cert-{slot}.pem").unlink(missing_ok=True)
            else:
                self._write_if_changed(f"station-cert-{slot}.pem", row[0].encode(), 0o644)

    def _write_if_changed(self, name: str, data: bytes, mode: int) -> Path:
        path = self.keys_dir / name
        try:
            if path.read_bytes() == data:
                return path
        except FileNotFoundError:
            pass
        _atomic_write(path, data, mode)
        return path

    # ---- internals -----------------------------------------------------------------------

    def _station_row(self, use: CertificateUse, slot: str) -> tuple[str, str] | None:
        row = self._db.execute(
            "SELECT chain_pem, key_file FROM certificates_station WHERE use=? AND slot=?",
            (use.value, slot)).fetchone()
        return None if row is None else (row[0], row[1])

    def _write_key(self, key: PrivateKeyTypes) -> str:
        name = f"{_KEY_PREFIX}{uuid.uuid4().hex}.pem"
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        _atomic_write(self.keys_dir / name, data, 0o600)
        return name

    def _remove_unreferenced_keys(self) -> None:
        """Delete key files no row refers to: replaced requests, discarded certificates, and a
        file written just before a crash that kept its row from being committed."""
        referenced = {row[0] for row in self._db.execute(
            "SELECT key_file FROM certificates_station UNION SELECT key_file "
            "FROM certificates_pending")}
        for path in self.keys_dir.glob(f"{_KEY_PREFIX}*.pem"):
            if path.name not in referenced:
                path.unlink(missing_ok=True)

    def _installed(self) -> list[_Installed]:
        cas = [(row[0], CertificateType(row[1]), x509.load_pem_x509_certificate(row[2].encode()))
               for row in self._db.execute(
                   "SELECT id, type, pem FROM certificates_ca ORDER BY id")]
        every_ca = [cert for _, _, cert in cas]
        items = [_Installed(kind, cert, _issuer_of(cert, every_ca), (), ca_id, None, None)
                 for ca_id, kind, cert in cas]
        rows = self._db.execute(
            "SELECT use, slot, chain_pem FROM certificates_station ORDER BY use, slot")
        for use_text, slot, chain_pem in rows:
            use = CertificateUse(use_text)
            chain = x509.load_pem_x509_certificates(chain_pem.encode())
            pool = chain[1:] + every_ca
            # The ChargingStationCertificate has no GetCertificateIdUse type: it is never listed,
            # only matched by DeleteCertificate (to refuse it). V2G ones list as chains (M03).
            kind = None if use is CertificateUse.CHARGING_STATION else CertificateType.V2G_CHAIN
            subs = tuple((c, _issuer_of(c, pool)) for c in chain[1:] if not _self_signed(c))
            items.append(_Installed(kind, chain[0], _issuer_of(chain[0], pool),
                                    subs[:MAX_CHILDREN], None, use, slot))
        return items


def _status(status: str, reason: str | None = None, info: str | None = None) -> Payload:
    out: Payload = {"status": status}
    if reason is not None:
        out["statusInfo"] = {"reasonCode": reason}
        if info:
            out["statusInfo"]["additionalInfo"] = info[:512]
    return out


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _serial(cert: x509.Certificate) -> str:
    # CertificateHashDataType.serialNumber: hexadecimal, no "0x", no leading zeroes.
    return format(cert.serial_number, "x")


def valid_at(cert: x509.Certificate, now: float) -> bool:
    t = utc(now)
    return cert.not_valid_before_utc <= t <= cert.not_valid_after_utc


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and issued_by(cert, cert)


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s subject names ``cert``'s issuer and its key signed ``cert``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _ca_problem(cert: x509.Certificate, now: float) -> str | None:
    """Why ``cert`` cannot be installed as a CA certificate (M05), or None."""
    if not is_ca(cert):
        return "not a CA certificate"
    if cert.not_valid_after_utc < utc(now):
        return "expired"
    if cert.not_valid_before_utc > utc(now):
        return "not yet valid"
    if cert.issuer == cert.subject and not issued_by(cert, cert):
        return "self-signed certificate with a bad signature"
    return None


def _issuer_of(cert: x509.Certificate, pool: Iterable[x509.Certificate]) -> x509.Certificate:
    """The certificate whose key signed ``cert``: itself for a root; for a sub-CA whose issuer the
    store does not hold, itself too, which still gives the CSMS a stable id to delete it by."""
    if cert.issuer != cert.subject:
        for candidate in pool:
            if candidate.subject == cert.issuer and issued_by(cert, candidate):
                return candidate
    return cert


_HASHES: dict[str, hashes.HashAlgorithm] = {
    "SHA256": hashes.SHA256(), "SHA384": hashes.SHA384(), "SHA512": hashes.SHA512()}


def hash_data(cert: x509.Certificate, issuer: x509.Certificate,
              algorithm: str = "SHA256") -> Payload:
    """CertificateHashDataType of ``cert``: the hashes of an OCSP CertID (RFC 6960), which is what
    OCPP defines: issuer DN as DER, and the issuer's subjectPublicKey bits."""
    request = ocsp.OCSPRequestBuilder().add_certificate(
        cert, issuer, _HASHES[algorithm]).build()
    return {"hashAlgorithm": algorithm,
            "issuerNameHash": request.issuer_name_hash.hex(),
            "issuerKeyHash": request.issuer_key_hash.hex(),
            "serialNumber": _serial(cert)}


def _hash_chain(item: _Installed) -> Payload:
    assert item.type is not None
    out: Payload = {"certificateType": item.type.value,
                    "certificateHashData": hash_data(item.cert, item.issuer)}
    if item.children:
        out["childCertificateHashData"] = [hash_data(c, i) for c, i in item.children]
    return out


def _matches(cert: x509.Certificate, issuer: x509.Certificate, wanted: Payload) -> bool:
    """DeleteCertificate matching: computed with the algorithm the CSMS used; hex compared
    without regard to case, the serial also without leading zeroes."""
    ours = hash_data(cert, issuer, wanted["hashAlgorithm"])
    return bool(ours["issuerNameHash"] == wanted["issuerNameHash"].lower()
            and ours["issuerKeyHash"] == wanted["issuerKeyHash"].lower()
            and ours["serialNumber"] == (wanted["serialNumber"].lower().lstrip("0") or "0"))


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` so that a reader or a crash sees the old or the new content,
    never a mix; the file has ``mode`` from its creation on (mkstemp makes it 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
