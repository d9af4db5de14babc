"""Scenario files: timed commands for the plant and the controller, checked before the run.

    description = "a car plugs in, charges, is limited, leaves"
    [[action]]
    at = 3            # seconds after start (clock time: virtual in a virtual-time run)
    cmd = "plug"
    profile = "demo_3p"

Each action is a command of the plant's control interface (the same JSON a test sends over the
socket) or a controller command (``limit``, ``clear_limit``, ``boost``, ``reset_faults``,
``stop``). The whole file is checked against the command table before anything runs.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hal.sim.control import CommandError, CommandTable

# Ten years: enough for any soak, small enough that a typo like 1e300 is caught.
MAX_AT_S = 3.2e8


class ScenarioError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Action:
    at: float
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Scenario:
    path: Path
    description: str
    actions: tuple[Action, ...]

    @property
    def stops(self) -> bool:
        return any(a.request.get("cmd") == "stop" for a in self.actions)


def load_scenario(path: Path, table: CommandTable) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text: {exc}") from exc
    for key in raw:
        if key not in ("description", "action"):
            raise ScenarioError(f"{path}: {key}: unknown key; expected description, action")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"{path}: description: expected a string")
    entries = raw.get("action", [])
    if not isinstance(entries, list) or not entries:
        raise ScenarioError(f"{path}: expected at least one [[action]] table")
    actions = []
    for i, entry in enumerate(entries, start=1):
        where = f"{path}: action {i}"
        if not isinstance(entry, dict):
            raise ScenarioError(f"{where}: expected an [[action]] table, got {entry!r}")
        at = entry.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at <= MAX_AT_S:
            raise ScenarioError(f"{where}: at: expected seconds in [0, {MAX_AT_S:g}], "
                                f"got {at!r}")
        request = {k: v for k, v in entry.items() if k != "at"}
        try:
            table.parse(request)
        except CommandError as exc:
            raise ScenarioError(f"{where}: {exc}") from exc
        actions.append(Action(float(at), request))
    actions.sort(key=lambda a: a.at)
    return Scenario(path, description, tuple(actions))
