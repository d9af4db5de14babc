"""Dry-contact inputs: the board file's [inputs]/[dso_steps]/[contacts] and the pure core that
turns debounced contacts into limits (firmware/core/contacts.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path

import pytest
from contact_boards import DIM, DSO, ENABLE, TARIFF, board_file, contact_board
from hypothesis import given
from hypothesis import strategies as st

from firmware.core import contacts
from firmware.core.contacts import ContactsState, Reading
from firmware.core.limits import Limit, LimitClass, LimitSource, arbitrate
from hal.board import Board, BoardError, ContactInput, Contacts, load_board, parse_board
from hal.clock import VirtualClock
from hal.hardware import open_hardware
from hal.sim.backends import SimInputs
from hal.sim.plant import Plant, PlantError

SEED = 7


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Board:
    return contact_board(tmp_path_factory.mktemp("b"), DIM + DSO + TARIFF)


def limits_of(state: ContactsState) -> dict[LimitSource, Limit]:
    return dict(state.applied)


# ---- the board file ------------------------------------------------------------------------


def test_default_sim_board_has_no_inputs_configured() -> None:
    board = load_board("sim")
    assert board.inputs == {} and board.dso_steps == {}
    assert board.contacts == Contacts()


def test_inputs_are_read_with_defaults(board: Board) -> None:
    assert board.inputs["in1"] == ContactInput("dim_14a", "closed", 0.05, True)
    assert board.inputs["in4"].meaning == "tariff_window"
    assert board.dso_steps[frozenset({"in2", "in3"})] == 0.0
    assert board.dso_steps[frozenset()] == 100.0


@pytest.mark.parametrize(("extra", "where", "expected"), [
    ('[inputs.in1]\npolarity = "open"\n', "[inputs.in1] meaning", "missing"),
    ('[inputs.in1]\nmeaning = "dimm"\n', "[inputs.in1] meaning", "expected one of dim_14a"),
    ('[inputs.in1]\nmeaning = "enable"\npolarity = "nc"\n', "[inputs.in1] polarity",
     "expected one of closed, open"),
    ('[inputs.in1]\nmeaning = "enable"\ndebounce_s = -1\n', "[inputs.in1] debounce_s",
     "expected a value in [0.0, 10.0]"),
    ('[inputs.in1]\nmeaning = "enable"\nsupervise = true\n', "[inputs.in1] supervise",
     "unknown key"),
    ("[inputs]\nin1 = 3\n", "[inputs.in1]", "expected a table"),
    ('[inputs.in2]\nmeaning = "dso_step"\n[dso_steps]\nnone = 100\n', "[dso_steps] in2",
     "missing"),
    ('[inputs.in2]\nmeaning = "dso_step"\n[dso_steps]\nnone = 100\nin2 = 101\n',
     "[dso_steps] in2", "expected a value in [0.0, 100.0]"),
    ('[inputs.in2]\nmeaning = "dso_step"\n[dso_steps]\nnone = 100\nin9 = 1\n',
     "[dso_steps] in9", "dso_step inputs joined by"),
    ('[inputs.in2]\nmeaning = "dso_step"\n[dso_steps]\nnone = 100\nin2 = 5\n"in2+in2" = 1\n',
     "[dso_steps] in2+in2", "each once"),
    ("[dso_steps]\nnone = 100\n", "[dso_steps]", "expected no table"),
    ("[contacts]\ndim_14a_w = 3000\n", "[contacts] dim_14a_w", "[4200.0, 100000.0]"),
])
def test_bad_contact_config_names_file_and_key(tmp_path: Path, extra: str, where: str,
                                                expected: str) -> None:
    path = board_file(tmp_path, extra)
    with pytest.raises(BoardError) as err:
        parse_board(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {where}"), message
    assert expected in message


def test_inputs_need_an_inputs_role(tmp_path: Path) -> None:
    path = board_file(tmp_path, ENABLE)
    path.write_text(path.read_text().replace('inputs = "sim"', 'inputs = "none"'))
    with pytest.raises(BoardError, match=r"\[inputs.in4\]: expected no inputs"):
        parse_board(path)


def test_an_input_the_backend_does_not_have_is_refused(tmp_path: Path) -> None:
    board = contact_board(tmp_path, '[inputs.in9]\nmeaning = "enable"\n')
    with pytest.raises(BoardError, match=r"board.toml: \[inputs.in9\]: expected one of"):
        open_hardware(board, VirtualClock())


# ---- the core ----------------------------------------------------------------------------


def run(board: Board, steps: list[tuple[float, Mapping[str, bool | None]]],
        start: Mapping[str, bool | None] | None = None) -> ContactsState:
    state = contacts.start(board, start or dict.fromkeys(board.inputs, False), 0.0, SEED)
    for now, readings in steps:
        state = contacts.step(board, state, readings, now)
    return state


def test_nothing_active_means_no_limits(board: Board) -> None:
    state = run(board, [])
    assert limits_of(state) == {}
    assert contacts.next_due(board, state) is None


def test_dim_contact_gives_a_grid_limit_in_watts_after_the_debounce(board: Board) -> None:
    off = dict.fromkeys(board.inputs, False)
    state = run(board, [(1.0, {**off, "in1": True})])
    assert limits_of(state) == {}   # not yet: the debounce is 0.05 s
    assert contacts.next_due(board, state) == 1.0 + 0.05
    state = contacts.step(board, state, {**off, "in1": True}, 1.0 + 0.05)
    dim = state.applied[LimitSource.GRID_14A]
    assert (dim.watts, dim.cls) == (4200.0, LimitClass.GRID)
    assert dim.reason == "§14a dimming by the grid operator: 4.2 kW"
    # 4.2 kW over the phases energised: 6.09 A on three phases, 18.3 A on one.
    assert dim.per_phase_amps(3, 230.0) == pytest.approx(6.087, abs=1e-3)
    assert dim.per_phase_amps(1, 230.0) == pytest.approx(18.26, abs=1e-2)


def test_dim_release_waits_a_random_delay_then_lifts(board: Board) -> None:
    off = dict.fromkeys(board.inputs, False)
    on = {**off, "in1": True}
    state = run(board, [(0.0, on)], start=on)
    assert LimitSource.GRID_14A in state.applied
    state = contacts.step(board, state, off, 100.0)
    state = contacts.step(board, state, off, 100.2)   # the release is debounced
    held = state.applied[LimitSource.GRID_14A]
    release = state.releases[LimitSource.GRID_14A]
    assert 100.2 <= release.at <= 100.2 + 300.0
    assert held.watts == 4200.0 and held.valid_until == release.at
    assert "released, lifted after a random" in held.reason
    assert contacts.next_due(board, state) == release.at
    state = contacts.step(board, state, off, release.at - 0.01)
    assert LimitSource.GRID_14A in state.applied
    state = contacts.step(board, state, off, release.at)
    assert limits_of(state) == {} and state.releases == {}


def test_dim_again_during_the_release_delay_cancels_the_release(board: Board) -> None:
    off = dict.fromkeys(board.inputs, False)
    on = {**off, "in1": True}
    state = run(board, [(10.0, off), (10.2, off), (20.0, on), (20.2, on)], start=on)
    assert state.releases == {}
    assert state.applied[LimitSource.GRID_14A].valid_until is None


def test_release_delays_differ_between_chargers_and_repeat_for_one(board: Board) -> None:
    off = dict.fromkeys(board.inputs, False)
    on = {**off, "in1": True}

    def delay(seed: int) -> float:
        state = contacts.start(board, on, 0.0, seed)
        state = contacts.step(board, state, off, 0.0)
        state = contacts.step(board, state, off, 1.0)
        return state.releases[LimitSource.GRID_14A].at - 1.0

    delays = [delay(seed) for seed in range(50)]
    assert delays[3] == delay(3)
    assert len(set(delays)) == 50
    assert all(0 <= d <= 300 for d in delays)
    assert max(delays) - min(delays) > 150   # spread over the window, not bunched


def test_zero_release_delay_lifts_at_once(board: Board) -> None:
    quick = replace(board, contacts=Contacts(release_delay_max_s=0.0))
    off = dict.fromkeys(board.inputs, False)
    state = run(quick, [(0.0, off), (0.2, off)], start={**off, "in1": True})
    assert limits_of(state) == {}


def test_open_polarity(tmp_path: Path) -> None:
    board = contact_board(tmp_path, '[inputs.in1]\nmeaning = "dim_14a"\npolarity = "open"\n')
    assert LimitSource.GRID_14A in run(board, [], start={"in1": False}).applied
    assert run(board, [], start={"in1": True}).applied == {}


@pytest.mark.parametrize(("in2", "in3", "amps"), [
    (False, False, None), (True, False, 19.2), (False, True, 9.6), (True, True, 0.0)])
def test_dso_steps_follow_the_table(board: Board, in2: bool, in3: bool,
                                    amps: float | None) -> None:
    state = run(board, [], start={"in1": False, "in2": in2, "in3": in3, "in4": False})
    limit = state.applied.get(LimitSource.GRID_RIPPLE_CONTROL)
    if amps is None:
        assert limit is None
        return
    assert limit is not None and limit.amps == pytest.approx(amps)
    assert limit.cls is LimitClass.GRID
    assert limit.reason == f"DSO step {round(100 * amps / 32)} %"


def test_dso_step_up_is_staggered_and_down_is_immediate(board: Board) -> None:
    off = dict.fromkeys(board.inputs, False)
    state = run(board, [(5.0, {**off, "in2": True}), (5.2, {**off, "in2": True})])
    assert state.applied[LimitSource.GRID_RIPPLE_CONTROL].amps == pytest.approx(19.2)
    state = contacts.step(board, state, {**off, "in2": True, "in3": True}, 6.0)
    state = contacts.step(board, state, {**off, "in2": True, "in3": True}, 6.2)
    assert state.applied[LimitSource.GRID_RIPPLE_CONTROL].amps == 0.0
    state = contacts.step(board, state, {**off, "in3": True}, 7.0)
    state = contacts.step(board, state, {**off, "in3": True}, 7.2)
    assert state.applied[LimitSource.GRID_RIPPLE_CONTROL].amps == 0.0   # held: going up
    at = state.releases[LimitSource.GRID_RIPPLE_CONTROL].at
    state = contacts.step(board, state, {**off, "in3": True}, at)
    assert state.applied[LimitSource.GRID_RIPPLE_CONTROL].amps == pytest.approx(9.6)


def test_enable_open_stops_in_grid_class(tmp_path: Path) -> None:
    board = contact_board(tmp_path, ENABLE)
    assert run(board, [], start={"in4": True}).applied == {}
    limit = run(board, [], start={"in4": False}).applied[LimitSource.CONTACT_ENABLE]
    assert (limit.amps, limit.cls, limit.reason) == (0.0, LimitClass.GRID,
                                                     "disabled by input in4")


def test_enable_unreadable_disables(tmp_path: Path) -> None:
    board = contact_board(tmp_path, ENABLE)
    limit = run(board, [], start={"in4": None}).applied[LimitSource.CONTACT_ENABLE]
    assert (limit.amps, limit.reason) == (
        0.0, "input in4 unreadable (broken wire?), fail-safe: disabled")


def test_tariff_window_pauses_and_a_boost_lifts_it(board: Board) -> None:
    state = run(board, [], start={"in1": False, "in2": False, "in3": False, "in4": True})
    window = state.applied[LimitSource.TARIFF_WINDOW]
    assert (window.amps, window.cls) == (0.0, LimitClass.TARIFF)
    rating = Limit.of(LimitSource.BOARD_RATING, "board", amps=32.0)
    assert arbitrate([rating, window], 0.0, phases=3, voltage_v=230).amps == 0.0
    assert arbitrate([rating, window], 0.0, phases=3, voltage_v=230, boost=True).amps == 32.0


@pytest.mark.parametrize(("name", "source", "value"), [
    ("in1", LimitSource.GRID_14A, 4200.0),
    ("in2", LimitSource.GRID_RIPPLE_CONTROL, 0.0),
    ("in4", LimitSource.TARIFF_WINDOW, 0.0)])
def test_an_unreadable_input_takes_its_fail_safe(board: Board, name: str, source: LimitSource,
                                                 value: float) -> None:
    readings: dict[str, bool | None] = dict.fromkeys(board.inputs, False)
    readings[name] = None
    state = contacts.start(board, readings, 0.0, SEED)
    assert state.inputs[name].stable is Reading.UNREADABLE
    limit = state.applied[source]
    assert (limit.watts if limit.watts is not None else limit.amps) == value
    assert limit.reason.startswith(f"input {name} unreadable (broken wire?), fail-safe: ")


def test_an_input_missing_from_the_readings_counts_as_unreadable(board: Board) -> None:
    state = run(board, [(1.0, {}), (1.2, {})])
    assert LimitSource.GRID_14A in state.applied
    assert state.applied[LimitSource.GRID_RIPPLE_CONTROL].amps == 0.0


# ---- properties ----------------------------------------------------------------------------

Reading_ = bool | None   # what DigitalInputs.read returns


@given(start=st.sampled_from([False, True, None]),
       bounces=st.lists(st.tuples(st.floats(0.001, 10.0), st.floats(0.0, 0.0499),
                                  st.sampled_from([False, True, None])), max_size=20))
def test_a_bounce_shorter_than_the_debounce_never_changes_a_limit(
        board: Board, start: Reading_, bounces: list[tuple[float, float, Reading_]]) -> None:
    readings: dict[str, bool | None] = dict.fromkeys(board.inputs, False)
    state = contacts.start(board, {**readings, "in1": start}, 0.0, SEED)
    before = dict(state.applied)
    now = 0.0
    for gap, length, other in bounces:
        now += gap
        state = contacts.step(board, state, {**readings, "in1": other}, now)
        assert dict(state.applied) == before
        now += length
        state = contacts.step(board, state, {**readings, "in1": start}, now)
        assert dict(state.applied) == before


@given(boost=st.booleans(), others=st.lists(
    st.tuples(st.sampled_from([LimitSource.PRICE, LimitSource.USER, LimitSource.PV_SURPLUS,
                               LimitSource.TARIFF_WINDOW, LimitSource.OCPP_TX]),
              st.floats(0.0, 80.0)), max_size=5))
def test_the_dim_limit_holds_whatever_else_applies(board: Board, boost: bool,
                                                   others: list[tuple[LimitSource, float]]
                                                   ) -> None:
    state = contacts.start(board, {"in1": True, "in2": False, "in3": False, "in4": False},
                           0.0, SEED)
    limits = [Limit.of(LimitSource.BOARD_RATING, "board", amps=32.0),
              *state.applied.values(),
              *(Limit.of(source, "other", amps=amps) for source, amps in others)]
    for phases in (1, 3):
        eff = arbitrate(limits, 0.0, phases=phases, voltage_v=230.0, boost=boost)
        assert eff.amps * phases * 230.0 <= 4200.0 + 1e-6


def test_every_contact_parameter_is_documented() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "board-toml.md").read_text()
    for section, cls in (("[contacts]", Contacts), ("[inputs.&lt;name&gt;]", ContactInput)):
        assert f"### {section}" in text
        for f in fields(cls):
            assert f"| `{f.name}` |" in text, f"{section} {f.name}"
    assert "### [dso_steps]" in text


def test_sim_inputs_report_edges_and_broken_wires() -> None:
    clock = VirtualClock()
    plant = Plant(clock=clock)
    supervised, plain = SimInputs(plant, frozenset({"in1"})), SimInputs(plant)
    edges: list[bool | None] = []
    supervised.subscribe(lambda: edges.append(supervised.read("in1")))
    plant.set_input("in1", True)
    plant.set_input("in1", True)   # no change, no edge
    plant.cut_input("in1", True)
    assert (supervised.read("in1"), plain.read("in1")) == (None, False)
    plant.cut_input("in1", False)
    assert edges == [True, None, True]
    assert supervised.supervised() == frozenset({"in1"})
    with pytest.raises(PlantError, match="no input 'in9'"):
        plant.set_input("in9", True)
