"""The site file: grid connection, meters, PV, home battery, charge points and their modes.

A TOML file (documented in docs/ems.md, example in docs/site.example.toml). Every error names
the file, the key and what was expected; nothing is half-loaded.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from ems.battery import BatteryConfig
from ems.config_error import ConfigError
from ems.fields import Fields
from ems.inputs import DEFAULT_FAILSAFE, FailSafe, InputSpec
from ems.model import Mode, Role
from ems.phase_switch import PhaseConfig
from ems.surplus import PvConfig

METER_KINDS = ("modbus", "mqtt", "sim")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


@dataclass(frozen=True, slots=True)
class MeterConfig:
    name: str
    role: Role
    kind: str                       # modbus | mqtt | sim
    timeout_s: float
    fail_safe: FailSafe
    options: dict[str, Any]         # the kind's own keys, checked by the kind's loader
    poll_s: float = 1.0

    def input_spec(self) -> InputSpec:
        return InputSpec(self.name, self.role, self.timeout_s, self.fail_safe)


@dataclass(frozen=True, slots=True)
class GridConfig:
    fuse_a: float                   # per phase
    contracted_w: float | None = None
    unbalance_a: float | None = None
    meter: str | None = None
    failsafe_a: float = 6.0         # per charge point while the grid meter is not healthy


@dataclass(frozen=True, slots=True)
class ChargePointConfig:
    id: str
    phases: int = 3
    # The site phase (1..3) each of the charge point's L1..L3 is wired to (phase rotation).
    phase_map: tuple[int, int, int] = (1, 2, 3)
    min_a: float = 6.0
    max_a: float = 16.0
    priority: int = 0
    mode: Mode = Mode.PV
    phase_switching: bool = False   # the board can switch 1p/3p and the user allows it
    departure: time | None = None   # daily departure, local = UTC here (the site has no zone)
    target_wh: float | None = None  # energy wanted by departure


@dataclass(frozen=True, slots=True)
class TariffConfig:
    file: Path | None = None
    mqtt_topic: str | None = None


@dataclass(frozen=True, slots=True)
class SiteConfig:
    path: Path
    name: str
    grid: GridConfig
    charge_points: tuple[ChargePointConfig, ...]
    meters: tuple[MeterConfig, ...] = ()
    pv_meter: str | None = None
    battery_meter: str | None = None
    house_meter: str | None = None
    voltage_v: float = 230.0
    cycle_s: float = 5.0
    battery: BatteryConfig = field(default_factory=BatteryConfig)
    pv_mode: PvConfig = field(default_factory=PvConfig)
    phase_switch: PhaseConfig = field(default_factory=PhaseConfig)
    tariff: TariffConfig = field(default_factory=TariffConfig)
    sim: dict[str, Any] = field(default_factory=dict)
    mqtt: dict[str, Any] = field(default_factory=dict)

    def meter(self, name: str | None) -> MeterConfig | None:
        return next((m for m in self.meters if m.name == name), None)


def load_site(path: Path) -> SiteConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "(file)", "a readable UTF-8 TOML file", str(exc)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(file)", "valid TOML", str(exc)) from exc
    return parse_site(raw, path)


def parse_site(raw: dict[str, Any], path: Path) -> SiteConfig:
    f = _Reader(str(path))
    f.only(raw, "", {"site", "grid", "meter", "pv", "battery", "house", "charge_point",
                     "pv_mode", "phase_switch", "tariff", "sim", "mqtt"})
    site = f.table(raw, "site")
    f.only(site, "site", {"name", "voltage_v", "cycle_s"})
    name = f.ident(site, "site.name", "name", default="site")
    voltage = f.number(site, "site.voltage_v", "voltage_v", 230.0, lo=100.0, hi=480.0)
    cycle = f.number(site, "site.cycle_s", "cycle_s", 5.0, lo=0.5, hi=60.0)

    meters = tuple(_meter(f, m, i) for i, m in enumerate(f.array(raw, "meter")))
    names = [m.name for m in meters]
    for dup in {n for n in names if names.count(n) > 1}:
        raise ConfigError(f.file, "meter.name", "unique meter names", dup)

    def meter_ref(table: dict[str, Any], key: str, role: Role) -> str | None:
        ref = table.get("meter")
        if ref is None:
            return None
        m = next((m for m in meters if m.name == ref), None)
        if m is None:
            raise ConfigError(f.file, key, f"one of the [[meter]] names {names}", ref)
        if m.role is not role:
            raise ConfigError(f.file, key, f"a meter with role = {role.value!r}", m.role.value)
        return m.name

    g = f.table(raw, "grid", required=True)
    f.only(g, "grid", {"fuse_a", "contracted_kw", "unbalance_a", "meter", "failsafe_a"})
    contracted = f.number(g, "grid.contracted_kw", "contracted_kw", None, lo=0.1, hi=10000.0)
    grid = GridConfig(
        fuse_a=f.number(g, "grid.fuse_a", "fuse_a", None, lo=1.0, hi=4000.0, required=True),
        contracted_w=None if contracted is None else contracted * 1000.0,
        unbalance_a=f.number(g, "grid.unbalance_a", "unbalance_a", None, lo=0.0, hi=4000.0),
        meter=meter_ref(g, "grid.meter", Role.GRID),
        failsafe_a=f.number(g, "grid.failsafe_a", "failsafe_a", 6.0, lo=0.0, hi=80.0))

    pv = f.table(raw, "pv")
    f.only(pv, "pv", {"meter"})
    house = f.table(raw, "house")
    f.only(house, "house", {"meter"})
    bat = f.table(raw, "battery")
    battery_meter = meter_ref(bat, "battery.meter", Role.BATTERY)
    battery = f.dataclass(BatteryConfig, {k: v for k, v in bat.items() if k != "meter"},
                          "battery")

    cps = tuple(_charge_point(f, c, i) for i, c in enumerate(
        f.array(raw, "charge_point", required=True)))
    ids = [c.id for c in cps]
    for dup in {i for i in ids if ids.count(i) > 1}:
        raise ConfigError(f.file, "charge_point.id", "unique charge point ids", dup)
    for phase in (1, 2, 3):
        worst = sum(grid.failsafe_a for c in cps if phase in c.phase_map[:c.phases])
        if worst > grid.fuse_a:
            raise ConfigError(f.file, "grid.failsafe_a",
                              f"a current whose sum over the charge points on L{phase} fits "
                              f"fuse_a ({grid.fuse_a:g} A)", grid.failsafe_a)

    tariff_raw = f.table(raw, "tariff")
    f.only(tariff_raw, "tariff", {"file", "mqtt_topic"})
    tariff_file = tariff_raw.get("file")
    if tariff_file is not None and not isinstance(tariff_file, str):
        raise ConfigError(f.file, "tariff.file", "a file path", tariff_file)
    topic = tariff_raw.get("mqtt_topic")
    if topic is not None and (not isinstance(topic, str) or not topic):
        raise ConfigError(f.file, "tariff.mqtt_topic", "an MQTT topic", topic)
    tariff = TariffConfig(None if tariff_file is None else path.parent / tariff_file, topic)

    return SiteConfig(
        path=path, name=name, grid=grid, charge_points=cps, meters=meters,
        pv_meter=meter_ref(pv, "pv.meter", Role.PV),
        battery_meter=battery_meter,
        house_meter=meter_ref(house, "house.meter", Role.HOUSE),
        voltage_v=voltage, cycle_s=cycle, battery=battery,
        pv_mode=f.dataclass(PvConfig, f.table(raw, "pv_mode"), "pv_mode"),
        phase_switch=f.dataclass(PhaseConfig, f.table(raw, "phase_switch"), "phase_switch"),
        tariff=tariff, sim=f.table(raw, "sim"), mqtt=f.table(raw, "mqtt"))


def _meter(f: _Reader, m: dict[str, Any], i: int) -> MeterConfig:
    key = f"meter[{i}]"
    name = f.ident(m, f"{key}.name", "name", required=True)
    role = f.enum(Role, m, f"{key}.role", "role", required=True)
    kind = m.get("kind")
    if kind not in METER_KINDS:
        raise ConfigError(f.file, f"{key}.kind", f"one of {', '.join(METER_KINDS)}", kind)
    fail_safe = f.enum(FailSafe, m, f"{key}.fail_safe", "fail_safe",
                       default=DEFAULT_FAILSAFE[role])
    timeout = f.number(m, f"{key}.timeout_s", "timeout_s", 10.0, lo=0.5, hi=3600.0)
    poll = f.number(m, f"{key}.poll_s", "poll_s", 1.0, lo=0.1, hi=600.0)
    if timeout < poll:
        raise ConfigError(f.file, f"{key}.timeout_s", f"at least poll_s ({poll:g} s)", timeout)
    options = {k: v for k, v in m.items()
               if k not in {"name", "role", "kind", "fail_safe", "timeout_s", "poll_s"}}
    return MeterConfig(name, role, kind, timeout, fail_safe, options, poll)


def _charge_point(f: _Reader, c: dict[str, Any], i: int) -> ChargePointConfig:
    key = f"charge_point[{i}]"
    f.only(c, key, {"id", "phases", "phase_map", "min_a", "max_a", "priority", "mode",
                    "phase_switching", "departure", "target_kwh"})
    phases = c.get("phases", 3)
    if type(phases) is not int or phases not in (1, 3):
        raise ConfigError(f.file, f"{key}.phases", "1 or 3", phases)
    pmap = c.get("phase_map", [1, 2, 3])
    if (not isinstance(pmap, list) or not all(type(p) is int for p in pmap)
            or sorted(pmap) != [1, 2, 3]):
        raise ConfigError(f.file, f"{key}.phase_map",
                          "a permutation of [1, 2, 3] (the site phase of the charge point's "
                          "L1, L2, L3)", pmap)
    min_a = f.number(c, f"{key}.min_a", "min_a", 6.0, lo=6.0, hi=80.0)
    max_a = f.number(c, f"{key}.max_a", "max_a", 16.0, lo=6.0, hi=80.0)
    if max_a < min_a:
        raise ConfigError(f.file, f"{key}.max_a", f"at least min_a ({min_a:g} A)", max_a)
    priority = c.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ConfigError(f.file, f"{key}.priority", "an integer", priority)
    switching = c.get("phase_switching", False)
    if not isinstance(switching, bool):
        raise ConfigError(f.file, f"{key}.phase_switching", "true or false", switching)
    if switching and phases != 3:
        raise ConfigError(f.file, f"{key}.phase_switching",
                          "false on a 1-phase charge point", switching)
    departure = c.get("departure")
    if departure is not None:
        departure = _clock_time(f, departure, f"{key}.departure")
    target = f.number(c, f"{key}.target_kwh", "target_kwh", None, lo=0.1, hi=500.0)
    if (departure is None) != (target is None):
        raise ConfigError(f.file, f"{key}.departure",
                          "departure and target_kwh given together", departure)
    return ChargePointConfig(
        id=f.ident(c, f"{key}.id", "id", required=True), phases=phases,
        phase_map=(pmap[0], pmap[1], pmap[2]), min_a=min_a, max_a=max_a, priority=priority,
        mode=f.enum(Mode, c, f"{key}.mode", "mode", default=Mode.PV),
        phase_switching=switching, departure=departure,
        target_wh=None if target is None else target * 1000.0)


def time_of_day(value: object) -> time | None:
    """"HH:MM" (00:00-23:59) as a time of day, None when it is not one: the one reading of a
    clock time for the site file, the simulation and the controller's ``ems`` command."""
    if isinstance(value, time):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"([01][0-9]|2[0-3]):([0-5][0-9])", value)
        if m:
            return time(int(m.group(1)), int(m.group(2)))
    return None


