"""The MQTT protocol between a stand-alone EMS process and the charge points it steers.

Topics (all under ``voltpilot/<site>/``, documented in docs/ems-mqtt.md):

- ``cp/<cp_id>/state``   CP → EMS, a ``ChargePointState``, every cycle and on change;
- ``cp/<cp_id>/command`` EMS → CP, a ``Command`` with ``valid_s``: after that long without a new
  one the charge point drops it and falls back to its fail-safe, so a dead EMS never leaves a
  charger at the last current forever;
- ``cp/<cp_id>/online``, ``ems/online``: retained "1"/"0", "0" also as the last will;
- ``ems/error`` and ``cp/<cp_id>/error``: why a payload was rejected.

The encode/decode functions are pure and strict (types, ranges, unknown keys, unknown charge
points) and return typed errors. ``ChargePointLink`` and ``EmsLink`` put them on an
``MqttClient``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from ems.model import ChargePointState, Command, EmsLimit
from ems.mqtt_client import Message, MqttClient, MqttSettings

log = logging.getLogger("voltpilot.ems.mqtt_link")

PROTOCOL = 1
ROOT = "voltpilot"
ID = re.compile(r"[A-Za-z0-9_-]{1,32}")      # site and charge point ids (as in the site file)
SOURCE = re.compile(r"[a-z0-9_]{1,32}")       # limit-source keys (site_fuse, pv_surplus...)
MAX_CURRENT_A = 1000.0     # far above any AC charge point; catches mA sent as A
MAX_POWER_W = 1e6
MAX_SESSION_WH = 1e7
MAX_VALID_S = 3600.0
MAX_ITEMS = 16             # limits or notes in one command
MAX_TEXT = 200             # characters of a reason or a note
ONLINE, OFFLINE = b"1", b"0"


class Reject(Enum):
    """Why a payload was not accepted."""

    BAD_JSON = "bad_json"            # not JSON, or NaN/Infinity in it
    NOT_AN_OBJECT = "not_an_object"
    BAD_VERSION = "bad_version"      # "v" missing or not a version this code speaks
    MISSING_KEY = "missing_key"
    UNKNOWN_KEY = "unknown_key"
    BAD_TYPE = "bad_type"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_CP = "unknown_cp"        # a charge point the site does not have
    CP_MISMATCH = "cp_mismatch"      # the payload's id is not the topic's
    RETAINED = "retained"            # a retained state or command: of unknown age


@dataclass(frozen=True, slots=True)
class PayloadError:
    reason: Reject
    detail: str          # the key and what was expected


@dataclass(frozen=True, slots=True)
class TimedCommand:
    command: Command
    valid_s: float


@dataclass(frozen=True, slots=True)
class Rejection:
    """One ``error`` message: which topic's payload was rejected, and why."""

    topic: str
    cp_id: str | None
    error: PayloadError


@dataclass(frozen=True, slots=True)
class Topics:
    site: str

    def __post_init__(self) -> None:
        check_id(self.site, "site")

    def _cp(self, cp_id: str, leaf: str) -> str:
        return f"{ROOT}/{self.site}/cp/{cp_id}/{leaf}"

    def state(self, cp_id: str) -> str:
        return self._cp(cp_id, "state")

    def command(self, cp_id: str) -> str:
        return self._cp(cp_id, "command")

    def cp_online(self, cp_id: str) -> str:
        return self._cp(cp_id, "online")

    def cp_error(self, cp_id: str) -> str:
        return self._cp(cp_id, "error")

    @property
    def ems_online(self) -> str:
        return f"{ROOT}/{self.site}/ems/online"

    @property
    def ems_error(self) -> str:
        return f"{ROOT}/{self.site}/ems/error"

    def cp_of(self, topic: str) -> str | None:
        """The charge point id in a ``cp/<cp_id>/...`` topic of this site."""
        parts = topic.split("/")
        if len(parts) == 5 and parts[:3] == [ROOT, self.site, "cp"]:
            return parts[3]
        return None


