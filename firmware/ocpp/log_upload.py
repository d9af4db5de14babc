"""Log upload, OCPP 2.0.1 / 2.1 use case N01: GetLog in, LogStatusNotification out.

GetLog names a log (our diagnostics log or the security log), an optional time window and a URL.
The lines of that log whose "ts" lies in the window (both ends included) are copied to a file
named in the GetLog answer, and the file is sent by HTTP(S) PUT, or by a multipart POST when the
server has no PUT there (N01.FR.18/19), with the request's retries. One upload runs at a time; a new
GetLog cancels the running one (N01.FR.12, N01.FR.20).

Where the file goes: a remoteLocation ending in "/" is a directory and the file name is appended
to it for PUT (as `curl -T` does); any other remoteLocation is the target itself. POST always goes
to remoteLocation as given. Credentials in the URL (N01.FR.17) are used for Basic auth and never
logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware import logs
from firmware.ocpp.dates import parse_datetime
from firmware.ocpp.firmware_update import redact_url, transfer_url_problem
from hal.clock import Clock, utc

if TYPE_CHECKING:
    import ssl

Payload = dict[str, Any]

log = logs.get("ocpp.log_upload")

# Lines read between two yields to the event loop while a log is collected.
_BATCH_LINES = 2000

# PUT answers after which the same upload is tried as a POST: log stores that take only POST
# answer 405 at the location itself and 404 below it.
_NO_PUT = frozenset({404, 405, 501})


class LogType(StrEnum):
    DIAGNOSTICS = "DiagnosticsLog"
    SECURITY = "SecurityLog"
    DATA_COLLECTOR = "DataCollectorLog"  # 2.1 only; we keep no data-collector log


class GetLogStatus(StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    ACCEPTED_CANCELED = "AcceptedCanceled"


class UploadLogStatus(StrEnum):
    UPLOADING = "Uploading"
    UPLOADED = "Uploaded"
    UPLOAD_FAILURE = "UploadFailure"
    BAD_MESSAGE = "BadMessage"
    NOT_SUPPORTED_OPERATION = "NotSupportedOperation"
    PERMISSION_DENIED = "PermissionDenied"
    ACCEPTED_CANCELED = "AcceptedCanceled"
    IDLE = "Idle"


class UploadError(Exception):
    """An upload failed; `status` is what to report for it (N01.FR.10 asks for the status that
    describes the failure best). The message never holds the URL."""

    def __init__(self, status: UploadLogStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


# ---- pure parts -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LogRequest:
    request_id: int
    log_type: LogType
    remote_location: str
    oldest: float | None
    latest: float | None
    attempts: int
    retry_interval_s: float


def parse_get_log(payload: Payload, *, default_retries: int,
                  default_retry_interval_s: float) -> LogRequest:
    """A GetLogRequest (already schema-valid) as a job. Raises ValueError for a timestamp we
    cannot read. `retries` counts attempts after the first (2.1: "0 means no retries")."""
    params = payload["log"]
    oldest = params.get("oldestTimestamp")
    latest = params.get("latestTimestamp")
    return LogRequest(
        request_id=payload["requestId"], log_type=LogType(payload["logType"]),
        remote_location=params["remoteLocation"],
        oldest=parse_datetime(oldest) if oldest is not None else None,
        latest=parse_datetime(latest) if latest is not None else None,
        attempts=1 + max(0, payload.get("retries", default_retries)),
        retry_interval_s=max(0.0, float(payload.get("retryInterval", default_retry_interval_s))))


def location_problem(url: str) -> UploadLogStatus | None:
    """The failure to report without trying, or None: BadMessage for a URL we cannot read,
    NotSupportedOperation for a scheme outside FileTransferProtocols (ftp, sftp, ...)."""
    problem = transfer_url_problem(url)
    if problem == "malformed":
        return UploadLogStatus.BAD_MESSAGE
    if problem == "unsupported":
        return UploadLogStatus.NOT_SUPPORTED_OPERATION
    return None


def put_url(remote_location: str, filename: str) -> str:
    return remote_location + filename if remote_location.endswith("/") else remote_location


_TS_PREFIX = '{"ts": "'


def line_time(line: str) -> float | None:
    """The "ts" of one log line (see firmware/logs.py), or None when it has none we can read."""
    if line.startswith(_TS_PREFIX):
        # Our own formatter writes "ts" first: no need to parse the whole line.
        end = line.find('"', len(_TS_PREFIX))
        text: object = line[len(_TS_PREFIX):end] if end > 0 else None
    else:
        try:
            record = json.loads(line)
        except ValueError:
            return None
        text = record.get("ts") if isinstance(record, dict) else None
    if not isinstance(text, str):
        return None
    try:
        return parse_datetime(text)
    except ValueError:
        return None


def wanted(line: str, oldest: float | None, latest: float | None) -> bool:
    """Whether a line belongs in the upload: its "ts" lies in [oldest, latest]. Without bounds
    every line does, readable or not."""
    if oldest is None and latest is None:
        return True
    t = line_time(line)
    return t is not None and (oldest is None or t >= oldest) and (latest is None or t <= latest)


# ---- the default upload edge ----------------------------------------------------------------

async def http_upload(remote_location: str, path: Path, *,
                      ssl_context: ssl.SSLContext | None = None, timeout_s: float = 60.0) -> None:
    """Send the file at `path` (named as announced in GetLogResponse) by PUT; when the server
    has no PUT there (404, 405, 501), by multipart POST with the N01.FR.19 headers. Raises
    UploadError. Give `ssl_context` (with functools.partial) to trust the CSMS's roots besides
    the system ones."""
    # Imported here: aiohttp costs ~26 MB of resident memory and most runs never upload.
    import aiohttp  # noqa: PLC0415

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    ssl_arg: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with path.open("rb") as body:
                async with session.put(put_url(remote_location, path.name), data=body,
                                       headers={"Content-Type": "application/octet-stream"},
                                       ssl=ssl_arg) as response:
                    status = response.status
            if status in _NO_PUT:
                with path.open("rb") as body:
                    form = aiohttp.FormData()
                    form.add_field("uploadedfile", body, filename=path.name,
                                   content_type="application/octet-stream")
                    async with session.post(remote_location, data=form,
                                            ssl=ssl_arg) as response:
                        status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UploadError(UploadLogStatus.UPLOAD_FAILURE, type(exc).__name__) from exc
    if status in (401, 403):
        raise UploadError(UploadLogStatus.PERMISSION_DENIED, f"HTTP {status}")
    if not 200 <= status < 300:
        raise UploadError(UploadLogStatus.UPLOAD_FAILURE, f"HTTP {status}")


# ---- the uploader ---------------------------------------------------------------------------

class LogUploader:
    """GetLog handling and the upload job. `notify` sends a LogStatusNotification payload;
    `upload(remoteLocation, file)` sends the file (default http_upload); collected files are
    written under `work_dir` (default: a fresh temporary directory per upload) and removed after."""

    def __init__(self, *, log_file: Path, security_log_file: Path | None, clock: Clock,
                 sleep: Callable[[float], Awaitable[None]],
                 notify: Callable[[Payload], Awaitable[None]],
                 upload: Callable[[str, Path], Awaitable[None]] = http_upload,
                 work_dir: Path | None = None, default_retries: int = 2,
                 default_retry_interval_s: float = 60.0) -> None:
        self._log_file = log_file
        self._security_log_file = security_log_file
        self._clock = clock
        self._sleep = sleep
        self._notify = notify
        self._upload = upload
        self._work_dir = work_dir
        self._default_retries = default_retries
        self._default_retry_interval_s = default_retry_interval_s
        self._job: asyncio.Task[None] | None = None
        self._request_id: int | None = None
        self._last: UploadLogStatus | None = None

    def get_log(self, payload: Payload) -> Payload:
        """Answer a GetLogRequest; when accepted, the upload starts as a task."""
        try:
            request = parse_get_log(payload, default_retries=self._default_retries,
                                    default_retry_interval_s=self._default_retry_interval_s)
        except ValueError as exc:
            return _rejected("InvalidValue", str(exc))
        source = {LogType.DIAGNOSTICS: self._log_file,
                  LogType.SECURITY: self._security_log_file}.get(request.log_type)
        if source is None:
            # N01.FR.05: a log we do not keep.
            return _rejected("UnsupportedParam", f"no {request.log_type.value} on this station")
        if not source.is_file():
            return _rejected("NotFound", f"no {request.log_type.value} has been written yet")
        filename = (f"{request.log_type.value}-{request.request_id}-"
                    f"{utc(self._clock.now()):%Y%m%dT%H%M%SZ}.log")
        previous = self._job if self._job is not None and not self._job.done() else None
        previous_id = self._request_id
        if previous is not None:
            previous.cancel()  # N01.FR.12
        logs.log(log, "get_log_accepted", requestId=request.request_id,
                 logType=request.log_type, location=redact_url(request.remote_location),
                 replaces=previous_id if previous is not None else None)
        self._request_id = request.request_id
        self._last = None
        self._job = asyncio.get_running_loop().create_task(
            self._run(request, source, filename,
                      (previous, previous_id) if previous is not None else None))
        # N01.FR.01: the name of the file that will be uploaded.
        return {"status": (GetLogStatus.ACCEPTED_CANCELED if previous is not None
                           else GetLogStatus.ACCEPTED).value, "filename": filename}

    def status(self) -> Payload:
        """The LogStatusNotification payload a TriggerMessage asks for: Idle without a requestId
        when no upload runs (N01.FR.13), else the upload's status with its requestId."""
        if self._job is None or self._job.done() or self._request_id is None:
            return {"status": UploadLogStatus.IDLE.value}
        return {"status": (self._last or UploadLogStatus.UPLOADING).value,
                "requestId": self._request_id}

    async def join(self) -> None:
        """Wait until the running upload is done (tests, shutdown)."""
        if self._job is not None:
            await asyncio.wait([self._job])

    async def close(self) -> None:
        if self._job is not None:
            self._job.cancel()
        await self.join()

    # ---- the job ----------------------------------------------------------------------------

    async def _run(self, request: LogRequest, source: Path, filename: str,
                   previous: tuple[asyncio.Task[None], int | None] | None) -> None:
        if previous is not None:
            task, previous_id = previous
            await asyncio.wait([task])
            if previous_id is not None:
                await self._send(UploadLogStatus.ACCEPTED_CANCELED, previous_id)  # N01.FR.20
        work_dir = self._work_dir or Path(tempfile.mkdtemp(prefix="voltpilot-log-"))
        path = work_dir / filename
        try:
            await self._upload_job(request, source, path)
        except Exception as exc:  # a bug or a full disk must still end with a failure status
            logs.log(log, "log_upload_failed", logging.ERROR, requestId=request.request_id,
                     error=repr(exc), exc_info=True)
            await self._report(UploadLogStatus.UPLOAD_FAILURE, request.request_id)
        finally:
            if self._work_dir is None:
                shutil.rmtree(work_dir, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    async def _upload_job(self, request: LogRequest, source: Path, path: Path) -> None:
        request_id = request.request_id
        problem = location_problem(request.remote_location)
        if problem is not None:
            await self._report(problem, request_id)  # N01.FR.10
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = await self._collect(source, path, request.oldest, request.latest)
        logs.log(log, "log_collected", requestId=request_id, lines=lines,
                 bytes=path.stat().st_size)
        failure = UploadLogStatus.UPLOAD_FAILURE
        for attempt in range(1, request.attempts + 1):
            if attempt > 1:
                await self._sleep(request.retry_interval_s)
            await self._report(UploadLogStatus.UPLOADING, request_id)  # N01.FR.08
            try:
                await self._upload(request.remote_location, path)
            except UploadError as exc:
                failure = exc.status
                logs.log(log, "upload_attempt_failed", logging.WARNING, requestId=request_id,
                         attempt=attempt, attempts=request.attempts, error=str(exc))
                continue
            except Exception as exc:
                failure = UploadLogStatus.UPLOAD_FAILURE
                logs.log(log, "upload_attempt_failed", logging.WARNING, requestId=request_id,
                         attempt=attempt, attempts=request.attempts, error=type(exc).__name__)
                continue
            await self._report(UploadLogStatus.UPLOADED, request_id)  # N01.FR.09
            return
        await self._report(failure, request_id)  # N01.FR.10

    async def _collect(self, source: Path, dest: Path, oldest: float | None,
                       latest: float | None) -> int:
        """Copy the selected lines, yielding to the loop every few thousand lines so a large log
        does not stall the controller (no thread: it would compete for the GIL)."""
        count = 0
        with source.open(encoding="utf-8", errors="replace") as src, \
                dest.open("w", encoding="utf-8") as out:
            for scanned, line in enumerate(src, start=1):
                if wanted(line, oldest, latest):
                    out.write(line if line.endswith("\n") else line + "\n")
                    count += 1
                if scanned % _BATCH_LINES == 0:
                    await asyncio.sleep(0)
        return count

    async def _report(self, status: UploadLogStatus, request_id: int) -> None:
        self._last = status
        await self._send(status, request_id)

    async def _send(self, status: UploadLogStatus, request_id: int) -> None:
        logs.log(log, "log_status", status=status, requestId=request_id)
        try:
            # Shielded: cancelling the job must not cut a message in half on the wire.
            await asyncio.shield(self._notify({"status": status.value, "requestId": request_id}))
        except Exception as exc:
            logs.log(log, "notify_failed", logging.WARNING, status=status, error=repr(exc))


def _rejected(reason_code: str, info: str) -> Payload:
    return {"status": GetLogStatus.REJECTED.value,
            "statusInfo": {"reasonCode": reason_code[:20], "additionalInfo": info[:1024]}}
