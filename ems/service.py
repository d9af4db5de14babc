"""The energy manager's imperative shell: polls the meters, runs a cycle every ``cycle_s``,
hands each charge point its command, and keeps the day's KPIs.

The same service runs in-process beside one charge controller (``voltpilot run --ems``) and as
its own process steering several charge points over MQTT (``voltpilot ems --site``); the two
differ only in the ``ChargePoints`` they are given. Time comes from the event loop, so the
service runs on virtual time in tests exactly as on the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ems.config_error import ConfigError
from ems.kpi import Kpis
from ems.kpi import load as load_kpis
from ems.manager import (
    CpSettings,
    CycleReport,
    EmsState,
    cycle,
    default_settings,
    initial_state,
    record_reading,
)
from ems.model import ChargePointState, Command, Reading, Role
from ems.site import SiteConfig
from ems.tariff import PricePlan

# The controller's JSON formatter (firmware/logs.py) renders the event name and the fields;
# ems cannot import it, so it follows the same record convention.
log = logging.getLogger("voltpilot.ems")


def _log(event: str, **fields: object) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(event, extra={"fields": fields})

# KPIs are written this often (and at stop), so a power cut loses at most this much.
KPI_SAVE_S = 300.0
# A command stays valid for this many cycles: a charge point that hears nothing for longer
# falls back to its fail-safe current instead of keeping the last one.
VALID_CYCLES = 3


@dataclass(frozen=True, slots=True)
class Poll:
    reading: Reading | None
    fault: str | None = None


class Meter(Protocol):
    name: str

    async def poll(self, now: float) -> Poll: ...

    async def close(self) -> None: ...


class ChargePoints(Protocol):
    def states(self) -> Mapping[str, ChargePointState]: ...

    def send(self, command: Command, valid_s: float) -> object: ...


class EmsService:
    def __init__(self, site: SiteConfig, meters: Sequence[Meter], charge_points: ChargePoints,
                 clock: Callable[[], float], *, prices: Callable[[], PricePlan | None]
                 = lambda: None, kpi_file: Path | None = None) -> None:
        self.site = site
        self.meters = list(meters)
        self.cps = charge_points
        self.clock = clock
        self.prices = prices
        self.kpi_file = kpi_file
        self.state: EmsState = initial_state(site)
        self.settings: dict[str, CpSettings] = default_settings(site)
        self.kpis = _load_kpis(kpi_file)
        self.cycle_errors = 0
        self._saved_at: float | None = None
        self.last_report: CycleReport | None = None
        self._reasons: dict[str, str] = {}
        self._health: dict[str, str] = {}
        self._readings: dict[str, Reading] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._connected: dict[str, bool] = {}

    def set_mode(self, cp_id: str, settings: CpSettings) -> None:
        if cp_id not in self.settings:
            raise KeyError(cp_id)
        self.settings[cp_id] = settings

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for meter in self.meters:
            cfg = self.site.meter(meter.name)
            poll_s = cfg.poll_s if cfg is not None else 1.0
            self._tasks.append(loop.create_task(self._poll_forever(meter, poll_s)))
        self._tasks.append(loop.create_task(self._cycle_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for meter in self.meters:
            await meter.close()
        self.save_kpis()

    async def _poll_forever(self, meter: Meter, poll_s: float) -> None:
        while True:
            started = self.clock()
            try:
                result = await meter.poll(started)
            except Exception as exc:
                # A driver bug is one meter's fault (counted, fail-safe), not the EMS's end.
                result = Poll(None, f"driver error: {exc!r}")
            self.state = record_reading(self.state, meter.name, result.reading, self.clock(),
                                        result.fault)
            if result.reading is not None and result.reading.finite():
                self._readings[meter.name] = result.reading
            await asyncio.sleep(max(0.0, poll_s - (self.clock() - started)))

    async def _cycle_forever(self) -> None:
        while True:
            try:
                self.step()
            except Exception as exc:
                # Nothing is sent this cycle: the charge points' commands expire into their
                # fail-safe unless a later cycle succeeds. Said loudly, counted, visible.
                self.cycle_errors += 1
                log.error("ems_cycle_failed", exc_info=exc,
                          extra={"fields": {"errors": self.cycle_errors, "error": repr(exc)}})
            await asyncio.sleep(self.site.cycle_s)

    def step(self) -> CycleReport:
        now = self.clock()
        states = self.cps.states()
        self._sessions(states, now)
        self.state, commands, report = cycle(self.site, self.state, now, states,
                                             prices=self.prices(), settings=self.settings)
        valid_s = VALID_CYCLES * self.site.cycle_s
        for command in commands:
            try:
                self.cps.send(command, valid_s)
            except ValueError as exc:
                # A command the link refuses is a bug here; the other charge points still get
                # theirs, and this one falls back to its fail-safe when its last one expires.
                log.error("ems_command_refused", extra={"fields": {
                    "cp": command.cp_id, "error": str(exc)}})
        self._account(report, states, now)
        if self._saved_at is None or now - self._saved_at >= KPI_SAVE_S:
            self._saved_at = now
            self.save_kpis()
        self._log_changes(report)
        self.last_report = report
        return report

    def _sessions(self, states: Mapping[str, ChargePointState], now: float) -> None:
        for cp in self.site.charge_points:
            s = states.get(cp.id)
            connected = s is not None and s.connected
            if connected and not self._connected.get(cp.id, False):
                self.kpis.session_start(cp.id, now, self.settings[cp.id].target_wh)
            elif not connected and self._connected.get(cp.id, False):
                self.kpis.session_end(cp.id, now)
            self._connected[cp.id] = connected

    def _account(self, report: CycleReport, states: Mapping[str, ChargePointState],
                 now: float) -> None:
        """Feed the KPIs with this cycle's healthy readings (an unhealthy input is not
        guessed: the cycle is left out of the energy balance and counted as a gap)."""
        usable = {s.name: self._readings.get(s.name) for s in report.inputs if s.ok}

        def power(role: Role) -> float | None:
            for m in self.site.meters:
                r = usable.get(m.name)
                if m.role is role and r is not None and r.power_w is not None:
                    return r.power_w
            return None

        grid = power(Role.GRID)
        pv = power(Role.PV) if self.site.pv_meter is not None else 0.0
        battery = power(Role.BATTERY) if self.site.battery_meter is not None else 0.0
        if grid is None or pv is None or battery is None:
            self.kpis.gap(now, self.site.cycle_s)
            return
        fresh = now - VALID_CYCLES * self.site.cycle_s
        ev = {cp_id: max(0.0, s.power_w) for cp_id, s in states.items() if s.at >= fresh}
        house = grid + pv + battery - sum(ev.values())
        prices = self.prices()
        price = None
        if prices is not None:
            from ems.tariff import price_at  # noqa: PLC0415 - keeps the import graph flat
            price = price_at(prices, now)
        self.kpis.add(now, self.site.cycle_s, grid_w=grid, pv_w=pv, house_w=max(0.0, house),
                      battery_w=battery, ev_w=ev, price=price)

    def _log_changes(self, report: CycleReport) -> None:
        for status in report.inputs:
            if self._health.get(status.name) != status.health.value:
                self._health[status.name] = status.health.value
                _log("ems_input", input=status.name, health=status.health.value,
                     faults=status.faults, reason=status.reason())
        for cp in report.cps:
            if self._reasons.get(cp.cp_id) != cp.reason:
                self._reasons[cp.cp_id] = cp.reason
                _log("ems_decision", cp=cp.cp_id, mode=cp.mode.value, reason=cp.reason,
                     limits={lim.source: round(lim.amps, 2) for lim in cp.command.limits},
                     phases=cp.command.phases)

    def save_kpis(self) -> None:
        if self.kpi_file is None:
            return
        tmp = self.kpi_file.with_suffix(".tmp")
        try:
            tmp.write_text(self.kpis.to_json())
            tmp.replace(self.kpi_file)
        except OSError as exc:
            log.error("ems_kpis_not_saved", extra={"fields": {"file": str(self.kpi_file),
                                                              "error": str(exc)}})


def _load_kpis(path: Path | None) -> Kpis:
    """The KPIs kept so far; a file that cannot be read is set aside, never a reason to stop
    managing the site."""
    if path is None or not path.exists():
        return Kpis()
    try:
        return load_kpis(path)
    except ConfigError as exc:
        aside = path.with_name(f"{path.name}.unreadable")
        path.replace(aside)
        log.error("ems_kpis_set_aside", extra={"fields": {"file": str(path),
                                                          "moved_to": str(aside),
                                                          "error": str(exc)}})
        return Kpis()
