"""Long random runs of the real connector on the real plant in virtual time.

A seeded script plugs cars of every profile in and out, moves limits of every class, stops and
resumes cars, injects and clears faults and heat. After every controller step the safety
invariants must hold against the plant's truth, and at the end nothing may be lost: every
session closed with a stop reason and stored, and the energy of the sessions adds up to what the
meter counted (less, at most, what flowed while the meter was silent and the session ended before
it answered again: no controller can know that). `make test` runs a few virtual hours;
`make soak` runs virtual weeks.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from rig import Rig

from firmware.core.cp import CpState
from firmware.core.duty import PilotMode, is_legal_duty
from firmware.core.iec61851 import Step
from firmware.core.limits import Limit, LimitSource
from firmware.store.db import Store
from hal.sim.ev import PROFILES, Quirk
from hal.sim.plant import PlantError, PlantFault

# Faults a car owner would clear by unplugging or that clear by themselves; the latched ones
# (RCD, weld) are covered by test_scenarios and would end the run at the first occurrence.
TRANSIENT_FAULTS = [PlantFault.PP_CUT, PlantFault.METER_SILENT, PlantFault.LOCK_FAIL,
                    PlantFault.CONTACTOR_NO_CLOSE, PlantFault.TEMP_SENSOR_LOST]
SOURCES = [LimitSource.GRID_14A, LimitSource.OCPP_TX, LimitSource.PV_SURPLUS,
           LimitSource.PRICE, LimitSource.VPP]


def soak(tmp_path: Path, seed: int, hours: float) -> None:
    rng = random.Random(seed)
    violations: list[str] = []
    # Energy that flowed while the meter was silent: a session that ends before the meter
    # answers again cannot know of it, as on a real board.
    unseen = {"wh": 0.0, "since": 0.0}

    async def scenario(rig: Rig) -> None:
        plant = rig.plant

        def check(step: Step) -> None:
            s, cmd = step.state, step.command
            if cmd.pilot.mode is PilotMode.PWM and not is_legal_duty(cmd.pilot.duty):
                violations.append(f"{rig.t:.1f}: illegal duty {cmd.pilot.duty}")
            if cmd.contactor and (s.cp not in (CpState.C, CpState.D) or s.faults):
                violations.append(f"{rig.t:.1f}: contactor closed in {step.iec} {s.faults}")
            stuck = PlantFault.CONTACTOR_NO_CLOSE in plant.faults
            if plant.contactor_closed != cmd.contactor and not stuck:
                violations.append(f"{rig.t:.1f}: plant contactor {plant.contactor_closed}, "
                                  f"commanded {cmd.contactor}")

        rig.connector.step_listeners.append(check)

        def set_fault(fault: PlantFault, on: bool) -> None:
            silent = PlantFault.METER_SILENT in plant.faults
            if fault is PlantFault.METER_SILENT and on != silent:
                plant.advance()
                if on:
                    unseen["since"] = plant.meter_energy_wh
                else:
                    unseen["wh"] += plant.meter_energy_wh - unseen["since"]
            plant.set_fault(fault, on)
        end = hours * 3600.0
        while rig.t < end:
            await rig.until(rig.t + rng.expovariate(1 / 120.0))
            roll = rng.random()
            try:
                if roll < 0.25:
                    if plant.ev is None:
                        profile = PROFILES[rng.choice(sorted(PROFILES))]
                        quirks = [q.value for q in Quirk
                                  if q in (Quirk.NO_RESUME, Quirk.OVERDRAW) and rng.random() < 0.1]
                        plant.plug(profile.with_overrides({"soc": rng.uniform(0.0, 0.95),
                                                           "quirks": quirks}))
                    elif rng.random() < 0.3:  # cars mostly stay a while
                        plant.unplug()
                        for fault in TRANSIENT_FAULTS:  # the next car finds it mended
                            set_fault(fault, False)
                elif roll < 0.55:
                    source = rng.choice(SOURCES)
                    if rng.random() < 0.5:
                        rig.limits.withdraw(source)
                    else:  # now and then below the minimum: a pause
                        amps = rng.choice([0.0, 4.0] if rng.random() < 0.2 else
                                          [6.0, 8.0, 10.0, 16.0, 25.0, 32.0])
                        rig.limits.submit(Limit.of(source, "soak", amps=amps))
                elif roll < 0.65:
                    rig.limits.set_boost(rng.random() < 0.5)
                elif roll < 0.75:
                    (plant.ev_stop if rng.random() < 0.5 else plant.ev_resume)()
                elif roll < 0.85:
                    set_fault(rng.choice(TRANSIENT_FAULTS), rng.random() < 0.4)
                else:
                    plant.temperature_c = rng.choice([25.0, 25.0, 40.0, 40.0, 72.0, 80.0, 88.0])
            except PlantError:
                pass
        for fault in TRANSIENT_FAULTS:
            set_fault(fault, False)
        if plant.ev is not None:
            plant.unplug()
        await rig.until(rig.t + 5)

    rig = Rig.run(tmp_path, scenario)
    assert not violations, violations[:5]
    store = Store(tmp_path / "voltpilot.db")
    try:
        records = store.sessions(limit=100_000)
    finally:
        store.close()
    assert len(records) == len(rig.finished) > 5
    assert any(r.faults for r in records) and any(r.energy_wh > 500 for r in records)
    assert all(r.ended_at and r.stop_reason for r in records)
    total_wh = sum(s.energy_wh for s in rig.finished)
    metered_wh = rig.plant.meter_energy_wh
    assert metered_wh - unseen["wh"] - 1e-6 <= total_wh <= metered_wh + 1e-6
    assert sum(r.energy_wh for r in records) == pytest.approx(total_wh, rel=1e-9, abs=1e-6)


@pytest.mark.parametrize("seed", [1, 2])
def test_soak_bounded(tmp_path: Path, seed: int) -> None:
    soak(tmp_path, seed, hours=8.0)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(10, 16))
def test_soak_week(tmp_path: Path, seed: int) -> None:
    soak(tmp_path, seed, hours=7 * 24.0)
