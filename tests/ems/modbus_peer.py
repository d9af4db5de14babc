"""Real Modbus peers for the meter tests: pymodbus servers over TCP (free port) and RTU (a
socat pty pair), serving register images built from device maps or SunSpec model chains.

A peer answers for ``unit`` only; a request for another unit gets what a real installation
gives: a TCP gateway's exception 0x0B, or silence on an RS-485 line. Faults are injected on
the wire with pymodbus' trace hooks: ``mute`` (no answer at all), ``garble`` (junk bytes
instead of the answer) and ``tamper`` (change the answer PDU, e.g. drop registers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

from pymodbus import ExceptionResponse, FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from ems.meters.decode import DataType as Dt
from ems.meters.decode import Quantity, encode
from ems.meters.devicemap import DeviceMap, Table
from ems.meters.sunspec import MARKER

Image = Mapping[Table, Mapping[int, int]]
Tamper = Callable[[ModbusPDU], ModbusPDU]

# What every map test serves, per quantity: distinct values so a swapped register shows.
VALUES: dict[Quantity, float] = {
    Quantity.POWER: 7362.5, Quantity.CURRENT_L1: 10.5, Quantity.CURRENT_L2: 11.25,
    Quantity.CURRENT_L3: 9.75, Quantity.VOLTAGE_L1: 230.1, Quantity.VOLTAGE_L2: 231.2,
    Quantity.VOLTAGE_L3: 229.3, Quantity.IMPORT_ENERGY: 12_345_600.0,
    Quantity.EXPORT_ENERGY: 2_345_600.0, Quantity.FREQUENCY: 50.02,
}


def map_image(device_map: DeviceMap, values: Mapping[Quantity, float] = VALUES) -> Image:
    """The registers a device described by ``device_map`` holds for ``values``; the spans the
    map's reads cover are all present (zeros between the mapped registers)."""
    image: dict[Table, dict[int, int]] = {t: {} for t in Table}
    for block in device_map.blocks:
        image[block.table].update(dict.fromkeys(range(block.address,
                                                      block.address + block.count), 0))
    for table, cells in device_map.image(values).items():
        image[table].update(cells)
    return image


def sim_device(unit: int, image: Image, action: SimAction | None = None) -> SimDevice:
    """A pymodbus device with ``image``'s input and holding registers (separate tables).
    Unit 0 is pymodbus' catch-all for every unit without its own device."""
    bits = [SimData(0, values=False, datatype=DataType.BITS)]
    return SimDevice(unit, simdata=([*bits], [*bits], _runs(image.get(Table.HOLDING, {})),
                                    _runs(image.get(Table.INPUT, {}))), action=action)


def _runs(cells: Mapping[int, int]) -> list[SimData]:
    if not cells:
        # pymodbus needs at least one register per table; this one no test reads.
        return [SimData(65534, values=[0], datatype=DataType.REGISTERS)]
    runs: list[SimData] = []
    addresses = sorted(cells)
    start = prev = addresses[0]
    for a in [*addresses[1:], None]:
        if a is not None and a == prev + 1:
            prev = a
            continue
        runs.append(SimData(start, values=[cells[i] for i in range(start, prev + 1)],
                            datatype=DataType.REGISTERS))
        if a is not None:
            start = prev = a
    return runs


@dataclass
class Peer:
    """A Modbus device (``image`` at ``unit``, and ``others`` at theirs, as on one RS-485
    bus) as it behaves on the wire."""

    image: Image
    unit: int = 1
    others: Mapping[int, Image] = field(default_factory=dict)
    other_units: Literal["gateway", "silent"] = "gateway"
    mute: bool = False
    garble: bool = False
    tamper: Tamper | None = None
    action: SimAction | None = None
    requests: int = 0

    def devices(self) -> list[SimDevice]:
        # The catch-all (0) serves ``unit``; for units that do not exist its answers are
        # replaced or dropped on the way out.
        return [sim_device(0, self.image, self.action),
                *(sim_device(u, image) for u, image in self.others.items())]

    def exists(self, unit: int | None) -> bool:
        return unit == self.unit or unit in self.others

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests += 1
            return pdu
        if not self.exists(pdu.dev_id) and self.other_units == "gateway":
            return ExceptionResponse(pdu.function_code & 0x7F, ExcCodes.GATEWAY_NO_RESPONSE,
                                     device_id=pdu.dev_id, transaction=pdu.transaction_id)
        return self.tamper(pdu) if self.tamper is not None else pdu

    def trace_packet(self, sending: bool, data: bytes, unit_at: int) -> bytes:
        if not sending:
            return data
        unit = data[unit_at] if len(data) > unit_at else None
        if self.mute or (not self.exists(unit) and self.other_units == "silent"):
            return b""
        if self.garble:
            return bytes((b * 37 + 11) & 0xFF for b in data) + b"\x00\xff\x13"
        return data


