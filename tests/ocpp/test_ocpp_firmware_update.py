"""L01 secure firmware update: a real aiohttp file server on 127.0.0.1, images signed in the test
by a signing certificate issued by a test manufacturer root, the sim A/B slot installer on disk.
Every payload the updater produces is validated against the 2.0.1 and 2.1 schemas."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import tarfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from firmware.ocpp.firmware_update import (
    BootReport,
    CertCheck,
    FirmwareUpdater,
    InstallOutcome,
    SlotInstaller,
    check_certificate_validity,
    parse_datetime,
    unsafe_member,
)
from hal.clock import VirtualClock, iso, utc

T0 = VirtualClock.DEFAULT_START
SCHEMAS = Path(ocpp.__file__).parent
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# ---- schemas --------------------------------------------------------------------------------

@cache
def _validator(version: str, name: str) -> Any:
    schema = json.loads((SCHEMAS / version / "schemas" / f"{name}.json").read_text())
    return jsonschema.validators.validator_for(schema)(
        schema, format_checker=jsonschema.FormatChecker())


def check(name: str, payload: dict[str, Any], versions: tuple[str, ...] = ("v201", "v21")) -> None:
    for version in versions:
        _validator(version, name).validate(payload)


# ---- a test PKI -----------------------------------------------------------------------------

def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(subject: str, key: PrivateKey, issuer: str, issuer_key: PrivateKey, *, ca: bool,
          not_after: float = T0 + 365 * 86400) -> x509.Certificate:
    return (x509.CertificateBuilder()
            .subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(utc(T0 - 86400)).not_valid_after(utc(not_after))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


@cache
def _key(kind: str, label: str) -> PrivateKey:
    del label  # one key per (kind, label): the cache is the point
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def root(label: str = "manufacturer") -> x509.Certificate:
    key = _key("ec", label)
    return _cert(f"{label} root", key, f"{label} root", key, ca=True)


@cache
def signer(kind: str = "rsa", issuer: str = "manufacturer",
           not_after: float = T0 + 365 * 86400) -> tuple[str, PrivateKey]:
    key = _key("ec" if kind == "ecdsa" else "rsa", f"signer-{kind}")
    cert = _cert(f"firmware signer {kind}", key, f"{issuer} root", _key("ec", issuer), ca=False,
                 not_after=not_after)
    return cert.public_bytes(Encoding.PEM).decode(), key


def sign(data: bytes, kind: str = "rsa") -> str:
    _, key = signer(kind)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif kind == "rsa-pss":
        signature = key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                               salt_length=padding.PSS.MAX_LENGTH),
                             hashes.SHA256())
    else:
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


def trusted_store(revoked: frozenset[str] = frozenset()) -> Callable[[str], CertCheck]:
    """The station's certificate store in small: chains to the manufacturer root, in date,
    not revoked (by common name, for the test)."""
    def verify(pem: str) -> CertCheck:
        cert = x509.load_pem_x509_certificate(pem.encode())
        try:
            cert.verify_directly_issued_by(root())
        except (ValueError, TypeError, InvalidSignature):
            return CertCheck.INVALID
        if not cert.not_valid_before_utc <= utc(T0) <= cert.not_valid_after_utc:
            return CertCheck.INVALID
        common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return CertCheck.REVOKED if common_name in revoked else CertCheck.VALID
    return verify


# ---- images ---------------------------------------------------------------------------------

Entry = tuple[str, str, bytes | str]  # (kind, name, content or link target)


def tar_gz(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                assert isinstance(payload, str)
                info.linkname = payload
            archive.addfile(info)
    return buffer.getvalue()


def release(version: str) -> bytes:
    return tar_gz([("dir", "bin", b""),
                   ("file", "bin/voltpilot", f"#!/bin/sh\necho {version}\n".encode()),
                   ("file", "VERSION", f"{version}\n".encode()),
                   ("symlink", "current", "bin")])


# ---- the peer and the station ---------------------------------------------------------------

class FileServer:
    """Serves firmware images over real HTTP; records (name, virtual time) of every GET."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.files: dict[str, bytes] = {}
        self.hits: list[tuple[str, float]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FileServer:
        app = web.Application()
        app.router.add_get("/fw/{name}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits.append((name, self.clock.now()))
        if name not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[name], content_type="application/octet-stream")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/fw/{name}"


class Station:
    """The updater wired as the station wires it, with recording callbacks."""

    def __init__(self, tmp_path: Path, *, is_idle: Callable[[], bool] = lambda: True,
                 verify: Callable[[str], CertCheck] | None = None,
                 installer: Any = None, park_long_sleeps: bool = False,
                 default_check: bool = False) -> None:
        self.clock = VirtualClock()
        self.notes: list[tuple[float, dict[str, Any]]] = []
        self.events: list[str] = []
        self.sleeps: list[float] = []
        self.reboots = 0
        self.offline = False
        self.park_long_sleeps = park_long_sleeps
        self.installer = installer or SlotInstaller(tmp_path / "fw")
        self.work = tmp_path / "work"
        kwargs: dict[str, Any] = {} if default_check else {
            "verify_signing_certificate": verify or trusted_store()}
        self.updater = FirmwareUpdater(
            work_dir=self.work, clock=self.clock, sleep=self.sleep, installer=self.installer,
            notify=self.notify, security_event=self.security_event, is_idle=is_idle,
            reboot=self.reboot, idle_poll_s=5.0, **kwargs)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.park_long_sleeps and seconds >= 1000:
            await asyncio.Event().wait()
        self.clock.advance(seconds)
        await asyncio.sleep(0)

    async def notify(self, payload: dict[str, Any]) -> None:
        if self.offline:
            raise ConnectionError("CSMS unreachable")
        check("FirmwareStatusNotificationRequest", payload)
        self.notes.append((self.clock.now(), payload))

    async def security_event(self, kind: str, tech_info: str) -> None:
        check("SecurityEventNotificationRequest",
              {"type": kind, "timestamp": iso(self.clock.now()), "techInfo": tech_info})
        self.events.append(kind)

    async def reboot(self) -> None:
        self.reboots += 1

    def update(self, request_id: int, location: str, image: bytes | None = None, *,
               kind: str = "rsa", signature: str | None = None, cert: str | None = None,
               retrieve: float = T0, install: float | None = None,
               retries: int | None = None, retry_interval: int | None = None) -> dict[str, Any]:
        firmware: dict[str, Any] = {
            "location": location, "retrieveDateTime": iso(retrieve),
            "signingCertificate": cert or signer(kind)[0],
            "signature": signature or sign(image or b"", kind)}
        if install is not None:
            firmware["installDateTime"] = iso(install)
        payload: dict[str, Any] = {"requestId": request_id, "firmware": firmware}
        if retries is not None:
            payload["retries"] = retries
        if retry_interval is not None:
            payload["retryInterval"] = retry_interval
        check("UpdateFirmwareRequest", payload)
        response = self.updater.update_firmware(payload)
        check("UpdateFirmwareResponse", response)
        return response

    def statuses(self) -> list[str]:
        return [note["status"] for _, note in self.notes]

    def request_ids(self) -> set[int]:
        return {note["requestId"] for _, note in self.notes}

    def status(self) -> dict[str, Any]:
        payload = self.updater.status()
        check("FirmwareStatusNotificationRequest", payload)
        return payload


def run(main: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout=15))


