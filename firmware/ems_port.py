"""The controller's side of the energy manager: the one narrow port of the architecture.

Out: the connector's state as an ``ems.model.ChargePointState``. In: an ``ems.model.Command``,
whose limits enter the arbiter under their own sources (``site_fuse`` is grid class, a boost
never lifts it). A command is valid for a while only: when the EMS falls silent — its process
died, MQTT is down, its cycle crashed — the EMS limits are withdrawn and one fail-safe site-fuse
limit takes their place, with the reason, so the charger never runs at the last current forever.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import time
from pathlib import Path
from typing import Any

from ems.config_error import ConfigError
from ems.model import ChargePointState, Command, Mode
from ems.mqtt_client import MqttSettings
from ems.mqtt_link import ChargePointLink
from ems.service import EmsService
from ems.site import SiteConfig, load_site, time_of_day
from ems.sources import SiteInputs, check_inputs, open_inputs
from firmware import logs
from firmware.core.iec61851 import Phase
from firmware.core.limits import Limit, LimitSource
from firmware.evse.connector import Connector
from firmware.evse.limit_port import LimitPort
from hal.board import Board
from hal.clock import Clock
from hal.sim.control import Arg, CommandError
from hal.sim.control import Command as ControlCommand

SOURCES = {
    "site_fuse": LimitSource.SITE_FUSE,
    "pv_surplus": LimitSource.PV_SURPLUS,
    "home_battery": LimitSource.HOME_BATTERY,
    "price": LimitSource.PRICE,
    "ems_mode": LimitSource.EMS_MODE,
}
_PLUGGED = frozenset(Phase) - {Phase.IDLE}


class EmsPort:
    """Applies EMS commands to one connector's limits, with expiry and a fail-safe."""

    def __init__(self, cp_id: str, connector: Connector, limits: LimitPort,
                 failsafe_a: float) -> None:
        self.cp_id = cp_id
        self.connector = connector
        self.limits = limits
        self.own_failsafe_a = failsafe_a
        self.failsafe_a = failsafe_a   # the lower of ours and the EMS's last word
        self.log = logs.get("ems_port")
        self._expiry: asyncio.TimerHandle | None = None
        self.failsafe_active = False

    def start(self) -> None:
        """Until the first command arrives the EMS has said nothing: fail-safe current."""
        self.apply(None, None, why="no command from the energy manager yet")

    def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def state(self, now: float) -> ChargePointState:
        view = self.connector.view()
        meter = view.meter
        currents = tuple(meter.current_a[:3]) if meter is not None else (0.0, 0.0, 0.0)
        currents = currents + (0.0,) * (3 - len(currents))
        return ChargePointState(
            id=self.cp_id, at=now, connected=view.state.phase in _PLUGGED,
            charging=view.state.contactor,
            phases=1 if view.phases == 1 else 3,
            currents_a=(currents[0], currents[1], currents[2]),
            power_w=meter.total_power_w if meter is not None else 0.0,
            session_wh=view.session.energy_wh if view.session is not None else 0.0,
            offered_a=view.state.offered_a, boost=self.limits.boost)

    def apply(self, command: Command | None, valid_s: float | None, *, why: str = "") -> None:
        """``None``: the EMS is silent or expired — fail safe. ``valid_s`` None: the caller
        (the MQTT link) runs the expiry itself. The limits change in one update, so no step
        ever runs with the old ones withdrawn and the new ones not yet there."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        failsafe = Limit.of(LimitSource.SITE_FUSE, f"energy manager silent ({why}): fail-safe "
                            f"{self.failsafe_a:g} A", amps=self.failsafe_a)
        if command is None:
            self.limits.update([failsafe], [s for k, s in SOURCES.items() if k != "site_fuse"])
            if not self.failsafe_active:
                logs.log(self.log, "ems_failsafe", cp=self.cp_id, reason=why,
                         amps=self.failsafe_a)
            self.failsafe_active = True
            return
        if command.failsafe_a is not None:
            self.failsafe_a = min(self.own_failsafe_a, command.failsafe_a)
        submit: list[Limit] = []
        for lim in command.limits:
            known = SOURCES.get(lim.source)
            if known is None:
                logs.log(self.log, "ems_unknown_source", cp=self.cp_id, source=lim.source)
                continue
            submit.append(Limit.of(known, lim.reason, amps=lim.amps))
        given = {limit.source for limit in submit}
        if LimitSource.SITE_FUSE not in given:
            # Without its share of the fuse a car would be bounded by nothing the EMS knows.
            why = "its command had no site_fuse limit"
            submit.append(Limit.of(LimitSource.SITE_FUSE, f"energy manager: {why}: fail-safe "
                                   f"{self.failsafe_a:g} A", amps=self.failsafe_a))
        self.limits.update(submit, [s for s in SOURCES.values() if s not in given
                                    and s is not LimitSource.SITE_FUSE])
        if command.phases is not None:
            note = next((n for n in command.notes if n.startswith("1p/3p")), "energy manager")
            self.limits.request_phases(command.phases, note)
        if self.failsafe_active:
            logs.log(self.log, "ems_resumed", cp=self.cp_id)
        self.failsafe_active = False
        if valid_s is not None:
            self._expiry = asyncio.get_running_loop().call_later(
                valid_s, lambda: self.apply(None, None, why=f"no command for {valid_s:g} s"))


class LocalChargePoints:
    """``ems.service.ChargePoints`` for an EMS running in the controller's own process."""

    def __init__(self, ports: Mapping[str, EmsPort], clock: Clock) -> None:
        self.ports = dict(ports)
        self.clock = clock

    def states(self) -> dict[str, ChargePointState]:
        now = self.clock.now()
        return {cp_id: port.state(now) for cp_id, port in self.ports.items()}

    def send(self, command: Command, valid_s: float) -> object:
        port = self.ports.get(command.cp_id)
        if port is None:
            return False
        port.apply(command, valid_s)
        return True


