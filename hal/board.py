"""Board descriptions: ``boards/<name>/board.toml`` read into typed, validated values.

Every parameter is declared once, below, as a dataclass field with its default, its bounds and
where the default comes from. The loader checks every key against those declarations, so a typo
or a wrong type is an error naming the file, the key and what was expected, never a silent
default: a wallbox that quietly ignores ``overcurrent_timout_s`` is worse than one that refuses to
start.
"""

from __future__ import annotations

import math
import os
import tomllib
import typing
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

BOARDS_DIR_ENV = "VOLTPILOT_BOARDS"


def _p(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None,
       choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "lo": lo, "hi": hi, "choices": choices})


class BoardError(Exception):
    """A board file that cannot be used; the message names the file, the key and the problem."""


class UnknownBoardError(BoardError):
    def __init__(self, name: str, known: list[str]) -> None:
        listing = ", ".join(known) if known else "(none found)"
        super().__init__(f"unknown board {name!r}; boards that exist: {listing}")
        self.name = name
        self.known = known


class Role(Enum):
    CONTROL_PILOT = "control_pilot"
    PROXIMITY_PILOT = "proximity_pilot"
    CONTACTOR = "contactor"
    RCD = "rcd"
    LOCK = "lock"
    INDICATOR = "indicator"
    METER = "meter"
    GRID = "grid"
    INPUTS = "inputs"
    TEMPERATURE = "temperature"
    WATCHDOG = "watchdog"
    PHASE_SWITCH = "phase_switch"


# A board cannot charge without these; every other role may be "none" (absent on that board).
REQUIRED_ROLES = frozenset({Role.CONTROL_PILOT, Role.CONTACTOR})
# Backends that exist in hal/ today. Real boards add "linux" and "mcu" here with their backends.
BACKENDS = ("sim",)


@dataclass(frozen=True, slots=True)
class Ratings:
    max_current_a: float = _p(32.0, "rated current per phase", lo=6.0, hi=80.0)
    phases: int = _p(3, "number of phases wired to the connector (1 or 3)", lo=1, hi=3)
    kind: str = _p("ac", "ac or dc", choices=("ac", "dc"))
    bidirectional: bool = _p(False, "the board may discharge the car into the grid")
    nominal_voltage_v: float = _p(230.0, "phase-to-neutral voltage", lo=100.0, hi=300.0)


@dataclass(frozen=True, slots=True)
class Connector:
    cable: str = _p("socket", "socket (cable with PP coding) or tethered",
                    choices=("socket", "tethered"))
    tethered_cable_a: float = _p(32.0, "ampacity of a tethered cable", lo=6.0, hi=80.0)


