"""The independent CSMS test peer: npm `ocpp-rpc` in strict mode, run as a Node process.

A CSMS written with the same `ocpp` library as the station cannot catch what that library gets
wrong, so the station scenarios also run against ocpp-rpc, which validates every CALL and
CALLRESULT in both directions against the official schemas. tests/peers/ocpp_rpc/server.js is
the server; this module starts it, reads its JSON-line events and sends it commands:

    async with OcppRpcPeer(("ocpp2.1", "ocpp2.0.1")) as peer:
        ...connect the station to f"{peer.url}/{identity}"...
        protocol = await peer.wait_connected(identity)
        boot = await peer.next_call("BootNotification")        # the event dict, see below
        result = await peer.call(identity, "GetVariables", {...})
        assert peer.errors == []

A call event is {"identity", "protocol", "action", "messageId", "payload"}; an error event is
{"identity", "protocol", "kind", "direction", "action", "messageId", "code", "message", "payload"}
with kind "call" / "response" (schema violation), "frame" (not an OCPP-J frame) or "unhandled"
(an action the peer has no answer for).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

PEER_DIR = Path(__file__).resolve().parents[1] / "peers" / "ocpp_rpc"
SETUP_HINT = "run `make setup` (it runs `npm ci` in tests/peers/ocpp_rpc)"

Event = dict[str, Any]


class PeerUnavailableError(RuntimeError):
    """Node or the peer's npm packages are missing: the test must fail, not skip."""


class OcppRpcPeerError(Exception):
    """A CSMS-initiated call through the peer did not return a CALLRESULT."""


class OcppRpcCallError(OcppRpcPeerError):
    """The station answered the call with a CALLERROR."""

    def __init__(self, code: str, description: str, details: Any) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details


class CallFailure(Enum):
    INVALID_REQUEST = "invalid_request"    # the test's payload failed the peer's schema check
    INVALID_RESPONSE = "invalid_response"  # the station's CALLRESULT failed the schema check
    TIMEOUT = "timeout"
    NOT_CONNECTED = "not_connected"
    DISCONNECTED = "disconnected"
    OTHER = "other"


class OcppRpcCallFailedError(OcppRpcPeerError):
    """The call did not complete; for schema failures `code` is the ocpp-rpc error code
    (FormatViolation, OccurenceConstraintViolation, TypeConstraintViolation, ...)."""

    def __init__(self, reason: CallFailure, code: str | None, message: str) -> None:
        super().__init__(f"{reason.value}: {code or ''} {message}".strip())
        self.reason = reason
        self.code = code
        self.message = message


def _require_setup() -> str:
    node = shutil.which("node")
    if node is None:
        raise PeerUnavailableError(f"node is not installed; {SETUP_HINT}")
    package = json.loads((PEER_DIR / "package.json").read_text())
    wanted = package["dependencies"]["ocpp-rpc"]
    installed_manifest = PEER_DIR / "node_modules" / "ocpp-rpc" / "package.json"
    if not installed_manifest.exists():
        raise PeerUnavailableError(f"tests/peers/ocpp_rpc/node_modules is missing; {SETUP_HINT}")
    installed = json.loads(installed_manifest.read_text())["version"]
    if installed != wanted:
        raise PeerUnavailableError(
            f"ocpp-rpc {installed} is installed but {wanted} is pinned; {SETUP_HINT}")
    return node


