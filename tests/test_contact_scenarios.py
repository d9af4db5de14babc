"""Dry contacts on the simulated board in virtual time: the real plant's inputs, the contact shell,
the real connector. Also end to end through `voltpilot run --scenario`."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from contact_boards import DIM, DSO, SIM_TOML, TARIFF, board_file, contact_board
from rig import Rig

from firmware.core import contacts
from firmware.core.iec61851 import Phase
from firmware.core.limits import LimitSource
from firmware.evse.contacts import ContactInputs
from hal.board import Board, parse_board
from hal.sim.ev import PROFILES

EV = PROFILES["fast_ac_3p"]            # 32 A on three phases: 22 kW undimmed
DIM_W = 4200.0
VOLTPILOT = str(Path(sys.executable).parent / "voltpilot")


def power_w(rig: Rig) -> float:
    rig.plant.advance()
    sample = rig.plant.meter_sample
    assert sample is not None
    return sample.total_power_w


def binding(rig: Rig) -> LimitSource | None:
    b = rig.connector.limit.binding
    return None if b is None else b.source


def started(rig: Rig, seed: int = 1) -> ContactInputs:
    assert rig.hw.inputs is not None
    shell = ContactInputs(rig.board, rig.hw.inputs, rig.limits, rig.clock.now, seed=seed)
    shell.start()
    return shell


@pytest.fixture
def dim_board(tmp_path: Path) -> Board:
    return contact_board(tmp_path, DIM)


def test_14a_contact_during_a_boost_holds_and_release_is_staggered(tmp_path: Path,
                                                                    dim_board: Board) -> None:
    reaction_s = EV.reaction_s

    async def scenario(rig: Rig) -> None:
        shell = started(rig)
        await rig.charging("fast_ac_3p")
        await rig.until(rig.t + 5)
        assert power_w(rig) > 20_000
        rig.limits.set_boost(True)
        duty = rig.plant.duty
        rig.plant.set_input("in1", True)
        applied = await rig.wait_for(lambda: rig.plant.duty != duty, 1.0, step_s=0.001)
        assert applied <= 1.0 and binding(rig) is LimitSource.GRID_14A
        below = await rig.wait_for(lambda: power_w(rig) <= DIM_W, 1.0 + reaction_s,
                                   step_s=0.01)
        assert applied + below <= 1.0 + reaction_s
        # It holds through the boost for as long as the contact stays closed.
        for _ in range(60):
            await rig.until(rig.t + 60)
            assert 3_000 < power_w(rig) <= DIM_W
            assert rig.phase is Phase.CHARGING and rig.limits.boost
        rig.plant.set_input("in1", False)
        await rig.until(rig.t + 0.3)
        assert shell.state is not None
        release = shell.state.releases[LimitSource.GRID_14A]
        lifted_in = release.at - rig.clock.now()
        assert 0.0 < lifted_in <= 300.0
        await rig.until(rig.t + lifted_in - 0.5)
        assert power_w(rig) <= DIM_W and binding(rig) is LimitSource.GRID_14A
        await rig.until(rig.t + 0.5 + reaction_s + 0.1)
        assert power_w(rig) > 20_000
        assert LimitSource.GRID_14A not in {lim.source for lim in rig.limits.limits()}
        shell.stop()

    Rig.run(tmp_path, scenario, board=dim_board)


def test_many_chargers_released_together_restart_spread_out(dim_board: Board) -> None:
    on, off = {"in1": True}, {"in1": False}
    restarts = []
    for seed in range(100):
        state = contacts.start(dim_board, on, 0.0, seed)
        state = contacts.step(dim_board, state, off, 10.0)
        state = contacts.step(dim_board, state, off, 10.2)
        restarts.append(state.releases[LimitSource.GRID_14A].at)
    per_minute = [sum(1 for t in restarts if m * 60 <= t - 10.2 < (m + 1) * 60)
                  for m in range(5)]
    assert max(per_minute) <= 35   # uniform would be 20 a minute; all at once would be 100


def test_broken_wire_on_the_dim_input_dims(tmp_path: Path, dim_board: Board) -> None:
    async def scenario(rig: Rig) -> None:
        shell = started(rig)
        await rig.charging("fast_ac_3p")
        rig.plant.cut_input("in1", True)
        await rig.until(rig.t + 0.3)
        assert binding(rig) is LimitSource.GRID_14A
        assert shell.view() == {"in1": "unreadable"}
        b = rig.connector.limit.binding
        assert b is not None and b.reason.startswith("input in1 unreadable")
        await rig.until(rig.t + 1.0 + EV.reaction_s)
        assert power_w(rig) <= DIM_W
        shell.stop()

    Rig.run(tmp_path, scenario, board=dim_board)


def test_dso_steps(tmp_path: Path) -> None:
    board = contact_board(tmp_path, DSO)

    async def scenario(rig: Rig) -> None:
        shell = started(rig, seed=3)
        await rig.charging("fast_ac_3p")
        await rig.until(rig.t + 5)
        for in2, in3, amps in ((True, False, 19.2), (False, True, 9.6)):
            rig.plant.set_input("in2", in2)
            rig.plant.set_input("in3", in3)
            await rig.until(rig.t + 0.3)
            if amps > rig.connector.limit.amps:   # a step up waits its random delay
                assert shell.state is not None
                release = shell.state.releases[LimitSource.GRID_RIPPLE_CONTROL]
                await rig.until(release.at - rig.t0 + 0.01)
            assert rig.connector.limit.amps == pytest.approx(amps)
            assert binding(rig) is LimitSource.GRID_RIPPLE_CONTROL
            await rig.until(rig.t + EV.reaction_s + 0.1)
            sample = rig.plant.meter_sample
            assert sample is not None and max(sample.current_a) <= amps + 0.01
        rig.plant.set_input("in2", True)   # both: 0 % pauses the session
        await rig.until(rig.t + 0.3 + EV.reaction_s + 0.1)
        assert rig.phase is Phase.PAUSED_EVSE and not rig.plant.contactor_closed
        shell.stop()

    Rig.run(tmp_path, scenario, board=board)


def test_a_week_of_tariff_windows(tmp_path: Path) -> None:
    # The slowest supervision tick the board file allows: a week is 120,000 connector steps.
    base = SIM_TOML.read_text(encoding="utf-8").replace("tick_s = 1.0",
                                                        "tick_s = 5.0\nwatchdog_s = 10.0")
    board = parse_board(board_file(tmp_path, TARIFF, base=base))
    ev = EV.with_overrides({"battery_kwh": 100_000.0})   # never full in a week
    peak = (17, 21)   # the peak window, local hours of each day

    async def scenario(rig: Rig) -> None:
        shell = started(rig, seed=5)
        midnight = dt.datetime.fromtimestamp(rig.clock.now(), dt.UTC).replace(
            hour=0, minute=0, second=0, microsecond=0).timestamp() + 86400 - rig.t0
        rig.plant.plug(ev)
        for day in range(7):
            base = midnight + day * 86400
            await rig.until(base + 12 * 3600)
            assert rig.plant.contactor_closed and power_w(rig) > 20_000
            await rig.until(base + peak[0] * 3600)
            rig.plant.set_input("in4", True)
            await rig.until(base + peak[0] * 3600 + 60)
            assert binding(rig) is LimitSource.TARIFF_WINDOW
            assert not rig.plant.contactor_closed and power_w(rig) == 0.0
            if day == 3:   # the user forces charging through one window
                rig.limits.set_boost(True)
                await rig.until(base + 18 * 3600)
                assert rig.plant.contactor_closed and power_w(rig) > 20_000
                rig.limits.set_boost(False)
            await rig.until(base + 19 * 3600)
            assert not rig.plant.contactor_closed
            await rig.until(base + peak[1] * 3600)
            rig.plant.set_input("in4", False)
            await rig.until(base + peak[1] * 3600 + 300 + 60)   # the random delay, the car
            assert rig.plant.contactor_closed and binding(rig) is not LimitSource.TARIFF_WINDOW
        shell.stop()

    rig = Rig.run(tmp_path, scenario, board=board)
    [session] = rig.finished
    # About 20 h a day charging at 22 kW, one window boosted (1 h), releases staggered.
    kwh = session.energy_wh / 1000
    assert 7 * 19.5 * 22.0 < kwh < (7 * 20 + 1 + 24) * 22.1


# ---- end to end --------------------------------------------------------------------------


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short directory: the plant socket lives in it and AF_UNIX paths are ~107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="vpc", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_input_command_end_to_end_through_a_scenario(tmp: Path) -> None:
    board = board_file(tmp, DIM)
    scenario = tmp / "dim.toml"
    scenario.write_text("""
[[action]]
at = 1
cmd = "plug"
profile = "fast_ac_3p"

[[action]]
at = 5
cmd = "boost"
on = true

[[action]]
at = 20
cmd = "input"
name = "in1"
value = true

[[action]]
at = 40
cmd = "input"
name = "in1"
value = false

[[action]]
at = 400
cmd = "stop"
""", encoding="utf-8")
    data = tmp / "data"
    done = subprocess.run([VOLTPILOT, "run", "--board", str(board), "--virtual-time",
                           "--scenario", str(scenario), "--status", "lines",
                           "--status-every", "10", "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done
    lines = {int(m.group(1)): m.group(0) for m in
             re.finditer(r"^00:00:(\d\d)Z .*$", done.stdout, re.MULTILINE)}
    assert "by board_rating" in lines[10] and "22.0" in lines[10]   # boosted, full power
    for t in (30, 40):
        assert "by grid_14a (grid)" in lines[t], lines[t]
        kw = float(re.search(r"\| +([\d.]+) kW", lines[t]).group(1))  # type: ignore[union-attr]
        assert kw <= 4.2
    log = (data / "voltpilot.log").read_text(encoding="utf-8")
    assert '"event": "contact_limit"' in log and "14a dimming by the grid operator" in log
