"""An MQTT client driven by the asyncio loop: paho-mqtt's protocol engine without its thread.

The controller runs on a virtual-time event loop in tests and HAL-style code must not start
threads, so paho is driven the way its external-loop example does: its socket callbacks register
the socket with ``loop.add_reader``/``add_writer`` and a periodic ``loop_misc()`` sends the
keepalive pings. The TCP connect and the TLS handshake are done here, non-blocking, because
paho's own ``connect()`` blocks its caller for up to the connect timeout.

Two clocks. Network timeouts and the reconnect back-off are about a real peer, so they run on
a monotonic network clock (as paho's keepalive does): on a virtual-time loop the loop's clock
runs far ahead of any real socket, and a connect timeout measured on it would expire before the
broker could answer. Everything the controller decides on (command expiry in ``ems.mqtt_link``)
runs on the loop's clock.

Nothing is queued while offline: a message published into a gap would arrive late as if new.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from ems.config_error import ConfigError

if TYPE_CHECKING:
    from paho.mqtt.client import ConnectFlags, DisconnectFlags, MQTTMessage, SocketLike
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("voltpilot.ems.mqtt")

T = TypeVar("T")

_TICK_S = 1.0    # loop_misc cadence (keepalive), on the loop's clock, as paho suggests
_POLL_S = 0.2    # how often a wait on the network clock looks at it
_CLOSE_S = 2.0   # how long close() lets the last messages and the DISCONNECT leave
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")

MessageCallback = Callable[["Message"], object]


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message. ``retain`` on a received message means the broker replayed a stored
    value on subscribe: its age is unknown."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_file: Path | None = None     # None: the system's CAs
    cert_file: Path | None = None   # client certificate and key, for brokers that require one
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """How to reach the broker. Invalid values raise ConfigError naming ``file`` and the key
    under ``section``."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: TlsSettings | None = None
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    file: str = field(default="(mqtt settings)", compare=False, repr=False)
    section: str = field(default="mqtt", compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_settings(self)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], file: str,
                   section: str = "mqtt") -> MqttSettings:
        """Settings from a TOML table (the site file's ``[mqtt]``); relative TLS file paths
        are relative to the file's directory."""
        allowed = {"host", "port", "username", "password", "keepalive_s", "connect_timeout_s",
                   "backoff_min_s", "backoff_max_s", "tls"}
        _only(table, allowed, file, section)
        values = {k: v for k, v in table.items() if k != "tls"}
        tls = table.get("tls")
        if tls is not None:
            if not isinstance(tls, Mapping):
                raise ConfigError(file, f"{section}.tls", "a table", tls)
            _only(tls, {"ca_file", "cert_file", "key_file"}, file, f"{section}.tls")
            paths: dict[str, Path] = {}
            for key, value in tls.items():
                if not isinstance(value, str) or not value:
                    raise ConfigError(file, f"{section}.tls.{key}", "a file path", value)
                paths[key] = Path(file).parent / value
            values["tls"] = TlsSettings(**paths)
        return cls(**values, file=file, section=section)


