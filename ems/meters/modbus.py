"""The Modbus poller: one meter on Modbus TCP or RTU, read with a device map or by SunSpec.

``ModbusMeter.poll(now)`` never raises for device or network trouble: every failure is a
``PollResult`` with a typed ``MeterFault`` and a human-readable detail, counted in
``faults``. Staleness and the fail-safe are the caller's (``ems.inputs``). After a timeout or a
lost connection the connection is dropped and the next poll opens a fresh one: a late answer
on an RTU line carries no transaction id and could otherwise be taken for the next request's.
Meters on one serial port (an RS-485 bus) must share its connection: build them with one
``Links``.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_args

from pymodbus import ExceptionResponse, FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException

from ems.config_error import ConfigError
from ems.meters import sunspec
from ems.meters.decode import DecodeError, DecodeFault
from ems.meters.devicemap import (
    MODBUS_MAX_COUNT,
    Block,
    DeviceMap,
    Table,
    available,
    load_map,
)
from ems.model import Reading

Transport = Literal["tcp", "rtu"]
Parity = Literal["N", "E", "O"]
SUNSPEC_DEVICES: Mapping[str, sunspec.Kind | None] = {
    "sunspec": None,                          # the first inverter or meter model in the chain
    "sunspec:inverter": sunspec.Kind.INVERTER,
    "sunspec:meter": sunspec.Kind.METER,
}
_HOST = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")


class MeterFault(Enum):
    TIMEOUT = "timeout"                      # no (valid) answer within timeout_s
    CONNECTION = "connection"                # cannot connect, or the connection was lost
    EXCEPTION_RESPONSE = "exception_response"  # the device answered with a Modbus exception
    SHORT_READ = "short_read"                # fewer registers than asked for
    PROTOCOL = "protocol"                    # an answer that does not fit the request
    INVALID_VALUE = "invalid_value"          # NaN, infinity or a physically impossible value
    DECODE = "decode"                        # words that do not decode as the map/SunSpec says
    NOT_SUNSPEC = "not_sunspec"              # no SunSpec marker, or no model this reader knows


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """How to reach one meter. ``device`` is a shipped map name, a map file path, or
    ``sunspec`` / ``sunspec:inverter`` / ``sunspec:meter``. ``unit`` is the Modbus device id
    on either transport. ``invert`` is for a meter mounted the other way round: it flips power
    and currents and swaps the import and export counters."""

    name: str
    device: str
    transport: Transport = "tcp"
    host: str = ""
    port: int = 502
    unit: int = 1
    serial_port: str = ""
    baudrate: int = 9600
    parity: Parity = "N"
    stopbits: int = 1
    timeout_s: float = 1.0
    invert: bool = False

    def __post_init__(self) -> None:
        problem = _problem({f.name: getattr(self, f.name) for f in fields(self)})
        if problem is not None:
            field, expected, got = problem
            raise ValueError(f"meter {self.name!r}: {field}: expected {expected}, got {got!r}")

    @property
    def where(self) -> str:
        if self.transport == "tcp":
            return f"{self.host}:{self.port} unit {self.unit}"
        return f"{self.serial_port} unit {self.unit}"


def _problem(v: Mapping[str, Any]) -> tuple[str, str, object] | None:
    """The first MeterSpec field in ``v`` that is not as it must be: (field, expected, got).
    The values may come untyped from a TOML file, so every type is checked."""
    def integer(value: object, lo: int, hi: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi

    def text(value: object) -> bool:
        return isinstance(value, str) and bool(value)

    timeout = v["timeout_s"]
    checks: list[tuple[str, bool, str]] = [
        ("name", text(v["name"]), "a non-empty name"),
        ("device", text(v["device"]),
         "a device map name or path, or " + ", ".join(SUNSPEC_DEVICES)),
        ("transport", v["transport"] in get_args(Transport), "tcp or rtu"),
        ("unit", integer(v["unit"], 0, 255), "a Modbus device id in [0, 255]"),
        ("timeout_s", isinstance(timeout, int | float) and not isinstance(timeout, bool)
         and 0.01 <= timeout <= 60.0, "seconds in [0.01, 60]"),
        ("invert", isinstance(v["invert"], bool), "true or false"),
    ]
    if v["transport"] == "tcp":
        checks += [
            ("host", isinstance(v["host"], str) and bool(_HOST.match(v["host"])),
             "a host name or IP address"),
            ("port", integer(v["port"], 1, 65535), "a TCP port in [1, 65535]"),
        ]
    else:
        checks += [
            ("serial_port", text(v["serial_port"]), "a serial device path"),
            ("baudrate", integer(v["baudrate"], 300, 1_000_000),
             "a baud rate in [300, 1000000]"),
            ("parity", v["parity"] in get_args(Parity), "N, E or O"),
            ("stopbits", integer(v["stopbits"], 1, 2), "1 or 2"),
        ]
    for field, ok, expected in checks:
        if not ok:
            return field, expected, v[field]
    return None


# Site-file option → MeterSpec field; the site's own timeout_s is the staleness timeout.
_OPTION_FIELD = {**{f.name: f.name for f in fields(MeterSpec) if f.name not in
                    ("name", "timeout_s")}, "request_timeout_s": "timeout_s"}


def meter_spec(file: str, key: str, name: str, options: Mapping[str, Any]) -> MeterSpec:
    """A MeterSpec from a site file's ``[[meter]]`` options (kind = "modbus"); ConfigError
    names the file, ``<key>.<option>`` and what was expected."""
    for option in options:
        if option not in _OPTION_FIELD:
            raise ConfigError(file, f"{key}.{option}",
                              f"one of {', '.join(sorted(_OPTION_FIELD))}", "an unknown option")
    if "device" not in options:
        raise ConfigError(file, f"{key}.device",
                          "a device map name or path, or " + ", ".join(SUNSPEC_DEVICES), None)
    device = options["device"]
    values: dict[str, Any] = {f.name: f.default for f in fields(MeterSpec)}
    values.update({_OPTION_FIELD[o]: v for o, v in options.items()}, name=name)
    if isinstance(device, str) and device not in SUNSPEC_DEVICES:
        if "/" in device or device.endswith(".toml"):
            # A map file next to the site file is named relative to it.
            values["device"] = str(Path(file).parent / device)
        elif device not in available():
            raise ConfigError(file, f"{key}.device", "one of " + ", ".join(
                [*SUNSPEC_DEVICES, *available()]) + " or a device map file path", device)
    problem = _problem(values)
    if problem is not None:
        field, expected, got = problem
        option = next((o for o, f in _OPTION_FIELD.items() if f == field), field)
        raise ConfigError(file, f"{key}.{option}", expected, got)
    values["timeout_s"] = float(values["timeout_s"])
    return MeterSpec(**values)


@dataclass(frozen=True, slots=True)
class PollResult:
    reading: Reading | None
    fault: MeterFault | None = None
    detail: str = ""


class _PollError(Exception):
    def __init__(self, fault: MeterFault, detail: str) -> None:
        super().__init__(detail)
        self.fault, self.detail = fault, detail


Client = AsyncModbusTcpClient | AsyncModbusSerialClient
# Every pymodbus call is bounded by our own asyncio.timeout (the meter's timeout_s), so a
# timeout is one TimeoutError here, not one of pymodbus' several ways to report it; pymodbus'
# own timeout only has to be longer than any timeout_s.
_LIBRARY_TIMEOUT_S = 120.0


class _Link:
    """One connection — a TCP socket or a serial port — and the turns meters take on it.
    Opened on first use and after every drop; pymodbus' automatic reconnect is off."""

    def __init__(self, spec: MeterSpec) -> None:
        self.spec = spec
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def read(self, table: Table, address: int, count: int, unit: int,
                   timeout_s: float) -> Sequence[int]:
        async with self._lock:
            try:
                client = await self._connected(timeout_s)
                return await self._request(client, table, address, count, unit, timeout_s)
            except asyncio.CancelledError:
                # An answer may still be on its way; the next request must not get it.
                self.drop()
                raise

    def drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _request(self, client: Client, table: Table, address: int, count: int,
                       unit: int, timeout_s: float) -> Sequence[int]:
        what = f"{table.value} registers {address:#06x}+{count}"
        request = (client.read_input_registers if table is Table.INPUT
                   else client.read_holding_registers)
        try:
            async with asyncio.timeout(timeout_s):
                response = await request(address, count=count, device_id=unit)
        except TimeoutError:
            if not client.connected:
                raise _PollError(MeterFault.CONNECTION,
                                 f"connection lost reading {what}") from None
            raise _PollError(MeterFault.TIMEOUT,
                             f"no valid answer within {timeout_s:g} s to {what}") from None
        except ConnectionException as exc:
            raise _PollError(MeterFault.CONNECTION, f"{what}: {exc}") from exc
        except Exception as exc:  # pymodbus raises more than its own types on a broken answer
            raise _PollError(MeterFault.PROTOCOL,
                             f"{what}: {type(exc).__name__}: {exc}") from exc
        if isinstance(response, ExceptionResponse):
            code = response.exception_code
            try:
                name = ExcCodes(code).name
            except ValueError:
                name = "unknown"
            raise _PollError(MeterFault.EXCEPTION_RESPONSE,
                             f"{what}: exception code {code:#04x} ({name})")
        registers = list(response.registers)
        if len(registers) < count:
            raise _PollError(MeterFault.SHORT_READ,
                             f"{what}: {len(registers)} registers answered")
        if len(registers) > count:
            raise _PollError(MeterFault.PROTOCOL, f"{what}: {len(registers)} registers answered")
        return registers

    async def _connected(self, timeout_s: float) -> Client:
        client = self._client
        if client is not None and client.connected:
            return client
        self.drop()
        client = self._new_client()
        try:
            async with asyncio.timeout(timeout_s):
                ok = await client.connect()
        except Exception as exc:  # our timeout, and serial/OS errors pymodbus lets through
            ok, why = False, f": {type(exc).__name__}: {exc}"
        else:
            why = ""
        if not ok:
            client.close()
            raise _PollError(MeterFault.CONNECTION, f"cannot connect{why}")
        self._client = client
        return client

    def _new_client(self) -> Client:
        s = self.spec
        if s.transport == "tcp":
            return AsyncModbusTcpClient(s.host, port=s.port, timeout=_LIBRARY_TIMEOUT_S,
                                        retries=0, reconnect_delay=0, name=s.name)
        return AsyncModbusSerialClient(s.serial_port, framer=FramerType.RTU,
                                       baudrate=s.baudrate, bytesize=8, parity=s.parity,
                                       stopbits=s.stopbits, timeout=_LIBRARY_TIMEOUT_S,
                                       retries=0, reconnect_delay=0, name=s.name)