def check_id(value: str, what: str) -> None:
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise ValueError(f"{what} id: expected 1-32 of [A-Za-z0-9_-], got {value!r}")


# ---- pure encode / decode ------------------------------------------------------------------


class _InvalidError(Exception):
    def __init__(self, reason: Reject, detail: str) -> None:
        super().__init__(detail)
        self.error = PayloadError(reason, detail)


def _reject_constant(name: str) -> float:
    raise _InvalidError(Reject.BAD_JSON, f"{name} is not JSON")


def _load(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _InvalidError(Reject.BAD_JSON, f"not JSON: {payload[:40]!r}") from exc
    if not isinstance(doc, dict):
        raise _InvalidError(Reject.NOT_AN_OBJECT, f"expected a JSON object, got {doc!r:.40}")
    return doc


def _keys(doc: Mapping[str, Any], required: set[str], optional: set[str], where: str) -> None:
    for key in doc:
        if key not in required and key not in optional:
            raise _InvalidError(Reject.UNKNOWN_KEY, f"{where}{key}: not a key of this message")
    for key in sorted(required):
        if key not in doc:
            raise _InvalidError(Reject.MISSING_KEY, f"{where}{key}: missing")


def _version(doc: Mapping[str, Any]) -> None:
    v = doc.get("v")
    if isinstance(v, bool) or v != PROTOCOL:
        raise _InvalidError(Reject.BAD_VERSION, f"v: expected {PROTOCOL}, got {v!r:.40}")


def _bool(doc: Mapping[str, Any], key: str) -> bool:
    value = doc[key]
    if not isinstance(value, bool):
        raise _InvalidError(Reject.BAD_TYPE, f"{key}: expected true or false, got {value!r:.40}")
    return value


def _num(value: object, key: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _InvalidError(Reject.BAD_TYPE, f"{key}: expected a number, got {value!r:.40}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not lo <= number <= hi:
        raise _InvalidError(Reject.OUT_OF_RANGE,
                            f"{key}: expected a number in [{lo:g}, {hi:g}], got {number:g}")
    return number


def _opt_num(value: object, key: str, lo: float, hi: float) -> float | None:
    return None if value is None else _num(value, key, lo, hi)


def _phases(value: object, key: str, optional: bool) -> int | None:
    if value is None and optional:
        return None
    expected = f"1 or 3{' or null' if optional else ''}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _InvalidError(Reject.BAD_TYPE, f"{key}: expected {expected}, got {value!r:.40}")
    if value not in (1, 3):
        raise _InvalidError(Reject.OUT_OF_RANGE, f"{key}: expected {expected}, got {value}")
    return value


def _text(value: object, key: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise _InvalidError(Reject.BAD_TYPE, f"{key}: expected a string, got {value!r:.40}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _InvalidError(Reject.OUT_OF_RANGE,
                            f"{key}: expected {pattern.pattern}, got {value!r:.40}")
    if len(value) > MAX_TEXT:
        raise _InvalidError(Reject.OUT_OF_RANGE, f"{key}: longer than {MAX_TEXT} characters")
    return value


def _list(value: object, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise _InvalidError(Reject.BAD_TYPE, f"{key}: expected an array, got {value!r:.40}")
    if len(value) > MAX_ITEMS:
        raise _InvalidError(Reject.OUT_OF_RANGE, f"{key}: more than {MAX_ITEMS} entries")
    return value


def _cp_id(value: object, key: str, topic_cp: str, known: Collection[str] | None) -> str:
    cp = _text(value, key, ID)
    if cp != topic_cp:
        raise _InvalidError(Reject.CP_MISMATCH, f"{key}: {cp!r} in a message for {topic_cp!r}")
    if known is not None and cp not in known:
        raise _InvalidError(Reject.UNKNOWN_CP, f"{key}: {cp!r} is not a charge point of the site")
    return cp


_STATE_REQUIRED = {"v", "id", "at", "connected", "charging", "phases", "currents_a", "power_w",
                   "session_wh", "offered_a", "boost", "ev_soc_pct", "ev_max_a"}


def _state_doc(state: ChargePointState) -> dict[str, Any]:
    return {"v": PROTOCOL, "id": state.id, "at": state.at, "connected": state.connected,
            "charging": state.charging, "phases": state.phases,
            "currents_a": list(state.currents_a), "power_w": state.power_w,
            "session_wh": state.session_wh, "offered_a": state.offered_a, "boost": state.boost,
            "ev_soc_pct": state.ev_soc_pct, "ev_max_a": state.ev_max_a}


def _parse_state(doc: Mapping[str, Any], cp_id: str,
                 known: Collection[str] | None) -> ChargePointState:
    _version(doc)
    _keys(doc, _STATE_REQUIRED, set(), "")
    currents = doc["currents_a"]
    if not isinstance(currents, list) or len(currents) != 3:
        raise _InvalidError(Reject.BAD_TYPE, f"currents_a: expected an array of 3 numbers, "
                            f"got {currents!r:.40}")
    l1, l2, l3 = (_num(c, f"currents_a[{i}]", -MAX_CURRENT_A, MAX_CURRENT_A)
                  for i, c in enumerate(currents))
    phases = _phases(doc["phases"], "phases", optional=False)
    assert phases is not None
    return ChargePointState(
        id=_cp_id(doc["id"], "id", cp_id, known),
        at=_num(doc["at"], "at", -sys.float_info.max, sys.float_info.max),
        connected=_bool(doc, "connected"),
        charging=_bool(doc, "charging"),
        phases=phases,
        currents_a=(l1, l2, l3),
        power_w=_num(doc["power_w"], "power_w", -MAX_POWER_W, MAX_POWER_W),
        session_wh=_num(doc["session_wh"], "session_wh", 0.0, MAX_SESSION_WH),
        offered_a=_num(doc["offered_a"], "offered_a", 0.0, MAX_CURRENT_A),
        boost=_bool(doc, "boost"),
        ev_soc_pct=_opt_num(doc["ev_soc_pct"], "ev_soc_pct", 0.0, 100.0),
        ev_max_a=_opt_num(doc["ev_max_a"], "ev_max_a", 0.0, MAX_CURRENT_A))


def check_state(state: ChargePointState, known: Collection[str] | None = None) -> \
        PayloadError | None:
    """Why the state could not be sent (None: it can)."""
    try:
        _parse_state(_state_doc(state), state.id, known)
    except _InvalidError as exc:
        return exc.error
    return None


def encode_state(state: ChargePointState) -> bytes:
    """The state's payload. Raises ValueError for a state ``check_state`` rejects."""
    error = check_state(state)
    if error is not None:
        raise ValueError(f"{error.reason.value}: {error.detail}")
    return json.dumps(_state_doc(state), separators=(",", ":")).encode()


def decode_state(payload: bytes, cp_id: str,
                 known: Collection[str] | None = None) -> ChargePointState | PayloadError:
    """The state a charge point sent on its ``state`` topic (``cp_id`` from the topic;
    ``known``: the site's charge points). ``at`` is the sender's clock."""
    try:
        return _parse_state(_load(payload), cp_id, known)
    except _InvalidError as exc:
        return exc.error


_COMMAND_REQUIRED = {"v", "cp_id", "valid_s", "limits", "phases", "notes", "failsafe_a"}
_LIMIT_REQUIRED = {"source", "amps", "reason", "phases"}


def _command_doc(command: Command, valid_s: float) -> dict[str, Any]:
    return {"v": PROTOCOL, "cp_id": command.cp_id, "valid_s": valid_s,
            "limits": [{"source": lim.source, "amps": lim.amps, "reason": lim.reason,
                        "phases": lim.phases} for lim in command.limits],
            "phases": command.phases, "notes": list(command.notes),
            "failsafe_a": command.failsafe_a}


def _parse_command(doc: Mapping[str, Any], cp_id: str,
                   known: Collection[str] | None) -> TimedCommand:
    _version(doc)
    _keys(doc, _COMMAND_REQUIRED, set(), "")
    limits: list[EmsLimit] = []
    for i, raw in enumerate(_list(doc["limits"], "limits")):
        where = f"limits[{i}]"
        if not isinstance(raw, dict):
            raise _InvalidError(Reject.BAD_TYPE, f"{where}: expected an object")
        _keys(raw, _LIMIT_REQUIRED, set(), f"{where}.")
        source = _text(raw["source"], f"{where}.source", SOURCE)
        if any(lim.source == source for lim in limits):
            raise _InvalidError(Reject.OUT_OF_RANGE, f"{where}.source: {source!r} twice")
        limits.append(EmsLimit(
            source=source,
            amps=_num(raw["amps"], f"{where}.amps", 0.0, MAX_CURRENT_A),
            reason=_text(raw["reason"], f"{where}.reason"),
            phases=_phases(raw["phases"], f"{where}.phases", optional=True)))
    notes = tuple(_text(n, f"notes[{i}]") for i, n in enumerate(_list(doc["notes"], "notes")))
    valid_s = _num(doc["valid_s"], "valid_s", 0.0, MAX_VALID_S)
    if valid_s <= 0:
        raise _InvalidError(Reject.OUT_OF_RANGE, f"valid_s: expected > 0, got {valid_s:g}")
    command = Command(cp_id=_cp_id(doc["cp_id"], "cp_id", cp_id, known), limits=tuple(limits),
                      phases=_phases(doc["phases"], "phases", optional=True), notes=notes,
                      failsafe_a=_opt_num(doc["failsafe_a"], "failsafe_a", 0.0,
                                          MAX_CURRENT_A))
    return TimedCommand(command, valid_s)


def check_command(command: Command, valid_s: float,
                  known: Collection[str] | None = None) -> PayloadError | None:
    """Why the command could not be sent (None: it can)."""
    try:
        _parse_command(_command_doc(command, valid_s), command.cp_id, known)
    except _InvalidError as exc:
        return exc.error
    return None


def encode_command(command: Command, valid_s: float) -> bytes:
    """The command's payload. Raises ValueError for one ``check_command`` rejects."""
    error = check_command(command, valid_s)
    if error is not None:
        raise ValueError(f"{error.reason.value}: {error.detail}")
    return json.dumps(_command_doc(command, valid_s), separators=(",", ":")).encode()


def decode_command(payload: bytes, cp_id: str) -> TimedCommand | PayloadError:
    """The command on charge point ``cp_id``'s ``command`` topic."""
    try:
        return _parse_command(_load(payload), cp_id, None)
    except _InvalidError as exc:
        return exc.error


def encode_online(up: bool) -> bytes:
    return ONLINE if up else OFFLINE


def decode_online(payload: bytes) -> bool | PayloadError:
    """"1" online, "0" offline; an empty payload (a retained flag cleared) reads offline."""
    if payload == ONLINE:
        return True
    if payload in (OFFLINE, b""):
        return False
    return PayloadError(Reject.BAD_TYPE, f"online: expected '1' or '0', got {payload[:40]!r}")


def encode_error(topic: str, cp_id: str | None, error: PayloadError) -> bytes:
    return json.dumps({"v": PROTOCOL, "topic": topic, "cp_id": cp_id,
                       "reason": error.reason.value, "detail": error.detail},
                      separators=(",", ":")).encode()


def decode_error(payload: bytes) -> Rejection | PayloadError:
    try:
        doc = _load(payload)
        _version(doc)
        _keys(doc, {"v", "topic", "cp_id", "reason", "detail"}, set(), "")
        reasons = {r.value: r for r in Reject}
        reason = doc["reason"]
        if reason not in reasons:
            raise _InvalidError(Reject.OUT_OF_RANGE,
                                f"reason: expected one of {sorted(reasons)}, got {reason!r:.40}")
        cp = doc["cp_id"]
        return Rejection(
            topic=_text(doc["topic"], "topic"),
            cp_id=None if cp is None else _text(cp, "cp_id", ID),
            error=PayloadError(reasons[reason], _text(doc["detail"], "detail")))
    except _InvalidError as exc:
        return exc.error


# ---- the two ends ---------------------------------------------------------------------------


def _log_reject(counter: Counter[Reject], topic: str, error: PayloadError) -> None:
    # The first of each kind is a warning; a sender repeating it every cycle is not news.
    level = logging.WARNING if counter[error.reason] == 1 else logging.DEBUG
    log.log(level, "mqtt_payload_rejected", extra={"fields": {
        "topic": topic, "reason": error.reason.value, "detail": error.detail}})


class ChargePointLink:
    """The charge point's end, in the charge-point process.

    ``on_command`` is called, on the loop, with every accepted command (a refresh too) and once
    with None when the command in force expires (``valid_s`` after it arrived, on the loop's
    clock) or the EMS goes offline: None means "apply your fail-safe".
    """

    def __init__(self, settings: MqttSettings, site: str, cp_id: str,
                 on_command: Callable[[Command | None], object], *,
                 rng: random.Random | None = None,
                 net_clock: Callable[[], float] = time.monotonic) -> None:
        check_id(cp_id, "charge point")
        self.topics = Topics(site)
        self.cp_id = cp_id
        self._on_command = on_command
        online = self.topics.cp_online(cp_id)
        self.client = MqttClient(settings, f"voltpilot-{site}-cp-{cp_id}",
                                 will=Message(online, encode_online(False), 1, True),
                                 birth=Message(online, encode_online(True), 1, True),
                                 rng=rng, net_clock=net_clock)
        self.command: Command | None = None     # the command in force
        self.ems_online: bool | None = None     # None: not heard yet
        self.rejected: Counter[Reject] = Counter()
        self.last_rejection: Rejection | None = None   # the EMS's last word on our payloads
        self._expiry: asyncio.TimerHandle | None = None
        self.client.subscribe(self.topics.command(cp_id), self._on_command_message, qos=0)
        self.client.subscribe(self.topics.ems_online, self._on_ems_online, qos=1)
        self.client.subscribe(self.topics.ems_error, self._on_ems_error, qos=0)

    @property
    def online(self) -> bool:
        return self.client.online

    def start(self) -> None:
        self.client.start()

    async def close(self) -> None:
        """Disconnect; a command in force is withdrawn (``on_command(None)``) first, since no
        refresh can arrive any more."""
        self._withdraw()
        await self.client.close()

    def publish_state(self, state: ChargePointState) -> bool:
        """Send this cycle's state. False when offline or when the state is not valid (then
        counted in ``rejected``, as the EMS would reject it)."""
        if state.id != self.cp_id:
            raise ValueError(f"state of {state.id!r} on the link of {self.cp_id!r}")
        error = check_state(state)
        if error is not None:
            self.rejected[error.reason] += 1
            _log_reject(self.rejected, self.topics.state(self.cp_id), error)
            return False
        return self.client.publish(self.topics.state(self.cp_id), encode_state(state))

    def _on_command_message(self, message: Message) -> None:
        result: TimedCommand | PayloadError
        if message.retain:
            # A retained command would come back as new after every reconnect.
            result = PayloadError(Reject.RETAINED, "commands must not be retained")
        else:
            result = decode_command(message.payload, self.cp_id)
        if isinstance(result, PayloadError):
            self._reject(message.topic, result)
            return
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_later(result.valid_s, self._expire)
        self.command = result.command
        self._on_command(result.command)

    def _expire(self) -> None:
        self._expiry = None
        self._withdraw()

    def _withdraw(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.command is not None:
            self.command = None
            self._on_command(None)

    def _on_ems_online(self, message: Message) -> None:
        up = decode_online(message.payload)
        if isinstance(up, PayloadError):
            self._reject(message.topic, up)
            return
        self.ems_online = up
        if not up:
            self._withdraw()

    def _on_ems_error(self, message: Message) -> None:
        rejection = decode_error(message.payload)
        if isinstance(rejection, Rejection) and rejection.cp_id == self.cp_id:
            self.last_rejection = rejection
            log.warning("mqtt_rejected_by_ems", extra={"fields": {
                "topic": rejection.topic, "reason": rejection.error.reason.value,
                "detail": rejection.error.detail}})

    def _reject(self, topic: str, error: PayloadError) -> None:
        self.rejected[error.reason] += 1
        _log_reject(self.rejected, topic, error)
        self.client.publish(self.topics.cp_error(self.cp_id),
                            encode_error(topic, self.cp_id, error))


class EmsLink:
    """The EMS's end, in the EMS process: the charge points' states and online flags in, the
    commands out. A rejected payload is answered on ``ems/error`` with the reason."""

    def __init__(self, settings: MqttSettings, site: str, cp_ids: Collection[str],
                 clock: Callable[[], float], *, rng: random.Random | None = None,
                 net_clock: Callable[[], float] = time.monotonic) -> None:
        for cp in cp_ids:
            check_id(cp, "charge point")
        self.topics = Topics(site)
        self.cp_ids = frozenset(cp_ids)
        self._clock = clock
        online = self.topics.ems_online
        self.client = MqttClient(settings, f"voltpilot-{site}-ems",
                                 will=Message(online, encode_online(False), 1, True),
                                 birth=Message(online, encode_online(True), 1, True),
                                 rng=rng, net_clock=net_clock)
        self.rejected: Counter[Reject] = Counter()
        self._states: dict[str, ChargePointState] = {}
        self._cp_online: dict[str, bool] = {}
        self.client.add_listener(self._on_connection)
        self.client.subscribe(self.topics.state("+"), self._on_state, qos=0)
        self.client.subscribe(self.topics.cp_online("+"), self._on_cp_online, qos=1)

    @property
    def online(self) -> bool:
        return self.client.online

    def start(self) -> None:
        self.client.start()

    async def close(self) -> None:
        await self.client.close()

    def states(self) -> dict[str, ChargePointState]:
        """The last valid state of each charge point, ``at`` = when it arrived on this
        process's clock (the charge point's own clock is not comparable)."""
        return dict(self._states)

    def online_cps(self) -> frozenset[str]:
        """The charge points whose online flag reads "1" (none while the EMS is offline)."""
        if not self.client.online:
            return frozenset()
        return frozenset(cp for cp, up in self._cp_online.items() if up)

    def send(self, command: Command, valid_s: float) -> bool:
        """Send a command, valid for ``valid_s`` from its arrival. False when offline.
        Raises ValueError for a command the protocol rejects (an unknown charge point, a
        current out of range): that is a bug in the caller, not an input."""
        error = check_command(command, valid_s, self.cp_ids)
        if error is not None:
            raise ValueError(f"{error.reason.value}: {error.detail}")
        return self.client.publish(self.topics.command(command.cp_id),
                                   encode_command(command, valid_s))

    def _on_connection(self, up: bool) -> None:
        if up:
            # The broker re-sends every retained flag after the subscribe; a charge point
            # without one (the broker restarted and it has not come back) is not online.
            self._cp_online.clear()

    def _on_state(self, message: Message) -> None:
        cp = self.topics.cp_of(message.topic) or ""
        result: ChargePointState | PayloadError
        if message.retain:
            result = PayloadError(Reject.RETAINED, "states must not be retained")
        else:
            result = decode_state(message.payload, cp, self.cp_ids)
        if isinstance(result, PayloadError):
            self._reject(message.topic, cp, result)
            return
        self._states[cp] = replace(result, at=self._clock())

    def _on_cp_online(self, message: Message) -> None:
        cp = self.topics.cp_of(message.topic) or ""
        up = decode_online(message.payload)
        if cp not in self.cp_ids:
            up = PayloadError(Reject.UNKNOWN_CP, f"{cp!r} is not a charge point of the site")
        if isinstance(up, PayloadError):
            self._reject(message.topic, cp, up)
            return
        self._cp_online[cp] = up

    def _reject(self, topic: str, cp: str, error: PayloadError) -> None:
        self.rejected[error.reason] += 1
        _log_reject(self.rejected, topic, error)
        self.client.publish(self.topics.ems_error,
                            encode_error(topic, cp if ID.fullmatch(cp) else None, error))
