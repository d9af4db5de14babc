"""One board's hardware: the backend object playing each role, built from its board.toml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from hal.board import Board, BoardError, Role
from hal.clock import Clock
from hal.roles import (
    ConnectorLock,
    Contactor,
    ControlPilot,
    DigitalInputs,
    GridMonitor,
    Indicator,
    PhaseSwitch,
    PowerMeter,
    ProximityPilot,
    Rcd,
    TemperatureSensor,
    Watchdog,
)
from hal.sim import backends as sim
from hal.sim.ev import PROFILES
from hal.sim.plant import PP_OHM, Plant

T = TypeVar("T")


@dataclass
class Hardware:
    control_pilot: ControlPilot
    contactor: Contactor
    proximity: ProximityPilot | None = None
    rcd: Rcd | None = None
    lock: ConnectorLock | None = None
    indicator: Indicator | None = None
    meter: PowerMeter | None = None
    grid: GridMonitor | None = None
    inputs: DigitalInputs | None = None
    temperature: TemperatureSensor | None = None
    watchdog: Watchdog | None = None
    phase_switch: PhaseSwitch | None = None
    # The simulated plant behind the "sim" backends, for the control interface and scenarios.
    plant: Plant | None = None
    driver: sim.PlantDriver | None = None

    def start(self) -> None:
        """Begin background work (must be called on the running event loop)."""
        if self.driver is not None:
            self.driver.start()

    def stop(self) -> None:
        if self.driver is not None:
            self.driver.stop()


def open_hardware(board: Board, clock: Clock) -> Hardware:
    """Build every role of ``board``. Only the sim backend exists so far; real boards add theirs
    here, keyed by the backend names the board file uses."""
    if board.sim.cable_a not in PP_OHM:
        raise BoardError(f"{board.path}: [sim] cable_a: expected one of "
                         f"{', '.join(str(int(a)) for a in PP_OHM)}, got {board.sim.cable_a}")
    if board.sim.ev_profile not in PROFILES:
        raise BoardError(f"{board.path}: [sim] ev_profile: expected one of "
                         f"{', '.join(PROFILES)}, got {board.sim.ev_profile!r}")
    plant = Plant(clock=clock, cable_a=board.sim.cable_a, phases=board.ratings.phases,
                  nominal_voltage_v=board.ratings.nominal_voltage_v,
                  default_profile=board.sim.ev_profile, max_step_s=board.sim.plant_tick_s)

    unknown = [name for name in board.inputs if name not in plant.inputs]
    if unknown:
        raise BoardError(f"{board.path}: [inputs.{unknown[0]}]: expected one of the board's "
                         f"inputs ({', '.join(plant.inputs)})")
    supervised = frozenset(name for name, spec in board.inputs.items() if spec.supervised)

    def pick(role: Role, make: T) -> T | None:
        return make if board.roles[role] == "sim" else None

    return Hardware(
        control_pilot=sim.SimControlPilot(plant),
        contactor=sim.SimContactor(plant),
        proximity=pick(Role.PROXIMITY_PILOT, sim.SimProximityPilot(plant)),
        rcd=pick(Role.RCD, sim.SimRcd(plant)),
        lock=pick(Role.LOCK, sim.SimLock(plant)),
        indicator=pick(Role.INDICATOR, sim.SimIndicator(plant)),
        meter=pick(Role.METER, sim.SimMeter(plant)),
        grid=pick(Role.GRID, sim.SimGridMonitor(plant)),
        inputs=pick(Role.INPUTS, sim.SimInputs(plant, supervised)),
        temperature=pick(Role.TEMPERATURE, sim.SimTemperature(plant)),
        watchdog=pick(Role.WATCHDOG, sim.SimWatchdog(plant)),
        phase_switch=pick(Role.PHASE_SWITCH, sim.SimPhaseSwitch(plant)),
        plant=plant,
        driver=sim.PlantDriver(plant),
    )