@dataclass(frozen=True, slots=True)
class Charging:
    min_current_a: float = _p(6.0, "below this the session pauses (IEC 61851-1: 6 A; some "
                              "fleets use 8 A)", lo=6.0, hi=32.0)
    hlc: bool = _p(False, "offer ISO 15118 high-level communication (5 % duty)")
    ventilation: bool = _p(False, "the site ventilates, so state D may charge")
    free_mode: bool = _p(True, "charge without authorization (no OCPP yet)")
    rcd_self_test_on_plug: bool = _p(True, "test the RCD before the first closing of a session")
    phase_switching: bool = _p(False, "switch between 1 and 3 phases when asked (needs a 3-phase "
                               "board, a phase_switch role and hlc = false)")
    phase_switch_pause: str = _p("x1", "pilot while the contactor is open for a phase switch: x1, "
                                 "or f during the dwell (EVerest switch_3ph1ph_cp_state)",
                                 choices=("x1", "f"))


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds. Defaults follow IEC 61851-1 as implemented by EVerest (see docs/safety.md)."""

    tick_s: float = _p(1.0, "period of the supervision loop; events are handled at once",
                       lo=0.01, hi=5.0)
    state_f_after_fault_s: float = _p(0.3, "state F shown after a fault (Table A.5: >= 300 ms)",
                                      lo=0.3, hi=10.0)
    power_off_under_load_s: float = _p(6.0, "EV still in C after PWM off: open under load "
                                       "(EVerest power_off_under_load_in_c1_timeout)",
                                       lo=1.0, hi=10.0)
    min_pause_s: float = _p(10.0, "a pause for a low limit lasts at least this long",
                            lo=0.0, hi=600.0)
    contactor_min_reclose_s: float = _p(10.0, "least time between two closings (chargebyte "
                                        "relay min_close_interval)", lo=0.0, hi=120.0)
    contactor_feedback_s: float = _p(0.5, "feedback must follow a close command within this",
                                     lo=0.05, hi=5.0)
    weld_check_delay_s: float = _p(1.0, "after an open command, voltage still present this "
                                   "long means welded (OpenEVSE STUCK_RELAY_DELAY)",
                                   lo=0.1, hi=5.0)
    lock_timeout_s: float = _p(1.0, "the lock must report locked within this", lo=0.1, hi=10.0)
    ev_reaction_s: float = _p(5.0, "the EV follows a lower duty within this (IEC 61851-1)",
                              lo=1.0, hi=10.0)
    meter_stale_s: float = _p(10.0, "meter silent this long while charging is a fault",
                              lo=1.0, hi=300.0)
    wakeup: bool = _p(True, "wake EVs that do not resume on PWM (IEC 61851-1 A.5.3)")
    wakeup_after_s: float = _p(30.0, "PWM on but EV in B this long: try a wake-up "
                               "(EVerest LEGACY_WAKEUP_TIMEOUT)", lo=1.0, hi=3600.0)
    wakeup_f_s: float = _p(4.0, "state F step of the wake-up (T_step_EF >= 4 s)",
                           lo=0.3, hi=30.0)
    wakeup_x1_s: float = _p(0.75, "X1 between F and PWM in the wake-up (500-1000 ms)",
                            lo=0.1, hi=5.0)
    wakeup_wait_c_s: float = _p(10.0, "after a wake-up, time for the EV to reach C",
                                lo=1.0, hi=600.0)
    wakeup_max_attempts: int = _p(1, "wake-ups per offer of PWM (EVerest: one)", lo=0, hi=10)
    watchdog_s: float = _p(5.0, "hardware watchdog window; 0 disarms it", lo=0.0, hi=60.0)
    phase_switch_dwell_s: float = _p(5.0, "contactor open this long before the phase relay "
                                     "switches (with settle: EVerest switch_3ph1ph_delay_s 10 s)",
                                     lo=2.0, hi=60.0)
    phase_switch_settle_s: float = _p(5.0, "after the phase relay, wait this long before PWM is "
                                      "offered again", lo=1.0, hi=60.0)
    phase_relay_feedback_s: float = _p(1.0, "the phase relay's feedback must follow within this",
                                       lo=0.05, hi=5.0)
    phase_switch_min_interval_s: float = _p(60.0, "least time between two phase switches (relay "
                                            "wear, the car's charger)", lo=0.0, hi=3600.0)
    phase_switch_resume_s: float = _p(60.0, "after a switch the car has this long to draw again "
                                      "before the switch is reported as not resumed",
                                      lo=5.0, hi=600.0)


@dataclass(frozen=True, slots=True)
class Safety:
    """Defaults follow EVerest's soft over-current check and common wallbox practice."""

    overcurrent_tolerance_pct: float = _p(10.0, "allowed draw above the offer, percent",
                                          lo=0.0, hi=50.0)
    overcurrent_tolerance_a: float = _p(0.5, "allowed draw above the offer, amps (noise)",
                                        lo=0.0, hi=10.0)
    overcurrent_timeout_s: float = _p(7.0, "over-current this long stops the session "
                                      "(EVerest soft_over_current_timeout_ms)", lo=1.0, hi=60.0)
    derate_start_c: float = _p(70.0, "above this the current is derated linearly",
                               lo=20.0, hi=150.0)
    stop_c: float = _p(85.0, "at or above this charging stops", lo=20.0, hi=150.0)
    resume_c: float = _p(65.0, "an over-temperature stop clears below this", lo=0.0, hi=150.0)


@dataclass(frozen=True, slots=True)
class Sim:
    control_socket: str = _p("", "Unix socket of the plant's control interface; empty: "
                             "plant.sock in the data directory")
    plant_tick_s: float = _p(1.0, "integration step of the plant model", lo=0.01, hi=10.0)
    ev_profile: str = _p("compact_3p", "EV profile plugged in when none is named")
    cable_a: float = _p(32.0, "PP coding of the simulated socket cable (13, 20, 32 or 63 A)",
                        lo=13.0, hi=63.0)


