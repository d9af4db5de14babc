"""Secure firmware update, OCPP 2.0.1 / 2.1 use case L01: UpdateFirmware in,
FirmwareStatusNotification out, and the sim board's A/B slot installer.

One update runs at a time, as an asyncio task: wait for retrieveDateTime, download with the
request's retries, verify the signature with the signing certificate, wait for installDateTime
and for every transaction to end, install, reboot. Only the signing certificate is checked before
the request is answered (L01.FR.21); everything else happens after the answer.

Time comes from the injected clock and every wait goes through the injected sleep, so a test or a
virtual-time run drives a whole update in milliseconds. The HTTP download is the default edge;
aiohttp is imported only when a download actually runs.

Across the reboot the installer's marker is the only memory: on the next start `on_boot()` reads
it and reports Installed or InstallVerificationFailed with the original requestId (L01.FR.10,
L01.FR.28, L01.FR.29). A job interrupted by a power cut before it installed is not resumed; the
CSMS sees its notifications stop and may send the update again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from firmware import logs
from firmware.ocpp.dates import parse_datetime
from firmware.ocpp.security import SecurityEvent
from firmware.ocpp.tasks import Tasks
from hal.clock import Clock

if TYPE_CHECKING:
    import ssl

Payload = dict[str, Any]

log = logs.get("ocpp.firmware_update")

# OCPPCommCtrlr.FileTransferProtocols: what our default download and upload edges speak.
FILE_TRANSFER_PROTOCOLS = ("HTTP", "HTTPS")

# Security events this module raises, as their wire names.
INVALID_FIRMWARE_SIGNING_CERTIFICATE = SecurityEvent.INVALID_FIRMWARE_SIGNING_CERTIFICATE.value
INVALID_FIRMWARE_SIGNATURE = SecurityEvent.INVALID_FIRMWARE_SIGNATURE.value
FIRMWARE_UPDATED = SecurityEvent.FIRMWARE_UPDATED.value

_CHUNK = 1 << 16


class FirmwareStatus(StrEnum):
    """FirmwareStatusEnumType, in the order the spec lists the steps of an update."""

    DOWNLOAD_SCHEDULED = "DownloadScheduled"
    DOWNLOADING = "Downloading"
    DOWNLOADED = "Downloaded"
    DOWNLOAD_FAILED = "DownloadFailed"
    DOWNLOAD_PAUSED = "DownloadPaused"
    SIGNATURE_VERIFIED = "SignatureVerified"
    INVALID_SIGNATURE = "InvalidSignature"
    INSTALL_SCHEDULED = "InstallScheduled"
    INSTALLING = "Installing"
    INSTALL_REBOOTING = "InstallRebooting"
    INSTALLED = "Installed"
    INSTALLATION_FAILED = "InstallationFailed"
    INSTALL_VERIFICATION_FAILED = "InstallVerificationFailed"
    IDLE = "Idle"


class UpdateFirmwareStatus(StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    ACCEPTED_CANCELED = "AcceptedCanceled"
    INVALID_CERTIFICATE = "InvalidCertificate"
    REVOKED_CERTIFICATE = "RevokedCertificate"


class CertCheck(Enum):
    """What the certificate store says about a firmware signing certificate."""

    VALID = "valid"
    INVALID = "invalid"
    REVOKED = "revoked"


class InstallOutcome(Enum):
    FAILED = "failed"
    # The new firmware runs already; nothing is left to do but report Installed.
    ACTIVATED = "activated"
    # The new firmware is staged and becomes active at the next start.
    REBOOT_REQUIRED = "reboot_required"


@dataclass(frozen=True, slots=True)
class BootReport:
    """What the installer found at start-up about the update it staged before the reboot."""

    request_id: int
    verified: bool
    detail: str


class Installer(Protocol):
    """The board's install step. `install` stages the verified image; `boot_report` is idempotent
    (the station may ask before BootNotification and again after it); `acknowledge_boot` forgets
    the report once the CSMS has it."""

    async def install(self, image: Path, request_id: int) -> InstallOutcome: ...

    def boot_report(self) -> BootReport | None: ...

    def acknowledge_boot(self) -> None: ...


class TransferError(Exception):
    """A download or upload failed. The message never holds the URL (it may carry credentials,
    N01.FR.17); http_status is set when the server answered."""

    def __init__(self, reason: str, http_status: int | None = None) -> None:
        super().__init__(reason)
        self.http_status = http_status


# ---- pure parts -----------------------------------------------------------------------------

def redact_url(url: str) -> str:
    """scheme://host[:port]/path of a URL, for logs: no credentials, no query (N01.FR.17)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def transfer_url_problem(url: str) -> str | None:
    """Why we cannot fetch from or send to this URL, or None. "unsupported" when the scheme is
    not one of FILE_TRANSFER_PROTOCOLS, "malformed" when it is not a usable URL."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "malformed"
    if not parts.scheme or not parts.hostname:
        return "malformed"
    if parts.scheme.upper() not in FILE_TRANSFER_PROTOCOLS:
        return "unsupported"
    return None


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    request_id: int
    location: str
    retrieve_at: float
    install_at: float | None
    certificate: str
    signature: bytes
    attempts: int
    retry_interval_s: float


@dataclass(frozen=True, slots=True)
class Refusal:
    status: UpdateFirmwareStatus
    reason_code: str
    info: str

    def response(self) -> Payload:
        return {"status": self.status.value,
                "statusInfo": {"reasonCode": self.reason_code[:20],
                               "additionalInfo": self.info[:1024]}}


def parse_update(payload: Payload, *, default_retries: int,
                 default_retry_interval_s: float) -> UpdateRequest | Refusal:
    """An UpdateFirmwareRequest (already schema-valid) as a job, or why we refuse it.

    `retries` counts the attempts after the first one: 2.1 says so explicitly ("0 means no
    retries"); 2.0.1's wording ("how many times it must try") is read the same way, so one
    station behaves the same under both versions.
    """
    firmware = payload["firmware"]
    certificate = firmware.get("signingCertificate")
    signature_b64 = firmware.get("signature")
    if not certificate or not signature_b64:
        # We implement only the secure update (L01): the CSMS SHALL send both (L01.FR.11).
        return Refusal(UpdateFirmwareStatus.REJECTED, "MissingParam",
                       "signingCertificate and signature are required (secure update only)")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except binascii.Error:
        return Refusal(UpdateFirmwareStatus.REJECTED, "InvalidValue", "signature is not base64")
    location = firmware["location"]
    if transfer_url_problem(location) is not None:
        return Refusal(UpdateFirmwareStatus.REJECTED, "InvalidURL",
                       f"location must be one of {', '.join(FILE_TRANSFER_PROTOCOLS)}")
    try:
        retrieve_at = parse_datetime(firmware["retrieveDateTime"])
        install_text = firmware.get("installDateTime")
        install_at = parse_datetime(install_text) if install_text is not None else None
    except ValueError as exc:
        return Refusal(UpdateFirmwareStatus.REJECTED, "InvalidValue", str(exc))
    retries = payload.get("retries", default_retries)
    interval = payload.get("retryInterval", default_retry_interval_s)
    return UpdateRequest(request_id=payload["requestId"], location=location,
                         retrieve_at=retrieve_at, install_at=install_at, certificate=certificate,
                         signature=signature, attempts=1 + max(0, retries),
                         retry_interval_s=max(0.0, float(interval)))


def check_certificate_validity(certificate_pem: str, now: float) -> CertCheck:
    """The default signing-certificate check: it parses, its validity period holds `now`, and
    its key is one we can verify with. It does NOT check the chain to a
    ManufacturerRootCertificate or revocation: the station must wire the certificate store's
    check instead (L01.FR.12)."""
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError:
        return CertCheck.INVALID
    if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
        return CertCheck.INVALID
    if not isinstance(cert.public_key(), rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return CertCheck.INVALID
    return CertCheck.VALID


def file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


def verify_signature(certificate_pem: str, signature: bytes, image: Path) -> bool:
    """L01.FR.04 / L01.FR.12: the signature over the whole file, with the signing certificate's
    public key and SHA-256. EC keys: ECDSA. RSA keys: PKCS#1 v1.5 (what `openssl dgst -sha256
    -sign` and most manufacturers' tooling produce) or PSS (the scheme L01.FR.04 names)."""
    try:
        key = x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()
    except ValueError:
        return False
    digest = file_sha256(image)
    prehashed = utils.Prehashed(hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePublicKey):
        try:
            key.verify(signature, digest, ec.ECDSA(prehashed))
        except InvalidSignature:
            return False
        return True
    if isinstance(key, rsa.RSAPublicKey):
        schemes: list[padding.AsymmetricPadding] = [
            padding.PKCS1v15(),
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)]
        for scheme in schemes:
            try:
                key.verify(signature, digest, scheme, prehashed)
            except InvalidSignature:
                continue
            return True
    return False


# ---- the default download edge --------------------------------------------------------------

async def http_download(url: str, dest: Path, *, ssl_context: ssl.SSLContext | None = None,
                        timeout_s: float = 60.0, max_bytes: int = 512 * 1024 * 1024) -> None:
    """GET `url` into `dest`, streaming. Raises TransferError. Give `ssl_context` (with
    functools.partial) to trust the CSMS's roots besides the system ones."""
    # Imported here: aiohttp costs ~26 MB of resident memory and most runs never download.
    import aiohttp  # noqa: PLC0415

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                url, ssl=ssl_context if ssl_context is not None else True) as response:
            if response.status != 200:
                raise TransferError(f"HTTP {response.status}", response.status)
            received = 0
            with dest.open("wb") as out:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    received += len(chunk)
                    if received > max_bytes:
                        raise TransferError(f"image larger than {max_bytes} bytes")
                    out.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransferError(type(exc).__name__) from exc


# ---- the updater ----------------------------------------------------------------------------

def _describe(exc: Exception) -> str:
    # Other exceptions' messages may quote the URL, and with it credentials or tokens.
    return str(exc) if isinstance(exc, TransferError) else type(exc).__name__


class FirmwareUpdater:
    """UpdateFirmware handling and the update job. See the module docstring for the flow.

    `notify` sends a FirmwareStatusNotification payload, `security_event(type, techInfo)` a
    SecurityEventNotification, `is_idle()` says no transaction is active, `reboot()` restarts the
    station (the station's Reset path; by then no transaction runs)."""

    def __init__(self, *, work_dir: Path, clock: Clock, sleep: Callable[[float], Awaitable[None]],
                 installer: Installer, notify: Callable[[Payload], Awaitable[None]],
                 security_event: Callable[[str, str], Awaitable[None]],
                 is_idle: Callable[[], bool], reboot: Callable[[], Awaitable[None]],
                 download: Callable[[str, Path], Awaitable[None]] = http_download,
                 verify_signing_certificate: Callable[[str], CertCheck] | None = None,
                 default_retries: int = 2, default_retry_interval_s: float = 60.0,
                 idle_poll_s: float = 5.0) -> None:
        self._work_dir = work_dir
        self._clock = clock
        self._sleep = sleep
        self._installer = installer
        self._notify = notify
        self._security_event = security_event
        self._is_idle = is_idle
        self._reboot = reboot
        self._download = download
        self._verify_certificate = verify_signing_certificate or (
            lambda pem: check_certificate_validity(pem, self._clock.now()))
        self._default_retries = default_retries
        self._default_retry_interval_s = default_retry_interval_s
        self._idle_poll_s = idle_poll_s
        self._job: asyncio.Task[None] | None = None
        self._last: tuple[FirmwareStatus, int] | None = None
        self._tasks = Tasks(log, "security_event_task_failed")

    # ---- CSMS requests and station queries --------------------------------------------------

    def update_firmware(self, payload: Payload) -> Payload:
        """Answer an UpdateFirmwareRequest; when accepted, the job starts as a task."""
        request = parse_update(payload, default_retries=self._default_retries,
                               default_retry_interval_s=self._default_retry_interval_s)
        if isinstance(request, Refusal):
            logs.log(log, "update_firmware_refused", logging.WARNING,
                     requestId=payload["requestId"], reason=request.reason_code)
            return request.response()
        try:
            check = self._verify_certificate(request.certificate)
        except Exception as exc:
            logs.log(log, "certificate_check_failed", logging.ERROR, error=repr(exc))
            check = CertCheck.INVALID
        if check is not CertCheck.VALID:
            # L01.FR.21/22: checked before accepting; L01.FR.02: the security event.
            logs.log(log, "signing_certificate_rejected", logging.WARNING,
                     requestId=request.request_id, check=check)
            self._tasks.spawn(self._security(
                INVALID_FIRMWARE_SIGNING_CERTIFICATE,
                f"UpdateFirmware {request.request_id}: signing certificate {check.value}"))
            return {"status": (UpdateFirmwareStatus.REVOKED_CERTIFICATE
                               if check is CertCheck.REVOKED
                               else UpdateFirmwareStatus.INVALID_CERTIFICATE).value}
        if self._committed():
            # L01.FR.27: an installation under way cannot be cancelled.
            return Refusal(UpdateFirmwareStatus.REJECTED, "FwUpdateInProgress",
                           "an installation is under way").response()
        previous = self._job if self._job is not None and not self._job.done() else None
        if previous is not None:
            previous.cancel()  # L01.FR.24
        logs.log(log, "update_firmware_accepted", requestId=request.request_id,
                 location=redact_url(request.location), replaces=previous is not None)
        self._job = asyncio.get_running_loop().create_task(self._run(request, previous))
        return {"status": (UpdateFirmwareStatus.ACCEPTED_CANCELED if previous is not None
                           else UpdateFirmwareStatus.ACCEPTED).value}

    def status(self) -> Payload:
        """The FirmwareStatusNotification payload a TriggerMessage asks for: Idle when no update
        ever ran here or the last one ended Installed (L01.FR.25), else the last status sent,
        with its requestId (L01.FR.26, L01.FR.20)."""
        if self._last is None or self._last[0] is FirmwareStatus.INSTALLED:
            return {"status": FirmwareStatus.IDLE.value}
        return {"status": self._last[0].value, "requestId": self._last[1]}

    def holds_new_sessions(self) -> bool:
        """True from a verified image until it is installed: with
        AllowNewSessionsPendingFirmwareUpdate false the station makes idle EVSEs Unavailable
        meanwhile (L01.FR.07)."""
        return self._last is not None and self._last[0] in (
            FirmwareStatus.SIGNATURE_VERIFIED, FirmwareStatus.INSTALL_SCHEDULED,
            FirmwareStatus.INSTALLING, FirmwareStatus.INSTALL_REBOOTING)

    def booted_after_update(self) -> bool:
        """Whether this start follows an update (BootNotification reason FirmwareUpdate)."""
        return self._installer.boot_report() is not None

    async def on_boot(self) -> None:
        """After BootNotification is accepted: report the outcome of the update staged before
        the reboot. When the notification cannot be sent the marker stays, for the next start."""
        report = self._installer.boot_report()
        if report is None:
            return
        # L01.FR.28 / L01.FR.29.
        status = (FirmwareStatus.INSTALLED if report.verified
                  else FirmwareStatus.INSTALL_VERIFICATION_FAILED)
        self._last = (status, report.request_id)
        logs.log(log, "firmware_status", status=status, requestId=report.request_id,
                 detail=report.detail)
        await self._notify({"status": status.value, "requestId": report.request_id})
        self._installer.acknowledge_boot()
        if report.verified:
            await self._security(FIRMWARE_UPDATED,
                                 f"UpdateFirmware {report.request_id}: {report.detail}")  # .FR.31

    async def join(self) -> None:
        """Wait until the running job and pending security events are done (tests, shutdown)."""
        pending = {*self._tasks, *([self._job] if self._job is not None else [])}
        if pending:
            await asyncio.wait(pending)

    async def close(self) -> None:
        for task in {*self._tasks, *([self._job] if self._job is not None else [])}:
            task.cancel()
        await self.join()

    # ---- the job ----------------------------------------------------------------------------

    def _committed(self) -> bool:
        return self._last is not None and self._last[0] in (
            FirmwareStatus.INSTALLING, FirmwareStatus.INSTALL_REBOOTING)

    async def _run(self, job: UpdateRequest, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            # The cancelled job's last notification goes out before this job's first.
            await asyncio.wait([previous])
        image = self._work_dir / f"firmware-{job.request_id}.img"
        try:
            self._work_dir.mkdir(parents=True, exist_ok=True)
            await self._update(job, image)
        except Exception as exc:  # a bug or a full disk must still end with a failure status
            logs.log(log, "update_failed", logging.ERROR, requestId=job.request_id,
                     error=repr(exc), exc_info=True)
            verified = self._last is not None and self._last[0] in (
                FirmwareStatus.SIGNATURE_VERIFIED, FirmwareStatus.INSTALL_SCHEDULED,
                FirmwareStatus.INSTALLING)
            await self._report(FirmwareStatus.INSTALLATION_FAILED if verified
                               else FirmwareStatus.DOWNLOAD_FAILED, job.request_id)
        finally:
            image.unlink(missing_ok=True)

    async def _update(self, job: UpdateRequest, image: Path) -> None:
        request_id = job.request_id
        if self._clock.now() < job.retrieve_at:
            await self._report(FirmwareStatus.DOWNLOAD_SCHEDULED, request_id)  # L01.FR.13
            await self._sleep_until(job.retrieve_at)
        if not await self._fetch(job, image):
            await self._report(FirmwareStatus.DOWNLOAD_FAILED, request_id)  # L01.FR.30
            return
        await self._report(FirmwareStatus.DOWNLOADED, request_id)
        if not await asyncio.to_thread(verify_signature, job.certificate, job.signature, image):
            await self._report(FirmwareStatus.INVALID_SIGNATURE, request_id)
            await self._security(INVALID_FIRMWARE_SIGNATURE,  # L01.FR.03
                                 f"UpdateFirmware {request_id}: signature does not verify")
            return
        await self._report(FirmwareStatus.SIGNATURE_VERIFIED, request_id)
        if not self._may_install(job):
            # L01.FR.16 (installDateTime ahead) and L01.FR.06 (transactions first).
            await self._report(FirmwareStatus.INSTALL_SCHEDULED, request_id)
            await self._wait_to_install(job)
        await self._report(FirmwareStatus.INSTALLING, request_id)
        try:
            outcome = await self._installer.install(image, request_id)
        except Exception as exc:
            logs.log(log, "install_failed", logging.ERROR, requestId=request_id,
                     error=repr(exc), exc_info=True)
            outcome = InstallOutcome.FAILED
        if outcome is InstallOutcome.FAILED:
            await self._report(FirmwareStatus.INSTALLATION_FAILED, request_id)
        elif outcome is InstallOutcome.ACTIVATED:
            await self._report(FirmwareStatus.INSTALLED, request_id)  # L01.FR.28
            await self._security(FIRMWARE_UPDATED, f"UpdateFirmware {request_id}")  # L01.FR.31
        else:
            await self._report(FirmwareStatus.INSTALL_REBOOTING, request_id)  # L01.FR.15/.FR.32
            try:
                await self._reboot()
            except Exception as exc:
                # The new firmware is staged and its marker written: whenever the station does
                # restart, on_boot reports the outcome. Claiming a failure now would be wrong.
                logs.log(log, "reboot_failed", logging.ERROR, requestId=request_id,
                         error=repr(exc))

    async def _fetch(self, job: UpdateRequest, image: Path) -> bool:
        for attempt in range(1, job.attempts + 1):
            if attempt > 1:
                await self._sleep(job.retry_interval_s)
            # One Downloading per attempt, as the note to L01.FR.30 allows.
            await self._report(FirmwareStatus.DOWNLOADING, job.request_id)
            try:
                await self._download(job.location, image)
            except Exception as exc:
                logs.log(log, "download_failed", logging.WARNING, requestId=job.request_id,
                         attempt=attempt, attempts=job.attempts, error=_describe(exc))
                continue
            return True
        return False

    def _may_install(self, job: UpdateRequest) -> bool:
        return (job.install_at is None or self._clock.now() >= job.install_at) and self._is_idle()

    async def _wait_to_install(self, job: UpdateRequest) -> None:
        if job.install_at is not None:
            await self._sleep_until(job.install_at)
        # L01.FR.06: installation must not interrupt a transaction.
        while not self._is_idle():
            await self._sleep(self._idle_poll_s)

    async def _sleep_until(self, at: float) -> None:
        while (remaining := at - self._clock.now()) > 0:
            await self._sleep(remaining)

    async def _report(self, status: FirmwareStatus, request_id: int) -> None:
        self._last = (status, request_id)
        logs.log(log, "firmware_status", status=status, requestId=request_id)
        try:
            # Shielded: cancelling the job must not cut a message in half on the wire.
            await asyncio.shield(self._notify({"status": status.value, "requestId": request_id}))
        except Exception as exc:
            logs.log(log, "notify_failed", logging.WARNING, status=status, error=repr(exc))

    async def _security(self, kind: str, tech_info: str) -> None:
        try:
            await asyncio.shield(self._security_event(kind, tech_info[:255]))
        except Exception as exc:
            logs.log(log, "security_event_failed", logging.WARNING, kind=kind, error=repr(exc))



# ---- the sim board's installer ---------------------------------------------------------------

class UnsafeArchiveError(Exception):
    """The image would write outside its slot, or holds what a slot must not (devices, fifos)."""


def unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why an archive member may not be unpacked into a slot, or None."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in path.parts:
        return "path traversal"
    if member.issym():
        if PurePosixPath(member.linkname).is_absolute():
            return "absolute link target"
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if resolved == ".." or resolved.startswith("../"):
            return "link points outside the slot"
    elif member.islnk():
        target = PurePosixPath(member.linkname)
        if target.is_absolute() or ".." in target.parts:
            return "hard link points outside the slot"
    elif not (member.isfile() or member.isdir()):
        return "special file"
    return None


def tree_digest(root: Path) -> str:
    """SHA-256 over a directory tree's names, kinds, link targets and file contents."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix().encode()
            if path.is_symlink():
                digest.update(b"L" + rel + b"\0" + os.readlink(path).encode() + b"\0")
            elif path.is_dir():
                digest.update(b"D" + rel + b"\0")
            else:
                digest.update(b"F" + rel + b"\0" + file_sha256(path))
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class SlotInstaller:
    """A/B slots for the sim board. Images are .tar.gz archives. Layout under `root`:
    slots/a, slots/b, slots/active (a symlink naming the running slot) and pending.json, the
    marker of an update waiting to be confirmed by the next start.

    install: check every member (no absolute paths, no `..`, no links leaving the slot, no special
    files), unpack into the inactive slot (staged, then renamed into place), write the marker with
    a digest of the unpacked tree, then switch `active` with an atomic rename. The marker is
    written first: a crash between the two leaves the old slot active and the next start reports
    InstallVerificationFailed rather than claiming an update that never ran.

    boot_report: the update is verified when `active` names the new slot and its tree still has
    the digest taken at install; otherwise `active` goes back to the previous slot."""

    SLOTS = ("a", "b")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.slots = root / "slots"
        self.marker = root / "pending.json"

    def active_slot(self) -> str | None:
        link = self.slots / "active"
        return os.readlink(link) if link.is_symlink() else None

    async def install(self, image: Path, request_id: int) -> InstallOutcome:
        try:
            await asyncio.to_thread(self._install, image, request_id)
        except (UnsafeArchiveError, tarfile.TarError, OSError) as exc:
            logs.log(log, "slot_install_failed", logging.ERROR, requestId=request_id,
                     error=str(exc)[:200])
            return InstallOutcome.FAILED
        return InstallOutcome.REBOOT_REQUIRED

    def boot_report(self) -> BootReport | None:
        try:
            marker = json.loads(self.marker.read_text(encoding="utf-8"))
            request_id = int(marker["requestId"])
            slot = str(marker["slot"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            logs.log(log, "slot_marker_unreadable", logging.ERROR, error=repr(exc))
            self.marker.unlink(missing_ok=True)
            return None
        if "verified" not in marker:
            verified, detail = self._verify(slot, str(marker.get("digest")))
            previous = marker.get("previous")
            if not verified and previous in self.SLOTS and self.active_slot() == slot:
                self._switch(previous)
                detail += f"; back on slot {previous}"
            marker.update(verified=verified, detail=detail)
            _write_atomic(self.marker, json.dumps(marker))
            logs.log(log, "slot_boot_checked", requestId=request_id, verified=verified,
                     detail=detail)
        return BootReport(request_id, bool(marker["verified"]), str(marker["detail"]))

    def acknowledge_boot(self) -> None:
        self.marker.unlink(missing_ok=True)

    def _verify(self, slot: str, digest: str) -> tuple[bool, str]:
        if self.active_slot() != slot:
            return False, f"slot {slot} is not active"
        if tree_digest(self.slots / slot) != digest:
            return False, f"slot {slot} differs from what was installed"
        return True, f"running slot {slot}"

    def _install(self, image: Path, request_id: int) -> None:
        previous = self.active_slot()
        target = "b" if previous == "a" else "a"
        staging = self.slots / ".staging"
        with tarfile.open(image, "r:gz") as archive:
            members = archive.getmembers()
            for member in members:
                reason = unsafe_member(member)
                if reason is not None:
                    raise UnsafeArchiveError(f"{member.name[:100]!r}: {reason}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            # The "data" filter repeats the checks above inside tarfile, as a second line.
            archive.extractall(staging, members=members, filter="data")
        shutil.rmtree(self.slots / target, ignore_errors=True)
        os.replace(staging, self.slots / target)
        _write_atomic(self.marker, json.dumps({
            "requestId": request_id, "slot": target, "previous": previous,
            "digest": tree_digest(self.slots / target)}))
        self._switch(target)
        logs.log(log, "slot_switched", requestId=request_id, slot=target, previous=previous)

    def _switch(self, slot: str) -> None:
        tmp = self.slots / ".active.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(slot, tmp)
        os.replace(tmp, self.slots / "active")
        _fsync_dir(self.slots)