@contextlib.asynccontextmanager
async def tcp_peer(peer: Peer, port: int = 0) -> AsyncIterator[int]:
    """Serve ``peer`` on 127.0.0.1; yields the port."""
    server = ModbusTcpServer(
        peer.devices(), address=("127.0.0.1", port),
        trace_pdu=peer.trace_pdu,
        trace_packet=lambda sending, data: peer.trace_packet(sending, data, 6))
    await server.serve_forever(background=True)
    try:
        yield cast(asyncio.Server, server.transport).sockets[0].getsockname()[1]
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def rtu_peer(peer: Peer, baudrate: int = 19200) -> AsyncIterator[str]:
    """Serve ``peer`` with Modbus RTU on one end of a pty pair; yields the other end's path."""
    with pty_pair() as (device_end, client_end):
        server = ModbusSerialServer(
            peer.devices(), framer=FramerType.RTU, port=device_end,
            baudrate=baudrate, trace_pdu=peer.trace_pdu,
            trace_packet=lambda sending, data: peer.trace_packet(sending, data, 0))
        await server.serve_forever(background=True)
        try:
            yield client_end
        finally:
            await server.shutdown()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def pty_pair() -> Iterator[tuple[str, str]]:
    """Two connected ptys from socat (a null-modem cable); socat ends with the block."""
    proc = subprocess.Popen(["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    try:
        fd = proc.stderr.fileno()
        text, paths = b"", list[bytes]()
        deadline = time.monotonic() + 5.0
        while len(paths) < 2:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"socat printed no pty paths: {text!r}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"socat exited: {text!r}")
            text += chunk
            paths = re.findall(rb"PTY is (\S+)", text)
        yield paths[0].decode(), paths[1].decode()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def drop_last_register(pdu: ModbusPDU) -> ModbusPDU:
    """A tamper: the answer loses its last register (a device with a short buffer)."""
    if pdu.registers:
        pdu.registers = pdu.registers[:-1]
    return pdu


# -- SunSpec devices, written from the SunSpec Information Model Reference offsets ----------

NI16 = 0x8000          # int16 / sunssf "not implemented"
NU16 = 0xFFFF          # uint16 / enum16 "not implemented"
NF32 = (0x7FC0, 0x0000)  # float32 NaN


def sunspec_image(base: int, models: Sequence[tuple[int, Sequence[int]]]) -> Image:
    words = [*MARKER]
    for model_id, data in models:
        words += [model_id, len(data), *data]
    words += [0xFFFF, 0]
    return {Table.HOLDING: dict(enumerate(words, start=base))}


def common_model() -> tuple[int, list[int]]:
    """Model 1: manufacturer, model, options, version, serial (strings), device address."""
    def text(s: str, regs: int) -> list[int]:
        b = s.encode().ljust(2 * regs, b"\0")
        return [b[i] << 8 | b[i + 1] for i in range(0, 2 * regs, 2)]
    return 1, [*text("voltpilot", 16), *text("peer", 16), *text("", 8), *text("1.0", 8),
               *text("SN0001", 16), 1, 0]


def _u32(n: int) -> list[int]:
    return list(encode(n, Dt.UINT32))


def _f32(x: float) -> list[int]:
    return list(encode(x, Dt.FLOAT32))


def _s16(n: int) -> int:
    return n & 0xFFFF


def inverter_int(phases: int = 3, *, current_a: Sequence[float] = (10.5, 11.25, 9.75),
                 voltage_v: Sequence[float] = (230.1, 231.2, 229.3), power_w: float = 7362.0,
                 frequency_hz: float = 50.02, energy_wh: int = 12_345_678,
                 not_implemented: Sequence[str] = ()) -> tuple[int, list[int]]:
    """Model 101/102/103 (L = 50) with A_SF -2, V_SF -1, W_SF 0, Hz_SF -2, WH_SF 0."""
    d = [0] * 50
    amps = [round(a * 100) for a in current_a[:phases]]
    d[0] = sum(amps)
    d[1:4] = [*amps, *[NU16] * (3 - phases)]
    d[4] = _s16(-2)
    d[5:8] = [NU16] * 3                                   # line-to-line voltages
    d[8:11] = [*(round(v * 10) for v in voltage_v[:phases]), *[NU16] * (3 - phases)]
    d[11] = _s16(-1)
    d[12], d[13] = _s16(round(power_w)), 0
    d[14], d[15] = round(frequency_hz * 100), _s16(-2)
    d[16:22] = [NI16] * 6                                 # VA, VAr, PF and their SFs
    d[22:24], d[24] = _u32(energy_wh), 0
    d[25:31] = [NU16, NI16, NU16, NI16, NI16, NI16]       # DC values
    d[31:36] = [NI16] * 5                                 # temperatures
    d[36] = 4                                             # St: MPPT
    if "current" in not_implemented:
        d[1:4] = [NU16] * 3
    if "power" in not_implemented:
        d[12] = NI16
    if "energy" in not_implemented:
        d[22:24] = [0, 0]
    if "voltage_sf" in not_implemented:
        d[11] = NI16
    return 100 + phases, d


def inverter_float(phases: int = 3, *, current_a: Sequence[float] = (10.5, 11.25, 9.75),
                   voltage_v: Sequence[float] = (230.1, 231.2, 229.3), power_w: float = 7362.0,
                   frequency_hz: float = 50.02, energy_wh: float = 12_345_678.0,
                   not_implemented: Sequence[str] = ()) -> tuple[int, list[int]]:
    """Model 111/112/113 (L = 60), every value a float32."""
    d = [*NF32] * 30
    cur = [*current_a[:phases], *[None] * (3 - phases)]
    volt = [*voltage_v[:phases], *[None] * (3 - phases)]
    d[0:2] = _f32(sum(current_a[:phases]))
    for i in range(3):
        c, v = cur[i], volt[i]
        d[2 + 2 * i:4 + 2 * i] = NF32 if c is None or "current" in not_implemented else _f32(c)
        d[14 + 2 * i:16 + 2 * i] = NF32 if v is None else _f32(v)
    d[20:22] = NF32 if "power" in not_implemented else _f32(power_w)
    d[22:24] = _f32(frequency_hz)
    d[30:32] = NF32 if "energy" in not_implemented else _f32(energy_wh)
    d[46], d[47] = 4, NU16
    d[48:60] = [0] * 12
    return 110 + phases, d


def meter_int(phases: int = 3, *, current_a: Sequence[float] = (10.5, -11.25, 9.75),
              voltage_v: Sequence[float] = (230.1, 231.2, 229.3), power_w: float = -2100.0,
              frequency_hz: float = 49.98, import_wh: int = 12_345_000,
              export_wh: int = 2_345_000, delta: bool = False) -> tuple[int, list[int]]:
    """Model 201/202/203 (204 with ``delta``), L = 105, A_SF -2, V_SF -1, Hz_SF -2, W_SF 1,
    TotWh_SF 1 (energies in units of 10 Wh)."""
    d = [NI16] * 105
    amps = [round(a * 100) for a in current_a[:phases]]
    d[0] = _s16(sum(amps))
    d[1:4] = [*(_s16(a) for a in amps), *[NI16] * (3 - phases)]
    d[4] = _s16(-2)
    volts = [round(v * 10) for v in voltage_v[:phases]]
    d[5] = round(sum(volts) / phases)
    d[6:9] = [*volts, *[NI16] * (3 - phases)]
    if delta:
        d[5:9] = [NI16] * 4
    d[13] = _s16(-1)
    d[14], d[15] = round(frequency_hz * 100), _s16(-2)
    d[16], d[20] = _s16(round(power_w / 10)), 1
    d[36:52] = [0] * 16                                   # acc32: 0 = not implemented
    d[36:38] = _u32(export_wh // 10)
    d[44:46] = _u32(import_wh // 10)
    d[52] = 1
    d[53:103] = [0] * 50
    d[103:105] = [0, 0]
    return (204 if delta else 200 + phases), d


def meter_float(phases: int = 3, *, current_a: Sequence[float] = (10.5, -11.25, 9.75),
                voltage_v: Sequence[float] = (230.1, 231.2, 229.3), power_w: float = -2100.0,
                frequency_hz: float = 49.98, import_wh: float = 12_345_000.0,
                export_wh: float = 2_345_000.0) -> tuple[int, list[int]]:
    """Model 211/212/213, L = 124, every value a float32."""
    d = [*NF32] * 62
    for i in range(3):
        if i < phases:
            d[2 + 2 * i:4 + 2 * i] = _f32(current_a[i])
            d[10 + 2 * i:12 + 2 * i] = _f32(voltage_v[i])
    d[24:26] = _f32(frequency_hz)
    d[26:28] = _f32(power_w)
    d[58:60] = _f32(export_wh)
    d[66:68] = _f32(import_wh)
    d[122:124] = [0, 0]
    return 210 + phases, d
