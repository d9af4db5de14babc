"""OCPP-J connection layer against real websockets servers on 127.0.0.1: subprotocol
negotiation, the connection URL, security profiles 1-3 (Basic auth, TLS, mutual TLS with a test
CA), typed failures, the Part 4 §5.3 back-off, the reconnecting Link and half-open detection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ocpp_pki import Pki, make_pki
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from firmware.ocpp.connection import (
    BASIC_AUTH_PASSWORD_MAX_CHARS,
    MAX_DOUBLINGS,
    BackoffSettings,
    ConfigError,
    Connected,
    ConnectError,
    ConnectFailure,
    ConnectionConfig,
    Link,
    LinkState,
    backoff_delay,
    open_connection,
)

PASSWORD = "s3cret-passw0rd-XYZ"  # 19 characters
BOTH = ("ocpp2.1", "ocpp2.0.1")


# -- a CSMS stand-in -------------------------------------------------------------------------


@dataclass
class Seen:
    """What the test server observed, one entry per accepted websocket."""

    paths: list[str] = field(default_factory=list)
    subprotocols: list[str | None] = field(default_factory=list)
    peer_cns: list[str | None] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)


def _selector(supported: Sequence[str]) -> Callable[[ServerConnection, Sequence[Subprotocol]],
                                                   Subprotocol | None]:
    """Part 4 §3.2 server: pick the client's most preferred subprotocol we support, else none
    (handshake completes without Sec-WebSocket-Protocol)."""
    def select(_: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        return next((s for s in offered if s in supported), None)
    return select


def _peer_cn(ws: ServerConnection) -> str | None:
    cert = ws.transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert["subject"]:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def _until_closed(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


@contextlib.asynccontextmanager
async def csms(*, supported: Sequence[str] = BOTH, tls: ssl.SSLContext | None = None,
               password: str | None = None,
               handler: Callable[[ServerConnection], Awaitable[None]] = _until_closed,
               reject_status: HTTPStatus = HTTPStatus.UNAUTHORIZED,
               ) -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()

    def check(conn: ServerConnection, request: Request) -> Response | None:
        header = request.headers.get("Authorization")
        seen.authorizations.append(header)
        if password is None:
            return None
        identity = unquote(request.path.rsplit("/", 1)[-1])
        expected = "Basic " + base64.b64encode(
            f"{identity}:{password}".encode()).decode()
        if header != expected:
            return conn.respond(reject_status, "bad credentials\n")
        return None

    async def serve_one(ws: ServerConnection) -> None:
        seen.paths.append(ws.request.path if ws.request else "")
        seen.subprotocols.append(ws.subprotocol)
        seen.peer_cns.append(_peer_cn(ws))
        await handler(ws)

    async with serve(serve_one, "127.0.0.1", 0, ssl=tls, select_subprotocol=_selector(supported),
                     process_request=check, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield port, seen


def server_tls(pki: Pki, *, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca)
    return ctx


def cfg(port: int, **changes: Any) -> ConnectionConfig:
    base: dict[str, Any] = {
        "csms_url": f"ws://127.0.0.1:{port}/ocpp", "identity": "CS001", "security_profile": 1,
        "basic_auth_password": PASSWORD, "ping_interval_s": 0, "connect_timeout_s": 3.0,
    }
    base.update(changes)
    return ConnectionConfig(**base)


def free_port() -> int:
    """A port nobody listens on (bound then released), so connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def connect_fails(config: ConnectionConfig) -> ConnectError:
    with pytest.raises(ConnectError) as info:
        connected = await open_connection(config)
        await connected.ws.close()
    return info.value


# -- subprotocols and the connection URL -----------------------------------------------------


@pytest.mark.parametrize(("supported", "version"), [
    (BOTH, "2.1"),
    (("ocpp2.0.1", "ocpp2.1"), "2.1"),  # server order does not matter: our preference does
    (("ocpp2.0.1",), "2.0.1"),
    (("ocpp1.6", "ocpp2.0.1"), "2.0.1"),
])
def test_subprotocol_negotiation(supported: tuple[str, ...], version: str) -> None:
    async def main() -> None:
        async with csms(supported=supported) as (port, seen):
            connected = await open_connection(cfg(port))
            assert connected.version == version
            await connected.ws.close()
        assert seen.subprotocols == [connected.ws.subprotocol]

    asyncio.run(main())


