"""The poller over Modbus RTU: a pymodbus serial server on one end of a socat pty pair, the
meters on the other, as on an RS-485 bus."""

from __future__ import annotations

import asyncio

import pytest
from modbus_peer import (
    VALUES,
    Peer,
    common_model,
    map_image,
    meter_int,
    rtu_peer,
    sunspec_image,
)

from ems.meters.decode import Quantity
from ems.meters.devicemap import load_map
from ems.meters.modbus import Links, MeterFault, MeterSpec, ModbusMeter, PollResult


def rtu(path: str, device: str = "sdm630", unit: int = 1) -> MeterSpec:
    return MeterSpec(f"rtu-{device}", device, transport="rtu", serial_port=path,
                     baudrate=19200, parity="N", stopbits=1, timeout_s=0.25, unit=unit)


def test_two_meters_on_one_bus_and_a_missing_one() -> None:
    """An SDM630 (unit 1) and a SunSpec meter (unit 2) share the line; unit 9 is not there
    and, as on a real bus, does not answer."""
    async def main() -> tuple[list[PollResult], PollResult, Links]:
        peer = Peer(map_image(load_map("sdm630")), unit=1, other_units="silent",
                    others={2: sunspec_image(40000, [common_model(), meter_int()])})
        links = Links()
        async with rtu_peer(peer) as path:
            grid = ModbusMeter(rtu(path), links=links)
            house = ModbusMeter(rtu(path, "sunspec:meter", unit=2), links=links)
            absent = ModbusMeter(rtu(path, unit=9), links=links)
            first = await asyncio.gather(grid.poll(1.0), house.poll(1.0), absent.poll(1.0))
            again = await grid.poll(2.0)       # the line reopened after the timeout
            await links.close()
        return list(first), again, links
    (grid, house, absent), again, _ = asyncio.run(main())
    assert grid.reading is not None and house.reading is not None
    assert grid.reading.power_w == pytest.approx(VALUES[Quantity.POWER])
    assert house.reading.power_w == pytest.approx(-2100.0)
    assert absent.fault is MeterFault.TIMEOUT and "unit 9" in absent.detail
    assert again.reading is not None and again.reading.at == 2.0


def test_a_serial_port_that_does_not_exist_is_a_connection_fault() -> None:
    async def main() -> PollResult:
        meter = ModbusMeter(rtu("/dev/voltpilot-no-such-tty"))
        result = await meter.poll(1.0)
        await meter.close()
        return result
    result = asyncio.run(main())
    assert result.fault is MeterFault.CONNECTION and "/dev/voltpilot-no-such-tty" in result.detail


def test_one_bus_with_two_line_settings_is_refused() -> None:
    links = Links()
    ModbusMeter(rtu("/dev/ttyUSB0"), links=links)
    with pytest.raises(ValueError, match="different serial settings"):
        ModbusMeter(MeterSpec("other", "sdm120", transport="rtu", serial_port="/dev/ttyUSB0",
                              baudrate=9600), links=links)
