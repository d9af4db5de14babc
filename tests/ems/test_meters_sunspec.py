"""SunSpec discovery and models against real pymodbus servers: inverters (1 + 101/103/111/113)
and meters (203/204/213) with the marker at each base address, "not implemented" values, and
chains that are broken."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from modbus_peer import (
    NI16,
    Image,
    Peer,
    common_model,
    inverter_float,
    inverter_int,
    meter_float,
    meter_int,
    sunspec_image,
    tcp_peer,
)

from ems.meters.decode import DecodeError, DecodeFault
from ems.meters.devicemap import Table
from ems.meters.modbus import MeterFault, MeterSpec, ModbusMeter, PollResult
from ems.meters.sunspec import ModelRef, discover

Model = tuple[int, list[int]]
INVERTER: dict[str, Any] = {
    "power_w": 7362.0, "currents_a": (10.5, 11.25, 9.75), "voltages_v": (230.1, 231.2, 229.3),
    "frequency_hz": 50.02, "import_wh": 12_345_678.0, "export_wh": None}
METER: dict[str, Any] = {
    "power_w": -2100.0, "currents_a": (10.5, -11.25, 9.75), "voltages_v": (230.1, 231.2, 229.3),
    "frequency_hz": 49.98, "import_wh": 12_345_000.0, "export_wh": 2_345_000.0}


async def poll_device(image: Image, device: str = "sunspec", polls: int = 1
                      ) -> tuple[list[PollResult], ModbusMeter, Peer]:
    peer = Peer(image)
    async with tcp_peer(peer) as port:
        meter = ModbusMeter(MeterSpec("ss", device, host="127.0.0.1", port=port,
                                      timeout_s=0.3))
        results = [await meter.poll(float(i)) for i in range(polls)]
        await meter.close()
    return results, meter, peer


def check(result: PollResult, expected: dict[str, Any]) -> None:
    r = result.reading
    assert result.fault is None, result.detail
    assert r is not None
    for name, value in expected.items():
        got = getattr(r, name)
        if value is None or got is None:
            assert got == value, name
        else:
            assert got == pytest.approx(value, rel=1e-6), name


CASES: list[tuple[str, Callable[[], Model], dict[str, Any]]] = [
    ("103-int", lambda: inverter_int(3), INVERTER),
    ("113-float", lambda: inverter_float(3), INVERTER),
    ("101-int-1p", lambda: inverter_int(1),
     {**INVERTER, "currents_a": (10.5, 0.0, 0.0), "voltages_v": (230.1, 0.0, 0.0)}),
    ("111-float-1p", lambda: inverter_float(1),
     {**INVERTER, "currents_a": (10.5, 0.0, 0.0), "voltages_v": (230.1, 0.0, 0.0)}),
    ("203-int", lambda: meter_int(3), METER),
    ("213-float", lambda: meter_float(3), METER),
]


@pytest.mark.parametrize("base", [40000, 0, 50000])
@pytest.mark.parametrize(("model", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_discovery_at_each_base_and_each_model(base: int, model: Callable[[], Model],
                                               expected: dict[str, Any]) -> None:
    m = model()
    results, meter, _ = asyncio.run(poll_device(sunspec_image(base, [common_model(), m])))
    check(results[0], expected)
    assert meter.sunspec_model == ModelRef(m[0], base + 2 + 2 + 66 + 2, len(m[1]))


def test_the_chain_is_walked_once_and_the_model_read_each_poll() -> None:
    image = sunspec_image(40000, [common_model(), inverter_int(3)])
    results, _, peer = asyncio.run(poll_device(image, polls=3))
    assert all(r.fault is None for r in results)
    # The marker and three headers (common, inverter, end), then one read per poll.
    assert peer.requests == 4 + 3


def test_an_inverter_with_a_meter_serves_either() -> None:
    image = sunspec_image(40000, [common_model(), inverter_float(3), meter_int(3)])
    first, _, _ = asyncio.run(poll_device(image, "sunspec"))
    meter, _, _ = asyncio.run(poll_device(image, "sunspec:meter"))
    inverter, _, _ = asyncio.run(poll_device(image, "sunspec:inverter"))
    check(first[0], INVERTER)
    check(meter[0], METER)
    check(inverter[0], INVERTER)
    absent, _, _ = asyncio.run(poll_device(
        sunspec_image(0, [common_model(), meter_float(3)]), "sunspec:inverter"))
    assert absent[0].fault is MeterFault.NOT_SUNSPEC
    assert "no inverter model" in absent[0].detail and "[1, 213]" in absent[0].detail


@pytest.mark.parametrize("model", [
    inverter_int(3, not_implemented=("current", "power", "energy", "voltage_sf")),
    inverter_float(3, not_implemented=("current", "power", "energy")),
], ids=["103", "113"])
def test_not_implemented_values_are_unknown(model: Model) -> None:
    results, _, _ = asyncio.run(poll_device(sunspec_image(40000, [common_model(), model])))
    r = results[0].reading
    assert results[0].fault is None and r is not None
    assert r.power_w is None and r.currents_a is None and r.import_wh is None
    assert r.frequency_hz == pytest.approx(50.02)
    if model[0] == 103:
        assert r.voltages_v is None            # V_SF not implemented


def test_a_delta_meter_has_no_line_to_neutral_voltages() -> None:
    model = meter_int(3, delta=True)
    assert model[0] == 204
    results, _, _ = asyncio.run(poll_device(sunspec_image(40000, [common_model(), model])))
    check(results[0], {**METER, "voltages_v": None})


def test_a_chain_without_end_model_ends_where_the_registers_do() -> None:
    image = sunspec_image(40000, [common_model(), meter_float(3)])
    cells = dict(image[Table.HOLDING])
    del cells[max(cells)], cells[max(cells)]          # drop the 0xFFFF end model
    results, _, _ = asyncio.run(poll_device({Table.HOLDING: cells}))
    check(results[0], METER)


def test_broken_devices_give_typed_faults() -> None:
    only_common = sunspec_image(40000, [common_model()])
    mid, data = inverter_int(3)
    too_short = sunspec_image(40000, [common_model(), (mid, data[:10])])
    bad_sf = sunspec_image(40000, [common_model(), (mid, [*data[:13], 20, *data[14:]])])
    nan_power = inverter_float(3)
    nan_power[1][20:22] = [0x7F80, 0]               # +inf W
    infinite = sunspec_image(40000, [common_model(), nan_power])
    for image, fault, detail in [
        (only_common, MeterFault.NOT_SUNSPEC, "models [1]"),
        (too_short, MeterFault.DECODE, "model 103 has 10 registers"),
        (bad_sf, MeterFault.DECODE, "scale factor 20"),
        (infinite, MeterFault.INVALID_VALUE, "power is inf"),
    ]:
        results, meter, _ = asyncio.run(poll_device(image, polls=2))
        assert [r.fault for r in results] == [fault, fault]
        assert detail in results[0].detail
        assert meter.faults == {fault: 2}
    # A decode fault forgets the model so the next poll discovers again; a bad value does not.
    _, meter, _ = asyncio.run(poll_device(bad_sf))
    assert meter.sunspec_model is None
    _, meter, _ = asyncio.run(poll_device(infinite))
    assert meter.sunspec_model is not None


def test_garbage_chains_end_with_a_layout_fault() -> None:
    def reader(words: dict[int, int]) -> Callable[[int, int], Any]:
        async def read(address: int, count: int) -> Sequence[int] | None:
            if any(a not in words for a in range(address, address + count)):
                return None
            return [words[a] for a in range(address, address + count)]
        return read

    past_the_end = {0: 0x5375, 1: 0x6E53, 2: 999, 3: 0xFFF0,
                    **dict.fromkeys(range(0xFFF0 + 4, 0x10000), 0)}
    endless = {0: 0x5375, 1: 0x6E53, **{a: (7 if a % 2 == 0 else 0) for a in range(2, 400)}}
    for words, detail in [(past_the_end, "past register 65535"), (endless, "more than 64")]:
        with pytest.raises(DecodeError) as info:
            asyncio.run(discover(reader(words)))
        assert info.value.fault is DecodeFault.LAYOUT and detail in info.value.detail
    assert asyncio.run(discover(reader({0: NI16}))) is None
