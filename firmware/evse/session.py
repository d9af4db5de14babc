"""One charging session, from plug-in to unplug: its lifecycle, energy and what happened."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum

from firmware.core.iec61851 import Phase
from firmware.core.reasons import FaultCode, StopReason, SuspendReason
from hal.roles import MeterReading


class SessionStatus(Enum):
    PLUGGED = "plugged"                # car connected, not authorized
    AUTHORIZED = "authorized"          # may charge, has not started yet
    CHARGING = "charging"
    SUSPENDED_EV = "suspended_ev"      # the car is not taking the power offered
    SUSPENDED_EVSE = "suspended_evse"  # we are not offering power (limit, wake-up, fault)
    FINISHED = "finished"


@dataclass
class Session:
    connector: int
    started_at: float
    meter_start_wh: float | None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: SessionStatus = SessionStatus.PLUGGED
    energy_wh: float = 0.0
    max_power_w: float = 0.0
    wakeups: int = 0
    phase_switches: int = 0
    faults: list[FaultCode] = field(default_factory=list)
    charged: bool = False
    charging_s: float = 0.0
    ended_at: float | None = None
    stop_reason: StopReason | None = None
    _charging_since: float | None = None

    def on_phase(self, phase: Phase, suspend: SuspendReason | None, now: float) -> None:
        if self._charging_since is not None and phase is not Phase.CHARGING:
            self.charging_s += now - self._charging_since
            self._charging_since = None
        if phase is Phase.CHARGING:
            self.charged = True
            if self._charging_since is None:
                self._charging_since = now
        self.status = status_for(phase, suspend, self.charged)

    def on_meter(self, reading: MeterReading | None) -> None:
        if reading is None:
            return
        if self.meter_start_wh is None:
            self.meter_start_wh = reading.energy_wh
        self.energy_wh = reading.energy_wh - self.meter_start_wh
        self.max_power_w = max(self.max_power_w, reading.total_power_w)

    def finish(self, reason: StopReason, now: float) -> None:
        self.on_phase(Phase.IDLE, None, now)
        self.ended_at, self.stop_reason = now, reason
        self.status = SessionStatus.FINISHED


def status_for(phase: Phase, suspend: SuspendReason | None, charged: bool) -> SessionStatus:
    if phase is Phase.IDLE:
        return SessionStatus.FINISHED
    if phase is Phase.CONNECTED:
        return (SessionStatus.PLUGGED if suspend is SuspendReason.NOT_AUTHORIZED
                else SessionStatus.AUTHORIZED)
    if phase is Phase.READY:
        return SessionStatus.SUSPENDED_EV if charged else SessionStatus.AUTHORIZED
    if phase is Phase.CHARGING:
        return SessionStatus.CHARGING
    if phase is Phase.PAUSED_EV:
        return SessionStatus.SUSPENDED_EV
    return SessionStatus.SUSPENDED_EVSE
