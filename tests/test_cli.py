"""The console scripts as an operator runs them: real `voltpilot` and `evsim` processes, real
data directories, real sockets and signals."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from firmware.store.db import SessionRecord, Store

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VOLTPILOT = str(BIN / "voltpilot")
EVSIM = str(BIN / "evsim")
SIM_TOML = REPO / "boards" / "sim" / "board.toml"
DEMO = REPO / "boards" / "sim" / "scenarios" / "demo.toml"
RUN_TIMEOUT_S = 10.0


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short directory: the plant socket lives in it and AF_UNIX paths are ~107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="vpt", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("VOLTPILOT_DATA", "VOLTPILOT_BOARDS"):
        env.pop(name, None)
    return env


def voltpilot(*args: str | Path, cwd: Path | None = None,
              timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VOLTPILOT, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=clean_env(), cwd=cwd, check=False)


def evsim(socket: Path, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EVSIM, "--socket", str(socket), *words], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, env=clean_env(), check=False)


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 6.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def answer(socket: Path, *words: str) -> dict[str, Any] | None:
    """The decoded answer of an accepted evsim command, else None."""
    done = evsim(socket, *words)
    if done.returncode != 0:
        return None
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@contextmanager
def controller(data_dir: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """A real-time controller on the sim board, answering on <data_dir>/plant.sock; killed
    on the way out whatever happened."""
    cmd = [VOLTPILOT, "run", "--board", "sim", "--status", "off", "--duration", "30",
           "--data-dir", str(data_dir), *extra]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=clean_env(), cwd=data_dir.parent) as proc:
        try:
            socket = data_dir / "plant.sock"
            wait_for(lambda: proc.poll() is not None or answer(socket, "state"),
                     "the plant socket to answer")
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"controller exited {proc.returncode}: {out}{err}")
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=5)


def terminate(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=8)
    return proc.returncode, out, err


def plug_and_wait_for_charging(socket: Path) -> None:
    assert evsim(socket, "plug").returncode == 0
    wait_for(lambda: (a := answer(socket, "state")) and a["state"]["contactor"]["closed"],
             "the contactor to close")


def log_events(data_dir: Path) -> list[dict[str, Any]]:
    lines = (data_dir / "voltpilot.log").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def records(data_dir: Path) -> list[SessionRecord]:
    store = Store(data_dir / "voltpilot.db")
    try:
        return store.sessions()
    finally:
        store.close()


def malformed_board(tmp: Path) -> Path:
    text = SIM_TOML.read_text(encoding="utf-8")
    assert text.count("tick_s = 1.0") == 1
    path = tmp / "myboard" / "board.toml"
    path.parent.mkdir()
    path.write_text(text.replace("tick_s = 1.0", 'tick_s = "fast"'), encoding="utf-8")
    return path


# ---- bad input: exit 2, nothing started ------------------------------------------------------


def test_unknown_board_exits_2_listing_boards(tmp: Path) -> None:
    data = tmp / "data"
    done = voltpilot("run", "--board", "nosuch", "--data-dir", data, cwd=tmp)
    assert done.returncode == 2, done
    assert "unknown board 'nosuch'" in done.stderr
    assert "boards that exist: sim" in done.stderr
    assert not data.exists()


def test_malformed_board_file_exits_2_naming_file_and_key(tmp: Path) -> None:
    board = malformed_board(tmp)
    data = tmp / "data"
    done = voltpilot("run", "--board", board, "--virtual-time", "--duration", "5",
                     "--data-dir", data, cwd=tmp)
    assert done.returncode == 2, done
    assert str(board) in done.stderr
    assert "[timing] tick_s" in done.stderr
    assert "expected a number" in done.stderr
    assert "Traceback" not in done.stderr
    assert "voltpilot ready" not in done.stdout
    assert not (data / "voltpilot.db").exists()
    assert not data.exists()


def test_virtual_time_without_duration_exits_2(tmp: Path) -> None:
    data = tmp / "data"
    done = voltpilot("run", "--board", "sim", "--virtual-time", "--data-dir", data, cwd=tmp)
    assert done.returncode == 2, done
    assert "--duration" in done.stderr
    assert "voltpilot ready" not in done.stdout
    assert not (data / "voltpilot.db").exists()
    assert not (data / "plant.sock").exists()


def test_scenario_with_unknown_command_exits_2_naming_file_and_action(tmp: Path) -> None:
    scenario = tmp / "bad.toml"
    scenario.write_text('[[action]]\nat = 1\ncmd = "plug"\n\n'
                        '[[action]]\nat = 5\ncmd = "teleport"\n', encoding="utf-8")
    data = tmp / "data"
    done = voltpilot("run", "--board", "sim", "--virtual-time", "--duration", "10",
                     "--scenario", scenario, "--data-dir", data, cwd=tmp)
    assert done.returncode == 2, done
    assert f"{scenario}: action 2" in done.stderr
    assert "teleport" in done.stderr
    assert "voltpilot ready" not in done.stdout
    assert not (data / "voltpilot.db").exists()
    assert not (data / "plant.sock").exists()


@pytest.mark.parametrize(("name", "text", "fragment"), [
    ("not_a_table", "action = [1, 2]\n", "action 1: expected an [[action]] table"),
    ("too_late", '[[action]]\nat = 1e300\ncmd = "stop"\n', "action 1: at"),
    ("limit_without_amps", '[[action]]\nat = 1\ncmd = "limit"\nsource = "grid_14a"\n',
     "amps or watts"),
    ("bad_ev", '[[action]]\nat = 1\ncmd = "plug"\nev = { soc = 5 }\n', "soc"),
])
def test_scenario_is_checked_in_full_before_the_run(tmp: Path, name: str, text: str,
                                                    fragment: str) -> None:
    scenario = tmp / f"{name}.toml"
    scenario.write_text(text, encoding="utf-8")
    done = voltpilot("run", "--board", "sim", "--virtual-time", "--duration", "10",
                     "--scenario", scenario, "--data-dir", tmp / "data", cwd=tmp)
    assert done.returncode == 2, done
    assert fragment in done.stderr and "voltpilot ready" not in done.stdout


def test_a_scenario_action_failing_at_run_time_exits_1(tmp: Path) -> None:
    scenario = tmp / "late.toml"
    scenario.write_text('[[action]]\nat = 1\ncmd = "unplug"\n', encoding="utf-8")
    done = voltpilot("run", "--board", "sim", "--virtual-time", "--duration", "5",
                     "--scenario", scenario, "--data-dir", tmp / "data", cwd=tmp)
    assert done.returncode == 1, done
    assert "action 1 (unplug) failed: no car is plugged in" in done.stderr


@pytest.mark.parametrize("args", [("--duration", "inf"), ("--duration", "nan"),
                                  ("--data-dir", "/dev/null/x"), ("--log", "/tmp")])
def test_unusable_options_exit_2_without_a_traceback(tmp: Path, args: tuple[str, str]) -> None:
    extra = () if "--data-dir" in args else ("--data-dir", str(tmp / "data"))
    done = voltpilot("run", "--board", "sim", "--virtual-time", "--duration", "5", *extra,
                     *args, cwd=tmp)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr and done.stderr.strip()


def test_an_unknown_latched_fault_stops_the_start(tmp: Path) -> None:
    data = tmp / "data"
    store = Store(data / "voltpilot.db")
    store.latch(1, "meteor_strike", "2026-01-01T00:00:00.000Z")
    store.close()
    done = voltpilot("run", "--board", "sim", "--virtual-time", "--duration", "5",
                     "--data-dir", data, cwd=tmp)
    assert done.returncode == 2 and "meteor_strike" in done.stderr, done
    listed = voltpilot("faults", "--data-dir", data, cwd=tmp)
    assert "meteor_strike: unknown to this voltpilot" in listed.stdout
    cleared = voltpilot("faults", "--reset", "meteor_strike", "--data-dir", data, cwd=tmp)
    assert cleared.returncode == 0 and "cleared: meteor_strike" in cleared.stdout


def test_boards_lists_sim() -> None:
    done = voltpilot("boards")
    assert done.returncode == 0, done
    assert re.search(r"^sim: simulated ", done.stdout, re.MULTILINE), done.stdout


# ---- virtual time --------------------------------------------------------------------------


def run_demo(data: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return voltpilot("run", "--board", "sim", "--virtual-time", "--scenario", DEMO,
                     "--duration", "120", "--status", "lines", "--data-dir", data, cwd=cwd)


def test_virtual_demo_prints_summary_and_records_survive(tmp: Path) -> None:
    data = tmp / "data"
    done = run_demo(data, tmp)
    assert done.returncode == 0, done
    assert "voltpilot ready: board sim, connector 1, virtual time" in done.stdout
    assert re.search(r"session \w{8} on connector 1 finished: ev_disconnected", done.stdout)
    energy = re.search(r"energy (\d+\.\d+) kWh", done.stdout)
    assert energy, done.stdout
    assert float(energy.group(1)) == pytest.approx(0.116, abs=0.002)
    assert "voltpilot stopped: contactor open" in done.stdout
    assert not (data / "plant.sock").exists()

    listed = voltpilot("sessions", "--data-dir", data, cwd=tmp)
    assert listed.returncode == 0, listed
    lines = listed.stdout.splitlines()
    assert len(lines) == 1, listed.stdout
    assert "stop=ev_disconnected" in lines[0]
    assert "2026-01-01T00:00:03.000Z -> 2026-01-01T00:00:55.000Z" in lines[0]
    assert float(lines[0].split("->")[1].split()[1]) == pytest.approx(0.116, abs=0.002)

    # A second run on the same data directory keeps the first run's record.
    assert run_demo(data, tmp).returncode == 0
    recs = records(data)
    assert len(recs) == 2
    assert all(r.stop_reason == "ev_disconnected" and r.ended_at for r in recs)
    assert all(r.energy_wh == pytest.approx(116.0, abs=2.0) for r in recs)


def test_sessions_without_records(tmp: Path) -> None:
    done = voltpilot("sessions", "--data-dir", tmp / "data", cwd=tmp)
    assert done.returncode == 0, done
    assert "no records" in done.stdout
    assert not (tmp / "data" / "voltpilot.db").exists()


# ---- real time, driven from outside --------------------------------------------------------


def test_sigterm_opens_contactor_removes_socket_records_shutdown(tmp: Path) -> None:
    data = tmp / "data"
    socket = data / "plant.sock"
    with controller(data) as proc:
        plug_and_wait_for_charging(socket)
        code, out, err = terminate(proc)
    assert code == 0, (out, err)
    assert "finished: controller_shutdown" in out
    assert "voltpilot stopped: contactor open" in out

    events = log_events(data)
    names = [e["event"] for e in events]
    assert "contactor_closed" in names
    closed = names.index("contactor_closed")
    stopped = names.index("stopped")
    assert stopped == len(names) - 1, names
    opened = [i for i, e in enumerate(events) if closed < i < stopped and (
        e["event"] == "contactor_opened"
        or (e["event"] == "connector_stopped" and e.get("reason") == "controller_shutdown"))]
    assert opened, f"no contactor opening between closing and 'stopped': {names}"

    assert not socket.exists()
    recs = records(data)
    assert len(recs) == 1
    assert recs[0].stop_reason == "controller_shutdown"
    assert recs[0].ended_at is not None
    assert recs[0].energy_wh > 0


def test_killed_controller_session_closed_as_restart(tmp: Path) -> None:
    data = tmp / "data"
    socket = data / "plant.sock"
    with controller(data) as proc:
        assert evsim(socket, "plug").returncode == 0
        wait_for(lambda: (a := answer(socket, "status")) and a["status"]["session"],
                 "a session to open")
        proc.kill()
        proc.wait(timeout=5)
    assert [r.ended_at for r in records(data)] == [None]
    done = voltpilot("run", "--board", "sim", "--virtual-time", "--duration", "1",
                     "--status", "off", "--data-dir", data, cwd=tmp)
    assert done.returncode == 0, done
    recs = records(data)
    assert len(recs) == 1
    assert recs[0].stop_reason == "controller_restart"
    assert recs[0].ended_at is not None
    listed = voltpilot("sessions", "--data-dir", data, cwd=tmp)
    assert "stop=controller_restart" in listed.stdout


def test_second_controller_on_same_data_dir_exits_2(tmp: Path) -> None:
    data = tmp / "data"
    socket = data / "plant.sock"
    with controller(data) as proc:
        second = voltpilot("run", "--board", "sim", "--status", "off", "--duration", "5",
                           "--data-dir", data, cwd=tmp)
        assert second.returncode == 2, second
        assert "another voltpilot is running" in second.stderr
        assert "voltpilot ready" not in second.stdout
        # The first one is undisturbed.
        assert proc.poll() is None
        assert socket.is_socket()
        assert evsim(socket, "state").returncode == 0
        code, _, err = terminate(proc)
    assert code == 0, err


def test_refused_second_controller_leaves_lock_file_intact(tmp: Path) -> None:
    data = tmp / "data"
    with controller(data) as proc:
        lock = data / "voltpilot.lock"
        assert lock.read_text() == str(proc.pid)
        assert voltpilot("run", "--board", "sim", "--status", "off", "--duration", "5",
                         "--data-dir", data, cwd=tmp).returncode == 2
        assert lock.read_text() == str(proc.pid), \
            "the refused second controller wiped the running one's pid from voltpilot.lock"


def test_evsim_exit_codes(tmp: Path) -> None:
    data = tmp / "data"
    socket = data / "plant.sock"
    missing = evsim(tmp / "nowhere.sock", "state")
    assert missing.returncode == 2, missing
    assert "cannot reach the plant" in missing.stderr
    not_a_socket = tmp / "file.sock"
    not_a_socket.write_text("")
    assert evsim(not_a_socket, "state").returncode == 2
    with controller(data):
        ok = evsim(socket, "state")
        assert ok.returncode == 0, ok
        assert json.loads(ok.stdout)["ok"] is True
        status = evsim(socket, "status")
        assert status.returncode == 0, status
        assert json.loads(status.stdout)["status"]["phase"]
        no_car = evsim(socket, "unplug")
        assert no_car.returncode == 1, no_car
        assert "no car" in json.loads(no_car.stdout)["error"]
        bad_arg = evsim(socket, "temperature", "celsius=hot")
        assert bad_arg.returncode == 1, bad_arg
        unknown = evsim(socket, '{"cmd": "teleport"}')
        assert unknown.returncode == 1, unknown
        malformed = evsim(socket, "plug", "profile")  # not key=value: never sent
        assert malformed.returncode == 2, malformed
        assert "key=value" in malformed.stderr
        plugged = evsim(socket, "plug", "profile=city_1p", 'ev={"soc": 0.9}')
        assert plugged.returncode == 0, plugged
        assert json.loads(plugged.stdout)["state"]["ev"]["soc"] == pytest.approx(0.9, abs=0.01)


def test_rcd_trip_latches_fault_until_reset(tmp: Path) -> None:
    data = tmp / "data"
    socket = data / "plant.sock"
    with controller(data) as proc:
        plug_and_wait_for_charging(socket)
        assert evsim(socket, "fault", "name=rcd_trip").returncode == 0
        wait_for(lambda: (a := answer(socket, "status"))
                 and "rcd_tripped" in a["status"]["faults"], "the RCD fault")
        wait_for(lambda: (a := answer(socket, "state")) and not a["state"]["contactor"]["closed"],
                 "the contactor to open")
        # Reading works while it runs; a reset needs the controller stopped.
        reading = voltpilot("faults", "--data-dir", data, cwd=tmp)
        assert reading.returncode == 0 and reading.stdout.startswith("rcd_tripped: "), reading
        busy = voltpilot("faults", "--reset", "--data-dir", data, cwd=tmp)
        assert busy.returncode == 2, busy
        assert "another voltpilot is running" in busy.stderr
        code, _, err = terminate(proc)
    assert code == 0, err

    listed = voltpilot("faults", "--data-dir", data, cwd=tmp)
    assert listed.returncode == 0, listed
    assert listed.stdout.startswith("rcd_tripped: "), listed.stdout
    sessions = voltpilot("sessions", "--data-dir", data, cwd=tmp)
    assert "faults=rcd_tripped" in sessions.stdout

    reset = voltpilot("faults", "--reset", "--data-dir", data, cwd=tmp)
    assert reset.returncode == 0, reset
    assert reset.stdout.strip() == "cleared: rcd_tripped"
    after = voltpilot("faults", "--data-dir", data, cwd=tmp)
    assert after.returncode == 0, after
    assert after.stdout == ""


def test_faults_reset_named_codes(tmp: Path) -> None:
    data = tmp / "data"
    store = Store(data / "voltpilot.db")
    try:
        store.latch(1, "rcd_tripped", "2026-01-01T00:00:00.000Z")
        store.latch(1, "contactor_welded", "2026-01-01T00:00:01.000Z")
    finally:
        store.close()
    listed = voltpilot("faults", "--data-dir", data, cwd=tmp)
    assert [line.split(":")[0] for line in listed.stdout.splitlines()] == [
        "contactor_welded", "rcd_tripped"]
    unknown = voltpilot("faults", "--reset", "meteor", "--data-dir", data, cwd=tmp)
    assert unknown.returncode == 2, unknown
    assert "unknown fault 'meteor'" in unknown.stderr
    named = voltpilot("faults", "--reset", "rcd_tripped", "--data-dir", data, cwd=tmp)
    assert named.returncode == 0, named
    assert named.stdout.strip() == "cleared: rcd_tripped"
    left = voltpilot("faults", "--data-dir", data, cwd=tmp)
    assert [line.split(":")[0] for line in left.stdout.splitlines()] == ["contactor_welded"]
