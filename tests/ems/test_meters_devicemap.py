"""Device map files: the shipped maps load and round-trip; a broken map names file, key and
expectation; read planning; the site-file options of a Modbus meter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from modbus_peer import VALUES

from ems.config_error import ConfigError
from ems.meters.decode import Quantity
from ems.meters.devicemap import MAPS_DIR, Block, Table, available, load_map
from ems.meters.modbus import MeterSpec, meter_spec

SHIPPED = {"sdm630", "sdm72", "sdm72v2", "sdm120", "abb_b23", "em24"}


def test_every_device_has_a_map_citing_its_source() -> None:
    assert set(available()) >= SHIPPED
    for name in available():
        text = (MAPS_DIR / f"{name}.toml").read_text(encoding="utf-8")
        assert "Source:" in text, name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_map_round_trips_the_values(name: str) -> None:
    device_map = load_map(name)
    assert all(b.count <= device_map.max_count for b in device_map.blocks)
    image = device_map.image(VALUES)
    words = {b: [image[b.table].get(a, 0) for a in range(b.address, b.address + b.count)]
             for b in device_map.blocks}
    r = device_map.decode(words, at=3.0)
    present = {reg.quantity for reg in device_map.registers}
    assert Quantity.POWER in present and Quantity.IMPORT_ENERGY in present
    assert r.power_w == pytest.approx(VALUES[Quantity.POWER], rel=1e-6)
    assert r.import_wh == pytest.approx(VALUES[Quantity.IMPORT_ENERGY], rel=1e-6)
    assert r.export_wh == pytest.approx(VALUES[Quantity.EXPORT_ENERGY], rel=1e-6)
    if Quantity.CURRENT_L1 in present:
        assert r.currents_a is not None
        assert r.currents_a[0] == pytest.approx(VALUES[Quantity.CURRENT_L1], rel=1e-6)
        assert r.voltages_v is not None
        assert r.voltages_v[0] == pytest.approx(VALUES[Quantity.VOLTAGE_L1], rel=1e-6)
    if Quantity.FREQUENCY in present:
        assert r.frequency_hz == pytest.approx(VALUES[Quantity.FREQUENCY], abs=0.05)


def test_a_map_by_path_and_its_read_plan(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(_map(max_gap=2, max_count=8, registers="""
        [registers.voltage_l1]
        address = 0
        [registers.voltage_l2]
        address = 2
        [registers.voltage_l3]
        address = 6
        [registers.power]
        address = 10
        [registers.frequency]
        address = 100
        table = "holding"
        type = "uint16"
        scale_pow10 = -2
    """))
    device_map = load_map(path)
    assert device_map.name == "mine" and device_map.file == str(path)
    # 0..3 and 6..7 join over a 2-register gap; 10 would make the read 12 long (> 8).
    assert device_map.blocks == (Block(Table.INPUT, 0, 8), Block(Table.INPUT, 10, 2),
                                 Block(Table.HOLDING, 100, 1))
    assert load_map(str(path)).blocks == device_map.blocks


def _map(registers: str, device: str = "", phases: int = 3, max_gap: int = 0,
         max_count: int = 125) -> str:
    return (f'[device]\nmanufacturer = "Acme"\nmodel = "M1"\nphases = {phases}\n'
            f"max_gap = {max_gap}\nmax_count = {max_count}\n{device}\n"
            '[defaults]\ntable = "input"\ntype = "float32"\n'
            + "\n".join(line.strip() for line in registers.splitlines()))


POWER = "[registers.power]\naddress = 0x34\n"
BROKEN: list[tuple[str, str, str, str]] = [
    # (id, file text, key, part of the expectation)
    ("not-toml", "[device\n", "(file)", "valid TOML"),
    ("unknown-top", _map(POWER) + "\n[extra]\n", "extra", "one of defaults, device"),
    ("no-device", '[registers.power]\naddress = 1\ntable = "input"\ntype = "int16"\n',
     "[device]", "a table"),
    ("phases", _map(POWER, phases=2), "device.phases", "1 or 3"),
    ("max-count", _map(POWER, max_count=200), "device.max_count", "an integer in [4, 125]"),
    ("no-model", _map(POWER).replace('model = "M1"', ""), "device.model",
     "a non-empty string"),
    ("no-registers", _map(""), "[registers]", "a table"),
    ("empty-registers", _map("[registers]\n"), "[registers]", "at least one register"),
    ("unknown-quantity", _map("[registers.pwr]\naddress = 1\n"), "registers.pwr",
     "a quantity: one of power"),
    ("register-not-table", _map("[registers]\npower = 3\n"), "registers.power",
     "a table with address"),
    ("unknown-field", _map(POWER + "signed = true\n"), "registers.power.signed",
     "one of address, na, negate"),
    ("no-address", _map("[registers.power]\nscale = 2.0\n"), "registers.power.address",
     "an integer in [0, 65534]"),
    ("address-range", _map("[registers.power]\naddress = 0xFFFF\n"),
     "registers.power.address", "an integer in [0, 65534]"),
    ("address-text", _map('[registers.power]\naddress = "0x34"\n'), "registers.power.address",
     "an integer"),
    ("type", _map(POWER + 'type = "float16"\n'), "registers.power.type",
     "one of int16, uint16, int32"),
    ("word-order", _map(POWER + 'word_order = "middle"\n'), "registers.power.word_order",
     "one of big, little"),
    ("table", _map(POWER + 'table = "coil"\n'), "registers.power.table",
     "one of input, holding"),
    ("no-type", _map(POWER).replace('type = "float32"', ""), "registers.power.type",
     "a data type (here or in [defaults])"),
    ("both-scales", _map(POWER + "scale = 0.1\nscale_pow10 = -1\n"),
     "registers.power.scale_pow10", "either scale or scale_pow10, not both"),
    ("zero-scale", _map(POWER + "scale = 0\n"), "registers.power.scale",
     "a finite non-zero number"),
    ("nan-scale", _map(POWER + "scale = nan\n"), "registers.power.scale",
     "a finite non-zero number"),
    ("pow10-range", _map(POWER + "scale_pow10 = 20\n"), "registers.power.scale_pow10",
     "an integer in [-9, 9]"),
    ("negate", _map(POWER + 'negate = "yes"\n'), "registers.power.negate", "true or false"),
    ("na-float", _map(POWER + "na = 0xFFFFFFFF\n"), "registers.power.na",
     "no na on a float type"),
    ("na-range", _map(POWER + 'type = "uint16"\nna = 0x10000\n'), "registers.power.na",
     "an integer a uint16 can hold"),
    ("overlap", _map(POWER + "[registers.frequency]\naddress = 0x35\n"),
     "registers.frequency.address", "an address from 0x0036 on"),
    ("missing-phase", _map(POWER + "[registers.current_l1]\naddress = 6\n"
                           "[registers.current_l3]\naddress = 10\n"),
     "registers.current_l2", "a register, as the other phases have one"),
    ("one-phase", _map(POWER + "[registers.voltage_l2]\naddress = 2\n", phases=1),
     "registers.voltage_l2", "no voltage_l2 on a 1-phase device"),
]


@pytest.mark.parametrize(("text", "key", "expected"), [b[1:] for b in BROKEN],
                         ids=[b[0] for b in BROKEN])
def test_a_broken_map_names_file_key_and_expectation(tmp_path: Path, text: str, key: str,
                                                     expected: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_map(path)
    err = info.value
    assert err.file == str(path)
    assert err.key == key
    assert expected in err.expected
    assert str(err).startswith(f"{path}: {key}: expected ")


def test_an_unknown_map_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_map("sdm999")
    assert info.value.key == "(file)" and "sdm630" in info.value.expected
    with pytest.raises(ConfigError) as info:
        load_map("../etc")
    assert info.value.key == "(file)"
    with pytest.raises(ConfigError) as info:
        load_map(tmp_path / "absent.toml")
    assert info.value.expected == "a readable device map file"


# -- a Modbus meter's options in the site file -----------------------------------------------

def test_meter_spec_from_site_options() -> None:
    spec = meter_spec("site.toml", "meter[0]", "grid", {
        "device": "sdm630", "host": "192.168.1.50", "port": 502, "unit": 2,
        "request_timeout_s": 2, "invert": True})
    assert spec == MeterSpec("grid", "sdm630", host="192.168.1.50", unit=2, timeout_s=2.0,
                             invert=True)
    rtu = meter_spec("site.toml", "meter[1]", "pv", {
        "device": "sunspec:inverter", "transport": "rtu", "serial_port": "/dev/ttyUSB0",
        "baudrate": 19200, "parity": "E"})
    assert rtu.transport == "rtu" and rtu.parity == "E" and rtu.where == "/dev/ttyUSB0 unit 1"
    mine = meter_spec("/etc/voltpilot/site.toml", "meter[2]", "house",
                      {"device": "maps/mine.toml", "host": "10.0.0.9"})
    assert mine.device == "/etc/voltpilot/maps/mine.toml"


@pytest.mark.parametrize(("options", "key", "expected"), [
    ({"host": "h"}, "meter[0].device", "a device map name"),
    ({"device": "sdm6300", "host": "h"}, "meter[0].device", "one of sunspec, sunspec:inverter"),
    ({"device": "sdm630", "host": "h", "speed": 1}, "meter[0].speed", "one of baudrate"),
    ({"device": "sdm630"}, "meter[0].host", "a host name or IP address"),
    ({"device": "sdm630", "host": "a b"}, "meter[0].host", "a host name"),
    ({"device": "sdm630", "host": "h", "port": 0}, "meter[0].port", "a TCP port"),
    ({"device": "sdm630", "host": "h", "unit": 256}, "meter[0].unit", "a Modbus device id"),
    ({"device": "sdm630", "host": "h", "unit": True}, "meter[0].unit", "a Modbus device id"),
    ({"device": "sdm630", "host": "h", "request_timeout_s": 0}, "meter[0].request_timeout_s",
     "seconds in [0.01, 60]"),
    ({"device": "sdm630", "host": "h", "invert": 1}, "meter[0].invert", "true or false"),
    ({"device": "sdm630", "transport": "udp"}, "meter[0].transport", "tcp or rtu"),
    ({"device": "sdm630", "transport": "rtu"}, "meter[0].serial_port", "a serial device"),
    ({"device": "sdm630", "transport": "rtu", "serial_port": "/dev/x", "parity": "M"},
     "meter[0].parity", "N, E or O"),
    ({"device": "sdm630", "transport": "rtu", "serial_port": "/dev/x", "stopbits": 3},
     "meter[0].stopbits", "1 or 2"),
    ({"device": "sdm630", "transport": "rtu", "serial_port": "/dev/x", "baudrate": 12},
     "meter[0].baudrate", "a baud rate"),
])
def test_bad_meter_options_name_file_key_and_expectation(options: dict[str, Any], key: str,
                                                         expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        meter_spec("site.toml", "meter[0]", "grid", options)
    assert info.value.file == "site.toml"
    assert info.value.key == key
    assert expected in info.value.expected


def test_meter_spec_checks_itself() -> None:
    with pytest.raises(ValueError, match="port: expected a TCP port"):
        MeterSpec("grid", "sdm630", host="h", port=70000)
