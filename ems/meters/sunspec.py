"""SunSpec: find the register map a device describes itself, and read inverters and meters.

A SunSpec device holds "SunS" (0x5375 0x6E53) at a base address — 40000 by the standard, 0 or
50000 on some devices — followed by a chain of models, each an ID and a length L (registers
after the two header words), ended by ID 0xFFFF. Supported here (offsets from the SunSpec
Information Model Reference): inverter models 101/102/103 (integers with scale factors) and
111/112/113 (float32), meter models 201–204 (integers with scale factors) and 211–214 (float32).

Values a device marks "not implemented" (0x8000 int16, 0xFFFF uint16, 0 for accumulators,
NaN for floats, 0x8000 scale factor) are unknown (None), never numbers.

Signs: an inverter's W is its AC output, positive while producing (the site's PV convention);
its lifetime energy WH counts in that positive direction and so is ``import_wh`` (the energy
counted while power_w > 0). A meter's W is positive for import (check per installation;
``invert`` on the meter flips it), TotWhImp/TotWhExp are ``import_wh``/``export_wh``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from ems.meters.decode import (
    CURRENTS,
    VOLTAGES,
    DataType,
    DecodeError,
    DecodeFault,
    Quantity,
    raw,
    reading,
)
from ems.model import Reading

MARKER = (0x5375, 0x6E53)
BASES = (40000, 0, 50000)
END = 0xFFFF
MAX_MODELS = 64   # more than any real device has; a longer chain is garbage


class Kind(Enum):
    INVERTER = "inverter"
    METER = "meter"


@dataclass(frozen=True, slots=True)
class ModelRef:
    id: int
    address: int   # of the first data register, after the ID and L words
    length: int


@dataclass(frozen=True, slots=True)
class _Field:
    offset: int               # in the model's data
    dtype: DataType
    sf: int | None = None     # offset of its scale factor (integer models)
    na: int | None = None     # the raw "not implemented" value (floats: NaN)

    @property
    def end(self) -> int:
        return max(self.offset + self.dtype.words, -1 if self.sf is None else self.sf + 1)


def _i16(offset: int, sf: int) -> _Field:
    return _Field(offset, DataType.INT16, sf, -0x8000)


def _u16(offset: int, sf: int) -> _Field:
    return _Field(offset, DataType.UINT16, sf, 0xFFFF)


def _acc32(offset: int, sf: int) -> _Field:
    return _Field(offset, DataType.UINT32, sf, 0)


def _f32(offset: int) -> _Field:
    return _Field(offset, DataType.FLOAT32)


@dataclass(frozen=True)
class _Layout:
    kind: Kind
    phases: int
    fields: dict[Quantity, _Field]

    @property
    def needed(self) -> int:
        """Registers of the model's data to read: through the last one used."""
        return max(f.end for f in self.fields.values())


def _layout_of(kind: Kind, phases: int, currents: tuple[_Field, _Field, _Field],
               voltages: tuple[_Field, _Field, _Field], **others: _Field) -> _Layout:
    fields = {Quantity(name): f for name, f in others.items()}
    fields.update(zip(CURRENTS[:phases], currents[:phases], strict=True))
    fields.update(zip(VOLTAGES[:phases], voltages[:phases], strict=True))
    return _Layout(kind, phases, fields)


def _inverter_int(phases: int) -> _Layout:
    return _layout_of(Kind.INVERTER, phases, (_u16(1, 4), _u16(2, 4), _u16(3, 4)),
                      (_u16(8, 11), _u16(9, 11), _u16(10, 11)),
                      power=_i16(12, 13), frequency=_u16(14, 15),
                      import_energy=_acc32(22, 24))


def _inverter_float(phases: int) -> _Layout:
    return _layout_of(Kind.INVERTER, phases, (_f32(2), _f32(4), _f32(6)),
                      (_f32(14), _f32(16), _f32(18)),
                      power=_f32(20), frequency=_f32(22), import_energy=_f32(30))


def _meter_int(phases: int) -> _Layout:
    return _layout_of(Kind.METER, phases, (_i16(1, 4), _i16(2, 4), _i16(3, 4)),
                      (_i16(6, 13), _i16(7, 13), _i16(8, 13)),
                      power=_i16(16, 20), frequency=_i16(14, 15),
                      export_energy=_acc32(36, 52), import_energy=_acc32(44, 52))