def load_local_site(path: Path, board: Board) -> SiteConfig:
    """A site file for the in-process EMS: exactly one charge point, this board's."""
    site = load_site(path)
    if len(site.charge_points) != 1:
        raise ConfigError(str(path), "charge_point",
                          "exactly one [[charge_point]] for an in-process energy manager (run "
                          "`voltpilot ems --site` to steer several over MQTT)",
                          len(site.charge_points))
    cp = site.charge_points[0]
    if cp.phases > board.ratings.phases:
        raise ConfigError(str(path), "charge_point[0].phases",
                          f"at most the board's {board.ratings.phases}", cp.phases)
    if cp.max_a > board.ratings.max_current_a:
        raise ConfigError(str(path), "charge_point[0].max_a",
                          f"at most the board's {board.ratings.max_current_a:g} A", cp.max_a)
    if cp.phase_switching and not board.charging.phase_switching:
        raise ConfigError(str(path), "charge_point[0].phase_switching",
                          f"false: board {board.name!r} does not switch phases "
                          "([charging] phase_switching)", True)
    for meter in site.meters:
        if meter.kind == "sim" and board.sim is None:
            raise ConfigError(str(path), f"meter {meter.name!r}.kind",
                              "modbus or mqtt on a board without a simulated plant", "sim")
    check_inputs(site)
    return site


class LocalEms:
    """The energy manager in this process, for this one charge point."""

    def __init__(self, site: SiteConfig, connector: Connector, limits: LimitPort,
                 clock: Clock, data_dir: Path) -> None:
        cp = site.charge_points[0]
        self.port = EmsPort(cp.id, connector, limits, site.grid.failsafe_a)

        def car_draw(now: float) -> tuple[list[float], float]:
            state = self.port.state(now)
            amps = [0.0, 0.0, 0.0]
            for k in range(3):
                amps[cp.phase_map[k] - 1] += state.currents_a[k]
            return amps, state.power_w

        self.inputs: SiteInputs = open_inputs(site, car_draw, clock=clock.now)
        self.service = EmsService(site, self.inputs.meters,
                                  LocalChargePoints({cp.id: self.port}, clock), clock.now,
                                  prices=self.inputs.prices,
                                  kpi_file=data_dir / "ems-kpis.json")

    def start(self) -> None:
        self.port.start()
        self.inputs.start()
        self.service.start()

    def set(self, args: dict[str, Any]) -> dict[str, Any]:
        """The user's settings for the charge point (the ``ems`` control command)."""
        cp = self.service.site.charge_points[0]
        current = self.service.settings[cp.id]
        changes: dict[str, Any] = {}
        if "mode" in args:
            changes["mode"] = Mode(args["mode"])
        if "never_switch" in args:
            changes["never_switch"] = args["never_switch"]
        if "target_kwh" in args:
            changes["target_wh"] = args["target_kwh"] * 1000.0 or None
        if "departure" in args:
            changes["departure"] = departure_time(args["departure"])
        settings = replace(current, **changes)
        if (settings.departure is None) != (settings.target_wh is None):
            raise CommandError("departure and target_kwh go together (target_kwh=0 clears)")
        self.service.set_mode(cp.id, settings)
        return self.status()

    def status(self) -> dict[str, Any]:
        cp = self.service.site.charge_points[0]
        s = self.service.settings[cp.id]
        report = self.service.last_report
        out: dict[str, Any] = {
            "mode": s.mode.value, "departure": None if s.departure is None
            else s.departure.strftime("%H:%M"), "target_kwh": None if s.target_wh is None
            else s.target_wh / 1000.0, "never_switch": s.never_switch,
            "failsafe": self.port.failsafe_active,
            "cycle_errors": self.service.cycle_errors}
        if report is not None:
            out["inputs"] = {i.name: {"health": i.health.value, "faults": i.faults,
                                      "reason": i.reason()} for i in report.inputs}
            out["surplus_w"] = report.surplus_w
            out["reason"] = report.cps[0].reason
            out["notes"] = list(report.cps[0].command.notes)
        return out

    async def stop(self) -> None:
        await self.service.stop()
        await self.inputs.close()
        self.port.stop()


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """``voltpilot run --ems-link FILE``: this charge point follows a stand-alone EMS."""

    path: Path
    site: str
    cp_id: str
    failsafe_a: float
    state_every_s: float
    mqtt: MqttSettings