def test_only_2_0_1_offered_gets_2_0_1_from_a_2_1_server() -> None:
    async def main() -> None:
        async with csms(supported=BOTH) as (port, _):
            connected = await open_connection(cfg(port, versions=("ocpp2.0.1",)))
            assert connected.version == "2.0.1"
            await connected.ws.close()

    asyncio.run(main())


def test_no_common_subprotocol_is_typed_and_closes_the_socket() -> None:
    async def main() -> None:
        closed = asyncio.Event()

        async def handler(ws: ServerConnection) -> None:
            await _until_closed(ws)
            closed.set()

        async with csms(supported=("ocpp1.6",), handler=handler) as (port, seen):
            error = await connect_fails(cfg(port))
            assert error.kind is ConnectFailure.NO_COMMON_SUBPROTOCOL
            await asyncio.wait_for(closed.wait(), 2)
        assert seen.subprotocols == [None]

    asyncio.run(main())


@pytest.mark.parametrize(("endpoint", "identity", "path"), [
    ("/ocpp", "CS001", "/ocpp/CS001"),
    ("/ocpp/", "CS001", "/ocpp/CS001"),
    ("", "CS001", "/CS001"),
    ("/webServices/ocpp", "RDAM 123", "/webServices/ocpp/RDAM%20123"),  # Part 4 §3.1.1 example
    ("/ocpp", "a/b?c#d%é", "/ocpp/a%2Fb%3Fc%23d%25%C3%A9"),
])
def test_identity_is_the_last_path_segment(endpoint: str, identity: str, path: str) -> None:
    async def main() -> None:
        async with csms(password=PASSWORD) as (port, seen):
            config = cfg(port, csms_url=f"ws://127.0.0.1:{port}{endpoint}", identity=identity)
            connected = await open_connection(config)
            await connected.ws.close()
        assert seen.paths == [path]
        # Basic auth username is the identity itself, not its percent-encoding (A00.FR.204).
        authorization = seen.authorizations[0]
        assert authorization is not None
        user = base64.b64decode(authorization.split()[1]).decode().split(":")[0]
        assert user == identity

    asyncio.run(main())


def test_query_in_the_endpoint_url_is_kept_after_the_identity() -> None:
    config = cfg(1, csms_url="ws://127.0.0.1:1/ocpp?tenant=7")
    assert config.url == "ws://127.0.0.1:1/ocpp/CS001?tenant=7"


# -- security profile 1: ws + Basic auth -----------------------------------------------------


def test_profile_1_basic_auth_right_password_connects() -> None:
    async def main() -> None:
        async with csms(password=PASSWORD) as (port, seen):
            connected = await open_connection(cfg(port))
            assert connected.version == "2.1"
            await connected.ws.close()
        expected = base64.b64encode(f"CS001:{PASSWORD}".encode()).decode()
        assert seen.authorizations == [f"Basic {expected}"]

    asyncio.run(main())


@pytest.mark.parametrize(("status", "kind"), [
    (HTTPStatus.UNAUTHORIZED, ConnectFailure.AUTH),
    (HTTPStatus.FORBIDDEN, ConnectFailure.AUTH),
    (HTTPStatus.NOT_FOUND, ConnectFailure.HTTP),  # Part 4 §3.2: unknown identity
])
def test_profile_1_rejected_upgrade_is_typed(status: HTTPStatus, kind: ConnectFailure) -> None:
    async def main() -> None:
        async with csms(password=PASSWORD, reject_status=status) as (port, _):
            error = await connect_fails(cfg(port, basic_auth_password="wrong-password-123"))
        assert error.kind is kind
        assert error.status == status

    asyncio.run(main())


# -- security profile 2: wss + Basic auth ----------------------------------------------------


@pytest.mark.parametrize("intermediate", [False, True])
def test_profile_2_server_certificate_from_our_ca_verifies(tmp_path: Path,
                                                           intermediate: bool) -> None:
    pki = make_pki(tmp_path, intermediate=intermediate)

    async def main() -> None:
        async with csms(tls=server_tls(pki), password=PASSWORD) as (port, seen):
            for host in ("127.0.0.1", "localhost"):  # IP and DNS subjectAltName both checked
                connected = await open_connection(cfg(
                    port, csms_url=f"wss://{host}:{port}/ocpp", security_profile=2,
                    ca_file=pki.ca_cert))
                assert connected.version == "2.1"
                await connected.ws.close()
        assert len(seen.paths) == 2
        assert all(a and a.startswith("Basic ") for a in seen.authorizations)

    asyncio.run(main())


