"""The composition root: load the board, build the hardware, the store and the connector, wire
the control interface and the scenario, run until told to stop, and shut down in a safe order.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from firmware import console, logs
from firmware.core.limits import Limit, LimitSource
from firmware.core.reasons import FaultCode, StopReason
from firmware.evse.connector import Connector
from firmware.evse.contacts import ContactInputs
from firmware.evse.limit_port import LimitPort
from firmware.evse.session import Session
from firmware.ocpp.settings import OcppSettings, OcppSettingsError, load_settings
from firmware.scenario import Scenario, load_scenario
from firmware.store.db import Store
from firmware.virtual_time import VirtualTimeLoop
from hal.board import Board
from hal.clock import Clock, VirtualClock, WallClock, iso
from hal.hardware import Hardware, open_hardware
from hal.sim.control import Arg, Command, CommandError, CommandTable, plant_commands, serve

# IdTokenEnumType values a card reader or app can present (OCPP 2.0.1).
TOKEN_TYPES = ("Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local", "MacAddress",
               "NoAuthorization")


if TYPE_CHECKING:
    from ems.site import SiteConfig
    from firmware.ems_port import LinkSettings, LocalEms, RemoteEms
    from firmware.ocpp.station import Station


class RunError(Exception):
    """The controller cannot start as asked (exit code 2)."""


# run() returns this when the CSMS asked for a reset: the CLI starts the controller again.
EXIT_RESTART = 3


@dataclass(frozen=True, slots=True)
class RunOptions:
    virtual_time: bool = False
    scenario: Path | None = None
    duration: float | None = None
    data_dir: Path = Path("var")
    status: str = "auto"              # auto | tty | lines | off
    status_every: float | None = None  # clock seconds between status lines
    log: str | None = None            # file path, "-" for stderr; default data_dir/voltpilot.log
    ocpp: Path | None = None          # the OCPP settings file; None runs without a CSMS
    ems: Path | None = None           # a site file: run the energy manager in-process
    ems_link: Path | None = None      # a link file: follow a stand-alone EMS over MQTT


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """One controller per data directory: a second one would fight over the same records."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # Opened for appending: the pid of a running holder must survive a refused attempt.
    with open(data_dir / "voltpilot.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunError(f"another voltpilot is running with data directory {data_dir}") \
                from exc
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


class Controller:
    def __init__(self, board: Board, clock: Clock, opts: RunOptions, out: TextIO) -> None:
        self.board = board
        self.clock = clock
        self.opts = opts
        self.out = out
        self.limits = LimitPort()
        self.stop = asyncio.Event()
        self.hw: Hardware = open_hardware(board, clock)
        self.store: Store | None = None
        self.connector: Connector | None = None
        self.contacts: ContactInputs | None = None
        if board.inputs and self.hw.inputs is not None:
            self.contacts = ContactInputs(board, self.hw.inputs, self.limits, clock.now)
        self.table = CommandTable(plant_commands(self.hw.plant) if self.hw.plant else [])
        for command in self._controller_commands():
            self.table.add(command)
        self.ocpp_settings: OcppSettings | None = None
        if opts.ocpp is not None:
            try:
                self.ocpp_settings = load_settings(opts.ocpp)
            except OcppSettingsError as exc:
                raise RunError(str(exc)) from exc
        self.station: Station | None = None
        self.site: SiteConfig | None = None
        self.ems_link: LinkSettings | None = None
        if opts.ems is not None or opts.ems_link is not None:
            if opts.ems is not None and opts.ems_link is not None:
                raise RunError("--ems runs the energy manager here, --ems-link follows one "
                               "elsewhere: give one of them")
            from ems.config_error import ConfigError  # noqa: PLC0415
            from firmware.ems_port import load_link, load_local_site  # noqa: PLC0415
            try:
                if opts.ems is not None:
                    self.site = load_local_site(opts.ems, board)
                else:
                    assert opts.ems_link is not None
                    self.ems_link = load_link(opts.ems_link)
            except ConfigError as exc:
                raise RunError(str(exc)) from exc
        self.ems: LocalEms | RemoteEms | None = None
        if self.site is not None:
            from firmware.ems_port import LocalEms, ems_command  # noqa: PLC0415

            self.table.add(ems_command(
                lambda: self.ems if isinstance(self.ems, LocalEms) else None))
        # Last, so a scenario may use every command (the EMS's too).
        self.scenario: Scenario | None = None
        if opts.scenario is not None:
            self.scenario = load_scenario(opts.scenario, self.table)
        if opts.virtual_time and opts.duration is None and not (
                self.scenario and self.scenario.stops):
            raise RunError("virtual time runs as fast as it can: give --duration or a scenario "
                           "with a 'stop' action")
        self.restart_requested = False
        self.log = logs.get("app")
        self._status_tty = False
        self._last_status_wall = 0.0
        self.scenario_errors = 0

    # ---- commands the controller adds to the plant's ---------------------------------------

    def _controller_commands(self) -> list[Command]:
        sources = tuple(s.key for s in LimitSource)

        def limit_of(args: dict[str, Any]) -> Limit:
            if ("amps" in args) == ("watts" in args):
                raise CommandError("limit: give amps or watts, exactly one")
            duration = args.get("duration_s")
            phases = args.get("phases")
            try:
                return Limit.of(LimitSource.from_key(args["source"]),
                                args.get("reason", "set through the control interface"),
                                amps=args.get("amps"), watts=args.get("watts"),
                                phases=None if phases is None else int(phases),
                                valid_until=None if duration is None
                                else self.clock.now() + duration)
            except ValueError as exc:
                raise CommandError(f"limit: {exc}") from exc

        def limit(args: dict[str, Any]) -> dict[str, Any]:
            self.limits.submit(limit_of(args))
            return self._status()

        def clear_limit(args: dict[str, Any]) -> dict[str, Any]:
            self.limits.withdraw(LimitSource.from_key(args["source"]))
            return self._status()

        def boost(args: dict[str, Any]) -> dict[str, Any]:
            self.limits.set_boost(args["on"])
            return self._status()

        def reset_faults(args: dict[str, Any]) -> dict[str, Any]:
            codes = args.get("codes")
            if self.connector is None:
                raise CommandError("reset_faults: the controller is not running")
            self.connector.reset_faults(
                None if codes is None else frozenset(FaultCode(c) for c in codes))
            return self._status()

        def authorize(args: dict[str, Any]) -> dict[str, Any]:
            if self.connector is None:
                raise CommandError("authorize: the controller is not running")
            self.connector.authorize(args["on"])
            return self._status()

        def stop(_: dict[str, Any]) -> dict[str, Any]:
            self.stop.set()
            return {}

        def tap(args: dict[str, Any]) -> dict[str, Any]:
            if self.station is None:
                raise CommandError("tap: no OCPP station is running (start with --ocpp)")
            token = {"idToken": args["id_token"], "type": args.get("type", "ISO14443")}
            self.station.spawn(self.station.present_token(token))
            return self._status()

        return [
            Command("status", "read the controller's state", (), lambda a: self._status()),
            Command("limit", "set a limit as if an adapter had (simulation and tests)",
                    (Arg("source", "string", True, sources), Arg("amps", "number", lo=0.0),
                     Arg("watts", "number", lo=0.0), Arg("phases", "number", choices=(1, 2, 3)),
                     Arg("reason", "string"), Arg("duration_s", "number", lo=0.001)), limit,
                    check=limit_of),
            Command("clear_limit", "withdraw a source's limit",
                    (Arg("source", "string", True, sources),), clear_limit),
            Command("boost", "the user's boost (lifts optimisation and tariff limits)",
                    (Arg("on", "bool", True),), boost),
            Command("reset_faults", "an operator's manual fault reset (all, or the codes named)",
                    (Arg("codes", "strings", choices=tuple(f.value for f in FaultCode)),),
                    reset_faults),
            Command("authorize", "allow or withdraw charging (boards without free_mode)",
                    (Arg("on", "bool", True),), authorize),
            Command("stop", "shut the controller down", (), stop),
            Command("tap", "present an identification token, as at the card reader (OCPP)",
                    (Arg("id_token", "string", True),
                     Arg("type", "string", choices=TOKEN_TYPES)), tap),
        ]

    def _status(self) -> dict[str, Any]:
        c = self.connector
        if c is None:
            return {"status": None}
        v = c.view()
        b = v.limit.binding
        s = v.session
        return {"status": {
            "time": iso(self.clock.now()), "iec": v.iec, "phase": v.state.phase.value,
            "suspend": v.state.suspend.value if v.state.suspend else None,
            "faults": sorted(f.value for f in v.state.faults),
            "pilot": {"mode": v.state.pilot.mode.value, "duty": v.state.pilot.duty},
            "contactor": v.state.contactor, "offered_a": v.state.offered_a,
            "limit": {"amps": v.limit.amps,
                      "source": b.source.key if b else None,
                      "class": b.cls.name.lower() if b else None,
                      "reason": b.reason if b else None},
            "wakeups": v.state.wakeups_total, "authorized": c.authorized,
            "phases": v.phases,
            "phase_switch": {"stage": v.phase_switch.stage.value,
                             "switches": v.phase_switch.switches,
                             "refused": v.phase_switch.refused.value
                             if v.phase_switch.refused else None,
                             "request": v.phase_request.phases if v.phase_request else None},
            "session": None if s is None else {
                "id": s.id, "status": s.status.value, "energy_wh": s.energy_wh,
                "wakeups": s.wakeups, "faults": [f.value for f in s.faults]},
            **({"ems": self.ems.status()} if self.ems is not None else {}),
            **({"contacts": self.contacts.view()} if self.contacts is not None else {}),
        }}

    # ---- running ---------------------------------------------------------------------------------

    async def run(self) -> int:
        opts = self.opts
        loop = asyncio.get_running_loop()
        server = None
        socket_path = None
        if self.hw.plant is not None:
            socket_path = Path(self.board.sim.control_socket or opts.data_dir / "plant.sock")
            try:
                server = await serve(socket_path, self.table)
            except OSError as exc:
                raise RunError(f"cannot serve the plant control socket {socket_path}: "
                               f"{exc}") from exc
        try:
            self.store = Store(opts.data_dir / "voltpilot.db")
            dangling = self.store.close_dangling(StopReason.CONTROLLER_RESTART.value)
            self.connector = Connector(1, self.board, self.hw, self.clock, self.store,
                                       self.limits)
        except Exception:
            if server is not None:
                server.close()
                _remove(socket_path)
            raise
        if dangling:
            logs.log(self.log, "sessions_closed_after_restart", sessions=dangling)
        self.connector.session_listeners.append(self._print_summary)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        if self.ocpp_settings is not None:
            # Imported only when used: websockets, cryptography and the schemas cost RSS.
            from firmware.ocpp.station import Station  # noqa: PLC0415

            # Before the connector's first step: the station decides who may charge.
            try:
                self.station = Station(self.ocpp_settings, board=self.board,
                                       connector=self.connector, limits=self.limits,
                                       clock=self.clock, data_dir=opts.data_dir,
                                       log_file=_log_path(opts), request_restart=self._restart)
            except (OSError, ValueError, sqlite3.Error) as exc:
                if server is not None:
                    server.close()
                    _remove(socket_path)
                self.store.close()
                raise RunError(f"cannot start the OCPP station in {opts.data_dir}: "
                               f"{exc}") from exc
            self.station.start()
        if self.site is not None or self.ems_link is not None:
            from ems.config_error import ConfigError  # noqa: PLC0415
            from firmware.ems_port import LocalEms, RemoteEms  # noqa: PLC0415

            try:
                if self.site is not None:
                    self.ems = LocalEms(self.site, self.connector, self.limits, self.clock,
                                        opts.data_dir)
                else:
                    assert self.ems_link is not None
                    self.ems = RemoteEms(self.ems_link, self.connector, self.limits,
                                         self.clock)
            except (ConfigError, OSError) as exc:
                if self.station is not None:
                    await self.station.stop()
                if server is not None:
                    server.close()
                    _remove(socket_path)
                self.store.close()
                raise RunError(f"cannot start the energy manager: {exc}") from exc
            self.ems.start()
        if self.contacts is not None:
            # Before the connector's first step, so a dimming contact closed at power-up holds.
            self.contacts.start()
        self.hw.start()
        self.connector.start()
        freeze_startup_heap()
        tasks = [loop.create_task(self._print_status())]
        if self.scenario is not None:
            tasks.append(loop.create_task(self._run_scenario(self.scenario)))
        if opts.duration is not None:
            loop.call_later(opts.duration, self.stop.set)
        mode = "virtual time" if opts.virtual_time else "real time"
        where = f", plant control unix:{socket_path}" if socket_path else ""
        self._say(f"voltpilot ready: board {self.board.name}, connector 1, {mode}{where}")
        logs.log(self.log, "ready", board=self.board.name, virtual_time=opts.virtual_time,
                 plant_socket=str(socket_path) if socket_path else None)
        try:
            await self.stop.wait()
        finally:
            # The contactor opens before anything else is torn down.
            self.connector.shutdown(StopReason.CONTROLLER_SHUTDOWN)
            if self.contacts is not None:
                self.contacts.stop()
            if self.ems is not None:
                await self.ems.stop()
            if self.station is not None:
                await self.station.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if server is not None:
                server.close()
                await server.wait_closed()
                _remove(socket_path)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self.hw.stop()
            self.store.close()
            self._end_status_line()
            logs.log(self.log, "stopped")
        self._say("voltpilot stopped: contactor open")
        if self.restart_requested:
            return EXIT_RESTART
        if self.scenario_errors:
            self._say(f"voltpilot: {self.scenario_errors} scenario action(s) failed",
                      stream=sys.stderr)
            return 1
        return 0

    def _restart(self, why: str) -> None:
        logs.log(self.log, "restart_requested", reason=why)
        self.restart_requested = True
        self.stop.set()

    async def _run_scenario(self, scenario: Scenario) -> None:
        start = self.clock.now()
        for i, action in enumerate(scenario.actions, start=1):
            delay = start + action.at - self.clock.now()
            if delay > 0:
                await asyncio.sleep(delay)
            answer = self.table.execute(action.request)
            logs.log(self.log, "scenario_action", index=i, at=action.at,
                     cmd=action.request.get("cmd"), ok=answer["ok"],
                     error=answer.get("error"))
            if not answer["ok"]:
                self.scenario_errors += 1
                self._say(f"scenario {scenario.path.name}: action {i} "
                          f"({action.request.get('cmd')}) failed: {answer['error']}",
                          stream=sys.stderr)

    # ---- the terminal ----------------------------------------------------------------------------

    def _status_mode(self) -> str:
        mode = self.opts.status
        if mode == "auto":
            return "tty" if self.out.isatty() else "lines"
        return mode

    async def _print_status(self) -> None:
        mode = self._status_mode()
        if mode == "off":
            return
        every = self.opts.status_every or (300.0 if self.opts.virtual_time else 1.0)
        self._status_tty = mode == "tty"
        while True:
            await asyncio.sleep(every)
            wall = time.monotonic()
            if self._status_tty and wall - self._last_status_wall < 0.2:
                continue  # virtual time can outrun a terminal
            self._last_status_wall = wall
            assert self.connector is not None
            line = console.status_line(1, self.connector.view(), self.clock.now())
            if self._status_tty:
                self.out.write("\r\x1b[2K" + line)
                self.out.flush()
            else:
                self._say(line)

    def _end_status_line(self) -> None:
        if self._status_tty:
            self.out.write("\r\x1b[2K")
            self.out.flush()

    def _print_summary(self, session: Session) -> None:
        self._end_status_line()
        self._say(console.summary(session))

    def _say(self, text: str, stream: TextIO | None = None) -> None:
        target = stream or self.out
        target.write(text + "\n")
        target.flush()


def freeze_startup_heap() -> None:
    """Keep what start-up built (modules, board, plant, store: ~20,000 objects, all living as
    long as the process) out of the garbage collector's full passes. Such a pass stops the event
    loop for as long as it takes to walk them: about 5 ms here, up to 15 ms under load, which
    is most of the latency budget between a CP edge and the contactor."""
    gc.collect()
    gc.freeze()


def run(board: Board, opts: RunOptions, out: TextIO = sys.stdout) -> int:
    """Run the controller until stopped: 0 when all went well, 1 when a scenario action failed.
    RunError, BoardError, ScenarioError and StoreError mean it could not start (exit code 2)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(data_dir_lock(opts.data_dir))
            log_stream = stack.enter_context(_log_target(opts))
        except OSError as exc:
            raise RunError(f"cannot use data directory {opts.data_dir}: {exc}") from exc
        clock: Clock
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        if opts.virtual_time:
            vclock = VirtualClock()
            clock = vclock
            factory = lambda: VirtualTimeLoop(vclock)  # noqa: E731
        else:
            clock = WallClock()
        logs.setup(clock, log_stream)
        with asyncio.Runner(loop_factory=factory) as runner:
            controller = Controller(board, clock, opts, out)
            return runner.run(controller.run())


def _log_path(opts: RunOptions) -> Path:
    """Where the structured log goes (when it goes to stderr, the default file stays empty)."""
    return Path(opts.log) if opts.log and opts.log != "-" else opts.data_dir / "voltpilot.log"


@contextlib.contextmanager
def _log_target(opts: RunOptions) -> Iterator[TextIO]:
    if opts.log == "-":
        yield sys.stderr
        return
    path = _log_path(opts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        yield handle


def _remove(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