class OcppRpcPeer:
    """Async context manager running the ocpp-rpc CSMS on 127.0.0.1 (a free port)."""

    def __init__(self, protocols: Sequence[str] = ("ocpp2.1", "ocpp2.0.1"), *,
                 heartbeat_interval: int = 300, ping_interval: int = 30,
                 password: str | None = None, start_timeout: float = 10.0) -> None:
        self._args = ["--protocols", ",".join(protocols), "--port", "0",
                      "--interval", str(heartbeat_interval),
                      "--ping-interval", str(ping_interval)]
        if password is not None:
            self._args += ["--password", password]
        self._start_timeout = start_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._events: list[Event] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Condition()
        self._stderr: deque[str] = deque(maxlen=40)
        self._exited = False
        self._next_id = 0
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL; a station connects to f"{url}/{identity}"."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def events(self) -> list[Event]:
        return list(self._events)

    @property
    def errors(self) -> list[Event]:
        """Every schema violation, malformed frame and unhandled action seen, both directions."""
        return [e for e in self._events if e["event"] == "error"]

    def calls(self, action: str | None = None, identity: str | None = None) -> list[Event]:
        return [e for e in self._events if e["event"] == "call"
                and action in (None, e["action"]) and identity in (None, e["identity"])]

    def connections(self, identity: str | None = None) -> list[Event]:
        return [e for e in self._events if e["event"] == "connected"
                and identity in (None, e["identity"])]

    async def __aenter__(self) -> Self:
        node = _require_setup()
        self._proc = await asyncio.create_subprocess_exec(
            node, "server.js", *self._args, cwd=PEER_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        self._tasks = [asyncio.create_task(self._read_events(self._proc)),
                       asyncio.create_task(self._read_stderr(self._proc))]
        try:
            listening = await self._wait_event(lambda e: e["event"] == "listening",
                                               self._start_timeout, "the peer to listen")
        except BaseException:
            await self.stop()
            raise
        self.port = int(listening["port"])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close stdin (the server shuts down on EOF), then escalate; always reaps the child."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except TimeoutError:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 2)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def next_call(self, action: str, timeout: float = 5, *,
                        identity: str | None = None) -> Event:
        """The oldest call of `action` not yet returned by next_call (waits for one)."""
        def match(index: int, event: Event) -> bool:
            return (event["event"] == "call" and event["action"] == action
                    and identity in (None, event["identity"]) and index not in self._consumed)

        async with self._changed:
            await self._wait_locked(lambda: any(match(i, e) for i, e in enumerate(self._events)),
                                    timeout, f"a {action} call")
            index = next(i for i, e in enumerate(self._events) if match(i, e))
            self._consumed.add(index)
            return self._events[index]

    async def wait_connected(self, identity: str, timeout: float = 5) -> str:
        """Wait until `identity` is connected; returns the negotiated subprotocol."""
        event = await self._wait_state(identity, "connected", timeout)
        return str(event["protocol"])

    async def wait_disconnected(self, identity: str, timeout: float = 5) -> None:
        await self._wait_state(identity, "disconnected", timeout)

    async def call(self, identity: str, action: str, payload: dict[str, Any],
                   timeout: float = 5) -> dict[str, Any]:
        """A CSMS-initiated call; returns the station's (schema-valid) CALLRESULT payload."""
        corr = await self._send({"cmd": "call", "identity": identity, "action": action,
                                 "payload": payload, "timeoutMs": int(timeout * 1000)})
        reply = await self._reply(corr, timeout + 5, f"the {action} result")
        if reply["event"] == "result":
            result: dict[str, Any] = reply["payload"]
            return result
        if reply["event"] == "callerror":
            raise OcppRpcCallError(reply["code"], reply["message"], reply["details"])
        raise OcppRpcCallFailedError(CallFailure(reply["reason"]), reply["code"], reply["message"])

    async def set_response(self, action: str, payload: dict[str, Any] | None = None, *,
                           error: tuple[str, str] | None = None, noreply: bool = False) -> None:
        """Answer every later `action` call with `payload`, a CALLERROR (code, description),
        or nothing at all; with no arguments, go back to the default answer."""
        command: dict[str, Any] = {"cmd": "respond", "action": action}
        if payload is not None:
            command["payload"] = payload
        if error is not None:
            command["error"] = {"code": error[0], "message": error[1]}
        if noreply:
            command["noreply"] = True
        await self._command(command)

    async def close_client(self, identity: str, *, force: bool = False) -> None:
        """Drop the station's connection (force: without a close handshake)."""
        await self._command({"cmd": "close", "identity": identity, "force": force})

    async def _command(self, command: dict[str, Any]) -> None:
        corr = await self._send(command)
        reply = await self._reply(corr, 5, f"the {command['cmd']} command")
        if reply["event"] != "ack":
            raise RuntimeError(f"ocpp-rpc peer refused {command}: {reply['message']}")

    async def _send(self, command: dict[str, Any]) -> int:
        proc = self._proc
        if proc is None or proc.stdin is None or self._exited:
            raise RuntimeError("the ocpp-rpc peer is not running")
        self._next_id += 1
        proc.stdin.write((json.dumps({**command, "id": self._next_id}) + "\n").encode())
        await proc.stdin.drain()
        return self._next_id

    async def _reply(self, corr: int, timeout: float, what: str) -> Event:
        return await self._wait_event(lambda e: e.get("id") == corr, timeout, what)

    async def _wait_state(self, identity: str, state: str, timeout: float) -> Event:
        def latest() -> Event | None:
            return next((e for e in reversed(self._events) if e.get("identity") == identity
                         and e["event"] in ("connected", "disconnected")), None)

        async with self._changed:
            await self._wait_locked(lambda: (latest() or {}).get("event") == state, timeout,
                                    f"{identity} to be {state}")
            event = latest()
            assert event is not None
            return event

    async def _wait_event(self, predicate: Callable[[Event], bool], timeout: float,
                          what: str) -> Event:
        async with self._changed:
            await self._wait_locked(lambda: any(predicate(e) for e in self._events),
                                    timeout, what)
            return next(e for e in self._events if predicate(e))

    async def _wait_locked(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        def done() -> bool:
            return ready() or self._exited

        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait_for(done)
        except TimeoutError:
            raise TimeoutError(f"ocpp-rpc peer: no {what} within {timeout} s") from None
        if not ready():
            raise RuntimeError(f"ocpp-rpc peer exited while waiting for {what}; "
                               f"stderr: {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        return " | ".join(line for line in self._stderr if "strict mode" not in line)

    async def _read_events(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "error", "kind": "peer", "identity": None,
                         "message": f"bad peer line: {line}"}
            async with self._changed:
                self._events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self._exited = True
            self._changed.notify_all()

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())
