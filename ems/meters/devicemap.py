"""Device maps: where a meter keeps each quantity, as data (``maps/<name>.toml``).

A map file::

    [device]
    manufacturer = "Eastron"
    model = "SDM630-Modbus V2"
    phases = 3                  # 1 or 3
    max_count = 80              # most registers the device returns in one request (≤ 125)
    max_gap = 0                 # unmapped registers a read may span to join two mapped ones

    [defaults]                  # for every register below unless it says otherwise
    table = "input"             # input (function 04) | holding (function 03)
    type = "float32"            # int16 uint16 int32 uint32 int64 uint64 float32 float64
    word_order = "big"          # big: most significant word first | little: least first

    [registers.power]           # one table per quantity, named as in ``Quantity``
    address = 0x0034            # the PDU address (register 30053 is address 0x0034)
    scale = 1.0                 # unit = raw × scale; or scale_pow10 = -2 for raw × 10^-2
    negate = false              # the device counts this quantity the other way round
    na = 0xFFFFFFFF             # integer types: the raw value meaning "not available"

Quantities and units: power W (import/consumption positive), current_l1..l3 A, voltage_l1..l3
V, import_energy and export_energy Wh, frequency Hz, soc %. A map that breaks a rule raises
``ConfigError`` naming the file, the key and what was expected.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from ems.config_error import ConfigError
from ems.fields import Fields
from ems.meters.decode import (
    CURRENTS,
    VOLTAGES,
    DataType,
    Quantity,
    WordOrder,
    decode,
    encode,
    raw,
    reading,
)
from ems.model import Reading

MAPS_DIR = Path(__file__).resolve().parent / "maps"
MODBUS_MAX_COUNT = 125    # registers in one read request (Modbus application protocol 1.1b3)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
E = TypeVar("E", bound=Enum)


class Table(Enum):
    INPUT = "input"
    HOLDING = "holding"


@dataclass(frozen=True, slots=True)
class Register:
    quantity: Quantity
    table: Table
    address: int
    dtype: DataType
    order: WordOrder = WordOrder.BIG
    scale: float = 1.0
    negate: bool = False
    na: int | None = None

    @property
    def count(self) -> int:
        return self.dtype.words

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers of ``table`` from ``address``."""

    table: Table
    address: int
    count: int


@dataclass(frozen=True)
class DeviceMap:
    name: str
    file: str
    manufacturer: str
    model: str
    phases: int
    registers: tuple[Register, ...]
    max_count: int = MODBUS_MAX_COUNT
    max_gap: int = 0

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        """As few reads as the device allows: neighbours in one table join when the gap
        between them is at most ``max_gap`` and the read stays within ``max_count``."""
        blocks: list[Block] = []
        for table in Table:
            regs = sorted((r for r in self.registers if r.table is table),
                          key=lambda r: r.address)
            for r in regs:
                last = blocks[-1] if blocks and blocks[-1].table is table else None
                if (last is not None and r.address - (last.address + last.count) <= self.max_gap
                        and r.end - last.address <= self.max_count):
                    blocks[-1] = Block(table, last.address,
                                       max(last.count, r.end - last.address))
                else:
                    blocks.append(Block(table, r.address, r.count))
        return tuple(blocks)

    @cached_property
    def _places(self) -> tuple[tuple[Register, Block, int], ...]:
        """Each register with its block and its offset in that block's words."""
        return tuple((r, b, r.address - b.address) for r in self.registers for b in self.blocks
                     if b.table is r.table and b.address <= r.address
                     and r.end <= b.address + b.count)

    def decode(self, words: Mapping[Block, Sequence[int]], at: float) -> Reading:
        """The reading from the words of every block in ``blocks``. Raises DecodeError."""
        values: dict[Quantity, float | None] = {}
        for r, block, offset in self._places:
            regs = words[block][offset:offset + r.count]
            if r.na is not None and raw(regs, r.dtype, r.order) == r.na:
                values[r.quantity] = None
                continue
            value = decode(regs, r.dtype, r.order, r.scale)
            values[r.quantity] = -value if r.negate else value
        return reading(values, at, self.phases)

    def image(self, values: Mapping[Quantity, float]) -> dict[Table, dict[int, int]]:
        """The registers a device would hold for ``values`` (for simulators and tests)."""
        image: dict[Table, dict[int, int]] = {t: {} for t in Table}
        for r in self.registers:
            if r.quantity not in values:
                continue
            value = values[r.quantity]
            words = encode(-value if r.negate else value, r.dtype, r.order, r.scale)
            image[r.table].update(zip(range(r.address, r.end), words, strict=True))
        return image


