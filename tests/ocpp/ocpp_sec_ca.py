"""A test certificate authority for the security tests, made with `cryptography`.

    root = Ca.root("CSO Root", now=now)          # self-signed CA, valid around `now`
    sub = root.sub_ca("CSO Sub-CA", now=now)      # intermediate signed by root
    leaf_pem = sub.sign_csr(csr_pem, now=now)     # certificate for a CSR, PEM
    chain = leaf_pem + sub.pem                    # a CertificateSigned chain, leaf first

Everything is EC P-256 (quick to generate). Times are seconds since the epoch, like the code under
test takes them; the TLS test passes the real clock because OpenSSL checks validity against it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = 86400.0


def _t(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def _name(cn: str, org: str = "Voltpilot Test CSO") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])


@dataclass(frozen=True)
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def root(cls, cn: str, *, now: float, days: float = 3650, start: float | None = None,
             serial: int | None = None) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        begin = now - DAY if start is None else start
        cert = _build(_name(cn), _name(cn), key.public_key(), key, begin, begin + days * DAY,
                      ca=True, serial=serial)
        return cls(cert, key)

    def sub_ca(self, cn: str, *, now: float, days: float = 1825) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _build(_name(cn), self.cert.subject, key.public_key(), self.key, now - DAY,
                      now + days * DAY, ca=True)
        return Ca(cert, key)

    def sign_csr(self, csr_pem: str, *, now: float, days: float = 365, cn: str | None = None,
                 start: float | None = None) -> str:
        """A leaf for the CSR's key and subject (``cn`` overrides the CSR's commonName)."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        assert csr.is_signature_valid
        subject = csr.subject
        if cn is not None:
            subject = x509.Name([a for a in subject if a.oid != NameOID.COMMON_NAME]
                                + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        begin = now - DAY if start is None else start
        cert = _build(subject, self.cert.subject, csr.public_key(), self.key, begin,
                      begin + days * DAY, ca=False, client=True)
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def leaf_for_key(self, key: ec.EllipticCurvePrivateKey, cn: str, *, now: float,
                     server: bool = False) -> str:
        cert = _build(_name(cn), self.cert.subject, key.public_key(), self.key, now - DAY,
                      now + 365 * DAY, ca=False, client=not server, server=server)
        return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _build(subject: x509.Name, issuer: x509.Name, public: CertificatePublicKeyTypes,
           signer: ec.EllipticCurvePrivateKey, begin: float, end: float, *, ca: bool,
           client: bool = False, server: bool = False, serial: int | None = None,
           ) -> x509.Certificate:
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(public)
               .serial_number(serial if serial is not None else x509.random_serial_number())
               .not_valid_before(_t(begin)).not_valid_after(_t(end))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(signer, hashes.SHA256())