class Links:
    """The connections of a set of meters: one per serial port and one per TCP host:port, so
    meters on one RS-485 bus or behind one gateway take turns instead of fighting over it (a
    serial port opens only once). Close it when the meters are done."""

    def __init__(self) -> None:
        self._links: dict[tuple[str, str], _Link] = {}

    def link(self, spec: MeterSpec) -> _Link:
        if spec.transport == "tcp":
            key = ("tcp", f"{spec.host}:{spec.port}")
        else:
            key = ("rtu", spec.serial_port)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = _Link(spec)
        elif spec.transport == "rtu" and _line(link.spec) != _line(spec):
            raise ValueError(f"meters {link.spec.name!r} and {spec.name!r} share "
                             f"{spec.serial_port} with different serial settings "
                             f"{_line(link.spec)} and {_line(spec)}")
        return link

    async def close(self) -> None:
        for link in self._links.values():
            link.drop()
        self._links.clear()


def _line(spec: MeterSpec) -> tuple[int, str, int]:
    return spec.baudrate, spec.parity, spec.stopbits


class ModbusMeter:
    """One meter. Construct it where the configuration is read (a bad device map raises
    ConfigError there); poll and close it on one asyncio loop. Meters built with a shared
    ``links`` use its connections, and ``links.close()`` closes them."""

    def __init__(self, spec: MeterSpec, device_map: DeviceMap | None = None,
                 links: Links | None = None) -> None:
        self.spec = spec
        self.faults: collections.Counter[MeterFault] = collections.Counter()
        self.sunspec_model: sunspec.ModelRef | None = None   # found by discovery, for display
        self._sunspec = spec.device in SUNSPEC_DEVICES
        self._map = None if self._sunspec else device_map or load_map(spec.device)
        self._own_links = links is None
        self._link = (links or Links()).link(spec)

    async def poll(self, now: float) -> PollResult:
        """Read the meter once; the reading is stamped ``now``."""
        try:
            if self._map is None:
                reading = await self._poll_sunspec(now)
            else:
                reading = await self._poll_map(self._map, now)
        except _PollError as failed:
            return self._failed(failed.fault, failed.detail)
        except DecodeError as exc:
            bad_value = exc.fault in (DecodeFault.NOT_FINITE, DecodeFault.IMPLAUSIBLE)
            return self._failed(MeterFault.INVALID_VALUE if bad_value else MeterFault.DECODE,
                                exc.detail)
        return PollResult(_inverted(reading) if self.spec.invert else reading)

    async def close(self) -> None:
        """Close the connection unless it belongs to a shared ``Links``."""
        if self._own_links:
            self._link.drop()

    def _failed(self, fault: MeterFault, detail: str) -> PollResult:
        self.faults[fault] += 1
        if fault in (MeterFault.TIMEOUT, MeterFault.CONNECTION, MeterFault.PROTOCOL):
            self._link.drop()
        if fault in (MeterFault.DECODE, MeterFault.EXCEPTION_RESPONSE, MeterFault.SHORT_READ):
            # The registers are not where discovery put them: find them again next time.
            self.sunspec_model = None
        return PollResult(None, fault, f"{self.spec.name} ({self.spec.where}): {detail}")

    async def _read(self, table: Table, address: int, count: int) -> Sequence[int]:
        if not 1 <= count <= MODBUS_MAX_COUNT or not 0 <= address <= 0x10000 - count:
            raise _PollError(MeterFault.DECODE, f"{table.value} registers {address:#06x}+"
                                                f"{count}: not a valid read request")
        return await self._link.read(table, address, count, self.spec.unit, self.spec.timeout_s)

    async def _poll_map(self, device_map: DeviceMap, now: float) -> Reading:
        words: dict[Block, Sequence[int]] = {}
        for block in device_map.blocks:
            words[block] = await self._read(block.table, block.address, block.count)
        return device_map.decode(words, now)

    async def _poll_sunspec(self, now: float) -> Reading:
        model = self.sunspec_model
        if model is None:
            model = self.sunspec_model = await self._discover()
        count = sunspec.words_needed(model)
        words = await self._read(Table.HOLDING, model.address, count)
        return sunspec.model_reading(model.id, words, now)

    async def _discover(self) -> sunspec.ModelRef:
        async def read(address: int, count: int) -> Sequence[int] | None:
            try:
                return await self._read(Table.HOLDING, address, count)
            except _PollError as failed:
                if failed.fault is MeterFault.EXCEPTION_RESPONSE:
                    return None
                raise

        found = await sunspec.discover(read)
        if found is None:
            raise _PollError(MeterFault.NOT_SUNSPEC, "no SunS marker at "
                             + ", ".join(str(b) for b in sunspec.BASES))
        base, models = found
        want = SUNSPEC_DEVICES[self.spec.device]
        model = sunspec.pick(models, want)
        if model is None:
            raise _PollError(MeterFault.NOT_SUNSPEC,
                             f"no {want.value if want else 'inverter or meter'} model this "
                             f"reader knows at base {base}: models {[m.id for m in models]}")
        return model


def _inverted(r: Reading) -> Reading:
    """The reading of a meter mounted the other way round: what it counts as import is
    export."""
    return replace(
        r,
        power_w=None if r.power_w is None else -r.power_w,
        currents_a=None if r.currents_a is None else (
            -r.currents_a[0], -r.currents_a[1], -r.currents_a[2]),
        import_wh=r.export_wh, export_wh=r.import_wh)