@dataclass(frozen=True, slots=True)
class Contacts:
    """What the dry-contact inputs in [inputs.<name>] do (docs/board-toml.md)."""

    dim_14a_w: float = _p(4200.0, "total power a charge point dimmed under §14a EnWG may still "
                          "draw (never below 4.2 kW)", lo=4200.0, hi=100000.0)
    release_delay_max_s: float = _p(300.0, "a contact limit is lifted after a random delay of up "
                                    "to this, so chargers released together do not restart "
                                    "together", lo=0.0, hi=3600.0)


MEANINGS = ("dim_14a", "dso_step", "enable", "tariff_window")


@dataclass(frozen=True, slots=True)
class ContactInput:
    """One dry-contact input: [inputs.<name>], name as the board's inputs role knows it."""

    meaning: str = _p("", "dim_14a, dso_step, enable or tariff_window (required)",
                      choices=MEANINGS)
    polarity: str = _p("closed", "closed: the input is active while the contact is closed; "
                       "open: while it is open", choices=("closed", "open"))
    debounce_s: float = _p(0.05, "a change counts once it has held this long (relay contacts "
                           "bounce for under 10 ms; the edge-to-limit target is 100 ms)",
                           lo=0.0, hi=10.0)
    supervised: bool = _p(False, "the board supervises this input's wire (end-of-line "
                          "resistor): a broken wire is detected and the fail-safe applies")


# Keys of [dso_steps] name the dso_step inputs that are active, joined by "+"; this one names none.
DSO_NONE = "none"
MAX_DSO_INPUTS = 4


@dataclass(frozen=True, slots=True)
class Board:
    name: str
    path: Path
    description: str
    roles: dict[Role, str]
    ratings: Ratings = field(default_factory=Ratings)
    connector: Connector = field(default_factory=Connector)
    charging: Charging = field(default_factory=Charging)
    timing: Timing = field(default_factory=Timing)
    safety: Safety = field(default_factory=Safety)
    sim: Sim = field(default_factory=Sim)
    contacts: Contacts = field(default_factory=Contacts)
    inputs: dict[str, ContactInput] = field(default_factory=dict)
    # Percent of max_current_a for each set of active dso_step inputs; covers every set.
    dso_steps: dict[frozenset[str], float] = field(default_factory=dict)

    def has(self, role: Role) -> bool:
        return self.roles.get(role, "none") != "none"


_SECTIONS: dict[str, type] = {
    "ratings": Ratings,
    "connector": Connector,
    "charging": Charging,
    "timing": Timing,
    "safety": Safety,
    "sim": Sim,
}


