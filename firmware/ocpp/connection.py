"""The OCPP-J websocket link to the CSMS: connection settings per security profile, one
connection attempt with typed failures, the spec's reconnect back-off, and a supervisor that
keeps the link up.

- `ConnectionConfig` says where and how to connect (OCPP-J Part 4 §3.1 for the URL and the
  subprotocols, Part 2 §A for security profiles 1–3) and refuses combinations the spec does not
  allow.
- `open_connection` makes one attempt and returns the socket with the negotiated OCPP version,
  or raises `ConnectError` with a `ConnectFailure` kind.
- `backoff_delay` is the pure reconnect rule of Part 4 §5.3 (RetryBackOff* variables).
- `Link` loops: connect, hand the socket to the station, back off, reconnect. It re-reads the
  configuration on every attempt, so a security-profile upgrade written through SetVariables
  takes effect on the next connection.

Liveness is websockets' own ping/pong: a ping every WebSocketPingInterval seconds; a missing
pong fails the connection (see `_keepalive`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final, Literal, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from firmware import logs

log = logs.get("ocpp.connection")

OcppVersion = Literal["2.1", "2.0.1"]

# Sec-WebSocket-Protocol names (Part 4 §3.1.2) and the version each one selects.
SUBPROTOCOLS: Final[dict[str, OcppVersion]] = {"ocpp2.1": "2.1", "ocpp2.0.1": "2.0.1"}

# Largest incoming message we accept. OCPP has no protocol limit; we advertise 64 KiB per
# request (DeviceDataCtrlr/LocalAuthListCtrlr BytesPerMessage), so 128 KiB leaves room while
# bounding what one frame costs to parse and schema-check on the loop (a 1.2 MB SendLocalList
# took 1.1 s here).
MAX_MESSAGE_BYTES: Final = 2**17

# Identity rules from Part 4 §3.1.1: at most 48 characters and no ':' (it is the Basic auth
# username, where ':' separates username and password).
IDENTITY_MAX_CHARS: Final = 48

# A00.FR.205 / A00.FR.304: a BasicAuthPassword of at least 16 characters. The 2.0.1 text said at
# most 40; the 2.0.1 errata (2025-01) and 2.1 make the ceiling the variable's maxLimit, which must
# lie between 40 and 64. We accept anything up to 64 here; the device model's maxLimit decides
# what SetVariables accepts.
BASIC_AUTH_PASSWORD_MIN_CHARS: Final = 16
BASIC_AUTH_PASSWORD_MAX_CHARS: Final = 64

# Past this many doublings the wait is already longer than any station lives (2**32 s from a 1 s
# minimum); capping keeps a silly RetryBackOffRepeatTimes from overflowing a float.
MAX_DOUBLINGS: Final = 32


class ConfigError(ValueError):
    """A ConnectionConfig the spec does not allow; the message says which rule."""


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Where and how to reach the CSMS.

    `csms_url` is the CSMS's OCPP-J endpoint (ws:// for profile 1, wss:// for 2 and 3); the
    connection URL is that plus '/' and the percent-encoded identity (`url`).
    `basic_auth_password` is sent (username = identity) with profiles 1 and 2 only;
    `client_cert_file`/`client_key_file` are presented with profile 3 only; `ca_file` is the
    trust store for the CSMS certificate (None: the system's). `versions` are subprotocols in
    order of preference. `ping_interval_s` is WebSocketPingInterval (0: no pings from us).
    """

    csms_url: str
    identity: str
    security_profile: int
    basic_auth_password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    versions: tuple[str, ...] = ("ocpp2.1", "ocpp2.0.1")
    ping_interval_s: float = 30.0
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first rule this configuration breaks."""
        parts = urlsplit(self.csms_url)
        if parts.scheme not in ("ws", "wss"):
            raise ConfigError(f"csms_url must start with ws:// or wss://, got {self.csms_url!r}")
        if not parts.hostname:
            raise ConfigError(f"csms_url has no host: {self.csms_url!r}")
        if parts.username is not None or parts.password is not None:
            # Credentials belong in the Authorization header; in the URL they would be logged.
            raise ConfigError("csms_url must not carry credentials; use basic_auth_password")
        if parts.fragment:
            raise ConfigError("csms_url must not have a #fragment")
        if not self.identity:
            raise ConfigError("identity must not be empty")
        if len(self.identity) > IDENTITY_MAX_CHARS:
            raise ConfigError(f"identity is {len(self.identity)} characters; OCPP-J allows at "
                              f"most {IDENTITY_MAX_CHARS} (Part 4 §3.1.1)")
        if ":" in self.identity:
            raise ConfigError("identity must not contain ':' (it is the Basic auth username; "
                              "Part 4 §3.1.1)")
        if self.security_profile not in (1, 2, 3):
            raise ConfigError(f"security_profile must be 1, 2 or 3, got {self.security_profile}")
        if self.security_profile == 1 and parts.scheme != "ws":
            raise ConfigError("security profile 1 is unsecured transport: csms_url must be ws://")
        if self.security_profile in (2, 3) and parts.scheme != "wss":
            raise ConfigError(f"security profile {self.security_profile} needs TLS: "
                              "csms_url must be wss://")
        if self.security_profile in (1, 2):
            self._validate_password()
        if self.security_profile == 3 and (self.client_cert_file is None
                                           or self.client_key_file is None):
            raise ConfigError("security profile 3 needs client_cert_file and client_key_file "
                              "(A00.FR.401/402)")
        if not self.versions:
            raise ConfigError("versions must name at least one OCPP subprotocol")
        unknown = [v for v in self.versions if v not in SUBPROTOCOLS]
        if unknown:
            raise ConfigError(f"unknown OCPP subprotocol(s) {unknown}; known: "
                              f"{sorted(SUBPROTOCOLS)}")
        if len(set(self.versions)) != len(self.versions):
            raise ConfigError(f"versions lists a subprotocol twice: {list(self.versions)}")
        if self.ping_interval_s < 0:
            raise ConfigError("ping_interval_s must be >= 0 (0 disables pings)")
        if self.connect_timeout_s <= 0:
            raise ConfigError("connect_timeout_s must be > 0")

    def _validate_password(self) -> None:
        password = self.basic_auth_password
        if password is None:
            raise ConfigError(f"security profile {self.security_profile} needs "
                              "basic_auth_password (A00.FR.203/302)")
        if not BASIC_AUTH_PASSWORD_MIN_CHARS <= len(password) <= BASIC_AUTH_PASSWORD_MAX_CHARS:
            raise ConfigError(
                f"basic_auth_password has {len(password)} characters; it must have "
                f"{BASIC_AUTH_PASSWORD_MIN_CHARS}..{BASIC_AUTH_PASSWORD_MAX_CHARS} "
                "(A00.FR.205/304)")

    @property
    def url(self) -> str:
        """The connection URL: endpoint path + '/' + percent-encoded identity (Part 4 §3.1.1)."""
        parts = urlsplit(self.csms_url)
        path = parts.path.rstrip("/") + "/" + quote(self.identity, safe="")
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class ConnectFailure(Enum):
    REFUSED = "refused"  # nothing listening (TCP RST)
    TIMEOUT = "timeout"  # TCP, TLS or the websocket handshake took longer than connect_timeout_s
    TLS = "tls"  # TLS handshake failed: CSMS certificate not trusted, or ours refused
    AUTH = "auth"  # HTTP 401/403 on the upgrade: password or identity not accepted
    NO_COMMON_SUBPROTOCOL = "no_common_subprotocol"  # CSMS speaks none of cfg.versions
    HTTP = "http"  # any other HTTP status instead of 101 (404: unknown identity, ...)
    CONFIG = "config"  # the configuration is unusable (invalid, or files that do not load)
    OTHER = "other"  # connection dropped mid-handshake, DNS failure, malformed response, ...


class ConnectError(Exception):
    """One failed connection attempt. `status` is the HTTP status for AUTH/HTTP;
    `security_event` is the SecurityEventNotification type the failure calls for, if any."""

    def __init__(self, kind: ConnectFailure, detail: str, *, status: int | None = None,
                 security_event: str | None = None) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.security_event = security_event


@dataclass(frozen=True, slots=True)
class Connected:
    ws: ClientConnection
    version: OcppVersion


def tls_context(cfg: ConnectionConfig) -> ssl.SSLContext:
    """Client TLS settings for profiles 2 and 3; raises OSError/ssl.SSLError if files are bad."""
    # Requirement ids below are OCPP 2.0.1 Part 2 (profile 2 / profile 3).
    # A00.FR.308/411: verify the CSMS certificate path; A00.FR.309/412: check its name. Python
    # matches the subjectAltName and falls back to the commonName only when there is none.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.hostname_checks_common_name = True
    # A00.FR.313/416: TLS 1.2 or above only.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS compression (compression side channels; A00.FR.320 of the 1.6 security whitepaper).
    ctx.options |= ssl.OP_NO_COMPRESSION
    if cfg.ca_file is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.load_verify_locations(cafile=cfg.ca_file)
    if cfg.security_profile == 3:
        assert cfg.client_cert_file is not None and cfg.client_key_file is not None
        ctx.load_cert_chain(cfg.client_cert_file, cfg.client_key_file)
    return ctx


def basic_auth_header(identity: str, password: str) -> str:
    """HTTP Basic credentials, username = identity (A00.FR.204); sent as UTF-8 (A00.FR.205)."""
    token = base64.b64encode(f"{identity}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _keepalive(ping_interval_s: float) -> tuple[float | None, float | None, float]:
    """(ping_interval, ping_timeout, close_timeout) for websockets.

    Half the interval waiting for the pong, half for the close handshake that follows a missed
    pong (on a dead link the server never echoes it, and websockets only drops the socket when
    close_timeout runs out). Worst case: the link dies just after a pong, the next ping goes
    out one interval later, and the socket is gone 2x the interval after the link died.
    """
    if ping_interval_s == 0:
        return None, None, 10.0
    half = ping_interval_s / 2
    return ping_interval_s, half, half


async def open_connection(cfg: ConnectionConfig) -> Connected:
    """One connection attempt: TCP, TLS (profiles 2/3), websocket upgrade with Basic auth
    (profiles 1/2) and subprotocol negotiation. Raises ConnectError."""
    try:
        ctx = tls_context(cfg) if cfg.security_profile in (2, 3) else None
    except (OSError, ssl.SSLError) as exc:
        raise ConnectError(ConnectFailure.CONFIG, f"TLS files do not load: {exc}") from exc
    headers = None
    if cfg.security_profile in (1, 2):
        assert cfg.basic_auth_password is not None
        headers = {"Authorization": basic_auth_header(cfg.identity, cfg.basic_auth_password)}
    ping_interval, ping_timeout, close_timeout = _keepalive(cfg.ping_interval_s)
    try:
        ws = await connect(
            cfg.url,
            subprotocols=[Subprotocol(v) for v in cfg.versions],
            additional_headers=headers,
            ssl=ctx,
            # The station reaches its CSMS directly; an HTTP(S)_PROXY in the environment
            # must not reroute the OCPP link.
            proxy=None,
            open_timeout=cfg.connect_timeout_s,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            max_size=MAX_MESSAGE_BYTES,
        )
    except Exception as exc:
        raise _classify(exc, secure=ctx is not None) from exc
    version = SUBPROTOCOLS.get(ws.subprotocol or "")
    if version is None:
        # Part 4 §3.2: a CSMS that agrees to none of our subprotocols completes the handshake
        # without Sec-WebSocket-Protocol and closes; we do not wait for it.
        await ws.close(1002, "no common OCPP subprotocol")
        raise ConnectError(ConnectFailure.NO_COMMON_SUBPROTOCOL,
                           f"offered {list(cfg.versions)}, CSMS selected none")
    return Connected(ws=ws, version=version)


def _classify(exc: Exception, *, secure: bool) -> ConnectError:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        kind = ConnectFailure.AUTH if status in (401, 403) else ConnectFailure.HTTP
        return ConnectError(kind, str(exc), status=status)
    tls_error = _find_cause(exc, ssl.SSLError)
    if tls_error is not None:
        return ConnectError(ConnectFailure.TLS, _describe(exc),
                            security_event=_tls_security_event(tls_error))
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(ConnectFailure.REFUSED, _describe(exc))
    if isinstance(exc, TimeoutError):
        return ConnectError(ConnectFailure.TIMEOUT, _describe(exc))
    if secure and _find_cause(exc, EOFError) is not None:
        # Under TLS 1.3 the server judges our client certificate after our side of the
        # handshake is done; its refusal reaches us only as a close before the HTTP response.
        return ConnectError(ConnectFailure.OTHER, _describe(exc) + " (after the TLS handshake: "
                            "a CSMS refusing a missing or untrusted client certificate looks "
                            "like this)")
    return ConnectError(ConnectFailure.OTHER, _describe(exc))


def _tls_security_event(exc: ssl.SSLError) -> str | None:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "InvalidCsmsCertificate"  # A00.FR.310 (profile 2), A00.FR.413 (profile 3)
    if exc.reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION"):
        return "InvalidTLSVersion"  # A00.FR.316 (profile 2), A00.FR.419 (profile 3)
    return None


_E = TypeVar("_E", bound=BaseException)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what caused it, and so on (bounded: __cause__ can be set freely)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def _find_cause(exc: BaseException, kind: type[_E]) -> _E | None:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def _describe(exc: BaseException) -> str:
    """The exception and its causes, one line. No header or URL userinfo ever reaches here."""
    return " <- ".join(f"{type(e).__name__}: {e}" for e in _chain(exc))


@dataclass(frozen=True, slots=True)
class BackoffSettings:
    """OCPPCommCtrlr RetryBackOffWaitMinimum, RetryBackOffRandomRange, RetryBackOffRepeatTimes."""

    wait_minimum_s: float
    random_range_s: float
    repeat_times: int

    def __post_init__(self) -> None:
        if self.wait_minimum_s < 0 or self.random_range_s < 0 or self.repeat_times < 0:
            raise ValueError(f"back-off settings must not be negative: {self}")


def backoff_delay(attempt: int, *, wait_minimum_s: float, random_range_s: float,
                  repeat_times: int, rand: float) -> float:
    """Seconds to wait before reconnection attempt number `attempt` (1 = the first reconnect).

    Part 4 §5.3: the first reconnect waits RetryBackOffWaitMinimum plus a random part of at most
    RetryBackOffRandomRange; each further failed attempt doubles the previous back-off time, at
    most RetryBackOffRepeatTimes times, with a fresh random part each time; after that the wait
    stays where it is. `rand` in [0, 1) scales the random part.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand}")
    if wait_minimum_s < 0 or random_range_s < 0 or repeat_times < 0:
        raise ValueError("back-off settings must not be negative")
    doublings = min(attempt - 1, repeat_times, MAX_DOUBLINGS)
    return wait_minimum_s * 2.0**doublings + rand * random_range_s


