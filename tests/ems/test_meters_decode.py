"""Register decoding: types, word order, scale; every bad input is a typed DecodeError."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ems.meters.decode import (
    DataType,
    DecodeError,
    DecodeFault,
    Quantity,
    WordOrder,
    decode,
    encode,
    reading,
)
from ems.meters.devicemap import available, load_map
from ems.meters.sunspec import LAYOUTS, model_reading

BIG, LITTLE = WordOrder.BIG, WordOrder.LITTLE


@pytest.mark.parametrize(("words", "dtype", "order", "scale", "expected"), [
    ((0x4366, 0x1999), DataType.FLOAT32, BIG, 1.0, 230.1),          # Eastron 230.1 V
    ((0x0000, 0x4366), DataType.FLOAT32, LITTLE, 1.0, 230.0),
    ((0x08FD, 0x0000), DataType.INT32, LITTLE, 0.1, 230.1),         # EM24: V×10, LSW first
    ((0xFFFF, 0xFFFF), DataType.INT32, LITTLE, 0.1, -0.1),
    ((0xFFF7, 0x9B90), DataType.INT32, BIG, 0.01, -5500.0),         # ABB: -5500 W in 0.01 W
    ((0x0000, 0x0000, 0x0000, 0x3039), DataType.UINT64, BIG, 10.0, 123_450.0),
    ((0x8000,), DataType.INT16, BIG, 1.0, -32768.0),
    ((0x8000,), DataType.UINT16, BIG, 1.0, 32768.0),
    ((0x4059, 0x0000, 0x0000, 0x0000), DataType.FLOAT64, BIG, 1.0, 100.0),
    ((0x0000, 0x0000, 0x0000, 0x4059), DataType.FLOAT64, LITTLE, 1.0, 100.0),
    ((0xFFFF, 0xFFFF), DataType.UINT32, BIG, 1.0, 4294967295.0),
    ((0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF), DataType.INT64, BIG, 1.0, 9.223372036854776e18),
])
def test_decode_known_words(words: tuple[int, ...], dtype: DataType, order: WordOrder,
                            scale: float, expected: float) -> None:
    assert decode(words, dtype, order, scale) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("words", "dtype", "fault"), [
    ((0x4366,), DataType.FLOAT32, DecodeFault.LENGTH),
    ((0x4366, 0, 0), DataType.FLOAT32, DecodeFault.LENGTH),
    ((), DataType.INT16, DecodeFault.LENGTH),
    ((0x10000,), DataType.UINT16, DecodeFault.WORD),
    ((-1,), DataType.INT16, DecodeFault.WORD),
    ((True,), DataType.INT16, DecodeFault.WORD),
    ((0x7FC0, 0x0000), DataType.FLOAT32, DecodeFault.NOT_FINITE),   # NaN
    ((0xFFFF, 0xFFFF), DataType.FLOAT32, DecodeFault.NOT_FINITE),   # NaN, all ones
    ((0x7F80, 0x0000), DataType.FLOAT32, DecodeFault.NOT_FINITE),   # +inf
    ((0xFF80, 0x0000), DataType.FLOAT32, DecodeFault.NOT_FINITE),   # -inf
    ((0x7FF8, 0, 0, 0), DataType.FLOAT64, DecodeFault.NOT_FINITE),
])
def test_decode_rejects_with_a_typed_fault(words: tuple[int, ...], dtype: DataType,
                                           fault: DecodeFault) -> None:
    with pytest.raises(DecodeError) as info:
        decode(words, dtype)
    assert info.value.fault is fault


def test_scaling_to_infinity_is_not_finite() -> None:
    with pytest.raises(DecodeError) as info:
        decode(encode(1e308, DataType.FLOAT64), DataType.FLOAT64, scale=1e10)
    assert info.value.fault is DecodeFault.NOT_FINITE


@pytest.mark.parametrize("dtype", list(DataType))
@pytest.mark.parametrize("order", list(WordOrder))
def test_encode_is_the_inverse_of_decode(dtype: DataType, order: WordOrder) -> None:
    value = 123.0 if dtype is not DataType.INT16 else -123.0
    assert decode(encode(value, dtype, order, 0.1), dtype, order, 0.1) == pytest.approx(value)


def test_encode_refuses_a_value_the_type_cannot_hold() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(70000, DataType.UINT16)
    with pytest.raises(ValueError, match="does not fit"):
        encode(-1, DataType.UINT32)
    with pytest.raises(ValueError, match="does not fit"):
        encode(1e39, DataType.FLOAT32)


def test_reading_checks_plausibility_and_builds_triples() -> None:
    r = reading({Quantity.POWER: -1500.0, Quantity.CURRENT_L1: 6.5,
                 Quantity.VOLTAGE_L1: 230.0, Quantity.VOLTAGE_L2: None}, at=7.0, phases=1)
    assert r.at == 7.0 and r.power_w == -1500.0
    assert r.currents_a == (6.5, 0.0, 0.0) and r.voltages_v == (230.0, 0.0, 0.0)
    three = reading({Quantity.CURRENT_L1: 1.0, Quantity.CURRENT_L2: 2.0}, at=0.0)
    assert three.currents_a is None        # L3 unknown: the triple is unknown
    for q, bad in ((Quantity.VOLTAGE_L1, -5.0), (Quantity.FREQUENCY, 1e6),
                   (Quantity.POWER, 3.4e38), (Quantity.IMPORT_ENERGY, -1.0)):
        with pytest.raises(DecodeError) as info:
            reading({q: bad}, at=0.0)
        assert info.value.fault is DecodeFault.IMPLAUSIBLE
    with pytest.raises(DecodeError) as info:
        reading({Quantity.POWER: math.nan}, at=0.0)
    assert info.value.fault is DecodeFault.NOT_FINITE


# -- never anything but the typed fault ---------------------------------------------------

words_st = st.lists(st.one_of(st.integers(0, 0xFFFF), st.integers(-(2**70), 2**70)),
                    max_size=6)
# 130 registers as raw bytes: hypothesis draws and shrinks bytes far faster than int lists.
register_st = st.binary(min_size=260, max_size=260).map(
    lambda b: [b[i] << 8 | b[i + 1] for i in range(0, len(b), 2)])
MAPS = {name: load_map(name) for name in available()}


@given(words=words_st, dtype=st.sampled_from(DataType), order=st.sampled_from(WordOrder),
       scale=st.sampled_from([1.0, 0.001, 1000.0, -0.1, 1e300]))
def test_decode_random_words_gives_a_number_or_the_typed_fault(
        words: list[int], dtype: DataType, order: WordOrder, scale: float) -> None:
    try:
        value = decode(words, dtype, order, scale)
    except DecodeError as exc:
        assert isinstance(exc.fault, DecodeFault)
    else:
        assert math.isfinite(value)


@given(name=st.sampled_from(sorted(MAPS)), registers=register_st)
def test_device_maps_decode_random_registers_or_the_typed_fault(
        name: str, registers: list[int]) -> None:
    device_map = MAPS[name]
    words = {b: registers[:b.count] for b in device_map.blocks}
    try:
        r = device_map.decode(words, at=1.0)
    except DecodeError as exc:
        assert isinstance(exc.fault, DecodeFault)
    else:
        assert r.finite()


@given(model=st.sampled_from(sorted(LAYOUTS)), registers=register_st,
       cut=st.integers(0, 130))
def test_sunspec_models_decode_random_registers_or_the_typed_fault(
        model: int, registers: list[int], cut: int) -> None:
    try:
        r = model_reading(model, registers[:cut], at=1.0)
    except DecodeError as exc:
        assert isinstance(exc.fault, DecodeFault)
    else:
        assert r.finite()
