"""The plant's control interface: JSON commands, over a Unix socket, one per line.

Tests, the factory jig and a HIL rig drive the simulated plant from outside the controller's
process with it, and scenario files use the very same commands. Every request is checked in full
before anything is done, so a bad request gets an error answer and leaves the plant as it was.

    {"cmd": "plug", "profile": "sleepy_3p"}      ->  {"ok": true, "state": {...}}
    {"cmd": "fault", "name": "rcd_trip"}         ->  {"ok": true, "state": {...}}
    {"cmd": "teleport"}                          ->  {"ok": false, "error": "unknown command ..."}

A socket rather than HTTP keeps the controller free of a web stack (and its ~26 MB) until the
web page needs one; ``evsim`` or ``socat - UNIX-CONNECT:<path>`` talk to it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hal.sim.ev import PROFILES, EvProfile, Quirk, is_number
from hal.sim.plant import PP_OHM, Plant, PlantError, PlantFault

MAX_LINE = 65536
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class CommandError(Exception):
    """A request that cannot be carried out; the message goes back to the caller."""


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    kind: str                      # number | string | bool | numbers | strings | object
    required: bool = False
    choices: tuple[Any, ...] | None = None
    lo: float | None = None
    hi: float | None = None

    def check(self, value: Any) -> Any:
        where = f"{self.name}:"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise CommandError(f"{where} expected true or false, got {value!r}")
        elif self.kind == "string":
            if not isinstance(value, str):
                raise CommandError(f"{where} expected a string, got {value!r}")
        elif self.kind == "object":
            if not isinstance(value, dict):
                raise CommandError(f"{where} expected an object, got {value!r}")
        elif self.kind == "strings":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CommandError(f"{where} expected a list of strings, got {value!r}")
            bad = [v for v in value if self.choices is not None and v not in self.choices]
            if bad:
                raise CommandError(f"{where} {bad[0]!r} is not one of "
                                   f"{', '.join(str(c) for c in self.choices or ())}")
            return value
        elif self.kind == "numbers":
            if (not isinstance(value, list) or not 1 <= len(value) <= 3
                    or not all(is_number(v) for v in value)):
                raise CommandError(f"{where} expected a list of 1 to 3 numbers, got {value!r}")
            for v in value:
                self._bounds(v)
            return [float(v) for v in value]
        else:
            if not is_number(value):
                raise CommandError(f"{where} expected a number, got {value!r}")
            self._bounds(value)
            value = float(value)
        if self.choices is not None and value not in self.choices:
            raise CommandError(f"{where} expected one of "
                               f"{', '.join(str(c) for c in self.choices)}, got {value!r}")
        return value

    def _bounds(self, v: float) -> None:
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise CommandError(f"{self.name}: expected a value within [{self.lo}, {self.hi}], "
                               f"got {v!r}")


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    doc: str
    args: tuple[Arg, ...]
    handler: Handler
    # Checks that span several arguments; raises CommandError. Run by ``parse``, so scenario
    # files are checked in full before the run, not when the action comes up.
    check: Callable[[dict[str, Any]], object] | None = None


class CommandTable:
    def __init__(self, commands: list[Command] | None = None) -> None:
        self._commands: dict[str, Command] = {}
        for command in commands or []:
            self.add(command)

    def add(self, command: Command) -> None:
        self._commands[command.name] = command

    def names(self) -> list[str]:
        return sorted(self._commands)

    def parse(self, request: Any) -> tuple[Command, dict[str, Any]]:
        """Check a request fully; CommandError says what is wrong with it."""
        if not isinstance(request, dict):
            raise CommandError("expected a JSON object such as {\"cmd\": \"state\"}")
        name = request.get("cmd")
        command = self._commands.get(name) if isinstance(name, str) else None
        if command is None:
            raise CommandError(f"unknown command {name!r}; expected one of "
                               f"{', '.join(self.names())}")
        known = {a.name: a for a in command.args}
        args: dict[str, Any] = {}
        for key, value in request.items():
            if key == "cmd":
                continue
            if key not in known:
                raise CommandError(f"{name}: unknown argument {key!r}; expected "
                                   f"{', '.join(known) or 'none'}")
            args[key] = known[key].check(value)
        for arg in command.args:
            if arg.required and arg.name not in args:
                raise CommandError(f"{name}: missing argument {arg.name!r}")
        if command.check is not None:
            command.check(args)
        return command, args

    def execute(self, request: Any) -> dict[str, Any]:
        try:
            command, args = self.parse(request)
            return {"ok": True, **command.handler(args)}
        except (CommandError, PlantError) as exc:
            return {"ok": False, "error": str(exc)}

    def describe(self) -> dict[str, Any]:
        return {c.name: {"doc": c.doc, "args": [a.name for a in c.args]}
                for c in self._commands.values()}


def plant_commands(plant: Plant) -> list[Command]:
    def state(_: dict[str, Any]) -> dict[str, Any]:
        return {"state": plant.snapshot()}

    def then_state(action: Callable[[dict[str, Any]], None]) -> Handler:
        def run(args: dict[str, Any]) -> dict[str, Any]:
            action(args)
            return state(args)
        return run

    def profile_of(args: dict[str, Any]) -> EvProfile:
        profile = PROFILES[args.get("profile", plant.default_profile)]
        if "ev" in args:
            try:
                profile = profile.with_overrides(args["ev"])
            except ValueError as exc:
                raise CommandError(f"plug: {exc}") from exc
        return profile

    def plug(args: dict[str, Any]) -> None:
        plant.plug(profile_of(args))

    def cable(args: dict[str, Any]) -> None:
        if plant.ev is not None:
            raise CommandError("cable: unplug the car before changing the cable")
        plant.cable_a = args["amps"]

    def grid(args: dict[str, Any]) -> None:
        volts = args.get("voltage_v")
        if volts is not None and len(volts) == 1:
            volts = volts * 3
        if volts is not None and len(volts) != 3:
            raise CommandError("grid: voltage_v takes one value for all phases or three")
        plant.set_grid(None if volts is None else tuple(volts), args.get("frequency_hz"))

    def temperature(args: dict[str, Any]) -> None:
        plant.advance()
        plant.temperature_c = args["celsius"]

    def set_input(args: dict[str, Any]) -> None:
        plant.set_input(args["name"], args["value"])

    def profiles(_: dict[str, Any]) -> dict[str, Any]:
        return {"profiles": {name: {k: (sorted(q.value for q in v) if k == "quirks" else v)
                                    for k, v in asdict(p).items()}
                             for name, p in PROFILES.items()}}

    return [
        Command("state", "read the plant's state", (), state),
        Command("profiles", "list the EV profiles", (), profiles),
        Command("plug", "plug a car in (profile name, optional field overrides in 'ev')",
                (Arg("profile", "string", choices=tuple(PROFILES)), Arg("ev", "object")),
                then_state(plug), check=profile_of),
        Command("unplug", "unplug the car", (), then_state(lambda a: plant.unplug())),
        Command("ev_stop", "the driver stops charging from the car", (),
                then_state(lambda a: plant.ev_stop())),
        Command("ev_resume", "the driver lets the car charge again", (),
                then_state(lambda a: plant.ev_resume())),
        Command("quirk", "give the plugged car a quirk, or take it away",
                (Arg("name", "string", True, tuple(q.value for q in Quirk)),
                 Arg("on", "bool")),
                then_state(lambda a: plant.set_quirk(Quirk(a["name"]), a.get("on", True)))),
        Command("fault", "inject a plant fault, or clear it with on=false",
                (Arg("name", "string", True, tuple(f.value for f in PlantFault)),
                 Arg("on", "bool")),
                then_state(lambda a: plant.set_fault(PlantFault(a["name"]),
                                                     a.get("on", True)))),
        Command("grid", "set grid voltage per phase and frequency",
                (Arg("voltage_v", "numbers", lo=0.0, hi=500.0),
                 Arg("frequency_hz", "number", lo=40.0, hi=70.0)),
                then_state(grid)),
        Command("temperature", "set the board temperature",
                (Arg("celsius", "number", True, lo=-40.0, hi=200.0),), then_state(temperature)),
        Command("input", "set a named digital input",
                (Arg("name", "string", True, tuple(plant.inputs)), Arg("value", "bool", True)),
                then_state(set_input)),
        Command("input_wire", "cut the wire to a named digital input, or mend it with cut=false",
                (Arg("name", "string", True, tuple(plant.inputs)), Arg("cut", "bool")),
                then_state(lambda a: plant.cut_input(a["name"], a.get("cut", True)))),
        Command("cable", "choose the PP coding of the socket cable (unplugged only)",
                (Arg("amps", "number", True, tuple(PP_OHM)),), then_state(cable)),
    ]


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a controller that died; refuse to touch anything else."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            return
    raise OSError(errno.EADDRINUSE, "in use by another running controller", str(path))


async def serve(path: Path, table: CommandTable) -> asyncio.Server:
    """Answer JSON-lines requests on a Unix socket at ``path`` (replacing a stale one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_socket(path)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    answer: dict[str, Any] = {"ok": False, "error": "request too long"}
                    writer.write(json.dumps(answer).encode() + b"\n")
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except (ValueError, RecursionError) as exc:
                    answer = {"ok": False, "error": f"bad JSON: {exc}"}
                else:
                    answer = table.execute(request)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    # Owner-only from the first moment: the socket drives a plant that switches a contactor.
    umask = os.umask(0o177)
    try:
        return await asyncio.start_unix_server(client, path=str(path), limit=MAX_LINE)
    finally:
        os.umask(umask)