def available() -> tuple[str, ...]:
    """The names of the maps shipped in ``maps/``."""
    return tuple(sorted(p.stem for p in MAPS_DIR.glob("*.toml")))


def load_map(name_or_path: str | Path) -> DeviceMap:
    """A shipped map by name (``"sdm630"``) or a map file by path."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith(".toml"):
        path = Path(name_or_path)
    elif _NAME.match(text):
        path = MAPS_DIR / f"{text}.toml"
        if not path.is_file():
            raise ConfigError(str(path), "(file)",
                              f"a device map named one of {', '.join(available())}", text)
    else:
        raise ConfigError(str(MAPS_DIR), "(file)", "a device map name or a path", text)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), "(file)", "a readable device map file", str(exc)) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "(file)", "valid TOML", str(exc)) from exc
    return parse_map(data, str(path), path.stem)


def parse_map(data: Mapping[str, Any], file: str, name: str) -> DeviceMap:
    f = _Fields(file)
    f.only(data, "", {"device", "defaults", "registers"})
    device = f.table(data, "device", required=True)
    f.only(device, "device", {"manufacturer", "model", "phases", "max_count", "max_gap"})
    phases = device.get("phases", 3)
    if phases not in (1, 3) or isinstance(phases, bool):
        raise ConfigError(file, "device.phases", "1 or 3", phases)
    defaults = f.table(data, "defaults")
    f.only(defaults, "defaults", {"table", "type", "word_order"})
    d_table = f.enum(Table, defaults, "defaults.table", None)
    d_type = f.enum(DataType, defaults, "defaults.type", None)
    d_order = f.enum(WordOrder, defaults, "defaults.word_order", None) or WordOrder.BIG

    regs_raw = f.table(data, "registers", required=True)
    registers: list[Register] = []
    for qname, entry in regs_raw.items():
        key = f"registers.{qname}"
        quantity = next((q for q in Quantity if q.value == qname), None)
        if quantity is None:
            raise ConfigError(file, key, "a quantity: one of "
                              + ", ".join(q.value for q in Quantity), "an unknown quantity")
        registers.append(_register(f, quantity, entry, key, d_table, d_type, d_order))
    if not registers:
        raise ConfigError(file, "[registers]", "at least one register", None)
    _check_phases(file, registers, phases)
    _check_overlap(file, registers)
    return DeviceMap(
        name=name, file=file,
        manufacturer=f.text(device, "device.manufacturer"),
        model=f.text(device, "device.model"),
        phases=phases, registers=tuple(registers),
        max_count=f.integer(device, "device.max_count", MODBUS_MAX_COUNT, lo=4,
                            hi=MODBUS_MAX_COUNT),
        max_gap=f.integer(device, "device.max_gap", 0, lo=0, hi=MODBUS_MAX_COUNT))


def _register(f: _Fields, quantity: Quantity, entry: object, key: str,
              d_table: Table | None, d_type: DataType | None,
              d_order: WordOrder) -> Register:
    if not isinstance(entry, dict):
        raise ConfigError(f.file, key, "a table with address (and type, scale, ...)", entry)
    f.only(entry, key, {"address", "table", "type", "word_order", "scale", "scale_pow10",
                        "negate", "na"})
    table = f.enum(Table, entry, f"{key}.table", d_table)
    dtype = f.enum(DataType, entry, f"{key}.type", d_type)
    order = f.enum(WordOrder, entry, f"{key}.word_order", None) or d_order
    if table is None:
        raise ConfigError(f.file, f"{key}.table", "input or holding (here or in [defaults])",
                          None)
    if dtype is None:
        raise ConfigError(f.file, f"{key}.type", "a data type (here or in [defaults])", None)
    address = f.integer(entry, f"{key}.address", None, lo=0, hi=0x10000 - dtype.words)
    if "scale" in entry and "scale_pow10" in entry:
        raise ConfigError(f.file, f"{key}.scale_pow10", "either scale or scale_pow10, not both",
                          entry["scale_pow10"])
    if "scale_pow10" in entry:
        scale = 10.0 ** f.integer(entry, f"{key}.scale_pow10", 0, lo=-9, hi=9)
    else:
        scale = entry.get("scale", 1.0)
        if (isinstance(scale, bool) or not isinstance(scale, int | float)
                or not math.isfinite(scale) or scale == 0):
            raise ConfigError(f.file, f"{key}.scale", "a finite non-zero number", scale)
    negate = entry.get("negate", False)
    if not isinstance(negate, bool):
        raise ConfigError(f.file, f"{key}.negate", "true or false", negate)
    na = entry.get("na")
    if na is not None:
        if dtype.is_float:
            raise ConfigError(f.file, f"{key}.na", "no na on a float type (NaN already is one)",
                              na)
        bits = 16 * dtype.words
        lo, hi = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if dtype.value.startswith("int")
                  else (0, (1 << bits) - 1))
        if isinstance(na, bool) or not isinstance(na, int) or not lo <= na <= hi:
            raise ConfigError(f.file, f"{key}.na", f"an integer a {dtype.value} can hold", na)
    return Register(quantity, table, address, dtype, order, float(scale), negate, na)


def _check_phases(file: str, registers: Sequence[Register], phases: int) -> None:
    present = {r.quantity for r in registers}
    for group in (CURRENTS, VOLTAGES):
        if phases == 1:
            for q in group[1:]:
                if q in present:
                    raise ConfigError(file, f"registers.{q.value}",
                                      f"no {q.value} on a 1-phase device (device.phases = 1)",
                                      "a register")
        elif any(q in present for q in group):
            for q in group:
                if q not in present:
                    raise ConfigError(file, f"registers.{q.value}",
                                      f"a register, as the other phases have one "
                                      f"(device.phases = {phases})", None)


def _check_overlap(file: str, registers: Sequence[Register]) -> None:
    for table in Table:
        regs = sorted((r for r in registers if r.table is table), key=lambda r: r.address)
        for a, b in itertools.pairwise(regs):
            if b.address < a.end:
                raise ConfigError(file, f"registers.{b.quantity.value}.address",
                                  f"an address from {a.end:#06x} on (registers."
                                  f"{a.quantity.value} uses {a.address:#06x}..{a.end - 1:#06x})",
                                  b.address)


class _Fields(Fields):
    """The device map's own kinds of value on top of the shared checks."""

    def integer(self, table: Mapping[str, Any], key: str, default: int | None, *,
                lo: int, hi: int) -> int:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(self.file, key, f"an integer in [{lo}, {hi}]", value)
        return value

    def text(self, table: Mapping[str, Any], key: str) -> str:
        value = table.get(key.rsplit(".", 1)[-1])
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self.file, key, "a non-empty string", value)
        return value

    def enum(self, cls: type[E], table: Mapping[str, Any], key: str,
             default: E | None) -> E | None:
        value = table.get(key.rsplit(".", 1)[-1])
        if value is None:
            return default
        for member in cls:
            if member.value == value:
                return member
        raise ConfigError(self.file, key, "one of " + ", ".join(str(m.value) for m in cls),
                          value)
