"""A throwaway PKI for OCPP TLS tests (security profiles 2 and 3), made with `cryptography`.

    pki = make_pki(tmp_path, identity="CS001")          # root CA -> server + client leaf
    pki = make_pki(tmp_path, intermediate=True)          # root CA -> intermediate -> leaves
    other = make_pki(tmp_path / "other", name="rogue")   # an unrelated CA, for negative tests

What you get back (`Pki`, all PEM files in `directory`):

- `ca_cert` / `ca_key`: the root CA; give `ca_cert` to whoever must trust this PKI
  (the station's `ca_file`, or a server's `load_verify_locations` for client certificates).
- `server_cert` / `server_key`: a CSMS certificate for 127.0.0.1 and localhost (both in the
  subjectAltName; CN=localhost). `server_cert` is the full chain, leaf first, so it can go
  straight into `SSLContext.load_cert_chain(pki.server_cert, pki.server_key)`.
- `client_cert` / `client_key`: a Charging Station certificate with CN=<identity> and
  O=<organization> (A00.FR.404/405 check those two RDNs), chain leaf first. None when
  `identity=None`.
- `intermediate_cert` / `intermediate_key`: the intermediate CA when `intermediate=True`, else
  None. With an intermediate, both leaves are issued by it and their chain files include it.

`sign_csr(pki, csr_pem)` issues a client certificate for a CSR (e.g. one from SignCertificate)
from the issuing CA of `pki` and returns the PEM chain, leaf first, as a CertificateSigned
payload carries it.

Keys made here are EC P-256 (fast to generate; ECDHE-ECDSA is one of the suites A00.FR.318
names); `sign_csr` takes a CSR with any key type `cryptography` can certify.
Validity runs from a day before `now` (default: the real clock, since OpenSSL checks
certificates against it) to `days` after.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Pki:
    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None
    client_key: Path | None
    intermediate_cert: Path | None
    intermediate_key: Path | None

    @property
    def issuer_cert(self) -> Path:
        """The CA that signs the leaves: the intermediate if there is one, else the root."""
        return self.intermediate_cert or self.ca_cert

    @property
    def issuer_key(self) -> Path:
        return self.intermediate_key or self.ca_key


def make_pki(directory: Path, *, identity: str | None = "CS001", intermediate: bool = False,
             name: str = "test", organization: str = "Voltpilot Test CPO",
             now: dt.datetime | None = None, days: int = 30) -> Pki:
    """Create a CA (and optionally an intermediate), a server and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=1)
    end = start + dt.timedelta(days=days + 1)

    ca_key = _new_key()
    ca = _certificate(_name(f"{name} root CA", organization), ca_key.public_key(),
                      None, ca_key, start, end, ca=True)
    issuer, issuer_key = ca, ca_key
    chain_tail: list[x509.Certificate] = []
    inter_paths: tuple[Path, Path] | None = None
    if intermediate:
        inter_key = _new_key()
        inter = _certificate(_name(f"{name} intermediate CA", organization),
                             inter_key.public_key(), ca, ca_key, start, end, ca=True)
        issuer, issuer_key, chain_tail = inter, inter_key, [inter]
        inter_paths = (_write_certs(directory / f"{name}-intermediate.pem", [inter]),
                       _write_key(directory / f"{name}-intermediate.key", inter_key))

    server_key = _new_key()
    server = _certificate(
        _name("localhost", organization), server_key.public_key(), issuer, issuer_key,
        start, end, ca=False, eku=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])

    client_paths: tuple[Path, Path] | None = None
    if identity is not None:
        client_key = _new_key()
        client = _certificate(_name(identity, organization), client_key.public_key(), issuer,
                              issuer_key, start, end, ca=False,
                              eku=ExtendedKeyUsageOID.CLIENT_AUTH)
        client_paths = (_write_certs(directory / f"{name}-client.pem", [client, *chain_tail]),
                        _write_key(directory / f"{name}-client.key", client_key))

    return Pki(
        directory=directory,
        ca_cert=_write_certs(directory / f"{name}-ca.pem", [ca]),
        ca_key=_write_key(directory / f"{name}-ca.key", ca_key),
        server_cert=_write_certs(directory / f"{name}-server.pem", [server, *chain_tail]),
        server_key=_write_key(directory / f"{name}-server.key", server_key),
        client_cert=client_paths[0] if client_paths else None,
        client_key=client_paths[1] if client_paths else None,
        intermediate_cert=inter_paths[0] if inter_paths else None,
        intermediate_key=inter_paths[1] if inter_paths else None,
    )


def sign_csr(pki: Pki, csr_pem: bytes, *, now: dt.datetime | None = None,
             days: int = 30) -> bytes:
    """Issue a client certificate for `csr_pem` from `pki`'s issuing CA; PEM chain, leaf first."""
    csr = x509.load_pem_x509_csr(csr_pem)
    issuer = x509.load_pem_x509_certificate(pki.issuer_cert.read_bytes())
    issuer_key = serialization.load_pem_private_key(pki.issuer_key.read_bytes(), None)
    if not isinstance(issuer_key, _Key):
        raise TypeError("the test PKI only uses EC keys")
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=1)
    leaf = _certificate(csr.subject, csr.public_key(), issuer, issuer_key, start,
                        start + dt.timedelta(days=days + 1), ca=False,
                        eku=ExtendedKeyUsageOID.CLIENT_AUTH)
    chain = [leaf] if pki.intermediate_cert is None else [leaf, issuer]
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def _new_key() -> _Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: x509.Name, public_key: CertificatePublicKeyTypes,
                 issuer: x509.Certificate | None, issuer_key: _Key, start: dt.datetime,
                 end: dt.datetime, *, ca: bool,
                 eku: x509.ObjectIdentifier | None = None,
                 san: list[x509.GeneralName] | None = None) -> x509.Certificate:
    """One certificate; `issuer=None` makes it self-signed."""
    issuer_name = subject if issuer is None else issuer.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=not ca,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                       critical=False)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_certs(path: Path, certs: list[x509.Certificate]) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def _write_key(path: Path, key: _Key) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path