def test_profile_2_server_certificate_from_another_ca_is_tls_failure(tmp_path: Path) -> None:
    ours = make_pki(tmp_path / "ours")
    rogue = make_pki(tmp_path / "rogue", name="rogue")

    async def main() -> None:
        async with csms(tls=server_tls(rogue), password=PASSWORD) as (port, seen):
            error = await connect_fails(cfg(port, csms_url=f"wss://127.0.0.1:{port}/ocpp",
                                            security_profile=2, ca_file=ours.ca_cert))
        assert error.kind is ConnectFailure.TLS
        assert error.security_event == "InvalidCsmsCertificate"  # A00.FR.310
        assert seen.authorizations == []  # the password never left the station

    asyncio.run(main())


def test_profile_2_server_without_tls_1_2_is_refused() -> None:
    """A server that only speaks TLS 1.0/1.1 answers our TLS 1.2+ ClientHello with a
    protocol_version alert (A00.FR.313: TLS 1.2 or above only)."""
    async def main() -> None:
        async def legacy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(5)
            writer.write(bytes([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 70]))  # fatal alert 70
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(legacy, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            error = await connect_fails(cfg(port, csms_url=f"wss://127.0.0.1:{port}/ocpp",
                                            security_profile=2))
        assert error.kind is ConnectFailure.TLS
        assert error.security_event == "InvalidTLSVersion"  # A00.FR.316

    asyncio.run(main())


def test_profile_2_missing_ca_file_is_config_failure(tmp_path: Path) -> None:
    async def main() -> None:
        error = await connect_fails(cfg(1, csms_url="wss://127.0.0.1:1/ocpp", security_profile=2,
                                        ca_file=tmp_path / "absent.pem"))
        assert error.kind is ConnectFailure.CONFIG

    asyncio.run(main())


# -- security profile 3: mutual TLS ----------------------------------------------------------


def test_profile_3_client_certificate_identifies_the_station(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, identity="CS-0042", intermediate=True)
    assert pki.client_cert is not None

    async def main() -> None:
        tls = server_tls(pki, client_ca=pki.ca_cert)
        async with csms(tls=tls) as (port, seen):
            connected = await open_connection(cfg(
                port, csms_url=f"wss://127.0.0.1:{port}/ocpp", identity="CS-0042",
                security_profile=3, basic_auth_password=None, ca_file=pki.ca_cert,
                client_cert_file=pki.client_cert, client_key_file=pki.client_key))
            await connected.ws.close()
        assert seen.peer_cns == ["CS-0042"]
        assert seen.authorizations == [None]  # profile 3 sends no Basic auth

    asyncio.run(main())


def test_profile_3_server_rejecting_our_certificate(tmp_path: Path) -> None:
    """What actually happens: with TLS 1.3 the client's side of the handshake completes before
    the server has judged the client certificate. The server then drops the connection, and
    what reaches the client is a close while it waits for the HTTP 101 (asyncio hands
    connection_lost no SSLError), so the kind is OTHER, with a detail that names the likely
    cause. No security event: the fault is our certificate, not the CSMS's."""
    ours = make_pki(tmp_path / "ours")
    rogue = make_pki(tmp_path / "rogue", name="rogue")
    assert rogue.client_cert is not None

    async def main() -> None:
        async with csms(tls=server_tls(ours, client_ca=ours.ca_cert),
                        password=PASSWORD) as (port, seen):
            url = f"wss://127.0.0.1:{port}/ocpp"
            without = await connect_fails(cfg(port, csms_url=url, security_profile=2,
                                              ca_file=ours.ca_cert))
            untrusted = await connect_fails(cfg(
                port, csms_url=url, security_profile=3, ca_file=ours.ca_cert,
                client_cert_file=rogue.client_cert, client_key_file=rogue.client_key))
        for error in (without, untrusted):
            assert error.kind is ConnectFailure.OTHER, error
            assert "client certificate" in error.detail
            assert error.security_event is None
        assert seen.paths == []

    asyncio.run(main())


# -- other typed failures --------------------------------------------------------------------


def test_nothing_listening_is_refused() -> None:
    async def main() -> None:
        error = await connect_fails(cfg(free_port()))
        assert error.kind is ConnectFailure.REFUSED

    asyncio.run(main())


def test_silent_server_is_timeout() -> None:
    async def main() -> None:
        hung_up = asyncio.Event()

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # until the client gives up and closes its socket
            writer.close()
            await writer.wait_closed()
            hung_up.set()

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            error = await connect_fails(cfg(port, connect_timeout_s=0.2))
            await asyncio.wait_for(hung_up.wait(), 2)
        assert error.kind is ConnectFailure.TIMEOUT

    asyncio.run(main())


# -- configuration rules ---------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    ({"csms_url": "http://csms.example/ocpp"}, "ws:// or wss://"),
    ({"csms_url": "ws:///ocpp"}, "no host"),
    ({"csms_url": "ws://cs:pw@csms.example/ocpp"}, "credentials"),
    ({"csms_url": "ws://csms.example/ocpp#x"}, "fragment"),
    ({"identity": ""}, "empty"),
    ({"identity": "x" * 49}, "at most 48"),
    ({"identity": "CS:001"}, "':'"),
    ({"security_profile": 0}, "1, 2 or 3"),
    ({"csms_url": "wss://csms.example/ocpp"}, "must be ws://"),
    ({"security_profile": 2}, "must be wss://"),
    ({"security_profile": 3, "client_cert_file": Path("c"), "client_key_file": Path("k")},
     "must be wss://"),
    ({"basic_auth_password": None}, "needs basic_auth_password"),
    ({"basic_auth_password": "x" * 15}, "16.."),
    ({"basic_auth_password": "x" * (BASIC_AUTH_PASSWORD_MAX_CHARS + 1)}, "16.."),
    ({"csms_url": "wss://csms.example/ocpp", "security_profile": 3}, "client_cert_file"),
    ({"csms_url": "wss://csms.example/ocpp", "security_profile": 3,
      "client_cert_file": Path("c")}, "client_key_file"),
    ({"versions": ()}, "at least one"),
    ({"versions": ("ocpp1.6",)}, "unknown OCPP subprotocol"),
    ({"versions": ("ocpp2.1", "ocpp2.1")}, "twice"),
    ({"ping_interval_s": -1}, "ping_interval_s"),
    ({"connect_timeout_s": 0}, "connect_timeout_s"),
])
def test_config_rules(changes: dict[str, Any], message: str) -> None:
    valid: dict[str, Any] = {"csms_url": "ws://csms.example/ocpp", "identity": "CS001",
                             "security_profile": 1, "basic_auth_password": PASSWORD}
    with pytest.raises(ConfigError, match=re.escape(message)):
        ConnectionConfig(**{**valid, **changes})