def _only(table: Mapping[str, Any], allowed: set[str], file: str, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(file, f"{where}.{key}", f"one of {', '.join(sorted(allowed))}",
                              "an unknown key")


def _check_settings(s: MqttSettings) -> None:
    def bad(key: str, expected: str, got: object) -> ConfigError:
        return ConfigError(s.file, f"{s.section}.{key}", expected, got)

    if not isinstance(s.host, str) or not s.host or any(c.isspace() for c in s.host):
        raise bad("host", "a host name or IP address", s.host)
    if not _is_int(s.port) or not 1 <= s.port <= 65535:
        raise bad("port", "an integer in [1, 65535]", s.port)
    for key in ("username", "password"):
        value = getattr(s, key)
        if value is not None and (not isinstance(value, str) or not value):
            raise bad(key, "a non-empty string", value)
    if s.password is not None and s.username is None:
        raise bad("password", "a username given with it", "no username")
    if not _is_int(s.keepalive_s) or not 5 <= s.keepalive_s <= 3600:
        raise bad("keepalive_s", "an integer in [5, 3600]", s.keepalive_s)
    for key, lo, hi in (("connect_timeout_s", 0.1, 120.0), ("backoff_min_s", 0.01, 600.0),
                        ("backoff_max_s", 0.01, 3600.0)):
        value = getattr(s, key)
        if not _is_number(value) or not lo <= value <= hi:
            raise bad(key, f"a number in [{lo:g}, {hi:g}]", value)
    if s.backoff_max_s < s.backoff_min_s:
        raise bad("backoff_max_s", f"at least backoff_min_s ({s.backoff_min_s:g})",
                  s.backoff_max_s)
    if s.tls is not None:
        if not isinstance(s.tls, TlsSettings):
            raise bad("tls", "a TLS table", s.tls)
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(s.tls, key)
            if path is not None and not Path(path).is_file():
                raise bad(f"tls.{key}", "a readable file", str(path))
        if (s.tls.cert_file is None) != (s.tls.key_file is None):
            raise bad("tls.cert_file", "cert_file and key_file given together",
                      str(s.tls.cert_file))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """The TLS context the settings ask for (None: plain TCP). A file that is not a usable
    PEM certificate or key raises ConfigError."""
    tls = settings.tls
    if tls is None:
        return None
    key = f"{settings.section}.tls.ca_file"
    try:
        context = ssl.create_default_context(
            cafile=None if tls.ca_file is None else str(tls.ca_file))
        if tls.cert_file is not None and tls.key_file is not None:
            key = f"{settings.section}.tls.cert_file"
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(settings.file, key, "a PEM certificate (and key)", str(exc)) from exc
    return context


class _RefusedError(Exception):
    """The broker answered CONNACK with a failure (bad credentials, not authorised...)."""


class _Paho(paho.Client):
    """paho's Client connecting over a socket this module has already opened (and wrapped in
    TLS), so that paho never blocks the loop in connect()."""

    prepared: socket.socket | None = None

    def _create_socket(self) -> SocketLike:
        sock, self.prepared = self.prepared, None
        if sock is None:
            raise ConnectionError("no connected socket prepared")
        return sock


class MqttClient:
    """One connection to the broker, kept up with a jittered, capped exponential back-off.

    Subscriptions are renewed on every connect. ``birth`` is published on every connect and the
    broker publishes ``will`` when the connection dies without a DISCONNECT; a clean ``close()``
    publishes ``will`` itself first (a clean DISCONNECT makes the broker discard it), so an
    online flag reads "offline" either way.
    """

    def __init__(self, settings: MqttSettings, client_id: str, *, will: Message | None = None,
                 birth: Message | None = None, rng: random.Random | None = None,
                 net_clock: Callable[[], float] = time.monotonic) -> None:
        if not _CLIENT_ID.fullmatch(client_id):
            raise ValueError(f"client id: expected 1-128 of [A-Za-z0-9_.-], got {client_id!r}")
        self.settings = settings
        self.client_id = client_id
        self._tls = tls_context(settings)
        self._will = will
        self._birth = birth
        self._rng = rng or random.Random()
        self._net_clock = net_clock
        self._subs: dict[str, tuple[int, list[MessageCallback]]] = {}
        self._listeners: list[Callable[[bool], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[None] | None = None
        self._down: asyncio.Future[None] | None = None
        self._sock_closed: asyncio.Future[None] | None = None
        self._up = asyncio.Event()
        self._closing = False
        self._online = False
        self.connects = 0              # successful connects so far
        self.failures = 0              # failed connect attempts so far
        self.last_error: str | None = None

        self._paho = _Paho(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                           protocol=MQTTProtocolVersion.MQTTv311, reconnect_on_failure=False)
        if settings.username is not None:
            self._paho.username_pw_set(settings.username, settings.password)
        if will is not None:
            self._paho.will_set(will.topic, will.payload, will.qos, will.retain)
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = self._on_message
        self._paho.on_socket_open = self._on_socket_open
        self._paho.on_socket_close = self._on_socket_close
        self._paho.on_socket_register_write = self._on_register_write
        self._paho.on_socket_unregister_write = self._on_unregister_write

    # ---- public ------------------------------------------------------------------------------

    @property
    def online(self) -> bool:
        """Connected and accepted by the broker (CONNACK received)."""
        return self._online

    def start(self) -> None:
        """Begin connecting on the running loop; reconnects until close()."""
        if self._task is not None:
            raise RuntimeError("MqttClient.start() called twice")
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"mqtt {self.client_id}")
        self._tick = self._loop.call_later(_TICK_S, self._on_tick)

    async def wait_online(self) -> None:
        """Until the client is online (callers bound it with their own timeout)."""
        await self._up.wait()

    def subscribe(self, topic_filter: str, callback: MessageCallback, qos: int = 0) -> None:
        """Deliver messages matching ``topic_filter`` to ``callback``, on the loop, in order."""
        _check_filter(topic_filter)
        if qos not in (0, 1):
            raise ValueError(f"qos: expected 0 or 1, got {qos!r}")
        entry = self._subs.setdefault(topic_filter, (qos, []))
        if qos > entry[0]:
            entry = (qos, entry[1])
            self._subs[topic_filter] = entry
        entry[1].append(callback)
        if self._online:
            self._paho.subscribe(topic_filter, entry[0])

    def add_listener(self, callback: Callable[[bool], None]) -> None:
        """``callback(True)`` on every connect (before that connect's messages are delivered),
        ``callback(False)`` when the connection is lost."""
        self._listeners.append(callback)

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 0,
                retain: bool = False) -> bool:
        """Hand a message to the connection. False when offline: nothing is queued."""
        if qos not in (0, 1):
            raise ValueError(f"qos: expected 0 or 1, got {qos!r}")
        if not self._online:
            return False
        return self._paho.publish(topic, payload, qos, retain).rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    async def close(self, *, publish_will: bool = True) -> None:
        """Publish the will (unless told not to), disconnect cleanly and stop reconnecting."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._tick is not None:
            self._tick.cancel()
        if self._online and self._loop is not None:
            if publish_will and self._will is not None:
                w = self._will
                self._paho.publish(w.topic, w.payload, w.qos, w.retain)
            self._sock_closed = self._loop.create_future()
            self._paho.disconnect()
            with contextlib.suppress(TimeoutError):
                await self._within(self._net_clock() + _CLOSE_S, self._sock_closed)
        self._abort()

    # ---- connection supervisor ---------------------------------------------------------------

    async def _run(self) -> None:
        failed = 0   # consecutive failed attempts since the last good connection
        while True:
            try:
                await self._connect()
            except Exception as exc:    # whatever failed, the answer is: back off, try again
                failed += 1
                self.failures += 1
                self._abort()
                error = f"{type(exc).__name__}: {exc}"
                if failed == 1 or error != self.last_error:
                    log.warning("mqtt_connect_failed", extra={"fields": {
                        "client": self.client_id, "host": self.settings.host,
                        "port": self.settings.port, "error": error}})
                self.last_error = error
            else:
                failed = 0
                assert self._down is not None
                await self._down
            await self._net_sleep(self._backoff(failed))

    def _backoff(self, failed: int) -> float:
        """Equal jitter: half the exponential step plus a random share of the other half, so
        many clients restarted together do not reconnect in lockstep yet never hammer."""
        s = self.settings
        step = min(s.backoff_max_s, s.backoff_min_s * 2.0 ** min(failed, 30))
        return step / 2 + self._rng.uniform(0.0, step / 2)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._net_clock() + self.settings.connect_timeout_s
        sock = await self._within(deadline, self._open_socket())
        self._connack = loop.create_future()
        self._down = loop.create_future()
        self._paho.connect_async(self.settings.host, self.settings.port,
                                 self.settings.keepalive_s)
        self._paho.prepared = sock
        try:
            rc = self._paho.reconnect()
        finally:
            if self._paho.prepared is not None:    # paho failed before taking it over
                self._paho.prepared = None
                sock.close()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise OSError(f"MQTT CONNECT not sent: {paho.error_string(rc)}")
        await self._within(deadline, self._connack)

    async def _open_socket(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        host, port = self.settings.host, self.settings.port
        try:
            family = (socket.AF_INET6 if ipaddress.ip_address(host).version == 6
                      else socket.AF_INET)
            addresses: list[tuple[socket.AddressFamily, Any]] = [(family, (host, port))]
        except ValueError:
            # A name: asyncio's resolver (the only place a worker thread may be involved).
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [(info[0], info[4]) for info in infos]
        error: OSError = OSError(f"{host}: no address")
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls is not None:
                    return await self._handshake(sock)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise error

    async def _handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        assert self._tls is not None
        tls = self._tls.wrap_socket(sock, server_hostname=self.settings.host,
                                    do_handshake_on_connect=False)
        try:
            while True:
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    await self._ready(tls, write=False)
                except ssl.SSLWantWriteError:
                    await self._ready(tls, write=True)
                else:
                    return tls
        except BaseException:
            tls.close()
            raise

    async def _ready(self, sock: ssl.SSLSocket, *, write: bool) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        fd = sock.fileno()
        if write:
            loop.add_writer(fd, wake)
        else:
            loop.add_reader(fd, wake)
        try:
            await done
        finally:
            if write:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    async def _within(self, deadline: float, aw: Awaitable[T]) -> T:
        """``aw`` unless the network clock passes ``deadline`` first (TimeoutError)."""
        task = asyncio.ensure_future(aw)
        try:
            while not task.done():
                left = deadline - self._net_clock()
                if left <= 0:
                    raise TimeoutError("timed out")
                await asyncio.wait({task}, timeout=min(left, _POLL_S))
            return task.result()
        finally:
            if not task.done():
                task.cancel()

    async def _net_sleep(self, seconds: float) -> None:
        deadline = self._net_clock() + seconds
        while (left := deadline - self._net_clock()) > 0:
            await asyncio.sleep(min(left, _POLL_S))

    def _abort(self) -> None:
        """Drop the connection without a DISCONNECT (the broker then publishes the will)."""
        sock = self._paho.socket()
        if sock is None:
            return
        with contextlib.suppress(OSError):
            if isinstance(sock, socket.socket):
                sock.shutdown(socket.SHUT_RDWR)
        # paho reads what is left up to the end of the stream, then closes the socket and
        # reports the loss; the bound only guards against a stream that never ends.
        for _ in range(1000):
            if self._paho.socket() is not sock:
                return
            self._paho.loop_read()

    # ---- paho callbacks (all on the loop) ----------------------------------------------------

    def _on_connect(self, _client: paho.Client, _userdata: object, _flags: ConnectFlags,
                    reason: ReasonCode, _properties: Properties | None) -> None:
        connack = self._connack
        if reason.is_failure:
            if connack is not None and not connack.done():
                connack.set_exception(_RefusedError(f"broker refused: {reason}"))
            return
        self._online = True
        self._up.set()
        self.connects += 1
        self.last_error = None
        log.info("mqtt_connected", extra={"fields": {
            "client": self.client_id, "host": self.settings.host, "port": self.settings.port}})
        self._notify(True)
        if self._subs:
            self._paho.subscribe([(f, qos) for f, (qos, _) in self._subs.items()])
        if self._birth is not None:
            b = self._birth
            self._paho.publish(b.topic, b.payload, b.qos, b.retain)
        if connack is not None and not connack.done():
            connack.set_result(None)

    def _on_disconnect(self, _client: paho.Client, _userdata: object, _flags: DisconnectFlags,
                       reason: ReasonCode, _properties: Properties | None) -> None:
        was_online, self._online = self._online, False
        self._up.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError(f"connection closed: {reason}"))
        if self._down is not None and not self._down.done():
            self._down.set_result(None)
        if was_online:
            if not self._closing:
                log.warning("mqtt_disconnected", extra={"fields": {
                    "client": self.client_id, "reason": str(reason)}})
            self._notify(False)

    def _on_message(self, _client: paho.Client, _userdata: object, msg: MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            return
        message = Message(topic, bytes(msg.payload), msg.qos, bool(msg.retain))
        assert self._loop is not None
        for topic_filter, (_, callbacks) in self._subs.items():
            if paho.topic_matches_sub(topic_filter, topic):
                for callback in callbacks:
                    # Via call_soon: a callback's exception reaches the loop's handler and
                    # cannot leave paho's packet state half-updated.
                    self._loop.call_soon(callback, message)

    def _notify(self, up: bool) -> None:
        assert self._loop is not None
        for listener in self._listeners:
            self._loop.call_soon(listener, up)

    def _on_socket_open(self, _client: paho.Client, _userdata: object, sock: SocketLike) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_socket_close(self, _client: paho.Client, _userdata: object,
                         sock: SocketLike) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock.fileno())
        self._loop.remove_writer(sock.fileno())
        if self._sock_closed is not None and not self._sock_closed.done():
            self._sock_closed.set_result(None)

    def _on_register_write(self, _client: paho.Client, _userdata: object,
                           sock: SocketLike) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock.fileno(), self._on_writable)

    def _on_unregister_write(self, _client: paho.Client, _userdata: object,
                             sock: SocketLike) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock.fileno())

    def _on_readable(self) -> None:
        self._paho.loop_read()
        # TLS may hold decrypted bytes the selector cannot see: read them now.
        sock = self._paho.socket()
        while isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
            self._paho.loop_read()
            if self._paho.socket() is not sock:
                break

    def _on_writable(self) -> None:
        self._paho.loop_write()

    def _on_tick(self) -> None:
        if self._paho.socket() is not None:
            self._paho.loop_misc()
        assert self._loop is not None
        self._tick = self._loop.call_later(_TICK_S, self._on_tick)


def _check_filter(topic_filter: str) -> None:
    levels = topic_filter.split("/")
    ok = bool(topic_filter) and "\0" not in topic_filter and all(
        level in ("+", "#") or ("+" not in level and "#" not in level) for level in levels
    ) and "#" not in levels[:-1]
    if not ok:
        raise ValueError(f"not a valid MQTT topic filter: {topic_filter!r}")