def boards_dir() -> Path:
    env = os.environ.get(BOARDS_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "boards"


def known_boards(root: Path | None = None) -> list[str]:
    base = root or boards_dir()
    if not base.is_dir():
        return []
    return sorted(p.parent.name for p in base.glob("*/board.toml"))


def load_board(name_or_path: str, root: Path | None = None) -> Board:
    """Load a board by name (a folder under boards/) or by the path of its board.toml."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or os.sep in name_or_path:
        path = candidate
        if not path.is_file():
            raise BoardError(f"{path}: no such board file")
    else:
        path = (root or boards_dir()) / name_or_path / "board.toml"
        if not path.is_file():
            raise UnknownBoardError(name_or_path, known_boards(root))
    return parse_board(path)


def parse_board(path: Path) -> Board:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BoardError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise BoardError(f"{path}: not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise BoardError(f"{path}: cannot read: {exc.strerror}") from exc

    allowed = {"board", "roles", "contacts", "inputs", "dso_steps", *_SECTIONS}
    for key in raw:
        if key not in allowed:
            raise BoardError(f"{path}: unknown section [{key}]; expected one of "
                             f"{', '.join(sorted(allowed))}")
    head = _table(raw, "board", path)
    name = head.pop("name", path.parent.name)
    description = head.pop("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise BoardError(f"{path}: [board] {key}: expected a string, got {value!r}")
    if head:
        raise BoardError(f"{path}: [board] {next(iter(head))}: unknown key; expected name, "
                         "description")

    sections: dict[str, Any] = {key: parse_section(cls, _table(raw, key, path), f"[{key}]", path)
                for key, cls in _SECTIONS.items()}
    inputs = _parse_inputs(_table(raw, "inputs", path), path)
    board = Board(name=name, path=path, description=description,
                  roles=_parse_roles(_table(raw, "roles", path), path), inputs=inputs,
                  dso_steps=_parse_dso_steps(_table(raw, "dso_steps", path), inputs, path),
                  contacts=parse_section(Contacts, _table(raw, "contacts", path), "[contacts]",
                                         path),
                  **sections)
    _check_consistency(board)
    return board


def _table(raw: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise BoardError(f"{path}: {key}: expected a [{key}] table, got {value!r}")
    return dict(value)


def _parse_roles(table: dict[str, Any], path: Path) -> dict[Role, str]:
    by_name = {role.value: role for role in Role}
    roles: dict[Role, str] = {}
    for key, value in table.items():
        role = by_name.get(key)
        if role is None:
            raise BoardError(f"{path}: [roles] {key}: unknown role; expected one of "
                             f"{', '.join(sorted(by_name))}")
        allowed = BACKENDS if role in REQUIRED_ROLES else (*BACKENDS, "none")
        if value not in allowed:
            raise BoardError(f"{path}: [roles] {key}: expected one of {', '.join(allowed)}, "
                             f"got {value!r}")
        roles[role] = value
    for role in Role:
        if role not in roles:
            if role in REQUIRED_ROLES:
                raise BoardError(f"{path}: [roles] {role.value}: missing; every board needs a "
                                 f"backend for it (one of {', '.join(BACKENDS)})")
            roles[role] = "none"
    return roles


def _parse_inputs(table: dict[str, Any], path: Path) -> dict[str, ContactInput]:
    inputs: dict[str, ContactInput] = {}
    for name, spec in table.items():
        where = f"[inputs.{name}]"
        if not isinstance(spec, dict):
            raise BoardError(f"{path}: {where}: expected a table with meaning, polarity, "
                             f"debounce_s, supervised; got {spec!r}")
        if "meaning" not in spec:
            raise BoardError(f"{path}: {where} meaning: missing; expected one of "
                             f"{', '.join(MEANINGS)}")
        inputs[name] = parse_section(ContactInput, dict(spec), where, path)
    return inputs


def _parse_dso_steps(table: dict[str, Any], inputs: dict[str, ContactInput],
                     path: Path) -> dict[frozenset[str], float]:
    dso = sorted(name for name, spec in inputs.items() if spec.meaning == "dso_step")
    if not dso:
        if table:
            raise BoardError(f"{path}: [dso_steps]: expected no table without an input of "
                             "meaning = \"dso_step\"")
        return {}
    if len(dso) > MAX_DSO_INPUTS:
        raise BoardError(f"{path}: [inputs] dso_step: expected at most {MAX_DSO_INPUTS} inputs, "
                         f"got {len(dso)} ({', '.join(dso)})")
    steps: dict[frozenset[str], float] = {}
    for key, value in table.items():
        where = f"{path}: [dso_steps] {key}"
        names = frozenset() if key == DSO_NONE else frozenset(key.split("+"))
        unknown = sorted(names - set(dso))
        if unknown or (key != DSO_NONE and len(names) != len(key.split("+"))):
            raise BoardError(f"{where}: expected \"{DSO_NONE}\" or dso_step inputs joined by "
                             f"\"+\" (of {', '.join(dso)}), each once")
        if names in steps:
            raise BoardError(f"{where}: expected each set of inputs once; it repeats another key")
        steps[names] = _check_value(value, float, {"lo": 0.0, "hi": 100.0}, where)
    combos = [frozenset(n for i, n in enumerate(dso) if mask >> i & 1)
              for mask in range(1 << len(dso))]
    missing = ["+".join(sorted(c)) or DSO_NONE for c in combos if c not in steps]
    if missing:
        raise BoardError(f"{path}: [dso_steps] {missing[0]}: missing; expected a percentage for "
                         f"every set of active dso_step inputs ({', '.join(missing)} missing)")
    return steps


T = typing.TypeVar("T")


def parse_section(cls: type[T], table: dict[str, Any], where: str, path: Path) -> T:
    """Build ``cls`` from a TOML table, checking every key against the field declarations."""
    hints = typing.get_type_hints(cls)
    declared = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in declared:
            raise BoardError(f"{path}: {where} {key}: unknown key; expected one of "
                             f"{', '.join(sorted(declared))}")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name not in table:
            continue
        values[name] = _check_value(table[name], hints[name], spec.metadata,
                                    f"{path}: {where} {name}")
    return cls(**values)


def _check_value(value: Any, kind: Any, meta: Any, where: str) -> Any:
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if kind is bool:
        if not isinstance(value, bool):
            raise BoardError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str) or (choices and value not in choices):
            want = f"one of {', '.join(choices)}" if choices else "a string"
            raise BoardError(f"{where}: expected {want}, got {value!r}")
        return value
    if kind in (int, float):
        ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or not _finite(value):
            noun = "a whole number" if kind is int else "a number"
            raise BoardError(f"{where}: expected {noun} in {_range(lo, hi)}, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise BoardError(f"{where}: expected a value in {_range(lo, hi)}, got {value!r}")
        return kind(value)
    raise TypeError(f"{where}: no reader for fields of type {kind!r}")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _range(lo: float | None, hi: float | None) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def _check_consistency(board: Board) -> None:
    where = board.path
    if board.ratings.phases not in (1, 3):
        raise BoardError(f"{where}: [ratings] phases: expected 1 or 3, got {board.ratings.phases}")
    if board.charging.min_current_a > board.ratings.max_current_a:
        raise BoardError(f"{where}: [charging] min_current_a: expected at most [ratings] "
                         f"max_current_a ({board.ratings.max_current_a}), got "
                         f"{board.charging.min_current_a}")
    s = board.safety
    if not s.resume_c < s.derate_start_c < s.stop_c:
        raise BoardError(f"{where}: [safety] resume_c < derate_start_c < stop_c expected, got "
                         f"{s.resume_c}, {s.derate_start_c}, {s.stop_c}")
    if board.connector.cable == "socket" and not board.has(Role.PROXIMITY_PILOT):
        raise BoardError(f"{where}: [roles] proximity_pilot: a socket board needs one to read "
                         "the cable's rating (or set [connector] cable = \"tethered\")")
    if board.connector.cable == "socket" and not board.has(Role.LOCK):
        raise BoardError(f"{where}: [roles] lock: a socket board needs one: the plug must be "
                         "locked while the socket can be live (IEC 61851-1 D.6.5)")
    # Refused until the code behind them exists, rather than accepted and silently ignored.
    if board.ratings.kind != "ac":
        raise BoardError(f"{where}: [ratings] kind: expected \"ac\"; DC charging arrives with "
                         "ISO 15118 / DIN 70121 support")
    if board.ratings.bidirectional:
        raise BoardError(f"{where}: [ratings] bidirectional: expected false; discharging needs "
                         "the interface protection that arrives with the grid issue")
    _check_phase_switching(board)
    if board.inputs and not board.has(Role.INPUTS):
        raise BoardError(f"{where}: [inputs.{next(iter(board.inputs))}]: expected no inputs "
                         "with [roles] inputs = \"none\"")
    t = board.timing
    if 0 < t.watchdog_s < 2 * t.tick_s:
        raise BoardError(f"{where}: [timing] watchdog_s: expected 0 (off) or at least twice "
                         f"tick_s ({2 * t.tick_s}), got {t.watchdog_s}: the controller kicks it "
                         "once per tick")


def _check_phase_switching(board: Board) -> None:
    where = board.path
    if board.has(Role.PHASE_SWITCH) and board.ratings.phases != 3:
        raise BoardError(f"{where}: [roles] phase_switch: expected \"none\" on a board with "
                         f"[ratings] phases = {board.ratings.phases}: there is nothing to switch")
    if not board.charging.phase_switching:
        return
    if board.ratings.phases != 3:
        raise BoardError(f"{where}: [charging] phase_switching: expected false on a board with "
                         f"[ratings] phases = {board.ratings.phases}; switching needs 3 phases")
    if not board.has(Role.PHASE_SWITCH):
        raise BoardError(f"{where}: [charging] phase_switching: expected false without a "
                         "[roles] phase_switch (the relay that energises 1 or 3 phases)")
    if board.charging.hlc:
        raise BoardError(f"{where}: [charging] phase_switching: expected false with [charging] "
                         "hlc = true; phases are switched in basic charging only (ISO 15118 "
                         "would have to renegotiate)")


def describe_parameters() -> dict[str, list[tuple[str, Any, str]]]:
    """Every board.toml parameter with its default and meaning (for docs and `voltpilot`)."""
    out: dict[str, list[tuple[str, Any, str]]] = {}
    for key, cls in _SECTIONS.items():
        rows = []
        for f in fields(cls):
            default = f.default if f.default is not MISSING else None
            rows.append((f.name, default, f.metadata.get("doc", "")))
        out[key] = rows
    return out