def test_valid_configs_per_profile() -> None:
    ConnectionConfig("ws://csms.example/ocpp", "CS001", 1, basic_auth_password="p" * 16)
    ConnectionConfig("wss://csms.example/ocpp", "CS001", 2, basic_auth_password="p" * 64)
    # A stored password is ignored (not required, not sent) with profile 3.
    ConnectionConfig("wss://csms.example/ocpp", "CS001", 3, basic_auth_password="short",
                     client_cert_file=Path("c.pem"), client_key_file=Path("k.pem"))


def test_password_stays_out_of_repr() -> None:
    assert PASSWORD not in repr(cfg(1))


# -- back-off (Part 4 §5.3) ------------------------------------------------------------------

settings_st = st.builds(
    BackoffSettings,
    wait_minimum_s=st.floats(0, 3600, allow_nan=False),
    random_range_s=st.floats(0, 3600, allow_nan=False),
    repeat_times=st.integers(0, 40),
)
rand_st = st.floats(0, 1, exclude_max=True)


def _delay(attempt: int, s: BackoffSettings, rand: float) -> float:
    return backoff_delay(attempt, wait_minimum_s=s.wait_minimum_s,
                         random_range_s=s.random_range_s, repeat_times=s.repeat_times, rand=rand)


@given(settings_st, rand_st, st.integers(1, 200))
def test_backoff_is_monotone_in_attempt(s: BackoffSettings, rand: float, attempt: int) -> None:
    assert _delay(attempt + 1, s, rand) >= _delay(attempt, s, rand)


