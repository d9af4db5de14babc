"""A real mosquitto for MQTT tests, on a free 127.0.0.1 port with its own config.

Loaded as a pytest plugin from tests/conftest.py (``pytest_plugins = ["mqtt_broker"]``).
``mosquitto`` is a started broker for one test; ``mosquitto_factory(extra_config)`` starts
more, e.g. with TLS or a password file. ``stop()``/``start()`` restart a broker on the same
port (reconnect tests); every broker is killed at teardown. The broker keeps no state across a
restart (no persistence): retained messages are gone, as after a real broker crash.
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

_START_S = 5.0
T = TypeVar("T")


async def eventually(condition: Callable[[], T], timeout: float = 5.0, step: float = 0.01) -> T:
    """``condition()``'s first truthy value, polled on the loop; the timeout is real seconds,
    so it bounds a test on a virtual-time loop too (whose sleeps take no real time)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g} s")
        await asyncio.sleep(step)
    return value


def mosquitto_binary() -> str:
    """The mosquitto executable; fails the test (never skips) when it is not installed."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail("mosquitto is not installed: the MQTT tests need a real broker. "
                    "`make setup` installs it (Debian package `mosquitto`).", pytrace=False)
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    """One mosquitto process listening on ``host:port``."""

    def __init__(self, workdir: Path, extra_config: str = "", anonymous: bool = True) -> None:
        self.binary = mosquitto_binary()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.extra_config = extra_config
        self.anonymous = anonymous
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False    # the port is ours: a restart must get it back

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (again) on the same port; returns once it accepts TCP connections."""
        if self.running:
            return
        for _ in range(3):
            if self._launch():
                self._started = True
                return
            # Another test took the port between free_port() and mosquitto's bind.
            self.port = free_port()
        pytest.fail(f"mosquitto could not bind a port:\n{self.log.read_text()[-2000:]}",
                    pytrace=False)

    def _launch(self) -> bool:
        self.config.write_text(
            f"listener {self.port} {self.host}\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\npersistence false\n"
            # Started by root, mosquitto would switch to user "mosquitto", who cannot read the
            # test's temporary files.
            f"user {getpass.getuser()}\n"
            f"log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
            f"{self.extra_config}")
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen([self.binary, "-c", str(self.config)],
                                          stdout=log, stderr=log)
        deadline = time.monotonic() + _START_S
        while True:
            if self._proc.poll() is not None:
                text = self.log.read_text()
                if "Address already in use" in text and not self._started:
                    return False
                pytest.fail(f"mosquitto exited with {self._proc.returncode}:\n{text[-2000:]}",
                            pytrace=False)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return True
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"mosquitto did not listen on {self.port} within "
                                f"{_START_S:g} s:\n{self.log.read_text()[-2000:]}",
                                pytrace=False)
                time.sleep(0.01)

    def stop(self) -> None:
        """Terminate the broker (clients see their connection closed)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    brokers: list[Mosquitto] = []

    def make(extra_config: str = "", anonymous: bool = True) -> Mosquitto:
        workdir = tmp_path / f"mosquitto{len(brokers)}"
        workdir.mkdir()
        broker = Mosquitto(workdir, extra_config, anonymous)
        brokers.append(broker)
        broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in brokers:
            broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return mosquitto_factory()
