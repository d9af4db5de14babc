"""N01 log upload: a real aiohttp server on 127.0.0.1 receives the log by PUT (or POST); the log is
written by our own JSON formatter under a virtual clock. Every payload the uploader produces is
validated against the 2.0.1 and 2.1 schemas."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from aiohttp import web

from firmware import logs
from firmware.ocpp.log_upload import LogUploader, line_time, location_problem, put_url
from hal.clock import VirtualClock, iso

T0 = VirtualClock.DEFAULT_START
SCHEMAS = Path(ocpp.__file__).parent


@cache
def _validator(version: str, name: str) -> Any:
    schema = json.loads((SCHEMAS / version / "schemas" / f"{name}.json").read_text())
    return jsonschema.validators.validator_for(schema)(
        schema, format_checker=jsonschema.FormatChecker())


def check(name: str, payload: dict[str, Any], versions: tuple[str, ...] = ("v201", "v21")) -> None:
    for version in versions:
        _validator(version, name).validate(payload)


def write_log(path: Path) -> dict[str, str]:
    """A log as the controller writes it, one record an hour before T0, a minute before, at T0
    and a minute after, plus lines a filter cannot place. Returns the lines by label."""
    clock = VirtualClock(T0 - 3600)
    formatter = logs.JsonFormatter(clock)
    lines: dict[str, str] = {}
    for label, at in [("hour_before", T0 - 3600), ("minute_before", T0 - 60), ("at_t0", T0),
                      ("minute_after", T0 + 60)]:
        clock.advance(at - clock.now())
        record = logging.LogRecord("voltpilot.test", logging.INFO, __file__, 1, label, None,
                                   None)
        record.fields = {"n": label}
        lines[label] = formatter.format(record) + "\n"
    # Another writer's field order and a zone offset: T0 + 10 s.
    lines["foreign"] = json.dumps({"level": "info", "ts": "2026-01-01T01:00:10+01:00",
                                   "event": "foreign"}) + "\n"
    lines["traceback"] = "Traceback (most recent call last):\n"
    lines["no_ts"] = json.dumps({"event": "no time"}) + "\n"
    path.write_text("".join(lines.values()), encoding="utf-8")
    return lines


class LogServer:
    """Takes uploads over real HTTP. PUT /logs/{name} answers with the scripted statuses (201
    once they run out); /post-only/ and /form take multipart POST only (so PUT gets 404 below
    the first and 405 at the second); all record what arrived."""

    def __init__(self) -> None:
        self.answers: list[int] = []
        self.received: list[tuple[str, str, bytes]] = []  # (method, filename, body)
        self.puts = 0
        self.authorization: list[str | None] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> LogServer:
        app = web.Application()
        app.router.add_put("/logs/{name}", self._put)
        app.router.add_post("/post-only/", self._post)
        app.router.add_post("/form", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _put(self, request: web.Request) -> web.Response:
        self.puts += 1
        self.authorization.append(request.headers.get("Authorization"))
        body = await request.read()
        status = self.answers.pop(0) if self.answers else 201
        if status < 300:
            self.received.append(("PUT", request.match_info["name"], body))
        return web.Response(status=status)

    async def _post(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["uploadedfile"]
        assert isinstance(upload, web.FileField)
        assert upload.content_type == "application/octet-stream"
        self.received.append(("POST", upload.filename, upload.file.read()))
        return web.Response(status=200)

    def url(self, path: str = "/logs/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class Station:
    def __init__(self, tmp_path: Path, *, security: bool = False,
                 park_long_sleeps: bool = False) -> None:
        self.clock = VirtualClock()
        self.notes: list[dict[str, Any]] = []
        self.sleeps: list[float] = []
        self.park_long_sleeps = park_long_sleeps
        self.log_file = tmp_path / "voltpilot.log"
        self.lines = write_log(self.log_file)
        self.security_file = tmp_path / "security.log"
        if security:
            self.security_file.write_text(
                json.dumps({"ts": iso(T0), "event": "SettingSystemTime"}) + "\n")
        self.work = tmp_path / "work"
        self.uploader = LogUploader(
            log_file=self.log_file, security_log_file=self.security_file if security else None,
            clock=self.clock, sleep=self.sleep, notify=self.notify, work_dir=self.work)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.park_long_sleeps and seconds >= 1000:
            await asyncio.Event().wait()
        self.clock.advance(seconds)
        await asyncio.sleep(0)

    async def notify(self, payload: dict[str, Any]) -> None:
        check("LogStatusNotificationRequest", payload)
        self.notes.append(payload)

    def get_log(self, request_id: int, location: str, *, log_type: str = "DiagnosticsLog",
                oldest: float | None = None, latest: float | None = None,
                retries: int | None = None, retry_interval: int | None = None,
                versions: tuple[str, ...] = ("v201", "v21")) -> dict[str, Any]:
        params: dict[str, Any] = {"remoteLocation": location}
        if oldest is not None:
            params["oldestTimestamp"] = iso(oldest)
        if latest is not None:
            params["latestTimestamp"] = iso(latest)
        payload: dict[str, Any] = {"logType": log_type, "requestId": request_id, "log": params}
        if retries is not None:
            payload["retries"] = retries
        if retry_interval is not None:
            payload["retryInterval"] = retry_interval
        check("GetLogRequest", payload, versions)
        response = self.uploader.get_log(payload)
        check("GetLogResponse", response, versions)
        return response

    def statuses(self) -> list[tuple[str, int | None]]:
        return [(note["status"], note.get("requestId")) for note in self.notes]

    def status(self) -> dict[str, Any]:
        payload = self.uploader.status()
        check("LogStatusNotificationRequest", payload)
        return payload


def run(main: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout=15))


def test_n01_uploads_the_lines_in_the_window_by_put(tmp_path: Path) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        async with LogServer() as server:
            response = station.get_log(1, server.url(), oldest=T0 - 120, latest=T0 + 30)
            await station.uploader.join()
        assert response == {"status": "Accepted",
                            "filename": "DiagnosticsLog-1-20260101T000000Z.log"}  # N01.FR.01
        assert station.statuses() == [("Uploading", 1), ("Uploaded", 1)]  # N01.FR.07/08/09
        [(method, name, body)] = server.received
        assert (method, name) == ("PUT", response["filename"])
        lines = station.lines
        assert body.decode() == lines["minute_before"] + lines["at_t0"] + lines["foreign"]
        assert list(station.work.iterdir()) == []  # the collected file is removed
        assert station.status() == {"status": "Idle"}  # N01.FR.13

    run(main)


def test_n01_without_a_window_the_whole_log_goes(tmp_path: Path) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        async with LogServer() as server:
            response = station.get_log(2, server.url() + "exact-name.log")
            await station.uploader.join()
        [(_, name, body)] = server.received
        assert name == "exact-name.log"  # a remoteLocation not ending in "/" is the target
        assert body == station.log_file.read_bytes()
        assert response["status"] == "Accepted"

    run(main)


def test_n01_security_log(tmp_path: Path) -> None:
    async def main() -> None:
        station = Station(tmp_path, security=True)
        async with LogServer() as server:
            response = station.get_log(3, server.url(), log_type="SecurityLog",
                                       oldest=T0 - 1, latest=T0 + 1)
            await station.uploader.join()
        [(_, name, body)] = server.received
        assert name == response["filename"] == "SecurityLog-3-20260101T000000Z.log"
        assert body == station.security_file.read_bytes()  # N01.FR.03

    run(main)


def test_n01_server_error_is_upload_failure_after_the_retries(tmp_path: Path) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        async with LogServer() as server:
            server.answers = [500] * 10
            station.get_log(4, server.url(), retries=2, retry_interval=10)
            await station.uploader.join()
        assert server.puts == 3  # the first attempt and two retries
        assert station.sleeps == [10, 10]
        assert station.statuses() == [("Uploading", 4)] * 3 + [("UploadFailure", 4)]  # .FR.10

    run(main)


def test_n01_a_retry_that_succeeds_ends_uploaded(tmp_path: Path) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        async with LogServer() as server:
            server.answers = [503]
            station.get_log(5, server.url(), retries=1, retry_interval=10)
            await station.uploader.join()
        assert station.statuses() == [("Uploading", 5), ("Uploading", 5), ("Uploaded", 5)]
        assert len(server.received) == 1

    run(main)


@pytest.mark.parametrize("code", [401, 403])
def test_n01_refused_credentials_are_permission_denied(tmp_path: Path, code: int) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        async with LogServer() as server:
            server.answers = [code]
            station.get_log(6, server.url(), retries=0)
            await station.uploader.join()
        assert station.statuses() == [("Uploading", 6), ("PermissionDenied", 6)]

    run(main)


@pytest.mark.parametrize(("location", "status"), [
    ("ftp://127.0.0.1/logs/", "NotSupportedOperation"),
    ("sftp://127.0.0.1/logs/", "NotSupportedOperation"),
    ("ftps://127.0.0.1/logs/", "NotSupportedOperation"),
    ("not a url", "BadMessage"),
    ("http://[::1/logs/", "BadMessage"),
    ("http://127.0.0.1:99999/logs/", "BadMessage"),
])
def test_n01_locations_we_cannot_use_fail_without_trying(tmp_path: Path, location: str,
                                                         status: str) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        response = station.get_log(7, location, retries=3)
        await station.uploader.join()
        assert response["status"] == "Accepted"
        assert station.statuses() == [(status, 7)]
        assert station.sleeps == []

    run(main)


@pytest.mark.parametrize("path", ["/post-only/", "/form"])
def test_n01_post_when_the_server_takes_no_put(tmp_path: Path, path: str) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        async with LogServer() as server:
            response = station.get_log(8, server.url(path))
            await station.uploader.join()
        [(method, name, body)] = server.received
        assert (method, name) == ("POST", response["filename"])  # N01.FR.19
        assert body == station.log_file.read_bytes()
        assert station.statuses() == [("Uploading", 8), ("Uploaded", 8)]

    run(main)


def test_n01_credentials_in_the_url_authenticate_and_stay_out_of_the_logs(
        tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter(VirtualClock()))
    logger = logging.getLogger("voltpilot.ocpp.log_upload")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)

    async def main() -> None:
        station = Station(tmp_path)
        async with LogServer() as server:
            server.answers = [500]
            location = f"http://uploader:s3cret-pw@127.0.0.1:{server.port}/logs/upload.log?token=tok3n"
            station.get_log(9, location, retries=1, retry_interval=1)
            await station.uploader.join()
        assert station.statuses()[-1] == ("Uploaded", 9)
        assert server.authorization[0] is not None
        assert server.authorization[0].startswith("Basic ")  # N01.FR.17

    try:
        run(main)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    written = stream.getvalue()
    assert "get_log_accepted" in written
    assert "s3cret-pw" not in written
    assert "tok3n" not in written


def test_n01_new_get_log_cancels_the_running_upload(tmp_path: Path) -> None:
    async def main() -> None:
        station = Station(tmp_path, park_long_sleeps=True)
        async with LogServer() as server:
            server.answers = [500]
            first = station.get_log(10, server.url(), retries=3, retry_interval=3600)
            while station.sleeps != [3600]:
                await asyncio.sleep(0)
            assert station.status() == {"status": "Uploading", "requestId": 10}
            second = station.get_log(11, server.url())
            await station.uploader.join()
        assert first["status"] == "Accepted"
        assert second["status"] == "AcceptedCanceled"  # N01.FR.12
        assert station.statuses() == [("Uploading", 10), ("AcceptedCanceled", 10),  # N01.FR.20
                                      ("Uploading", 11), ("Uploaded", 11)]
        assert [name for _, name, _ in server.received] == [second["filename"]]

    run(main)


def test_n01_logs_we_do_not_have_are_rejected(tmp_path: Path) -> None:
    async def main() -> None:
        station = Station(tmp_path)
        response = station.get_log(12, "http://127.0.0.1/logs/", log_type="SecurityLog")
        assert (response["status"], response["statusInfo"]["reasonCode"]) == (
            "Rejected", "UnsupportedParam")  # N01.FR.05
        response = station.get_log(13, "http://127.0.0.1/logs/", log_type="DataCollectorLog",
                                   versions=("v21",))
        assert response["status"] == "Rejected"
        station.log_file.unlink()
        response = station.get_log(14, "http://127.0.0.1/logs/")
        assert (response["status"], response["statusInfo"]["reasonCode"]) == (
            "Rejected", "NotFound")
        await station.uploader.join()
        assert station.notes == []
        assert station.status() == {"status": "Idle"}

    run(main)


def test_line_time_and_locations() -> None:
    assert line_time(json.dumps({"ts": iso(T0), "event": "x"})) == T0
    assert line_time('{"event": "x", "ts": "2026-01-01T00:00:01Z"}') == T0 + 1
    assert line_time('{"ts": "garbage"}') is None
    assert line_time("plain text") is None
    assert line_time("[1, 2]") is None
    assert location_problem("https://logs.example/upload/") is None
    assert put_url("https://logs.example/upload/", "a.log") == "https://logs.example/upload/a.log"
    assert put_url("https://logs.example/upload", "a.log") == "https://logs.example/upload"