def load_link(path: Path) -> LinkSettings:
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "(file)", "a readable UTF-8 TOML file", str(exc)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "(file)", "valid TOML", str(exc)) from exc
    for key in raw:
        if key not in ("link", "mqtt"):
            raise ConfigError(file, key, "one of link, mqtt", "an unknown key")
    link = raw.get("link")
    if not isinstance(link, dict):
        raise ConfigError(file, "[link]", "a table with site and cp_id", link)
    for key in link:
        if key not in ("site", "cp_id", "failsafe_a", "state_every_s"):
            raise ConfigError(file, f"link.{key}", "one of site, cp_id, failsafe_a, "
                              "state_every_s", "an unknown key")
    for key in ("site", "cp_id"):
        if not isinstance(link.get(key), str) or not link[key]:
            raise ConfigError(file, f"link.{key}", "a name", link.get(key))
    failsafe = link.get("failsafe_a", 6.0)
    if isinstance(failsafe, bool) or not isinstance(failsafe, int | float) \
            or not 0 <= failsafe <= 80:
        raise ConfigError(file, "link.failsafe_a", "a current in [0, 80] A", failsafe)
    every = link.get("state_every_s", 1.0)
    if isinstance(every, bool) or not isinstance(every, int | float) or not 0.1 <= every <= 60:
        raise ConfigError(file, "link.state_every_s", "seconds in [0.1, 60]", every)
    mqtt = raw.get("mqtt")
    if not isinstance(mqtt, dict):
        raise ConfigError(file, "[mqtt]", "the broker's table (host, port, ...)", mqtt)
    return LinkSettings(path, link["site"], link["cp_id"], float(failsafe), float(every),
                        MqttSettings.from_table(mqtt, file))


class RemoteEms:
    """This charge point's end of a stand-alone EMS: publishes its state, applies commands;
    the link's expiry and the EMS's last will both end in the port's fail-safe."""

    def __init__(self, settings: LinkSettings, connector: Connector, limits: LimitPort,
                 clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.port = EmsPort(settings.cp_id, connector, limits, settings.failsafe_a)
        self.link = ChargePointLink(settings.mqtt, settings.site, settings.cp_id,
                                    self._on_command)
        self._task: asyncio.Task[None] | None = None

    def _on_command(self, command: Command | None) -> None:
        if command is None:
            why = "the energy manager is offline" if self.link.ems_online is False \
                else "its command expired"
            self.port.apply(None, None, why=why)
        else:
            self.port.apply(command, None)

    def start(self) -> None:
        self.port.start()
        self.link.start()
        self._task = asyncio.get_running_loop().create_task(self._publish_forever())

    async def _publish_forever(self) -> None:
        while True:
            self.link.publish_state(self.port.state(self.clock.now()))
            await asyncio.sleep(self.settings.state_every_s)

    def status(self) -> dict[str, Any]:
        return {"link": "online" if self.link.online else "offline",
                "ems_online": self.link.ems_online, "failsafe": self.port.failsafe_active,
                "rejected": sum(self.link.rejected.values())}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.link.close()
        self.port.stop()


def departure_time(text: str) -> time | None:
    """"HH:MM" (UTC, every day) or "" to clear."""
    if text == "":
        return None
    at = time_of_day(text)
    if at is None:
        raise CommandError(f"departure: expected HH:MM (UTC) or \"\", got {text!r}")
    return at


def ems_command(ems: Callable[[], LocalEms | None]) -> ControlCommand:
    """``ems mode=pv departure=07:00 target_kwh=20 never_switch=true``: the user's settings for
    the in-process energy manager (what the web page and MQTT will also call)."""

    def handler(args: dict[str, Any]) -> dict[str, Any]:
        local = ems()
        if local is None:
            raise CommandError("the energy manager is not running yet")
        return {"ems": local.set(args)}

    return ControlCommand(
        "ems", "the energy manager's settings for this charge point (mode, departure, target)",
        (Arg("mode", "string", choices=tuple(m.value for m in Mode)),
         Arg("departure", "string"), Arg("target_kwh", "number", lo=0.0, hi=500.0),
         Arg("never_switch", "bool")), handler)
