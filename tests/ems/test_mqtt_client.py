"""The asyncio MQTT client against a real mosquitto: settings, pub/sub with per-filter
callbacks, nothing queued while offline, the will on close, TLS with a client certificate and a
password, refused credentials and an unreachable broker (back-off, no exception)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mqtt_broker import Mosquitto, eventually, free_port

from ems.config_error import ConfigError
from ems.mqtt_client import Message, MqttClient, MqttSettings, TlsSettings, tls_context

FAST = {"backoff_min_s": 0.05, "backoff_max_s": 0.2, "connect_timeout_s": 2.0}


def settings(broker: Mosquitto, **changes: object) -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port, **{**FAST, **changes})  # type: ignore[arg-type]


# ---- settings ----------------------------------------------------------------------------------


def test_settings_from_a_table_resolve_tls_paths_next_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    s = MqttSettings.from_table({"host": "broker.lan", "port": 8883, "username": "ems",
                                 "password": "secret", "tls": {"ca_file": "ca.pem"}},
                                str(tmp_path / "site.toml"))
    assert s.tls == TlsSettings(ca_file=tmp_path / "ca.pem")
    assert (s.host, s.port, s.username) == ("broker.lan", 8883, "ems")


@pytest.mark.parametrize(("table", "key"), [
    ({"port": "1883"}, "mqtt.port"),
    ({"port": 0}, "mqtt.port"),
    ({"port": True}, "mqtt.port"),
    ({"host": ""}, "mqtt.host"),
    ({"password": "x"}, "mqtt.password"),
    ({"keepalive_s": 1}, "mqtt.keepalive_s"),
    ({"backoff_min_s": 5.0, "backoff_max_s": 1.0}, "mqtt.backoff_max_s"),
    ({"connect_timeout_s": float("nan")}, "mqtt.connect_timeout_s"),
    ({"hots": "x"}, "mqtt.hots"),
    ({"tls": {"ca_file": "missing.pem"}}, "mqtt.tls.ca_file"),
    ({"tls": {"cafile": "x"}}, "mqtt.tls.cafile"),
    ({"tls": "yes"}, "mqtt.tls"),
])
def test_bad_settings_name_the_file_and_the_key(tmp_path: Path, table: dict[str, object],
                                                key: str) -> None:
    with pytest.raises(ConfigError) as err:
        MqttSettings.from_table(table, str(tmp_path / "site.toml"))
    assert err.value.file == str(tmp_path / "site.toml")
    assert err.value.key == key


def test_a_file_that_is_no_certificate_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    s = MqttSettings(tls=TlsSettings(ca_file=tmp_path / "ca.pem"), file="site.toml")
    with pytest.raises(ConfigError) as err:
        tls_context(s)
    assert err.value.key == "mqtt.tls.ca_file"


# ---- against mosquitto -------------------------------------------------------------------------


def test_subscribers_get_what_matches_their_filter_in_order(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        a = MqttClient(settings(mosquitto), "a")
        b = MqttClient(settings(mosquitto), "b")
        got: dict[str, list[Message]] = {"all": [], "plus": [], "exact": []}
        b.subscribe("x/#", got["all"].append)
        b.subscribe("x/+/power", got["plus"].append)
        b.subscribe("x/m1/power", got["exact"].append)
        a.start()
        b.start()
        await asyncio.wait_for(asyncio.gather(a.wait_online(), b.wait_online()), 5)
        for i in range(5):
            assert a.publish("x/m1/power", str(i), qos=i % 2)
        assert a.publish("x/m2/energy", b"e")
        await eventually(lambda: len(got["all"]) == 6)
        assert [m.payload for m in got["exact"]] == [b"0", b"1", b"2", b"3", b"4"]
        assert [m.topic for m in got["plus"]] == ["x/m1/power"] * 5
        assert got["all"][-1] == Message("x/m2/energy", b"e", 0, False)
        await a.close()
        await b.close()

    asyncio.run(main())


def test_nothing_is_queued_while_offline_and_close_publishes_the_will(
        mosquitto: Mosquitto) -> None:
    async def main() -> None:
        will = Message("dev/online", b"0", 1, True)
        dev = MqttClient(settings(mosquitto), "dev", will=will,
                         birth=Message("dev/online", b"1", 1, True))
        assert not dev.publish("dev/x", b"early")          # not started: dropped, not queued
        watcher = MqttClient(settings(mosquitto), "watcher")
        seen: list[Message] = []
        watcher.subscribe("dev/#", seen.append)
        watcher.start()
        await eventually(lambda: watcher.online)
        dev.start()
        await eventually(lambda: [m.payload for m in seen] == [b"1"])
        await dev.close()
        await eventually(lambda: [m.payload for m in seen] == [b"1", b"0"])
        assert not dev.online
        assert not dev.publish("dev/x", b"late")
        await watcher.close()

    asyncio.run(main())


def test_an_unreachable_broker_means_backoff_and_counted_failures(tmp_path: Path) -> None:
    async def main() -> None:
        client = MqttClient(MqttSettings(port=free_port(), **FAST), "lonely",  # type: ignore[arg-type]
                            rng=random.Random(1))
        client.start()
        await eventually(lambda: client.failures >= 3)
        assert not client.online
        assert client.last_error is not None and "ConnectionRefused" in client.last_error
        await asyncio.sleep(0.5)
        # Between 0.025 and 0.2 s apart: a handful more attempts, not a busy loop.
        assert 3 <= client.failures <= 40
        await client.close()

    asyncio.run(main())


# ---- TLS with a client certificate, and a password ----------------------------------------------


def _pki(directory: Path) -> dict[str, Path]:
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
             issuer_key: ec.EllipticCurvePrivateKey | None, ca: bool,
             san: x509.SubjectAlternativeName | None = None) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def write(name: str, key: ec.EllipticCurvePrivateKey, crt: x509.Certificate) -> None:
        (directory / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (directory / f"{name}.pem").write_bytes(crt.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("voltpilot test CA", ca_key, None, None, True)
    write("ca", ca_key, ca)
    for name, san in (("server", x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, key, cert(name, key, ca.subject, ca_key, False, san))
    return {n: directory / n for n in ("ca", "server", "client")}


@pytest.fixture
def tls_broker(tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    pki = _pki(tmp_path)
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.fail("mosquitto_passwd is missing (Debian package mosquitto)", pytrace=False)
    subprocess.run([passwd, "-c", "-b", str(tmp_path / "passwd"), "ems", "s3cret"], check=True,
                   capture_output=True)
    return mosquitto_factory(
        f"cafile {pki['ca']}.pem\ncertfile {pki['server']}.pem\nkeyfile {pki['server']}.key\n"
        f"require_certificate true\npassword_file {tmp_path / 'passwd'}\n", anonymous=False)


def test_tls_with_client_certificate_and_password(tmp_path: Path, tls_broker: Mosquitto) -> None:
    tls = TlsSettings(ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "client.pem",
                      key_file=tmp_path / "client.key")

    async def main() -> None:
        good = MqttClient(settings(tls_broker, tls=tls, username="ems", password="s3cret"), "ok")
        bad = MqttClient(settings(tls_broker, tls=tls, username="ems", password="wrong"), "no")
        got: list[Message] = []
        good.subscribe("t", got.append)
        good.start()
        bad.start()
        await eventually(lambda: good.online and bad.failures >= 2)
        assert good.publish("t", b"over tls", qos=1)
        await eventually(lambda: got)
        assert got[0].payload == b"over tls"
        assert not bad.online
        assert bad.last_error is not None and "refused" in bad.last_error
        await good.close()
        await bad.close()

    asyncio.run(main())


def test_a_peer_that_never_answers_connect_times_out_without_leaking_sockets() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        held: list[asyncio.StreamWriter] = []

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)       # accepts TCP, reads CONNECT, never answers CONNACK

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        fds = len(os.listdir("/proc/self/fd"))
        client = MqttClient(MqttSettings(port=port, connect_timeout_s=0.2, backoff_min_s=0.05,
                                         backoff_max_s=0.1), "patient")
        started = loop.time()
        client.start()
        await eventually(lambda: client.failures >= 3)
        assert loop.time() - started >= 3 * 0.2
        assert client.last_error is not None and "TimeoutError" in client.last_error
        await client.close()
        server.close()
        for writer in held:
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()
        assert len(os.listdir("/proc/self/fd")) <= fds

    asyncio.run(main())
