"""The stand-alone EMS steering two charge points, every part real: `voltpilot ems --site`
reads a Modbus grid meter (a pymodbus server) and talks through mosquitto to two
`voltpilot run --ems-link` controllers on sim boards. The site fuse is shared; when the EMS
process is killed, both charge points fall back to their fail-safe current at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modbus_peer import Peer, map_image, tcp_peer
from mqtt_broker import Mosquitto

from ems.meters.decode import Quantity
from ems.meters.devicemap import Table, load_map
from ems.mqtt_client import Message, MqttClient, MqttSettings

ROOT = Path(__file__).resolve().parents[2]
FUSE_A = 25.0
HOUSE_A = 9.0   # what the grid meter shows on each phase besides the cars


def site_file(tmp: Path, broker: Mosquitto, modbus_port: int) -> Path:
    path = tmp / "site.toml"
    path.write_text(f"""
[site]
name = "park"
cycle_s = 1

[grid]
fuse_a = {FUSE_A}
meter = "grid"
failsafe_a = 6

[[meter]]
name = "grid"
role = "grid"
kind = "modbus"
device = "sdm630"
host = "127.0.0.1"
port = {modbus_port}
unit = 1
timeout_s = 5

[[charge_point]]
id = "cp1"
mode = "now"
max_a = 16

[[charge_point]]
id = "cp2"
mode = "now"
max_a = 16

[mqtt]
host = "{broker.host}"
port = {broker.port}
backoff_min_s = 0.2
backoff_max_s = 1
""")
    return path


def link_file(tmp: Path, broker: Mosquitto, cp: str) -> Path:
    path = tmp / f"link-{cp}.toml"
    path.write_text(f'[link]\nsite = "park"\ncp_id = "{cp}"\nfailsafe_a = 6\n'
                    f'state_every_s = 0.5\n\n[mqtt]\nhost = "{broker.host}"\n'
                    f'port = {broker.port}\nbackoff_min_s = 0.2\nbackoff_max_s = 1\n')
    return path


def start(args: list[str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "firmware.cli", *args], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def test_a_standalone_ems_shares_the_fuse_and_its_death_is_failsafe(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    states: dict[str, dict[str, Any]] = {}

    grid_map = load_map("sdm630")

    def grid_values() -> dict[Quantity, float]:
        """What the grid meter sees: the house and the cars' draw as they last reported it
        (a meter that missed the cars would show a fuse that is never used)."""
        cars = [sum(float(st["currents_a"][k]) for st in states.values()) for k in range(3)]
        amps = [HOUSE_A + a for a in cars]
        return {Quantity.POWER: 230.0 * sum(amps), Quantity.CURRENT_L1: amps[0],
                Quantity.CURRENT_L2: amps[1], Quantity.CURRENT_L3: amps[2],
                Quantity.VOLTAGE_L1: 230.0, Quantity.VOLTAGE_L2: 230.0,
                Quantity.VOLTAGE_L3: 230.0, Quantity.FREQUENCY: 50.0,
                Quantity.IMPORT_ENERGY: 1000.0, Quantity.EXPORT_ENERGY: 0.0}

    async def live(_fc: int, address: int, count: int, _unit: int, registers: list[int],
                   _new: object) -> None:
        # pymodbus hands the device's registers to this hook on every read; what is written
        # here is what the next read returns (one poll late, as a meter that integrates).
        cells = grid_map.image(grid_values()).get(Table.INPUT, {})
        for i in range(count):
            if address + i in cells:
                registers[i] = cells[address + i]

    async def scenario() -> None:
        peer = Peer(map_image(grid_map, grid_values()), action=live)
        async with tcp_peer(peer) as port:
            site = site_file(tmp_path, mosquitto, port)
            plug = tmp_path / "plug.toml"
            plug.write_text('[[action]]\nat = 1\ncmd = "plug"\nprofile = "fast_ac_3p"\n')
            procs = {cp: start(["run", "--board", "sim", "--ems-link",
                                str(link_file(tmp_path, mosquitto, cp)), "--scenario",
                                str(plug), "--data-dir", str(tmp_path / cp), "--status", "off",
                                "--log", str(tmp_path / f"{cp}.jsonl")],
                               tmp_path / f"{cp}.out") for cp in ("cp1", "cp2")}
            ems = start(["ems", "--site", str(site), "--data-dir", str(tmp_path / "ems")],
                        tmp_path / "ems.out")
            watcher = MqttClient(MqttSettings(host=mosquitto.host, port=mosquitto.port),
                                 "test-watcher")

            def on_state(message: Message) -> None:
                state = json.loads(message.payload)
                states[state["id"]] = state

            watcher.subscribe("voltpilot/park/cp/+/state", on_state)
            watcher.start()
            try:
                # Both charge; the site fuse (25 A less the 9 A house) is shared between them.
                await wait(lambda: all(states.get(cp, {}).get("charging")
                                       for cp in ("cp1", "cp2")), 30.0)
                await wait(lambda: all(abs(float(states[cp]["offered_a"]) - 8.0) < 0.6
                                       for cp in ("cp1", "cp2")), 30.0, lambda: states)
                # The EMS dies without a word: its last will reaches the charge points.
                ems.send_signal(signal.SIGKILL)
                ems.wait(10)
                killed = time.monotonic()
                await wait(lambda: all(failsafe_logged(tmp_path / f"{cp}.jsonl")
                                       for cp in ("cp1", "cp2")), 10.0)
                assert time.monotonic() - killed < 5.0
                await wait(lambda: all(float(states[cp]["offered_a"]) == 6.0
                                       for cp in ("cp1", "cp2")), 10.0)
            finally:
                await watcher.close()
                for p in (*procs.values(), ems):
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                for p in (*procs.values(), ems):
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            for cp, p in procs.items():
                assert p.returncode == 0, (tmp_path / f"{cp}.out").read_text()

    asyncio.run(scenario())
    log = (tmp_path / "cp1.jsonl").read_text()
    assert "energy manager is offline" in log or "command expired" in log


def failsafe_logged(log: Path) -> bool:
    if not log.exists():
        return False
    return any('"ems_failsafe"' in line and "no command from the energy manager yet" not in line
               for line in log.read_text().splitlines())


async def wait(condition: object, timeout: float,
               describe: Callable[[], object] = lambda: "") -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {describe()}")
        await asyncio.sleep(0.1)


def test_link_file_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "link.toml"
    bad.write_text('[link]\nsite = "park"\ncp_id = "cp1"\nfailsafe_a = 100\n[mqtt]\n')
    done = subprocess.run([sys.executable, "-m", "firmware.cli", "run", "--board", "sim",
                           "--ems-link", str(bad), "--data-dir", str(tmp_path / "v")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ})
    assert done.returncode == 2
    assert "link.failsafe_a: expected a current in [0, 80] A, got 100" in done.stderr
