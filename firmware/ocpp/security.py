"""The station's side of OCPP security: its key pairs and certificate signing requests (A02, A03),
the checks on a CertificateSigned (A02.FR.06/.07), the SignCertificate resend rule
(A02.FR.17-.19), security events (A04) and the prerequisites of a security profile change (A05).

Keys are generated here, on the device, and handed straight to the key store in certificates.py,
which alone writes and reads them (A02.FR.02, A02.FR.05). Nothing this module returns contains a
private key. The decisions (chain checks, retry timing, profile checks, event payloads) are pure
functions of their inputs and ``now``; ``StationSecurity`` adds the store around them.

The certificate hierarchy a signed certificate must chain up to: a ChargingStationCertificate is
part of the CSO's hierarchy, whose root the station holds as a CSMSRootCertificate (the same root
that verifies the CSMS server); a V2GCertificate (2.1: also V2G20Certificate) chains to a
V2GRootCertificate. A ManufacturerRootCertificate verifies firmware signatures only (L01).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from firmware import logs
from firmware.ocpp.certificates import (
    CertificateStore,
    CertificateType,
    CertificateUse,
    hash_data,
    is_ca,
    issued_by,
    valid_at,
)
from hal.clock import iso, utc

log = logs.get("ocpp.security")
# The security log (A04.FR.04): every security event, critical or not, as its own logger so a
# GetLog of type SecurityLog can select these lines.
security_log = logs.get("ocpp.security_log")

Payload = dict[str, Any]

# SecurityEventNotificationRequest.techInfo maxLength.
TECH_INFO_MAX = 255
# A03.FR.02: renew the station certificate when it expires within a month.
RENEWAL_MARGIN_S = 30 * 86400


class KeyAlgorithm(Enum):
    """Key types for the station's own key pairs: both meet the spec's Certificate Properties
    (RSA at least 2048 bits, EC at least 224 bits); P-256 is the default, small and fast on the
    device and the curve ISO 15118 uses."""

    EC_P256 = "EC-P256"
    RSA_2048 = "RSA-2048"


def generate_key(algorithm: KeyAlgorithm) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if algorithm is KeyAlgorithm.RSA_2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def anchor_type(use: CertificateUse) -> CertificateType:
    """The type of installed root a signed certificate of ``use`` must chain up to."""
    if use is CertificateUse.CHARGING_STATION:
        return CertificateType.CSMS_ROOT
    return CertificateType.V2G_ROOT


def build_csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, *, identity: str,
              organization: str, use: CertificateUse, country: str | None = None) -> str:
    """A PEM CSR (RFC 2986, A02.FR.03) with CN = ``identity`` (the station's serial, A00.FR.405;
    for a V2G certificate the SECC id) and O = ``organization`` (SecurityCtrlr.OrganizationName,
    A00.FR.404; for V2G ISO15118Ctrlr.OrganizationName). ISO 15118 SECC certificates also carry
    DC=CPO and the country."""
    names = [x509.NameAttribute(NameOID.COMMON_NAME, identity),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    if country:
        names.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    if use is not CertificateUse.CHARGING_STATION:
        names.append(x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "CPO"))
    is_ec = isinstance(key, ec.EllipticCurvePrivateKey)
    usage = x509.KeyUsage(digital_signature=True, key_agreement=is_ec,
                          key_encipherment=not is_ec, content_commitment=False,
                          data_encipherment=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name(names))
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .add_extension(usage, critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


# ---- CertificateSigned ---------------------------------------------------------------------


class Rejection(Enum):
    """Why a CertificateSigned was rejected (the text goes to additionalInfo and techInfo)."""

    CHAIN_TOO_LARGE = "certificateChain larger than MaxCertificateChainSize"
    NOT_PEM = "certificateChain is not a PEM X.509 chain"
    NO_PENDING_REQUEST = "no certificate signing request is pending"
    KEY_MISMATCH = "certificate key does not match the pending request"
    TYPE_MISMATCH = "certificateType does not match the pending request"
    NOT_YET_VALID = "certificate is not valid yet"
    EXPIRED = "certificate has expired"
    WRONG_IDENTITY = "certificate commonName is not this station"
    LEAF_IS_CA = "leaf certificate is a CA certificate"
    BROKEN_CHAIN = "certificate chain does not verify"
    UNTRUSTED_ROOT = "certificate chain does not lead to an installed root"
    STORE_FAILED = "certificate could not be stored"

    @property
    def reason_code(self) -> str:
        if self is Rejection.CHAIN_TOO_LARGE:
            return "TooLargeElement"
        if self is Rejection.STORE_FAILED:
            return "InternalError"
        return "InvalidCertificate"


@dataclass(frozen=True, slots=True)
class SignedOutcome:
    """What a CertificateSigned led to, beyond the response: whether to reconnect with the new
    certificate (A02.FR.08) and which security event to raise (A02.FR.07)."""

    use: CertificateUse | None
    rejection: Rejection | None = None

    @property
    def accepted(self) -> bool:
        return self.rejection is None

    @property
    def reconnect(self) -> bool:
        return self.accepted and self.use is CertificateUse.CHARGING_STATION

    @property
    def event(self) -> SecurityEvent | None:
        if self.rejection is None or self.rejection is Rejection.STORE_FAILED:
            return None
        return SecurityEvent.INVALID_CHARGING_STATION_CERTIFICATE

    @property
    def tech_info(self) -> str | None:
        return None if self.rejection is None else self.rejection.value


def check_chain(chain: Sequence[x509.Certificate], *, identity: str, now: float,
                roots: Sequence[x509.Certificate]) -> Rejection | None:
    """A02.FR.06: the leaf is valid now (a validity that starts in the future is rejected too,
    errata 2025-01), its CN is this station (A00.FR.405), and every certificate is signed by the
    next, up to one of ``roots`` (or ending in one of them), every CA in between valid now."""
    leaf = chain[0]
    t = utc(now)
    if leaf.not_valid_before_utc > t:
        return Rejection.NOT_YET_VALID
    if leaf.not_valid_after_utc < t:
        return Rejection.EXPIRED
    common_names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in common_names] != [identity]:
        return Rejection.WRONG_IDENTITY
    if is_ca(leaf):
        return Rejection.LEAF_IS_CA
    for cert, issuer in itertools.pairwise(chain):
        if not (issued_by(cert, issuer) and is_ca(issuer) and valid_at(issuer, now)):
            return Rejection.BROKEN_CHAIN
    top = chain[-1]
    if any(root == top or (issued_by(top, root) and valid_at(root, now)) for root in roots):
        return None
    return Rejection.UNTRUSTED_ROOT


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


# ---- SignCertificate resends (A02.FR.17-.19, A03.FR.17-.19) --------------------------------


@dataclass(frozen=True, slots=True)
class SignRetry:
    """A SignCertificateRequest the CSMS accepted and has not answered with a certificate yet:
    when it was last sent and how often it has been resent."""

    sent_at: float
    resends: int = 0


def next_resend_at(retry: SignRetry, *, wait_minimum: float, repeat_times: int) -> float | None:
    """When to send the request again: CertSigningWaitMinimum after the first send, doubling
    after each resend, at most CertSigningRepeatTimes resends; None when there is nothing left
    to do (only a new TriggerMessage starts over)."""
    if wait_minimum <= 0 or retry.resends >= repeat_times:
        return None
    return retry.sent_at + wait_minimum * (1 << retry.resends)


def resent(retry: SignRetry, now: float) -> SignRetry:
    return SignRetry(sent_at=now, resends=retry.resends + 1)


def renewal_due(not_after: float, now: float, *, margin_s: float = RENEWAL_MARGIN_S) -> bool:
    """A03.FR.02: the station certificate expires within a month, time to request a new one."""
    return not_after - now <= margin_s


# ---- Security events (A04) -----------------------------------------------------------------


class SecurityEvent(Enum):
    """The Security Events appendix (2.0.1 appendix 1, v1.3; 2.1 adds
    DiscardedRenewedClientCertificate). The value is the ``type`` string on the wire."""

    FIRMWARE_UPDATED = "FirmwareUpdated"
    FAILED_TO_AUTHENTICATE_AT_CSMS = "FailedToAuthenticateAtCsms"
    CSMS_FAILED_TO_AUTHENTICATE = "CsmsFailedToAuthenticate"
    SETTING_SYSTEM_TIME = "SettingSystemTime"
    STARTUP_OF_THE_DEVICE = "StartupOfTheDevice"
    RESET_OR_REBOOT = "ResetOrReboot"
    SECURITY_LOG_WAS_CLEARED = "SecurityLogWasCleared"
    RECONFIGURATION_OF_SECURITY_PARAMETERS = "ReconfigurationOfSecurityParameters"
    MEMORY_EXHAUSTION = "MemoryExhaustion"
    INVALID_MESSAGES = "InvalidMessages"
    ATTEMPTED_REPLAY_ATTACKS = "AttemptedReplayAttacks"
    TAMPER_DETECTION_ACTIVATED = "TamperDetectionActivated"
    INVALID_FIRMWARE_SIGNATURE = "InvalidFirmwareSignature"
    INVALID_FIRMWARE_SIGNING_CERTIFICATE = "InvalidFirmwareSigningCertificate"
    INVALID_CSMS_CERTIFICATE = "InvalidCsmsCertificate"
    INVALID_CHARGING_STATION_CERTIFICATE = "InvalidChargingStationCertificate"
    DISCARDED_RENEWED_CLIENT_CERTIFICATE = "DiscardedRenewedClientCertificate"
    INVALID_TLS_VERSION = "InvalidTLSVersion"
    INVALID_TLS_CIPHER_SUITE = "InvalidTLSCipherSuite"
    MAINTENANCE_LOGIN_ACCEPTED = "MaintenanceLoginAccepted"
    MAINTENANCE_LOGIN_FAILED = "MaintenanceLoginFailed"


# The appendix's "Critical" column. A04.FR.01/.02: critical events are sent to the CSMS, queued
# with guaranteed delivery while offline; the others only go to the security log (A04.FR.04).
_NOT_CRITICAL = frozenset({
    SecurityEvent.FAILED_TO_AUTHENTICATE_AT_CSMS,
    SecurityEvent.CSMS_FAILED_TO_AUTHENTICATE,
    SecurityEvent.RECONFIGURATION_OF_SECURITY_PARAMETERS,
    SecurityEvent.INVALID_MESSAGES,
    SecurityEvent.ATTEMPTED_REPLAY_ATTACKS,
})
CRITICAL_EVENTS = frozenset(SecurityEvent) - _NOT_CRITICAL


def is_critical(kind: SecurityEvent) -> bool:
    return kind in CRITICAL_EVENTS


def security_event_notification(kind: SecurityEvent, now: float,
                                tech_info: str | None = None) -> Payload:
    """SecurityEventNotificationRequest for ``kind`` at ``now``; techInfo cut to 255."""
    out: Payload = {"type": kind.value, "timestamp": iso(now)}
    if tech_info:
        out["techInfo"] = tech_info[:TECH_INFO_MAX]
    return out


def log_security_event(kind: SecurityEvent, now: float, tech_info: str | None = None) -> None:
    """Write ``kind`` to the security log (A04.FR.04), whether or not it is sent."""
    logs.log(security_log, "security_event", logging.WARNING, type=kind.value, at=iso(now),
             critical=is_critical(kind), tech_info=(tech_info or "")[:TECH_INFO_MAX])


# ---- Security profile changes (A05) --------------------------------------------------------


class ProfileChange(Enum):
    ACCEPTED = "Accepted"
    NO_SECURITY_DOWNGRADE = "lower security profile not allowed"
    NO_BASIC_AUTH_PASSWORD = "profile 1 and 2 need BasicAuthPassword"
    NO_CSMS_ROOT = "profile 2 and 3 need a valid CSMSRootCertificate"
    NO_CLIENT_CERTIFICATE = "profile 3 needs a valid ChargingStationCertificate"

    @property
    def reason_code(self) -> str | None:
        return "NoSecurityDowngrade" if self is ProfileChange.NO_SECURITY_DOWNGRADE else None


def check_security_profile(*, current: int, requested: int, allow_downgrade: bool,
                           basic_auth_password_set: bool, csms_root_installed: bool,
                           client_certificate_valid: bool) -> ProfileChange:
    """May the station move to a NetworkConnectionProfile with ``requested`` security profile?
    Lower is refused (A00.FR.005, A05.FR.10) unless AllowSecurityProfileDowngrade permits 3 to 2
    (A05.FR.08), never to 1 (A05.FR.09); the new profile's prerequisites must be in place
    (A05.FR.02-.04)."""
    if requested < current and not (allow_downgrade and current == 3 and requested == 2):
        return ProfileChange.NO_SECURITY_DOWNGRADE
    if requested in (1, 2) and not basic_auth_password_set:
        return ProfileChange.NO_BASIC_AUTH_PASSWORD
    if requested in (2, 3) and not csms_root_installed:
        return ProfileChange.NO_CSMS_ROOT
    if requested == 3 and not client_certificate_valid:
        return ProfileChange.NO_CLIENT_CERTIFICATE
    return ProfileChange.ACCEPTED


# ---- the station's security state ----------------------------------------------------------


class StationSecurity:
    """Certificate signing for the station: CSRs with keys kept in ``store``, and the handling
    of CertificateSigned. The CA-certificate messages (M03-M05) go to ``store`` directly."""

    def __init__(self, store: CertificateStore, *,
                 key_algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> None:
        self.store = store
        self.key_algorithm = key_algorithm

    def make_csr(self, *, identity: str, organization: str, use: CertificateUse,
                 country: str | None = None) -> str:
        """A new key pair for ``use`` and its CSR (PEM); the key stays pending in the store."""
        return str(self.sign_certificate_request(use, identity, organization,
                                                 country=country)["csr"])

    def sign_certificate_request(self, use: CertificateUse, identity: str, organization: str, *,
                                 country: str | None = None, request_id: int | None = None,
                                 include_root_hash: bool = False) -> Payload:
        """SignCertificateRequest with a CSR for a freshly generated key pair (A02.FR.02/.03).
        2.1 only: ``request_id`` (requestId), and ``include_root_hash`` to name the root of the
        certificate being renewed (hashRootCertificate), so the CSMS picks the same PKI."""
        key = generate_key(self.key_algorithm)
        payload: Payload = {
            "csr": build_csr(key, identity=identity, organization=organization, use=use,
                             country=country),
            "certificateType": use.value,
        }
        if request_id is not None:
            payload["requestId"] = request_id
        if include_root_hash:
            root = self._current_root(use)
            if root is not None:
                payload["hashRootCertificate"] = hash_data(root, root)
        self.store.put_pending(use, key, payload)
        logs.log(log, "csr_created", use=use.value, identity=identity,
                 algorithm=self.key_algorithm.value)
        return payload

    def pending_sign_request(self, use: CertificateUse) -> Payload | None:
        """The SignCertificateRequest to resend while its certificate has not arrived: the same
        CSR, so a late answer to an earlier send still matches the kept key."""
        pending = self.store.pending(use)
        return None if pending is None else pending.request

    def certificate_signed(self, payload: Payload, *, identity: str, now: float,
                           max_chain_size: int | None = None, secc_id: str | None = None,
                           ) -> tuple[Payload, SignedOutcome]:
        """CertificateSignedResponse, and the outcome. Accepted installs the certificate as the
        active one for its use (the previous one kept as fallback, see certificates.py);
        Rejected discards it (A02.FR.07). The leaf's CN must be ``identity``
        (SecurityCtrlr.Identity), for a V2G certificate ``secc_id`` (ISO15118Ctrlr.SeccId) when
        given; ``max_chain_size`` is MaxCertificateChainSize."""
        outcome, chain = self._check(payload, identity=identity, secc_id=secc_id, now=now,
                                     max_chain_size=max_chain_size)
        if outcome.rejection is None:
            assert outcome.use is not None
            try:
                self.store.activate(outcome.use, chain)
            except (sqlite3.Error, OSError, LookupError) as exc:
                logs.log(log, "certificate_signed_store_failed", logging.ERROR,
                         error=type(exc).__name__)
                outcome = SignedOutcome(outcome.use, Rejection.STORE_FAILED)
        if outcome.rejection is None:
            return {"status": "Accepted"}, outcome
        logs.log(log, "certificate_signed_rejected", logging.WARNING,
                 use=outcome.use.value if outcome.use else None, reason=outcome.rejection.name)
        response = {"status": "Rejected",
                    "statusInfo": {"reasonCode": outcome.rejection.reason_code,
                                   "additionalInfo": outcome.rejection.value}}
        return response, outcome

    def _check(self, payload: Payload, *, identity: str, secc_id: str | None, now: float,
               max_chain_size: int | None) -> tuple[SignedOutcome, list[x509.Certificate]]:
        text: str = payload["certificateChain"]
        requested = (CertificateUse(payload["certificateType"])
                     if "certificateType" in payload else None)
        # A02.FR.16: MaxCertificateChainSize bounds the field, in bytes.
        if max_chain_size is not None and len(text.encode()) > max_chain_size:
            return SignedOutcome(requested, Rejection.CHAIN_TOO_LARGE), []
        try:
            chain = x509.load_pem_x509_certificates(text.encode())
        except ValueError:
            chain = []
        if not chain:
            return SignedOutcome(requested, Rejection.NOT_PEM), []
        use, rejection = self._pending_use(_spki(chain[0]), requested)
        if use is None or rejection is not None:
            return SignedOutcome(use, rejection), chain
        expected = identity if use is CertificateUse.CHARGING_STATION or secc_id is None \
            else secc_id
        rejection = check_chain(chain, identity=expected, now=now,
                                roots=self.store.roots(anchor_type(use)))
        return SignedOutcome(use, rejection), chain

    def _pending_use(self, leaf_key: bytes, requested: CertificateUse | None,
                     ) -> tuple[CertificateUse | None, Rejection | None]:
        """Which pending request the certificate answers: the one holding its key. Without a
        certificateType any pending use may match (the field is optional)."""
        pending = [p for use in self.store.pending_uses() if (p := self.store.pending(use))]
        matching = [p.use for p in pending if p.public_key == leaf_key]
        if requested is not None:
            if requested in matching:
                return requested, None
            if matching:
                return requested, Rejection.TYPE_MISMATCH
            if any(p.use is requested for p in pending):
                return requested, Rejection.KEY_MISMATCH
            return requested, Rejection.NO_PENDING_REQUEST
        if matching:
            return matching[0], None
        return None, Rejection.KEY_MISMATCH if pending else Rejection.NO_PENDING_REQUEST

    def _current_root(self, use: CertificateUse) -> x509.Certificate | None:
        chain = self.store.station_chain(use)
        return None if chain is None else self.store.root_of(chain, anchor_type(use))

    def check_security_profile(self, *, current: int, requested: int, allow_downgrade: bool,
                               basic_auth_password_set: bool, now: float) -> ProfileChange:
        """check_security_profile with the certificate prerequisites read from the store."""
        chain = self.store.station_chain(CertificateUse.CHARGING_STATION)
        return check_security_profile(
            current=current, requested=requested, allow_downgrade=allow_downgrade,
            basic_auth_password_set=basic_auth_password_set,
            csms_root_installed=self.store.has_valid_root(CertificateType.CSMS_ROOT, now),
            client_certificate_valid=chain is not None and valid_at(chain[0], now))
