"""The poller against real pymodbus servers over TCP: every shipped device map, and every way
a device or the network can fail — each a typed, counted fault, never an exception."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from modbus_peer import (
    VALUES,
    Image,
    Peer,
    closed_port,
    drop_last_register,
    map_image,
    tcp_peer,
)
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU

from ems.meters.decode import DataType, Quantity, encode
from ems.meters.devicemap import Table, available, load_map
from ems.meters.modbus import Links, MeterFault, MeterSpec, ModbusMeter, PollResult
from ems.model import Reading

TIMEOUT_S = 0.2


def spec(port: int, device: str = "sdm630", **kw: Any) -> MeterSpec:
    return MeterSpec("m", device, host="127.0.0.1", port=port, timeout_s=TIMEOUT_S, **kw)


async def poll_once(peer: Peer, device: str = "sdm630", **kw: Any
                    ) -> tuple[PollResult, ModbusMeter]:
    async with tcp_peer(peer) as port:
        meter = ModbusMeter(spec(port, device, **kw))
        try:
            return await meter.poll(42.0), meter
        finally:
            await meter.close()


def assert_values(r: Reading, device: str) -> None:
    device_map = load_map(device)
    present = {reg.quantity for reg in device_map.registers}
    # Each device's resolution: float32 keeps ~7 digits, EM24 has 0.1 Hz.
    def close(got: float | None, q: Quantity) -> None:
        assert got is not None
        assert got == pytest.approx(VALUES[q], rel=1e-6, abs=0.051 if device == "em24" else 1e-3)

    close(r.power_w, Quantity.POWER)
    close(r.import_wh, Quantity.IMPORT_ENERGY)
    close(r.export_wh, Quantity.EXPORT_ENERGY)
    if Quantity.FREQUENCY in present:
        close(r.frequency_hz, Quantity.FREQUENCY)
    else:
        assert r.frequency_hz is None
    if Quantity.CURRENT_L1 in present:
        assert r.currents_a is not None and r.voltages_v is not None
        close(r.currents_a[0], Quantity.CURRENT_L1)
        close(r.voltages_v[0], Quantity.VOLTAGE_L1)
        if device_map.phases == 3:
            close(r.currents_a[2], Quantity.CURRENT_L3)
            close(r.voltages_v[1], Quantity.VOLTAGE_L2)
        else:
            assert r.currents_a[1:] == (0.0, 0.0)
    else:
        assert r.currents_a is None and r.voltages_v is None


@pytest.mark.parametrize("device", available())
def test_every_device_map_reads_a_real_server(device: str) -> None:
    peer = Peer(map_image(load_map(device)))
    result, meter = asyncio.run(poll_once(peer, device))
    assert result.fault is None and result.detail == ""
    assert result.reading is not None and result.reading.at == 42.0
    assert_values(result.reading, device)
    assert peer.requests == len(load_map(device).blocks)
    assert not meter.faults


def test_invert_flips_power_and_currents_and_swaps_counters() -> None:
    result, _ = asyncio.run(poll_once(Peer(map_image(load_map("abb_b23"))), "abb_b23",
                                      invert=True))
    r = result.reading
    assert r is not None and r.currents_a is not None
    assert r.power_w == pytest.approx(-VALUES[Quantity.POWER])
    assert r.currents_a[0] == pytest.approx(-VALUES[Quantity.CURRENT_L1])
    assert r.import_wh == pytest.approx(VALUES[Quantity.EXPORT_ENERGY])
    assert r.export_wh == pytest.approx(VALUES[Quantity.IMPORT_ENERGY])


def test_not_available_markers_read_as_unknown() -> None:
    image = map_image(load_map("abb_b23"))
    cells = dict(image[Table.HOLDING])
    cells.update(zip(range(0x5B10, 0x5B12), encode(0xFFFFFFFF, DataType.UINT32), strict=True))
    cells[0x5B2C] = 0xFFFF
    result, _ = asyncio.run(poll_once(Peer({Table.HOLDING: cells}), "abb_b23"))
    r = result.reading
    assert r is not None and result.fault is None
    assert r.currents_a is None and r.frequency_hz is None   # L3 current unknown
    assert r.voltages_v is not None and r.power_w is not None


def _with(image: Image, address: int, words: tuple[int, ...]) -> Image:
    cells = dict(image[Table.INPUT])
    cells.update(zip(range(address, address + len(words)), words, strict=True))
    return {Table.INPUT: cells}


SDM630 = map_image(load_map("sdm630"))


async def _busy(*_: object) -> ExcCodes:
    return ExcCodes.DEVICE_BUSY


def _extra_register(pdu: ModbusPDU) -> ModbusPDU:
    pdu.registers = [*pdu.registers, 0]
    return pdu


FAULTS: list[tuple[str, Peer, dict[str, Any], MeterFault, str]] = [
    ("nan", Peer(_with(SDM630, 0x34, (0x7FC0, 0x0000))), {}, MeterFault.INVALID_VALUE,
     "is nan"),
    ("infinity", Peer(_with(SDM630, 0x06, (0x7F80, 0x0000))), {}, MeterFault.INVALID_VALUE,
     "is inf"),
    ("garbage-registers", Peer({Table.INPUT: dict.fromkeys(range(0x50), 0x7F7F)}), {},
     MeterFault.INVALID_VALUE, "outside"),
    ("exception-response", Peer(SDM630, action=_busy), {}, MeterFault.EXCEPTION_RESPONSE,
     "0x06 (DEVICE_BUSY)"),
    ("map-too-small", Peer({Table.INPUT: {a: w for a, w in SDM630[Table.INPUT].items()
                                          if a < 0x4A}}), {},
     MeterFault.EXCEPTION_RESPONSE, "0x02 (ILLEGAL_ADDRESS)"),
    ("short-answer", Peer(SDM630, tamper=drop_last_register), {}, MeterFault.SHORT_READ,
     "11 registers answered"),
    ("long-answer", Peer(SDM630, tamper=_extra_register), {}, MeterFault.PROTOCOL,
     "13 registers answered"),
    ("garbage-on-the-wire", Peer(SDM630, garble=True), {}, MeterFault.TIMEOUT,
     "no valid answer within 0.2 s"),
    ("no-answer", Peer(SDM630, mute=True), {}, MeterFault.TIMEOUT, "no valid answer"),
    ("wrong-unit-gateway", Peer(SDM630, unit=1), {"unit": 7}, MeterFault.EXCEPTION_RESPONSE,
     "0x0b (GATEWAY_NO_RESPONSE)"),
    ("wrong-unit-silent", Peer(SDM630, unit=1, other_units="silent"), {"unit": 7},
     MeterFault.TIMEOUT, "unit 7"),
    ("not-sunspec", Peer(SDM630), {"device": "sunspec"}, MeterFault.NOT_SUNSPEC,
     "no SunS marker at 40000, 0, 50000"),
]


@pytest.mark.parametrize(("peer", "kw", "fault", "detail"), [f[1:] for f in FAULTS],
                         ids=[f[0] for f in FAULTS])
def test_a_bad_answer_is_a_typed_counted_fault(peer: Peer, kw: dict[str, Any],
                                               fault: MeterFault, detail: str) -> None:
    result, meter = asyncio.run(poll_once(peer, **kw))
    assert result.reading is None
    assert result.fault is fault
    assert detail in result.detail and result.detail.startswith("m (127.0.0.1:")
    assert meter.faults == {fault: 1}


def test_nobody_listening_is_a_connection_fault() -> None:
    async def main() -> PollResult:
        meter = ModbusMeter(spec(closed_port()))
        result = await meter.poll(1.0)
        await meter.close()
        return result
    result = asyncio.run(main())
    assert result.fault is MeterFault.CONNECTION and "cannot connect" in result.detail


def test_the_next_poll_recovers_after_a_timeout_and_after_a_restart() -> None:
    async def main() -> list[MeterFault | None]:
        peer = Peer(SDM630, mute=True)
        faults: list[MeterFault | None] = []
        async with tcp_peer(peer) as port:
            meter = ModbusMeter(spec(port))
            faults.append((await meter.poll(1.0)).fault)          # timeout
            peer.mute = False
            faults.append((await meter.poll(2.0)).fault)          # fresh connection: fine
        faults.append((await meter.poll(3.0)).fault)              # server gone
        async with tcp_peer(peer, port):
            result = await meter.poll(4.0)                        # back on the same port
            faults.append(result.fault)
            assert result.reading is not None and result.reading.at == 4.0
        await meter.close()
        assert meter.faults[MeterFault.TIMEOUT] == 1
        return faults
    faults = asyncio.run(main())
    assert faults[:2] == [MeterFault.TIMEOUT, None]
    assert faults[2] in (MeterFault.CONNECTION, MeterFault.TIMEOUT)
    assert faults[3] is None


def test_meters_behind_one_gateway_share_its_connection() -> None:
    async def main() -> tuple[PollResult, PollResult]:
        abb = map_image(load_map("abb_b23"), {**VALUES, Quantity.POWER: -3000.0})
        peer = Peer(SDM630, unit=1, others={2: abb})
        links = Links()
        async with tcp_peer(peer) as port:
            grid = ModbusMeter(spec(port, unit=1), links=links)
            pv = ModbusMeter(spec(port, "abb_b23", unit=2), links=links)
            results = await asyncio.gather(grid.poll(1.0), pv.poll(1.0))
            await links.close()
        return results[0], results[1]
    grid, pv = asyncio.run(main())
    assert grid.reading is not None and pv.reading is not None
    assert grid.reading.power_w == pytest.approx(VALUES[Quantity.POWER])
    assert pv.reading.power_w == pytest.approx(-3000.0)

