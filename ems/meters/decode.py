"""Register words to numbers, and numbers to a ``Reading``: pure, no I/O.

Modbus carries 16-bit words, each big-endian on the wire; a 32- or 64-bit value spans several
words whose order is the device's choice (``WordOrder``). Anything that is not a real,
physically possible number — a wrong word count, a word outside 0..0xFFFF, NaN, infinity, a
voltage of 10^30 V — raises ``DecodeError`` with a ``DecodeFault``, never anything else.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from enum import Enum

from ems.model import Reading, Triple


class DataType(Enum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def words(self) -> int:
        return struct.calcsize(_FORMAT[self]) // 2

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)


_FORMAT = {
    DataType.INT16: ">h", DataType.UINT16: ">H", DataType.INT32: ">i", DataType.UINT32: ">I",
    DataType.INT64: ">q", DataType.UINT64: ">Q", DataType.FLOAT32: ">f", DataType.FLOAT64: ">d",
}


class WordOrder(Enum):
    BIG = "big"        # most significant word first (the Modbus convention, Eastron, ABB)
    LITTLE = "little"  # least significant word first (Carlo Gavazzi)


class DecodeFault(Enum):
    LENGTH = "length"            # not as many words as the type needs
    WORD = "word"                # a "word" that is not an integer in 0..0xFFFF
    NOT_FINITE = "not_finite"    # NaN or infinity
    IMPLAUSIBLE = "implausible"  # a number no meter of this kind can measure
    LAYOUT = "layout"            # registers not laid out as the device's standard says


class DecodeError(ValueError):
    def __init__(self, fault: DecodeFault, detail: str) -> None:
        self.fault = fault
        self.detail = detail
        super().__init__(f"{fault.value}: {detail}")


def raw(words: Sequence[int], dtype: DataType, order: WordOrder = WordOrder.BIG) -> int | float:
    """The value the words hold, unscaled and unchecked (SunSpec needs the raw value to spot
    its "not implemented" markers)."""
    if len(words) != dtype.words:
        raise DecodeError(DecodeFault.LENGTH,
                          f"{dtype.value} needs {dtype.words} words, got {len(words)}")
    for w in words:
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 0xFFFF:
            raise DecodeError(DecodeFault.WORD, f"{w!r} is not a 16-bit register value")
    ordered = words if order is WordOrder.BIG else words[::-1]
    value: int | float = struct.unpack(_FORMAT[dtype], struct.pack(f">{len(ordered)}H",
                                                                   *ordered))[0]
    return value


def decode(words: Sequence[int], dtype: DataType, order: WordOrder = WordOrder.BIG,
           scale: float = 1.0) -> float:
    """The words as a finite number in the quantity's unit (raw × scale)."""
    value = float(raw(words, dtype, order)) * scale
    if not math.isfinite(value):
        raise DecodeError(DecodeFault.NOT_FINITE, f"{dtype.value} {list(words)} is {value}")
    return value


def encode(value: float, dtype: DataType, order: WordOrder = WordOrder.BIG,
           scale: float = 1.0) -> tuple[int, ...]:
    """The inverse of ``decode``, for simulators and tests: the words a device would send for
    ``value``. Raises ValueError when the type cannot hold it."""
    scaled = value / scale
    try:
        packed = struct.pack(_FORMAT[dtype], scaled if dtype.is_float else round(scaled))
    except (struct.error, OverflowError, ValueError) as exc:
        raise ValueError(f"{value} does not fit {dtype.value} at scale {scale}") from exc
    words = struct.unpack(f">{dtype.words}H", packed)
    return words if order is WordOrder.BIG else words[::-1]


class Quantity(Enum):
    """What a register measures, each in one unit: W, A, V, Wh, Hz, %."""

    POWER = "power"
    CURRENT_L1 = "current_l1"
    CURRENT_L2 = "current_l2"
    CURRENT_L3 = "current_l3"
    VOLTAGE_L1 = "voltage_l1"
    VOLTAGE_L2 = "voltage_l2"
    VOLTAGE_L3 = "voltage_l3"
    IMPORT_ENERGY = "import_energy"
    EXPORT_ENERGY = "export_energy"
    FREQUENCY = "frequency"
    SOC = "soc"


CURRENTS = (Quantity.CURRENT_L1, Quantity.CURRENT_L2, Quantity.CURRENT_L3)
VOLTAGES = (Quantity.VOLTAGE_L1, Quantity.VOLTAGE_L2, Quantity.VOLTAGE_L3)

# Wide enough for any low-voltage site with CT meters up to a large depot, narrow enough that a
# misread float (1e30) or a wrong word order (a 230 V reading as 1.5e9 V) is caught.
PLAUSIBLE: Mapping[Quantity, tuple[float, float]] = {
    Quantity.POWER: (-5e7, 5e7),
    **dict.fromkeys(CURRENTS, (-1e5, 1e5)),
    **dict.fromkeys(VOLTAGES, (0.0, 1e5)),
    Quantity.IMPORT_ENERGY: (0.0, 1e15),
    Quantity.EXPORT_ENERGY: (0.0, 1e15),
    Quantity.FREQUENCY: (0.0, 100.0),
    Quantity.SOC: (0.0, 100.0),
}


def reading(values: Mapping[Quantity, float | None], at: float, phases: int = 3) -> Reading:
    """A ``Reading`` of checked values (None: unknown). A per-phase triple is known when its
    ``phases`` first phases are; a 1-phase device reports 0 on the phases it does not have."""
    for q, v in values.items():
        if v is None:
            continue
        if not math.isfinite(v):
            raise DecodeError(DecodeFault.NOT_FINITE, f"{q.value} is {v}")
        lo, hi = PLAUSIBLE[q]
        if not lo <= v <= hi:
            raise DecodeError(DecodeFault.IMPLAUSIBLE, f"{q.value} {v:g} outside [{lo:g}, {hi:g}]")
    return Reading(
        at=at,
        power_w=values.get(Quantity.POWER),
        currents_a=_triple(values, CURRENTS, phases),
        voltages_v=_triple(values, VOLTAGES, phases),
        import_wh=values.get(Quantity.IMPORT_ENERGY),
        export_wh=values.get(Quantity.EXPORT_ENERGY),
        soc_pct=values.get(Quantity.SOC),
        frequency_hz=values.get(Quantity.FREQUENCY))


def _triple(values: Mapping[Quantity, float | None], which: tuple[Quantity, Quantity, Quantity],
            phases: int) -> Triple | None:
    known = [values.get(q) for q in which[:phases]]
    present = [v for v in known if v is not None]
    if len(present) < phases:
        return None
    padded = [*present, 0.0, 0.0, 0.0]
    return (padded[0], padded[1], padded[2])