class LinkState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"  # backing off before the next attempt
    CLOSED = "closed"


_T = TypeVar("_T")


class Link:
    """Keeps the station connected: connect, run `on_connected`, back off, reconnect.

    `on_connected(connected)` owns the socket while it is open and returns (or raises
    websockets.ConnectionClosed) when the connection ends; any other exception from it
    propagates out of run() after the socket is closed. The back-off grows with every attempt
    until the station calls `mark_healthy()` (after an accepted BootNotification), so a CSMS
    that accepts the socket but rejects the station is not hammered.
    """

    def __init__(self, config: Callable[[], ConnectionConfig],
                 on_connected: Callable[[Connected], Awaitable[None]], *,
                 backoff: Callable[[], BackoffSettings],
                 rng: Callable[[], float] = random.random,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 on_state: Callable[[LinkState, ConnectError | None], None] | None = None,
                 ) -> None:
        self._config = config
        self._on_connected = on_connected
        self._backoff = backoff
        self._rng = rng
        self._sleep = sleep
        self._on_state = on_state
        self._state = LinkState.CONNECTING
        self._attempts = 0
        self._connected: Connected | None = None
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def attempts(self) -> int:
        """Attempts that failed, or whose connection ended, since the link was last marked
        healthy; the next back-off is computed from it."""
        return self._attempts

    def mark_healthy(self) -> None:
        """The CSMS accepted us (BootNotification Accepted): the next reconnect starts the
        back-off from RetryBackOffWaitMinimum again."""
        self._attempts = 0

    async def run(self) -> None:
        """Connect and reconnect until close(); once per Link."""
        if self._run_task is not None:
            raise RuntimeError("Link.run() runs once per Link")
        self._run_task = asyncio.current_task()
        try:
            while not self._closing.is_set():
                failure = await self._attempt()
                if self._closing.is_set():
                    break
                self._attempts += 1
                settings = self._backoff()
                delay = backoff_delay(self._attempts, wait_minimum_s=settings.wait_minimum_s,
                                      random_range_s=settings.random_range_s,
                                      repeat_times=settings.repeat_times, rand=self._rng())
                self._set_state(LinkState.WAITING, failure)
                logs.log(log, "link_backoff", logging.WARNING if failure else logging.INFO,
                         kind=failure.kind if failure else None,
                         detail=failure.detail if failure else None,
                         attempt=self._attempts, delay_s=round(delay, 3))
                await self._unless_closing(self._sleep(delay))
        finally:
            self._set_state(LinkState.CLOSED, None)
            self._stopped.set()

    async def close(self) -> None:
        """Close the socket (if open) and stop run(); waits for run() unless called from it."""
        self._closing.set()
        connected = self._connected
        if connected is not None:
            await connected.ws.close()
        if self._run_task is None:
            self._set_state(LinkState.CLOSED, None)
        elif self._run_task is not asyncio.current_task():
            await self._stopped.wait()

    async def _attempt(self) -> ConnectError | None:
        """One connect-and-serve cycle; the failure that ended it, None if it connected."""
        self._set_state(LinkState.CONNECTING, None)
        try:
            cfg = self._config()
        except Exception as exc:  # a config we cannot build backs off; it never ends the link
            return ConnectError(ConnectFailure.CONFIG, f"{type(exc).__name__}: {exc}")
        logs.log(log, "link_connecting", url=cfg.url, profile=cfg.security_profile,
                 attempt=self._attempts + 1)
        try:
            connected = await self._unless_closing(open_connection(cfg))
        except ConnectError as exc:
            return exc
        if connected is None:
            return None
        if self._closing.is_set():
            await connected.ws.close()
            return None
        self._connected = connected
        self._set_state(LinkState.CONNECTED, None)
        logs.log(log, "link_connected", url=cfg.url, version=connected.version)
        try:
            await self._on_connected(connected)
        except ConnectionClosed:
            pass
        finally:
            self._connected = None
            await connected.ws.close()
        logs.log(log, "link_disconnected", code=connected.ws.close_code,
                 reason=connected.ws.close_reason)
        return None

    async def _unless_closing(self, work: Awaitable[_T]) -> _T | None:
        """Await `work`, abandoning it (None) if close() is called meanwhile."""
        task = asyncio.ensure_future(work)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({task, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectError):
                    await task
        if task.cancelled():
            return None
        return task.result()

    def _set_state(self, state: LinkState, failure: ConnectError | None) -> None:
        self._state = state
        if self._on_state is not None:
            self._on_state(state, failure)