def _clock_time(f: _Reader, value: object, key: str) -> time:
    at = time_of_day(value)
    if at is None:
        raise ConfigError(f.file, key, "a time of day HH:MM (UTC)", value)
    return at


T = TypeVar("T")
E = TypeVar("E")


class _Reader(Fields):
    """The site file's own kinds of value on top of the shared checks."""

    def array(self, raw: dict[str, Any], key: str,
              required: bool = False) -> list[dict[str, Any]]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(self.file, key, f"an array of tables [[{key}]]", value)
        if required and not value:
            raise ConfigError(self.file, f"[[{key}]]", "at least one entry", None)
        return value

    def number(self, table: dict[str, Any], key: str, name: str, default: float | None, *,
               lo: float, hi: float, required: bool = False) -> Any:
        value = table.get(name)
        if value is None:
            if required:
                raise ConfigError(self.file, key, f"a number in [{lo:g}, {hi:g}]", None)
            return default
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or not lo <= value <= hi):
            raise ConfigError(self.file, key, f"a number in [{lo:g}, {hi:g}]", value)
        return float(value)

    def ident(self, table: dict[str, Any], key: str, name: str, *, default: str | None = None,
              required: bool = False) -> str:
        value = table.get(name, default)
        if not isinstance(value, str) or not _ID.fullmatch(value):
            raise ConfigError(self.file, key, "1-32 letters, digits, '_' or '-'", value)
        return value

    def enum(self, cls: type[E], table: dict[str, Any], key: str, name: str, *,
             default: E | None = None, required: bool = False) -> E:
        value = table.get(name)
        members = list(cls)  # type: ignore[call-overload]
        if value is None and default is not None and not required:
            return default
        for member in members:
            if member.value == value:
                return member  # type: ignore[no-any-return]
        raise ConfigError(self.file, key,
                          f"one of {', '.join(repr(m.value) for m in members)}", value)

    def dataclass(self, cls: type[T], table: dict[str, Any], where: str) -> T:
        """A config dataclass from a table: known fields only, each of its declared type."""
        hints = get_type_hints(cls)
        names = {fl.name for fl in dataclasses.fields(cls)}  # type: ignore[arg-type]
        self.only(table, where, names)
        values: dict[str, Any] = {}
        for name, value in table.items():
            values[name] = self._typed(value, hints[name], f"{where}.{name}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(self.file, where, "consistent values", str(exc)) from exc

    def _typed(self, value: object, hint: Any, key: str) -> Any:
        options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is bool and isinstance(value, bool):
                return value
            if option is float and isinstance(value, int | float) and not isinstance(
                    value, bool) and math.isfinite(value):
                return float(value)
            if option is int and isinstance(value, int) and not isinstance(value, bool):
                return value
            if option is str and isinstance(value, str):
                return value
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise ConfigError(self.file, key, names, value)