@given(settings_st, rand_st, st.integers(1, 200))
def test_backoff_is_bounded(s: BackoffSettings, rand: float, attempt: int) -> None:
    delay = _delay(attempt, s, rand)
    ceiling = s.wait_minimum_s * 2.0 ** min(s.repeat_times, MAX_DOUBLINGS) + s.random_range_s
    assert s.wait_minimum_s <= delay <= ceiling


@given(settings_st, rand_st, st.integers(1, 200))
def test_backoff_doubles_until_repeat_times_then_holds(s: BackoffSettings, rand: float,
                                                       attempt: int) -> None:
    jitter = rand * s.random_range_s
    fixed = _delay(attempt, s, rand) - jitter
    following = _delay(attempt + 1, s, rand) - jitter
    if attempt <= min(s.repeat_times, MAX_DOUBLINGS):
        assert following == pytest.approx(2 * fixed, rel=1e-9, abs=1e-9)
    else:
        assert following == pytest.approx(fixed, rel=1e-9, abs=1e-9)


def test_backoff_first_reconnect_is_minimum_plus_random_part() -> None:
    assert backoff_delay(1, wait_minimum_s=10, random_range_s=4, repeat_times=3, rand=0) == 10
    assert backoff_delay(1, wait_minimum_s=10, random_range_s=4, repeat_times=3,
                         rand=0.5) == 12
    delays = [backoff_delay(n, wait_minimum_s=10, random_range_s=0, repeat_times=3, rand=0)
              for n in range(1, 7)]
    assert delays == [10, 20, 40, 80, 80, 80]


@pytest.mark.parametrize("kwargs", [
    {"attempt": 0}, {"rand": 1.0}, {"rand": -0.1}, {"wait_minimum_s": -1},
    {"random_range_s": -1}, {"repeat_times": -1},
])
def test_backoff_rejects_bad_inputs(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"attempt": 1, "wait_minimum_s": 1, "random_range_s": 1,
                            "repeat_times": 1, "rand": 0.5, **kwargs}
    with pytest.raises(ValueError, match=r"."):
        backoff_delay(args.pop("attempt"), **args)


# -- Link ------------------------------------------------------------------------------------

SETTINGS = BackoffSettings(wait_minimum_s=1, random_range_s=2, repeat_times=2)


