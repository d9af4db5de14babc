"""The board loader: the sim board's documented values, and errors that name file, key and
what was expected for every kind of malformed board.toml."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from hal.board import (
    BOARDS_DIR_ENV,
    Board,
    BoardError,
    Charging,
    Connector,
    Ratings,
    Role,
    Safety,
    Sim,
    Timing,
    UnknownBoardError,
    describe_parameters,
    known_boards,
    load_board,
)

REPO = Path(__file__).resolve().parents[1]
SIM_TOML = REPO / "boards" / "sim" / "board.toml"
DOC = REPO / "docs" / "board-toml.md"

MINIMAL_ROLES = ('[roles]\ncontrol_pilot = "sim"\ncontactor = "sim"\nproximity_pilot = "sim"\n'
                 'lock = "sim"\n')


def write_board(root: Path, text: str, name: str = "myboard") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    path = folder / "board.toml"
    path.write_text(text, encoding="utf-8")
    return path


def sim_text(*edits: tuple[str, str]) -> str:
    """The sim board.toml with each (old, new) replaced; old must occur exactly once."""
    text = SIM_TOML.read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} should occur once in {SIM_TOML}"
        text = text.replace(old, new)
    return text


def load_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write_board(tmp_path, text)
    with pytest.raises(BoardError) as info:
        load_board(str(path))
    message = str(info.value)
    assert str(path) in message, f"the message does not name the file: {message}"
    return path, message


# ---- the sim board -------------------------------------------------------------------------


def test_sim_board_has_documented_values() -> None:
    board = load_board("sim")
    assert board.name == "sim"
    assert board.path.resolve() == SIM_TOML
    assert "simulated" in board.description
    assert board.ratings == Ratings(max_current_a=32.0, phases=3, kind="ac", bidirectional=False,
                                    nominal_voltage_v=230.0)
    assert isinstance(board.ratings.max_current_a, float)
    assert isinstance(board.ratings.phases, int)
    assert board.connector.cable == "socket"
    assert board.charging == Charging(min_current_a=6.0, hlc=False, ventilation=False,
                                      free_mode=True, rcd_self_test_on_plug=True,
                                      phase_switching=True)
    assert board.roles == dict.fromkeys(Role, "sim")
    assert all(board.has(role) for role in Role)
    # [timing] sets tick_s only; every other timing takes its default.
    assert board.timing == Timing(tick_s=1.0)
    assert board.timing.power_off_under_load_s == 6.0
    assert board.timing.contactor_min_reclose_s == 10.0
    assert board.safety == Safety()
    assert board.sim == Sim(control_socket="", ev_profile="compact_3p", cable_a=32.0)


def test_board_fixture_is_the_sim_board(board: Board) -> None:
    assert board.name == "sim"
    assert board.ratings.max_current_a == 32.0


def test_load_by_path_equals_load_by_name(tmp_path: Path) -> None:
    copy = write_board(tmp_path, SIM_TOML.read_text(encoding="utf-8"))
    by_path = load_board(str(copy))
    by_name = load_board("sim")
    assert by_path.path == copy
    for part in ("ratings", "connector", "charging", "timing", "safety", "sim", "roles"):
        assert getattr(by_path, part) == getattr(by_name, part), part


def test_omitted_keys_take_defaults_and_name_defaults_to_folder(tmp_path: Path) -> None:
    path = write_board(tmp_path, MINIMAL_ROLES, name="tiny")
    board = load_board(str(path))
    assert board.name == "tiny"
    assert board.description == ""
    assert (board.ratings, board.connector, board.charging, board.timing, board.safety,
            board.sim) == (Ratings(), Connector(), Charging(), Timing(), Safety(), Sim())
    assert board.roles[Role.METER] == "none"
    assert not board.has(Role.METER)
    assert board.has(Role.CONTROL_PILOT)


def test_integer_accepted_for_a_float_parameter(tmp_path: Path) -> None:
    path = write_board(tmp_path, sim_text(("max_current_a = 32.0", "max_current_a = 16")))
    board = load_board(str(path))
    assert board.ratings.max_current_a == 16.0
    assert isinstance(board.ratings.max_current_a, float)


def test_tethered_board_needs_no_proximity_pilot(tmp_path: Path) -> None:
    path = write_board(tmp_path, sim_text(('cable = "socket"', 'cable = "tethered"'),
                                          ('proximity_pilot = "sim"\n', "")))
    board = load_board(str(path))
    assert board.connector.cable == "tethered"
    assert not board.has(Role.PROXIMITY_PILOT)


# ---- malformed board files -----------------------------------------------------------------


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    text = sim_text(("tick_s = 1.0", "tick_s = "))
    line = text.splitlines().index("tick_s = ") + 1
    _, message = load_error(tmp_path, text)
    assert "not valid TOML" in message
    assert f"line {line}" in message


# (id, edits, fragments the message must contain: the key and what was expected)
MALFORMED: list[tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]]] = [
    ("unknown_section",
     (("[timing]", "[charger]\nfoo = 1\n\n[timing]"),),
     ("[charger]", "unknown section", "expected one of", "timing", "ratings")),
    ("unknown_key_in_timing",
     (("tick_s = 1.0", "tick_s = 1.0\ntick_sec = 2.0"),),
     ("[timing] tick_sec", "unknown key", "expected one of", "tick_s", "watchdog_s")),
    ("unknown_key_in_board",
     (('name = "sim"', 'name = "sim"\nnmae = "x"'),),
     ("[board] nmae", "unknown key", "expected name, description")),
    ("string_for_number",
     (("max_current_a = 32.0", 'max_current_a = "32"'),),
     ("[ratings] max_current_a", "expected a number", "[6.0, 80.0]", "'32'")),
    ("bool_for_number",
     (("tick_s = 1.0", "tick_s = true"),),
     ("[timing] tick_s", "expected a number", "True")),
    ("float_for_whole_number",
     (("phases = 3", "phases = 3.0"),),
     ("[ratings] phases", "expected a whole number", "3.0")),
    ("number_for_bool",
     (("hlc = false", "hlc = 0"),),
     ("[charging] hlc", "expected true or false", "got 0")),
    ("string_for_bool",
     (("free_mode = true", 'free_mode = "yes"'),),
     ("[charging] free_mode", "expected true or false", "'yes'")),
    ("number_for_string",
     (('ev_profile = "compact_3p"', "ev_profile = 3"),),
     ("[sim] ev_profile", "expected a string", "got 3")),
    ("not_a_choice",
     (('kind = "ac"', 'kind = "ac/dc"'),),
     ("[ratings] kind", "expected one of ac, dc", "'ac/dc'")),
    ("nan",
     (("tick_s = 1.0", "tick_s = nan"),),
     ("[timing] tick_s", "expected a number")),
    ("above_range",
     (("tick_s = 1.0", "tick_s = 10.0"),),
     ("[timing] tick_s", "expected a value in [0.01, 5.0]", "10.0")),
    ("below_range",
     (("max_current_a = 32.0", "max_current_a = 4.0"),),
     ("[ratings] max_current_a", "expected a value in [6.0, 80.0]", "4.0")),
    ("huge_integer",
     (("tick_s = 1.0", "tick_s = 1" + "0" * 400),),
     ("[timing] tick_s", "expected")),
    ("phases_two",
     (("phases = 3", "phases = 2"),),
     ("[ratings] phases", "expected 1 or 3", "got 2")),
    ("section_not_a_table",
     (("[timing]\ntick_s = 1.0", ""), ("[board]", "timing = 1.0\n\n[board]")),
     ("timing", "expected a [timing] table")),
    ("missing_control_pilot",
     (('control_pilot = "sim"\n', ""),),
     ("[roles] control_pilot", "missing", "sim")),
    ("unknown_role",
     (('lock = "sim"', 'lock = "sim"\nlocks = "sim"'),),
     ("[roles] locks", "unknown role", "expected one of", "lock")),
    ("unknown_backend",
     (('meter = "sim"', 'meter = "modbus"'),),
     ("[roles] meter", "expected one of sim, none", "'modbus'")),
    ("required_role_none",
     (('contactor = "sim"', 'contactor = "none"'),),
     ("[roles] contactor", "expected one of sim", "'none'")),
    ("min_current_above_max_current",
     (("max_current_a = 32.0", "max_current_a = 10.0"),
      ("min_current_a = 6.0", "min_current_a = 16.0")),
     ("[charging] min_current_a", "[ratings] max_current_a (10.0)", "16.0")),
    ("temperatures_out_of_order",
     (("[sim]", "[safety]\nresume_c = 75.0\n\n[sim]"),),
     ("[safety]", "resume_c < derate_start_c < stop_c", "75.0")),
    ("socket_without_proximity_pilot_none",
     (('proximity_pilot = "sim"', 'proximity_pilot = "none"'),),
     ("[roles] proximity_pilot", "socket", "tethered")),
    ("socket_without_proximity_pilot_omitted",
     (('proximity_pilot = "sim"\n', ""),),
     ("[roles] proximity_pilot", "socket", "tethered")),
    ("socket_without_lock",
     (('lock = "sim"', 'lock = "none"'),),
     ("[roles] lock", "socket", "locked")),
    ("dc_not_yet",
     (('kind = "ac"', 'kind = "dc"'),),
     ("[ratings] kind", 'expected "ac"')),
    ("bidirectional_not_yet",
     (("bidirectional = false", "bidirectional = true"),),
     ("[ratings] bidirectional", "expected false")),
    ("watchdog_shorter_than_two_ticks",
     (("tick_s = 1.0", "tick_s = 1.0\nwatchdog_s = 1.5"),),
     ("[timing] watchdog_s", "twice", "1.5")),
]


@pytest.mark.parametrize(("edits", "fragments"), [pytest.param(e, f, id=i) for i, e, f
                                                  in MALFORMED])
def test_malformed_board_names_file_key_and_expectation(
        tmp_path: Path, edits: tuple[tuple[str, str], ...], fragments: tuple[str, ...]) -> None:
    _, message = load_error(tmp_path, sim_text(*edits))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_missing_board_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "board.toml"
    with pytest.raises(BoardError, match="no such board file") as info:
        load_board(str(path))
    assert str(path) in str(info.value)
    assert not isinstance(info.value, UnknownBoardError)


# ---- unknown board names -------------------------------------------------------------------


def test_unknown_board_name_lists_the_boards_that_exist() -> None:
    with pytest.raises(UnknownBoardError) as info:
        load_board("nosuch")
    assert isinstance(info.value, BoardError)
    assert info.value.name == "nosuch"
    assert info.value.known == ["sim"]
    assert "'nosuch'" in str(info.value)
    assert "boards that exist: sim" in str(info.value)


def test_unknown_board_lists_every_board_under_the_root(tmp_path: Path) -> None:
    for name in ("beta", "alpha"):
        write_board(tmp_path, MINIMAL_ROLES, name=name)
    (tmp_path / "not_a_board").mkdir()
    assert known_boards(tmp_path) == ["alpha", "beta"]
    with pytest.raises(UnknownBoardError, match="boards that exist: alpha, beta"):
        load_board("gamma", root=tmp_path)
    assert load_board("alpha", root=tmp_path).name == "alpha"


def test_boards_dir_follows_the_environment(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    write_board(tmp_path, MINIMAL_ROLES, name="bench1")
    monkeypatch.setenv(BOARDS_DIR_ENV, str(tmp_path))
    assert known_boards() == ["bench1"]
    with pytest.raises(UnknownBoardError, match="boards that exist: bench1"):
        load_board("sim")


# ---- documentation -------------------------------------------------------------------------


def test_describe_parameters_covers_every_declared_field() -> None:
    described = describe_parameters()
    classes = {"ratings": Ratings, "connector": Connector, "charging": Charging,
               "timing": Timing, "safety": Safety, "sim": Sim}
    assert set(described) == set(classes)
    for section, cls in classes.items():
        names = [name for name, _, _ in described[section]]
        assert names == [f.name for f in fields(cls)], section
        for name, default, doc in described[section]:
            assert doc, f"[{section}] {name} has no description"
            assert default == getattr(cls(), name)


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def test_every_board_parameter_is_documented() -> None:
    assert DOC.is_file(), (f"{DOC} does not exist; it must document every parameter of "
                           "hal.board.describe_parameters()")
    text = DOC.read_text(encoding="utf-8")
    missing = [f"[{section}]" for section in describe_parameters()
               if f"[{section}]" not in text]
    missing += [f"[{section}] {name}" for section, rows in describe_parameters().items()
                for name, _, _ in rows if not _mentions(text, name)]
    assert not missing, f"{DOC} does not document: {', '.join(missing)}"


def test_non_utf8_board_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin" / "board.toml"
    path.parent.mkdir()
    path.write_bytes(SIM_TOML.read_bytes().replace(b"simulated", b"simul\xe9"))
    with pytest.raises(BoardError, match="not UTF-8"):
        load_board(str(path))
