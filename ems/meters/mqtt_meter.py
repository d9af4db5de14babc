"""A meter that publishes over MQTT: values mapped by topic and JSON path.

One topic may carry a JSON document with everything (``power`` at ``ENERGY.Power``, the three
currents at ``ENERGY.Current``), or each value may have its own topic, as JSON or as a plain
number (an empty path takes the whole payload). Each value is scaled, and ``invert`` flips the
sign of a meter mounted the other way round.

A message becomes values stamped with the receive time from the injected clock, all or nothing:
a broken message changes nothing and counts one typed fault, never an exception. ``latest()``
is stamped with the *oldest* of the values it combines, so a topic that stopped makes the whole
reading age (and go stale) instead of passing its last value off as new. For the same reason a
retained message, which the broker replays on subscribe with no age, is not used.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any

from ems.config_error import ConfigError
from ems.meters.decode import CURRENTS, PLAUSIBLE, VOLTAGES, Quantity, reading
from ems.model import Reading
from ems.mqtt_client import Message, MqttClient

# Array fields: one JSON array of the three phase values, L1..L3.
ARRAYS: Mapping[str, tuple[Quantity, ...]] = {"currents": CURRENTS, "voltages": VOLTAGES}
FIELDS: tuple[str, ...] = (*(q.value for q in Quantity), *ARRAYS)

Path = tuple[str | int, ...]


class MeterFault(Enum):
    BAD_JSON = "bad_json"            # not JSON (nor a plain number)
    MISSING_PATH = "missing_path"    # the path leads nowhere in this document
    NOT_A_NUMBER = "not_a_number"    # a string, bool, null, object where a number belongs
    NOT_FINITE = "not_finite"        # NaN, Infinity, or a number too big for a float
    WRONG_LENGTH = "wrong_length"    # an array field without exactly three values
    IMPLAUSIBLE = "implausible"      # outside what any meter of the kind measures
    RETAINED = "retained"            # a stored value replayed on subscribe: its age is unknown


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """Where one value comes from. ``what`` is a ``Quantity`` value (``power``,
    ``current_l1``, ``import_energy``...) or an array field (``currents``, ``voltages``)."""

    what: str
    topic: str
    path: str = ""        # "" = the whole payload; else e.g. "power.total", "currents[0]"
    scale: float = 1.0
    invert: bool = False

    def __post_init__(self) -> None:
        if self.what not in FIELDS:
            raise ValueError(f"field {self.what!r}: expected one of {', '.join(FIELDS)}")
        if not _is_topic(self.topic):
            raise ValueError(f"topic: expected a topic without wildcards, got {self.topic!r}")
        parse_path(self.path)
        if (isinstance(self.scale, bool) or not isinstance(self.scale, int | float)
                or not math.isfinite(self.scale) or self.scale == 0):
            raise ValueError(f"scale: expected a finite non-zero number, got {self.scale!r}")

    @property
    def quantities(self) -> tuple[Quantity, ...]:
        return ARRAYS.get(self.what) or (Quantity(self.what),)


@dataclass(frozen=True, slots=True)
class MqttMeterSpec:
    name: str
    fields: tuple[FieldSpec, ...]
    phases: int = 3       # a 1-phase meter reports L1 only; L2 and L3 read as 0

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError(f"meter {self.name}: no fields")
        seen: set[Quantity] = set()
        for f in self.fields:
            twice = seen.intersection(f.quantities)
            if twice:
                raise ValueError(f"meter {self.name}: {next(iter(twice)).value} mapped twice")
            seen.update(f.quantities)
        if self.phases not in (1, 3):
            raise ValueError(f"meter {self.name}: phases must be 1 or 3, got {self.phases}")

    def topics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.topic for f in self.fields))

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any], file: str,
                     key: str) -> MqttMeterSpec:
        """A spec from a ``[[meter]]`` table's own keys (kind = "mqtt"): ``topic`` (the default
        for every field), ``phases``, and per field either a path string (on ``topic``) or a
        table ``{topic, path, scale, invert}``. Errors name the file and the key."""
        allowed = {"topic", "phases", *FIELDS}
        for k in options:
            if k not in allowed:
                raise ConfigError(file, f"{key}.{k}", f"one of {', '.join(sorted(allowed))}",
                                  "an unknown key")
        default_topic = options.get("topic")
        if default_topic is not None and not _is_topic(default_topic):
            raise ConfigError(file, f"{key}.topic", "an MQTT topic without wildcards",
                              default_topic)
        phases = options.get("phases", 3)
        if phases not in (1, 3) or isinstance(phases, bool):
            raise ConfigError(file, f"{key}.phases", "1 or 3", phases)
        fields: list[FieldSpec] = []
        for what in FIELDS:
            if what in options:
                fields.append(_field(what, options[what], default_topic, file,
                                     f"{key}.{what}"))
        if not fields:
            raise ConfigError(file, key, f"at least one of {', '.join(FIELDS)}", None)
        try:
            return cls(name, tuple(fields), phases)
        except ValueError as exc:
            raise ConfigError(file, key, "each quantity mapped once", str(exc)) from exc


def _field(what: str, value: object, default_topic: str | None, file: str,
           key: str) -> FieldSpec:
    table: Mapping[str, Any]
    if isinstance(value, str):
        table = {"path": value}
    elif isinstance(value, Mapping):
        table = value
    else:
        raise ConfigError(file, key, "a JSON path or a table {topic, path, scale, invert}", value)
    for k in table:
        if k not in ("topic", "path", "scale", "invert"):
            raise ConfigError(file, f"{key}.{k}", "one of invert, path, scale, topic",
                              "an unknown key")
    topic = table.get("topic", default_topic)
    if topic is None or not _is_topic(topic):
        raise ConfigError(file, f"{key}.topic",
                          "an MQTT topic without wildcards (here or the meter's topic)", topic)
    path = table.get("path", "")
    if not isinstance(path, str):
        raise ConfigError(file, f"{key}.path", "a JSON path like power.total or currents[0]",
                          path)
    try:
        parse_path(path)
    except ValueError as exc:
        raise ConfigError(file, f"{key}.path", "a JSON path like power.total or currents[0]",
                          path) from exc
    scale = table.get("scale", 1.0)
    if (isinstance(scale, bool) or not isinstance(scale, int | float)
            or not math.isfinite(scale) or scale == 0):
        raise ConfigError(file, f"{key}.scale", "a finite non-zero number", scale)
    invert = table.get("invert", False)
    if not isinstance(invert, bool):
        raise ConfigError(file, f"{key}.invert", "true or false", invert)
    return FieldSpec(what, topic, path, float(scale), invert)


def _is_topic(topic: object) -> bool:
    return (isinstance(topic, str) and 0 < len(topic.encode()) <= 65535
            and not any(c in topic for c in "+#\0"))


_INDEX = re.compile(r"\[(\d+)\]")
_KEY = re.compile(r"[^.\[\]]+")


@lru_cache(maxsize=256)
def parse_path(text: str) -> Path:
    """``power.total`` → ("power", "total"); ``currents[0]`` → ("currents", 0); ``""`` → ()."""
    steps: list[str | int] = []
    pos = 0
    while pos < len(text):
        if text[pos] == "[":
            m = _INDEX.match(text, pos)
            if m is None:
                raise ValueError(f"bad index at {pos} in {text!r}")
            steps.append(int(m.group(1)))
        else:
            if steps:
                if text[pos] != ".":
                    raise ValueError(f"expected '.' or '[' at {pos} in {text!r}")
                pos += 1
            m = _KEY.match(text, pos)
            if m is None:
                raise ValueError(f"expected a key at {pos} in {text!r}")
            steps.append(m.group(0))
        pos = m.end()
    return tuple(steps)


class _FaultError(Exception):
    def __init__(self, fault: MeterFault, detail: str) -> None:
        super().__init__(detail)
        self.fault = fault


def _reject_constant(name: str) -> float:
    raise _FaultError(MeterFault.NOT_FINITE, f"{name} in the payload")


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FaultError(MeterFault.NOT_A_NUMBER, f"{what}: {value!r:.40} is not a number")
    try:
        return float(value)
    except OverflowError as exc:
        raise _FaultError(MeterFault.NOT_FINITE, f"{what}: too big for a float") from exc


def _extract(document: object, field: FieldSpec) -> dict[Quantity, float]:
    """The field's values in ``document`` (parsed JSON), scaled, signed and checked. Raises
    ``_FaultError`` (internal; ``MqttMeter`` counts it)."""
    value = document
    for step in parse_path(field.path):
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                raise _FaultError(MeterFault.MISSING_PATH,
                                  f"{field.what}: no [{step}] in {field.path}")
            value = value[step]
        else:
            if not isinstance(value, dict) or step not in value:
                raise _FaultError(MeterFault.MISSING_PATH,
                                  f"{field.what}: no {step!r} in {field.path}")
            value = value[step]
    quantities = field.quantities
    if len(quantities) == 1:
        raw = [_number(value, field.what)]
    else:
        if not isinstance(value, list):
            raise _FaultError(MeterFault.NOT_A_NUMBER,
                              f"{field.what}: {value!r:.40} is not an array")
        if len(value) != len(quantities):
            raise _FaultError(MeterFault.WRONG_LENGTH,
                         f"{field.what}: {len(value)} values, expected {len(quantities)}")
        raw = [_number(v, field.what) for v in value]
    sign = -1.0 if field.invert else 1.0
    out: dict[Quantity, float] = {}
    for q, v in zip(quantities, raw, strict=True):
        scaled = v * field.scale * sign
        if not math.isfinite(scaled):
            raise _FaultError(MeterFault.NOT_FINITE, f"{q.value} is {scaled}")
        lo, hi = PLAUSIBLE[q]
        if not lo <= scaled <= hi:
            raise _FaultError(MeterFault.IMPLAUSIBLE,
                              f"{q.value} {scaled:g} outside [{lo:g}, {hi:g}]")
        out[q] = scaled
    return out


class MqttMeter:
    """The latest values of one MQTT meter. Feed it messages (``attach`` subscribes it)."""

    def __init__(self, spec: MqttMeterSpec, clock: Callable[[], float]) -> None:
        self.spec = spec
        self._clock = clock
        self._by_topic: dict[str, list[FieldSpec]] = {}
        for f in spec.fields:
            self._by_topic.setdefault(f.topic, []).append(f)
        self._expected = {q for f in spec.fields for q in f.quantities}
        self._values: dict[Quantity, tuple[float, float]] = {}   # value, receive time
        self.faults: Counter[MeterFault] = Counter()
        self.last_fault: tuple[MeterFault, str] | None = None
        self.messages = 0     # messages accepted

    def attach(self, client: MqttClient) -> None:
        for topic in self.spec.topics():
            client.subscribe(topic, self.handle)

    def handle(self, message: Message) -> MeterFault | None:
        """Take one message; a fault is counted and returned, the values stay as they were."""
        fields = self._by_topic.get(message.topic)
        if fields is None:
            return None
        try:
            if message.retain:
                raise _FaultError(MeterFault.RETAINED, f"{message.topic}: retained value ignored")
            try:
                document = json.loads(message.payload, parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:
                raise _FaultError(MeterFault.BAD_JSON,
                             f"{message.topic}: {message.payload[:40]!r}") from exc
            values: dict[Quantity, float] = {}
            for f in fields:
                values.update(_extract(document, f))
        except _FaultError as fault:
            self.faults[fault.fault] += 1
            self.last_fault = (fault.fault, str(fault))
            return fault.fault
        now = self._clock()
        for q, v in values.items():
            self._values[q] = (v, now)
        self.messages += 1
        return None

    def latest(self) -> Reading | None:
        """Every mapped value, stamped with the oldest one's receive time; None until each has
        arrived once."""
        if len(self._values) < len(self._expected):
            return None
        at = min(t for _, t in self._values.values())
        return reading({q: v for q, (v, _) in self._values.items()}, at, self.spec.phases)