# ---- L01 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rsa", "rsa-pss", "ecdsa"])
def test_l01_full_sequence_switches_slot_and_reports_installed_after_restart(
        tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        async with FileServer(station.clock) as server:
            image = server.files["v2.tgz"] = release("2.0.0")
            assert station.update(1, server.url("v2.tgz"), image, kind=kind,
                                  retrieve=T0 + 60, install=T0 + 600) == {"status": "Accepted"}
            await station.updater.join()
        assert station.statuses() == [
            "DownloadScheduled", "Downloading", "Downloaded", "SignatureVerified",
            "InstallScheduled", "Installing", "InstallRebooting"]
        assert station.request_ids() == {1}  # L01.FR.10
        assert server.hits == [("v2.tgz", T0 + 60)]  # not before retrieveDateTime
        installing_at = next(t for t, note in station.notes if note["status"] == "Installing")
        assert installing_at >= T0 + 600  # not before installDateTime
        assert station.reboots == 1
        assert station.status() == {"status": "InstallRebooting", "requestId": 1}
        assert station.updater.holds_new_sessions()
        slots = tmp_path / "fw" / "slots"
        assert SlotInstaller(tmp_path / "fw").active_slot() == "a"
        assert (slots / "active" / "VERSION").read_text() == "2.0.0\n"
        assert (slots / "a" / "current").is_symlink()
        assert list(station.work.iterdir()) == []  # the downloaded image is gone

        # The restart: a new process, new objects, the same disk.
        after = Station(tmp_path)
        assert after.updater.booted_after_update()
        await after.updater.on_boot()
        assert [note for _, note in after.notes] == [{"status": "Installed", "requestId": 1}]
        assert after.events == ["FirmwareUpdated"]
        assert after.status() == {"status": "Idle"}  # L01.FR.25
        assert not after.updater.booted_after_update()

        # The next update goes to the other slot and leaves the running one alone.
        async with FileServer(after.clock) as server:
            image = server.files["v3.tgz"] = release("3.0.0")
            assert after.update(2, server.url("v3.tgz"), image, kind=kind) == {
                "status": "Accepted"}
            await after.updater.join()
        assert after.statuses()[1:] == ["Downloading", "Downloaded", "SignatureVerified",
                                        "Installing", "InstallRebooting"]
        assert SlotInstaller(tmp_path / "fw").active_slot() == "b"
        assert (slots / "a" / "VERSION").read_text() == "2.0.0\n"
        assert (slots / "active" / "VERSION").read_text() == "3.0.0\n"

    run(main)


def test_l01_tampered_image_is_invalid_signature_with_security_event(tmp_path: Path) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        async with FileServer(station.clock) as server:
            image = release("2.0.0")
            server.files["v2.tgz"] = image[:-10] + bytes(10)
            assert station.update(7, server.url("v2.tgz"), image) == {"status": "Accepted"}
            await station.updater.join()
        assert station.statuses() == ["Downloading", "Downloaded", "InvalidSignature"]
        assert station.events == ["InvalidFirmwareSignature"]  # L01.FR.03
        assert station.reboots == 0
        assert not (tmp_path / "fw" / "slots").exists()
        assert station.status() == {"status": "InvalidSignature", "requestId": 7}  # L01.FR.26
        assert not station.updater.holds_new_sessions()

    run(main)


@pytest.mark.parametrize(("case", "answer"), [
    ("untrusted root", "InvalidCertificate"),
    ("revoked", "RevokedCertificate"),
    ("expired, default check", "InvalidCertificate"),
])
def test_l01_bad_signing_certificate_is_refused_before_download(
        tmp_path: Path, case: str, answer: str) -> None:
    async def main() -> None:
        image = release("2.0.0")
        if case == "untrusted root":
            station = Station(tmp_path)
            cert, key = signer("rsa", issuer="somebody else")
        elif case == "revoked":
            station = Station(tmp_path, verify=trusted_store(frozenset({"firmware signer rsa"})))
            cert, key = signer("rsa")
        else:
            station = Station(tmp_path, default_check=True)
            cert, key = signer("rsa", not_after=T0 - 3600)
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = base64.b64encode(
            key.sign(image, padding.PKCS1v15(), hashes.SHA256())).decode()
        async with FileServer(station.clock) as server:
            server.files["v2.tgz"] = image
            response = station.update(3, server.url("v2.tgz"), cert=cert, signature=signature)
            await station.updater.join()
        assert response == {"status": answer}  # L01.FR.22
        assert station.events == ["InvalidFirmwareSigningCertificate"]  # L01.FR.02
        assert station.notes == []
        assert server.hits == []
        assert station.status() == {"status": "Idle"}

    run(main)


def test_default_certificate_check_accepts_a_certificate_in_date() -> None:
    assert check_certificate_validity(signer("ecdsa")[0], T0) is CertCheck.VALID
    assert check_certificate_validity(signer("ecdsa")[0], T0 + 400 * 86400) is CertCheck.INVALID
    assert check_certificate_validity("not a certificate", T0) is CertCheck.INVALID


@pytest.mark.parametrize("retries", [0, 2])
def test_l01_download_404_fails_after_exactly_the_retries(tmp_path: Path, retries: int) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        async with FileServer(station.clock) as server:
            assert station.update(4, server.url("missing.tgz"), b"", retries=retries,
                                  retry_interval=30) == {"status": "Accepted"}
            await station.updater.join()
        # "retries" counts the attempts after the first one.
        assert server.hits == [("missing.tgz", T0 + 30 * n) for n in range(retries + 1)]
        assert station.statuses() == ["Downloading"] * (retries + 1) + ["DownloadFailed"]
        assert station.status() == {"status": "DownloadFailed", "requestId": 4}
        assert station.reboots == 0

    run(main)


def test_l01_installation_waits_until_no_transaction_is_active(tmp_path: Path) -> None:
    seen: list[tuple[list[str], bool]] = []
    station: Station

    def is_idle() -> bool:
        # A transaction runs for the first four polls.
        seen.append((station.statuses(), station.updater.holds_new_sessions()))
        return len(seen) > 4

    async def main() -> None:
        nonlocal station
        station = Station(tmp_path, is_idle=is_idle)
        async with FileServer(station.clock) as server:
            image = server.files["v2.tgz"] = release("2.0.0")
            station.update(5, server.url("v2.tgz"), image)
            await station.updater.join()
        busy = seen[:4]
        assert all("Installing" not in statuses for statuses, _ in busy)
        assert all(holding for _, holding in busy)  # L01.FR.07: the station holds new sessions
        assert busy[-1][0][-1] == "InstallScheduled"
        assert station.statuses() == ["Downloading", "Downloaded", "SignatureVerified",
                                      "InstallScheduled", "Installing", "InstallRebooting"]
        assert station.sleeps == [5.0] * 3  # polled every idle_poll_s while the transaction ran
        assert station.reboots == 1

    run(main)


@pytest.mark.parametrize("bad", [
    ("file", "../evil", b"x"),
    ("file", "/tmp/voltpilot-evil-absolute", b"x"),
    ("symlink", "escape", "../../../evil"),
    ("symlink", "escape", "/etc/passwd"),
    ("hardlink", "escape", "../evil"),
])
def test_l01_archive_escaping_its_slot_is_installation_failed(
        tmp_path: Path, bad: tuple[str, str, bytes | str]) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        async with FileServer(station.clock) as server:
            image = server.files["evil.tgz"] = tar_gz([("file", "VERSION", b"6.6.6\n"), bad])
            station.update(6, server.url("evil.tgz"), image)
            await station.updater.join()
        assert station.statuses() == ["Downloading", "Downloaded", "SignatureVerified",
                                      "Installing", "InstallationFailed"]
        assert station.reboots == 0
        installer = SlotInstaller(tmp_path / "fw")
        assert installer.active_slot() is None
        assert installer.boot_report() is None
        assert not (tmp_path / "evil").exists()
        assert not Path("/tmp/voltpilot-evil-absolute").exists()
        assert station.status() == {"status": "InstallationFailed", "requestId": 6}

    run(main)


def test_unsafe_member_reasons() -> None:
    def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        return info

    assert unsafe_member(member("bin/ok")) is None
    assert unsafe_member(member("lib/ok", tarfile.SYMTYPE, "../bin/ok")) is None
    assert unsafe_member(member("a/../../x")) == "path traversal"
    assert unsafe_member(member("C:/x")) == "absolute path"
    assert unsafe_member(member("dev", tarfile.CHRTYPE)) == "special file"
    assert unsafe_member(member("l", tarfile.SYMTYPE, "a/../..")) == "link points outside the slot"


def test_l01_second_update_cancels_the_scheduled_one(tmp_path: Path) -> None:
    async def main() -> None:
        station = Station(tmp_path, park_long_sleeps=True)
        async with FileServer(station.clock) as server:
            old = server.files["v2.tgz"] = release("2.0.0")
            new = server.files["v3.tgz"] = release("3.0.0")
            assert station.update(8, server.url("v2.tgz"), old, retrieve=T0 + 7200) == {
                "status": "Accepted"}
            while not station.notes:
                await asyncio.sleep(0)
            assert station.update(9, server.url("v3.tgz"), new) == {
                "status": "AcceptedCanceled"}  # L01.FR.24
            await station.updater.join()
        assert [(note["status"], note["requestId"]) for _, note in station.notes] == [
            ("DownloadScheduled", 8), ("Downloading", 9), ("Downloaded", 9),
            ("SignatureVerified", 9), ("Installing", 9), ("InstallRebooting", 9)]
        assert [name for name, _ in server.hits] == ["v3.tgz"]
        assert (tmp_path / "fw" / "slots" / "active" / "VERSION").read_text() == "3.0.0\n"

    run(main)


class GatedInstaller:
    """The slot installer, held at install until the test opens the gate."""

    def __init__(self, root: Path) -> None:
        self.inner = SlotInstaller(root)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def install(self, image: Path, request_id: int) -> InstallOutcome:
        self.entered.set()
        await self.gate.wait()
        return await self.inner.install(image, request_id)

    def boot_report(self) -> BootReport | None:
        return self.inner.boot_report()

    def acknowledge_boot(self) -> None:
        self.inner.acknowledge_boot()


def test_l01_update_during_installation_is_rejected(tmp_path: Path) -> None:
    async def main() -> None:
        installer = GatedInstaller(tmp_path / "fw")
        station = Station(tmp_path, installer=installer)
        async with FileServer(station.clock) as server:
            image = server.files["v2.tgz"] = release("2.0.0")
            station.update(10, server.url("v2.tgz"), image)
            await installer.entered.wait()
            response = station.update(11, server.url("v2.tgz"), image)
            installer.gate.set()
            await station.updater.join()
        assert response["status"] == "Rejected"  # L01.FR.27
        assert response["statusInfo"]["reasonCode"] == "FwUpdateInProgress"
        assert station.request_ids() == {10}
        assert station.statuses()[-1] == "InstallRebooting"

    run(main)


def test_l01_changed_slot_after_restart_is_verification_failed_and_rolls_back(
        tmp_path: Path) -> None:
    async def main() -> None:
        root = tmp_path / "fw"
        installer = SlotInstaller(root)
        for request_id, version in [(20, "2.0.0"), (21, "3.0.0")]:
            image = tmp_path / f"{version}.tgz"
            image.write_bytes(release(version))
            assert await installer.install(image, request_id) is InstallOutcome.REBOOT_REQUIRED
            if request_id == 20:
                assert installer.boot_report() == BootReport(20, True, "running slot a")
                installer.acknowledge_boot()
        (root / "slots" / "b" / "VERSION").write_text("tampered\n")

        station = Station(tmp_path)
        assert station.updater.booted_after_update()
        await station.updater.on_boot()
        assert [note for _, note in station.notes] == [
            {"status": "InstallVerificationFailed", "requestId": 21}]  # L01.FR.29
        assert station.events == []
        assert SlotInstaller(root).active_slot() == "a"
        assert (root / "slots" / "active" / "VERSION").read_text() == "2.0.0\n"
        assert station.status() == {"status": "InstallVerificationFailed", "requestId": 21}

    run(main)


def test_on_boot_keeps_the_marker_when_the_notification_fails(tmp_path: Path) -> None:
    async def main() -> None:
        installer = SlotInstaller(tmp_path / "fw")
        image = tmp_path / "v2.tgz"
        image.write_bytes(release("2.0.0"))
        await installer.install(image, 30)
        station = Station(tmp_path)
        station.offline = True
        with pytest.raises(ConnectionError):
            await station.updater.on_boot()
        again = Station(tmp_path)
        await again.updater.on_boot()
        assert [note for _, note in again.notes] == [{"status": "Installed", "requestId": 30}]

    run(main)


def test_requests_we_cannot_serve_are_rejected_with_a_reason(tmp_path: Path) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        no_signature = {"requestId": 12, "firmware": {
            "location": "https://example.invalid/fw.tgz", "retrieveDateTime": iso(T0)}}
        check("UpdateFirmwareRequest", no_signature)
        response = station.updater.update_firmware(no_signature)
        check("UpdateFirmwareResponse", response)
        assert (response["status"], response["statusInfo"]["reasonCode"]) == (
            "Rejected", "MissingParam")
        response = station.update(13, "ftp://example.invalid/fw.tgz", b"")
        assert (response["status"], response["statusInfo"]["reasonCode"]) == (
            "Rejected", "InvalidURL")
        response = station.update(14, "https://example.invalid/fw.tgz", signature="not base64!")
        assert (response["status"], response["statusInfo"]["reasonCode"]) == (
            "Rejected", "InvalidValue")
        await station.updater.join()
        assert station.notes == []
        assert station.status() == {"status": "Idle"}

    run(main)


def test_parse_datetime_reads_the_forms_a_csms_sends() -> None:
    assert parse_datetime("2026-01-01T00:00:00Z") == T0
    assert parse_datetime("2026-01-01T00:00:00.250Z") == T0 + 0.25
    assert parse_datetime("2026-01-01T01:30:00+01:30") == T0
    assert parse_datetime("2025-12-31T23:00:00-0100") == T0
    assert parse_datetime("2026-01-01T00:00:00.1234567") == pytest.approx(T0 + 0.1234567)
    assert parse_datetime(iso(T0 + 12.5)) == T0 + 12.5
    assert dt.datetime.fromtimestamp(parse_datetime("2026-06-01T12:00:00Z"), dt.UTC).hour == 12
    for bad in ["", "yesterday", "2026-01-01", "2026-01-01T00:00:00+1"]:
        with pytest.raises(ValueError):
            parse_datetime(bad)