def _meter_float(phases: int) -> _Layout:
    return _layout_of(Kind.METER, phases, (_f32(2), _f32(4), _f32(6)),
                      (_f32(10), _f32(12), _f32(14)),
                      power=_f32(26), frequency=_f32(24),
                      export_energy=_f32(58), import_energy=_f32(66))


# Model ID → layout. The last digit is the phase arrangement: 1 single, 2 split (L1, L2),
# 3 wye, 4 delta (three phases, usually without line-to-neutral voltages).
LAYOUTS: dict[int, _Layout] = {
    **{100 + p: _inverter_int(p) for p in (1, 2, 3)},
    **{110 + p: _inverter_float(p) for p in (1, 2, 3)},
    **{200 + p: _meter_int(min(p, 3)) for p in (1, 2, 3, 4)},
    **{210 + p: _meter_float(min(p, 3)) for p in (1, 2, 3, 4)},
}

Reader = Callable[[int, int], Awaitable[Sequence[int] | None]]


async def discover(read: Reader) -> tuple[int, tuple[ModelRef, ...]] | None:
    """The base address and the model chain, or None when no base holds the marker.

    ``read(address, count)`` returns the holding registers, or None when the device answers
    that they do not exist (a Modbus exception response); any other failure it raises, and
    that ends the discovery."""
    for base in BASES:
        marker = await read(base, 2)
        if marker is not None and tuple(marker) == MARKER:
            return base, await _chain(read, base + 2)
    return None


async def _chain(read: Reader, address: int) -> tuple[ModelRef, ...]:
    models: list[ModelRef] = []
    for _ in range(MAX_MODELS):
        if address + 2 > 0x10000:
            raise DecodeError(DecodeFault.LAYOUT, "the model chain runs past register 65535")
        header = await read(address, 2)
        # Some devices end the chain with an unreadable address instead of the end model.
        if header is not None and len(header) != 2:
            raise DecodeError(DecodeFault.LENGTH, f"model header at {address}: {len(header)} "
                                                  "words")
        if header is None or header[0] == END:
            return tuple(models)
        model_id, length = header[0], header[1]
        models.append(ModelRef(model_id, address + 2, length))
        address += 2 + length
    raise DecodeError(DecodeFault.LAYOUT, f"more than {MAX_MODELS} models in the chain")


def pick(models: Sequence[ModelRef], kind: Kind | None = None) -> ModelRef | None:
    """The first model this module reads (of ``kind`` when given)."""
    return next((m for m in models
                 if m.id in LAYOUTS and (kind is None or LAYOUTS[m.id].kind is kind)), None)


def words_needed(model: ModelRef) -> int:
    """How many data registers of ``model`` to read; DecodeError when the model is shorter
    than its standard length for the values used."""
    layout = _layout(model.id)
    if model.length < layout.needed:
        raise DecodeError(DecodeFault.LAYOUT, f"model {model.id} has {model.length} registers, "
                                              f"at least {layout.needed} expected")
    return layout.needed


def model_reading(model_id: int, words: Sequence[int], at: float) -> Reading:
    """The reading in a model's data registers (from its first data register on)."""
    layout = _layout(model_id)
    if len(words) < layout.needed:
        raise DecodeError(DecodeFault.LENGTH,
                          f"model {model_id} needs {layout.needed} words, got {len(words)}")
    values = {q: _value(words, f) for q, f in layout.fields.items()}
    return reading(values, at, layout.phases)


def _layout(model_id: int) -> _Layout:
    layout = LAYOUTS.get(model_id)
    if layout is None:
        raise DecodeError(DecodeFault.LAYOUT, f"model {model_id} is not an inverter or meter "
                                              f"model this reader knows")
    return layout


def _value(words: Sequence[int], f: _Field) -> float | None:
    n = raw(words[f.offset:f.offset + f.dtype.words], f.dtype)
    if f.dtype.is_float:
        return None if math.isnan(n) else float(n)
    if n == f.na:
        return None
    if f.sf is None:
        return float(n)
    sf = int(raw(words[f.sf:f.sf + 1], DataType.INT16))
    if sf == -0x8000:
        return None
    if not -10 <= sf <= 10:
        raise DecodeError(DecodeFault.LAYOUT, f"scale factor {sf} at offset {f.sf} outside "
                                              f"-10..10")
    return float(n) * 10.0 ** sf