class FastClock:
    """Injected sleep: records each back-off and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def state_of(link: Link) -> LinkState:
    """Read the state through a call, so a loop waiting for it is not narrowed away by mypy."""
    return link.state


async def _serve_until_closed(connected: Connected) -> None:
    await connected.ws.recv()


def test_link_reconnects_with_backoff_and_mark_healthy_resets_it() -> None:
    async def main() -> None:
        async def hang_up(ws: ServerConnection) -> None:
            await ws.close()

        clock = FastClock()
        versions: list[str] = []
        states: list[tuple[LinkState, ConnectError | None]] = []
        link: Link

        async def on_connected(connected: Connected) -> None:
            versions.append(connected.version)
            if len(versions) == 4:
                link.mark_healthy()  # as after BootNotification Accepted
            if len(versions) == 6:
                await link.close()
                return
            await _serve_until_closed(connected)

        async with csms(handler=hang_up) as (port, _):
            link = Link(lambda: cfg(port), on_connected, backoff=lambda: SETTINGS,
                        rng=lambda: 0.5, sleep=clock.sleep,
                        on_state=lambda s, e: states.append((s, e)))
            await asyncio.wait_for(link.run(), 5)
        # 1 + rand*2 = +1 on each; doubling stops after repeat_times=2; reset after healthy.
        assert clock.delays == [2, 3, 5, 2, 3]
        assert versions == ["2.1"] * 6
        assert link.state is LinkState.CLOSED
        assert [s for s, _ in states[:4]] == [LinkState.CONNECTING, LinkState.CONNECTED,
                                              LinkState.WAITING, LinkState.CONNECTING]
        assert all(e is None for _, e in states)

    asyncio.run(main())


def test_link_backs_off_on_connect_failures_and_reads_config_each_attempt() -> None:
    """Attempts 1-3 fail (refused, then auth), attempt 4 uses a new config and connects: the
    config callable is read per attempt, as a SetVariables security upgrade needs."""
    async def main() -> None:
        clock = FastClock()
        failures: list[ConnectFailure] = []
        connected_to: list[int] = []
        link: Link

        async def on_connected(connected: Connected) -> None:
            connected_to.append(connected.ws.remote_address[1])
            await link.close()

        async with csms(password=PASSWORD) as (port, _):
            configs = iter([cfg(free_port()),
                            cfg(port, basic_auth_password="wrong-password-123"),
                            cfg(port, basic_auth_password="wrong-password-123"),
                            cfg(port)])
            link = Link(lambda: next(configs), on_connected, backoff=lambda: SETTINGS,
                        rng=lambda: 0.0, sleep=clock.sleep,
                        on_state=lambda s, e: failures.append(e.kind) if e else None)
            await asyncio.wait_for(link.run(), 5)
        assert failures == [ConnectFailure.REFUSED, ConnectFailure.AUTH, ConnectFailure.AUTH]
        assert clock.delays == [1, 2, 4]
        assert connected_to == [port]
        assert link.attempts == 3

    asyncio.run(main())


def test_link_applies_a_security_profile_upgrade_on_the_next_connection(tmp_path: Path) -> None:
    """Connected with profile 1, the 'CSMS' raises the profile to 2 (as SetVariables
    SecurityCtrlr.SecurityProfile + a reset would) and the next connection uses wss://."""
    pki = make_pki(tmp_path)

    async def main() -> None:
        profile = 1
        seen_by: list[tuple[int, str | None]] = []
        link: Link

        async with csms(password=PASSWORD) as (plain, _), \
                csms(password=PASSWORD, tls=server_tls(pki)) as (secure, _):
            def config() -> ConnectionConfig:
                if profile == 1:
                    return cfg(plain)
                return cfg(secure, csms_url=f"wss://127.0.0.1:{secure}/ocpp",
                           security_profile=2, ca_file=pki.ca_cert)

            async def on_connected(connected: Connected) -> None:
                nonlocal profile
                tls = connected.ws.transport.get_extra_info("ssl_object")
                seen_by.append((connected.ws.remote_address[1],
                                tls.version() if tls is not None else None))
                if profile == 2:
                    await link.close()
                    return
                profile = 2
                await connected.ws.close()

            link = Link(config, on_connected, backoff=lambda: SETTINGS, sleep=FastClock().sleep)
            await asyncio.wait_for(link.run(), 5)
        assert seen_by[0] == (plain, None)
        assert seen_by[1][0] == secure
        assert seen_by[1][1] in ("TLSv1.2", "TLSv1.3")

    asyncio.run(main())


def test_link_turns_an_invalid_config_into_a_config_failure() -> None:
    async def main() -> None:
        clock = FastClock()
        failures: list[ConnectError] = []
        link: Link

        def config() -> ConnectionConfig:
            if len(failures) == 2:
                asyncio.get_running_loop().call_soon(asyncio.ensure_future, link.close())
            return cfg(1, basic_auth_password="short")

        link = Link(config, _serve_until_closed, backoff=lambda: SETTINGS, sleep=clock.sleep,
                    on_state=lambda s, e: failures.append(e) if e else None)
        await asyncio.wait_for(link.run(), 5)
        assert [f.kind for f in failures] == [ConnectFailure.CONFIG] * len(failures)
        assert len(failures) >= 2

    asyncio.run(main())


def test_link_close_while_waiting_returns_promptly() -> None:
    async def main() -> None:
        link = Link(lambda: cfg(free_port()), _serve_until_closed,
                    backoff=lambda: BackoffSettings(3600, 0, 0))
        runner = asyncio.create_task(link.run())
        while state_of(link) is not LinkState.WAITING:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(link.close(), 1)
        await asyncio.wait_for(runner, 1)
        assert state_of(link) is LinkState.CLOSED

    asyncio.run(main())


