"""The plant's JSON-lines control interface on a real Unix socket with a real Plant: every bad
request gets an error answer and leaves the plant as it was."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hal.clock import VirtualClock
from hal.sim.control import MAX_LINE, CommandTable, plant_commands, serve
from hal.sim.plant import Plant

ANSWER_TIMEOUT_S = 5.0
Request = dict[str, Any] | bytes


@pytest.fixture
def sock() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~107 bytes: keep the directory short.
    folder = Path(tempfile.mkdtemp(prefix="vpc", dir="/tmp"))
    try:
        yield folder / "plant.sock"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def plant() -> Plant:
    return Plant(clock=VirtualClock())


def encode(request: Request) -> bytes:
    return request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"


async def read_answer(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(reader.readline(), ANSWER_TIMEOUT_S)
    assert line, "the connection closed without an answer"
    answer: dict[str, Any] = json.loads(line)
    return answer


def talk(plant: Plant, path: Path, *requests: Request, pipelined: bool = False
         ) -> list[dict[str, Any]]:
    """Serve ``plant`` at ``path`` and send ``requests`` over one connection; the answers."""

    async def main() -> list[dict[str, Any]]:
        server = await serve(path, CommandTable(plant_commands(plant)))
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                answers = []
                if pipelined:
                    writer.write(b"".join(encode(r) for r in requests))
                    await writer.drain()
                    answers = [await read_answer(reader) for _ in requests]
                else:
                    for request in requests:
                        writer.write(encode(request))
                        await writer.drain()
                        answers.append(await read_answer(reader))
                return answers
            finally:
                writer.close()
                await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def ask(plant: Plant, path: Path, request: Request) -> dict[str, Any]:
    return talk(plant, path, request)[0]


def refused(answer: dict[str, Any], *fragments: str) -> str:
    assert answer["ok"] is False, answer
    error = answer["error"]
    assert isinstance(error, str) and error
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} missing from: {error}"
    assert "state" not in answer
    return error


def accepted(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["ok"] is True, answer
    state: dict[str, Any] = answer["state"]
    return state


# ---- refused requests ------------------------------------------------------------------------

# (id, request, fragments the error must contain)
BAD: list[tuple[str, Request, tuple[str, ...]]] = [
    ("bad_json", b'{"cmd": "plug", "profile": \n', ("bad JSON",)),
    ("not_utf8", b'\xff\xfe\xfd{"cmd"\n', ("bad JSON",)),
    ("not_an_object", b'["plug"]\n', ("JSON object",)),
    ("deeply_nested_json", b"[" * 30000 + b"]" * 30000 + b"\n", ()),
    ("unknown_command", {"cmd": "teleport"}, ("unknown command 'teleport'", "plug", "state")),
    ("missing_cmd", {"profile": "city_1p"}, ("unknown command None",)),
    ("cmd_not_a_string", {"cmd": 7}, ("unknown command 7",)),
    ("unknown_argument", {"cmd": "plug", "colour": "red"}, ("plug", "unknown argument 'colour'",
                                                           "profile")),
    ("string_for_number", {"cmd": "temperature", "celsius": "hot"},
     ("celsius: expected a number", "'hot'")),
    ("bool_for_number", {"cmd": "temperature", "celsius": True}, ("celsius: expected a number",)),
    ("nan", b'{"cmd": "temperature", "celsius": NaN}\n', ("celsius: expected a number",)),
    ("huge_integer", b'{"cmd": "temperature", "celsius": 1' + b"0" * 400 + b"}\n",
     ("celsius",)),
    ("string_for_bool", {"cmd": "fault", "name": "rcd_trip", "on": "yes"},
     ("on: expected true or false",)),
    ("missing_argument", {"cmd": "temperature"}, ("missing argument 'celsius'",)),
    ("temperature_out_of_range", {"cmd": "temperature", "celsius": 500},
     ("celsius: expected a value within [-40.0, 200.0]", "500")),
    ("voltage_out_of_range", {"cmd": "grid", "voltage_v": [230, 600, 230]},
     ("voltage_v: expected a value within", "600")),
    ("frequency_out_of_range", {"cmd": "grid", "frequency_hz": 100},
     ("frequency_hz: expected a value within",)),
    ("two_voltages", {"cmd": "grid", "voltage_v": [230, 230]},
     ("one value for all phases or three",)),
    ("four_voltages", {"cmd": "grid", "voltage_v": [230, 230, 230, 230]},
     ("voltage_v: expected a list of 1 to 3 numbers",)),
    ("unknown_profile", {"cmd": "plug", "profile": "tesla"}, ("profile:", "'tesla'",
                                                              "compact_3p")),
    ("ev_not_an_object", {"cmd": "plug", "ev": "full"}, ("ev: expected an object",)),
    ("ev_unknown_field", {"cmd": "plug", "ev": {"wheels": 4}}, ("plug:", "'wheels'")),
    ("ev_soc_out_of_range", {"cmd": "plug", "ev": {"soc": 1.5}}, ("plug:", "soc")),
    ("ev_soc_wrong_type", {"cmd": "plug", "ev": {"soc": "full"}}, ("plug:", "soc")),
    ("ev_soc_huge_integer", b'{"cmd": "plug", "ev": {"soc": 1' + b"0" * 400 + b"}}\n",
     ("soc",)),
    ("unplug_without_car", {"cmd": "unplug"}, ("no car",)),
    ("ev_stop_without_car", {"cmd": "ev_stop"}, ("no car",)),
    ("quirk_without_car", {"cmd": "quirk", "name": "no_resume"}, ("no car",)),
    ("unknown_fault", {"cmd": "fault", "name": "meteor"}, ("name:", "'meteor'", "rcd_trip")),
    ("unknown_input", {"cmd": "input", "name": "in9", "value": True}, ("name:", "'in9'")),
    ("uncoded_cable", {"cmd": "cable", "amps": 16}, ("amps:", "16")),
]


@pytest.mark.parametrize(("request_", "fragments"),
                         [pytest.param(r, f, id=i) for i, r, f in BAD])
def test_bad_request_is_refused_and_plant_unchanged(
        plant: Plant, sock: Path, request_: Request, fragments: tuple[str, ...]) -> None:
    before = plant.snapshot()
    refused(ask(plant, sock, request_), *fragments)
    assert plant.snapshot() == before


def test_plug_twice_second_refused_state_unchanged(plant: Plant, sock: Path) -> None:
    first, before, second = talk(plant, sock, {"cmd": "plug", "profile": "city_1p"},
                                 {"cmd": "state"}, {"cmd": "plug", "profile": "fast_ac_3p"})
    assert accepted(first)["ev"]["profile"] == "city_1p"
    refused(second, "already plugged")
    assert plant.snapshot() == accepted(before)
    assert plant.ev is not None and plant.ev.profile.name == "city_1p"


def test_bad_request_after_plug_keeps_the_car(plant: Plant, sock: Path) -> None:
    plugged, bad, after = talk(plant, sock, {"cmd": "plug", "ev": {"soc": 0.5}},
                               {"cmd": "plug", "ev": {"soc": 2}}, {"cmd": "state"})
    refused(bad)
    assert accepted(after) == accepted(plugged)


# ---- accepted requests -----------------------------------------------------------------------


def test_state_is_the_plant_snapshot(plant: Plant, sock: Path) -> None:
    state = accepted(ask(plant, sock, {"cmd": "state"}))
    assert state == plant.snapshot()
    assert state["ev"] is None
    assert state["pilot"]["output"] == "x1"
    assert state["contactor"] == {"commanded": False, "closed": False}
    assert state["faults"] == []


def test_plug_default_profile_then_unplug(plant: Plant, sock: Path) -> None:
    plugged, unplugged = talk(plant, sock, {"cmd": "plug"}, {"cmd": "unplug"})
    assert accepted(plugged)["ev"]["profile"] == plant.default_profile == "compact_3p"
    assert accepted(plugged)["pilot"]["high_v"] == 9.0  # state B
    assert accepted(unplugged)["ev"] is None
    assert plant.ev is None


def test_plug_with_ev_overrides_reflected_in_state(plant: Plant, sock: Path) -> None:
    state = accepted(ask(plant, sock, {"cmd": "plug", "profile": "city_1p",
                                       "ev": {"soc": 0.9, "battery_kwh": 20,
                                              "quirks": ["no_resume"]}}))
    ev = state["ev"]
    assert ev["profile"] == "city_1p"
    assert ev["soc"] == pytest.approx(0.9)
    assert ev["battery_kwh"] == 20.0
    assert ev["phases"] == 1  # not overridden: the profile's
    assert ev["quirks"] == ["no_resume"]
    assert plant.ev is not None and plant.ev.soc == pytest.approx(0.9)
    assert accepted(ask(plant, sock, {"cmd": "state"}))["ev"]["soc"] == pytest.approx(0.9)


def test_fault_inject_and_clear(plant: Plant, sock: Path) -> None:
    tripped, silent, cleared = talk(
        plant, sock, {"cmd": "fault", "name": "rcd_trip"},
        {"cmd": "fault", "name": "meter_silent", "on": True},
        {"cmd": "fault", "name": "rcd_trip", "on": False})
    assert accepted(tripped)["faults"] == ["rcd_trip"]
    assert accepted(tripped)["rcd_tripped"] is True
    assert accepted(silent)["faults"] == ["meter_silent", "rcd_trip"]
    assert accepted(cleared)["faults"] == ["meter_silent"]
    # The RCD stays tripped until it is reset, as a real one does.
    assert accepted(cleared)["rcd_tripped"] is True
    plant.reset_rcd()
    assert plant.snapshot()["rcd_tripped"] is False


def test_grid(plant: Plant, sock: Path) -> None:
    three, one, freq = talk(plant, sock, {"cmd": "grid", "voltage_v": [230, 0, 231.5]},
                            {"cmd": "grid", "voltage_v": [220]},
                            {"cmd": "grid", "frequency_hz": 49.5})
    assert accepted(three)["grid"] == {"voltage_v": [230.0, 0.0, 231.5], "frequency_hz": 50.0}
    assert accepted(one)["grid"]["voltage_v"] == [220.0, 220.0, 220.0]
    assert accepted(freq)["grid"] == {"voltage_v": [220.0, 220.0, 220.0], "frequency_hz": 49.5}


def test_temperature(plant: Plant, sock: Path) -> None:
    assert accepted(ask(plant, sock, {"cmd": "temperature", "celsius": 71.5}))[
        "temperature_c"] == 71.5
    assert plant.temperature() == 71.5


def test_input(plant: Plant, sock: Path) -> None:
    on, off = talk(plant, sock, {"cmd": "input", "name": "in2", "value": True},
                   {"cmd": "input", "name": "in2", "value": False})
    assert accepted(on)["inputs"] == {"in1": False, "in2": True, "in3": False, "in4": False}
    assert accepted(off)["inputs"]["in2"] is False


def test_cable_changes_while_unplugged_refused_while_plugged(plant: Plant, sock: Path) -> None:
    changed, plugged, refused_answer, after = talk(
        plant, sock, {"cmd": "cable", "amps": 20}, {"cmd": "plug"},
        {"cmd": "cable", "amps": 13}, {"cmd": "state"})
    assert accepted(changed)["cable_a"] == 20.0
    assert plant.pp_ohm() == 680.0
    refused(refused_answer, "unplug the car")
    assert accepted(after) == accepted(plugged)
    assert accepted(after)["cable_a"] == 20.0


# ---- the connection --------------------------------------------------------------------------


def test_several_requests_on_one_connection(plant: Plant, sock: Path) -> None:
    # A blank line gets no answer: the answer after the plug's is the bad JSON's.
    answers = talk(plant, sock, {"cmd": "plug"}, b"\n  \n{oops\n",
                   {"cmd": "temperature", "celsius": 30}, {"cmd": "unplug"}, {"cmd": "unplug"})
    assert [a["ok"] for a in answers] == [True, False, True, True, False]
    refused(answers[1], "bad JSON")
    assert accepted(answers[2])["temperature_c"] == 30.0
    assert accepted(answers[3])["ev"] is None
    refused(answers[4], "no car")


def test_pipelined_requests_answered_in_order(plant: Plant, sock: Path) -> None:
    answers = talk(plant, sock, {"cmd": "plug", "profile": "phev_1p"}, {"cmd": "teleport"},
                   {"cmd": "temperature", "celsius": 40}, {"cmd": "state"}, pipelined=True)
    assert accepted(answers[0])["ev"]["profile"] == "phev_1p"
    refused(answers[1], "teleport")
    assert accepted(answers[2])["temperature_c"] == 40.0
    assert accepted(answers[3]) == plant.snapshot()


def test_request_longer_than_64k_gets_an_error_answer(plant: Plant, sock: Path) -> None:
    before = plant.snapshot()
    big = json.dumps({"cmd": "plug", "pad": "x" * (MAX_LINE + 1000)}).encode() + b"\n"
    assert len(big) > 64 * 1024

    async def main() -> dict[str, Any]:
        server = await serve(sock, CommandTable(plant_commands(plant)))
        try:
            reader, writer = await asyncio.open_unix_connection(str(sock))
            try:
                writer.write(big)
                # The server may hang up before it has read everything.
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                return await read_answer(reader)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    refused(asyncio.run(main()), "too long")
    assert plant.snapshot() == before


def test_request_just_under_the_limit_is_read_in_full(plant: Plant, sock: Path) -> None:
    request = json.dumps({"cmd": "state", "pad": "x" * (MAX_LINE - 100)}).encode() + b"\n"
    assert len(request) < MAX_LINE
    refused(ask(plant, sock, request), "unknown argument 'pad'")


def test_socket_is_private_and_replaces_a_stale_one(plant: Plant, sock: Path) -> None:
    import socket as sockets
    stale = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    stale.bind(str(sock))  # a socket file left by a controller that died
    stale.close()
    mode: list[int] = []

    async def main() -> None:
        server = await serve(sock, CommandTable(plant_commands(plant)))
        mode.append(sock.stat().st_mode)
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert stat.S_ISSOCK(mode[0])
    assert stat.S_IMODE(mode[0]) == 0o600


def test_serve_never_deletes_a_file_or_a_live_socket(plant: Plant, sock: Path) -> None:
    sock.write_text("precious")

    async def refused() -> None:
        with pytest.raises(FileExistsError):
            await serve(sock, CommandTable(plant_commands(plant)))

    asyncio.run(refused())
    assert sock.read_text() == "precious"
    sock.unlink()

    async def live() -> None:
        first = await serve(sock, CommandTable(plant_commands(plant)))
        with pytest.raises(OSError, match="in use"):
            await serve(sock, CommandTable(plant_commands(plant)))
        first.close()
        await first.wait_closed()

    asyncio.run(live())