def test_link_close_while_connected_closes_the_socket() -> None:
    async def main() -> None:
        server_saw_close = asyncio.Event()

        async def handler(ws: ServerConnection) -> None:
            await _until_closed(ws)
            server_saw_close.set()

        async with csms(handler=handler) as (port, _):
            link = Link(lambda: cfg(port), _serve_until_closed, backoff=lambda: SETTINGS)
            runner = asyncio.create_task(link.run())
            while state_of(link) is not LinkState.CONNECTED:
                await asyncio.sleep(0.01)
            await asyncio.wait_for(link.close(), 2)
            await asyncio.wait_for(server_saw_close.wait(), 2)
            await runner

    asyncio.run(main())


def test_link_logs_failures_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        link: Link
        attempts = 0

        def config() -> ConnectionConfig:
            nonlocal attempts
            attempts += 1
            if attempts == 3:
                asyncio.get_running_loop().call_soon(asyncio.ensure_future, link.close())
            return cfg(port, basic_auth_password="wrong-password-123")

        async with csms(password=PASSWORD) as (port, _):
            link = Link(config, _serve_until_closed, backoff=lambda: SETTINGS,
                        sleep=FastClock().sleep)
            await asyncio.wait_for(link.run(), 5)

    with caplog.at_level(logging.INFO, logger="voltpilot"):
        asyncio.run(main())
    backoffs = [r for r in caplog.records if r.getMessage() == "link_backoff"]
    assert backoffs
    fields = backoffs[0].fields  # type: ignore[attr-defined]
    assert fields["kind"] is ConnectFailure.AUTH
    assert fields["attempt"] == 1
    assert 1 <= fields["delay_s"] <= 3
    everything = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "wrong-password-123" not in everything
    assert base64.b64encode(b"CS001:wrong-password-123").decode() not in everything


# -- half-open detection ---------------------------------------------------------------------


class FreezableProxy:
    """TCP proxy that can stop forwarding in both directions while keeping both sockets open:
    to each end the link looks alive but silent, like a dead NAT mapping or a pulled cable."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._server.wait_closed()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self.tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                await self.flowing.wait()  # frozen: hold what was read, forward nothing
                writer.write(data)
                await writer.drain()
            writer.write_eof()


def test_half_open_connection_is_detected_within_twice_the_ping_interval() -> None:
    interval = 0.3

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = FastClock()
        frozen_at: float | None = None
        detected_at: float | None = None
        sent_close_code: int | None = None
        reconnected = asyncio.Event()
        connections = 0

        async def on_connected(connected: Connected) -> None:
            nonlocal connections, frozen_at, detected_at, sent_close_code
            connections += 1
            if connections > 1:
                reconnected.set()
                await connected.ws.recv()
                return
            proxy.freeze()
            frozen_at = loop.time()
            try:
                await connected.ws.recv()
            except ConnectionClosed as exc:
                detected_at = loop.time()
                sent_close_code = exc.sent.code if exc.sent else None
                proxy.thaw()
                raise

        async with csms() as (port, _), FreezableProxy(port) as proxy:
            link = Link(lambda: cfg(proxy.port, ping_interval_s=interval), on_connected,
                        backoff=lambda: SETTINGS, rng=lambda: 0.0, sleep=clock.sleep)
            runner = asyncio.create_task(link.run())
            await asyncio.wait_for(reconnected.wait(), 5)
            await link.close()
            await runner

        assert frozen_at is not None and detected_at is not None
        elapsed = detected_at - frozen_at
        # Freezing right after connecting: first ping at 1x, pong deadline at 1.5x, close
        # handshake given up at 2x. Slack for a loaded test machine.
        assert interval <= elapsed <= 2 * interval + 0.35, elapsed
        assert sent_close_code == 1011  # websockets' "keepalive ping timeout"
        assert clock.delays == [1.0]
        assert connections == 2

    asyncio.run(main())


def test_ping_settings_follow_the_interval() -> None:
    async def main() -> None:
        async with csms() as (port, _):
            off = await open_connection(cfg(port, ping_interval_s=0))
            on = await open_connection(cfg(port, ping_interval_s=4))
            assert off.ws.ping_interval is None
            assert off.ws.ping_timeout is None
            assert (on.ws.ping_interval, on.ws.ping_timeout, on.ws.close_timeout) == (4, 2, 2)
            await off.ws.close()
            await on.ws.close()

    asyncio.run(main())
