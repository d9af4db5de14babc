"""§14a dimming contact → measured power below the limit, in virtual time, over many sim runs.

The issue's target is "measured power below the §14a limit within 1 s + the EV's reaction time,
in 100 % of sim runs". Each run is the real connector, contact shell and plant on a virtual
clock: a car of a random profile (11, 22 or 7.4 kW) with a random reaction time (0–5 s, what
IEC 61851-1 allows) charges for a random while, the user's boost is on in half the runs, and the
§14a contact closes at a random instant (so edges fall anywhere relative to the connector's and
the plant's ticks). The time runs from the edge to the first meter reading at or below 4.2 kW,
as the controller's own meter role reports it. Virtual time makes every run exact and
repeatable (the wall-clock edge latency is the ``contact`` benchmark).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from dataclasses import replace
from pathlib import Path

from bench import Result, Spec, percentile
from firmware.evse.connector import Connector
from firmware.evse.contacts import ContactInputs
from firmware.evse.limit_port import LimitPort
from firmware.store.db import Store
from firmware.virtual_time import run_virtual
from hal.board import Board, ContactInput, load_board
from hal.clock import VirtualClock
from hal.hardware import open_hardware
from hal.sim.ev import PROFILES

SPEC = Spec("dim_power", "§14a contact → measured power ≤ 4.2 kW, virtual time (500 runs)",
            "100 % within 1 s + the EV's reaction time")
RUNS = 500
INPUT = "in1"
CARS = ("compact_3p", "fast_ac_3p", "city_1p")
POLL_S = 0.01
GIVE_UP_S = 30.0


def _board() -> Board:
    return replace(load_board("sim"), inputs={INPUT: ContactInput(meaning="dim_14a")})


def _once(board: Board, rng: random.Random, data_dir: Path) -> tuple[float, float, str]:
    """(seconds from the edge to power ≤ the limit, the car's reaction time, the car)."""
    car = replace(PROFILES[rng.choice(CARS)], reaction_s=round(rng.uniform(0.0, 5.0), 3))
    boost = rng.random() < 0.5
    charge_s = rng.uniform(5.0, 120.0)
    clock = VirtualClock()
    hw = open_hardware(board, clock)
    assert hw.plant is not None and hw.inputs is not None and hw.meter is not None
    plant, inputs, meter = hw.plant, hw.inputs, hw.meter
    store = Store(data_dir / "voltpilot.db")
    limits = LimitPort()
    connector = Connector(1, board, hw, clock, store, limits)
    contacts = ContactInputs(board, inputs, limits, clock.now, seed=rng.getrandbits(32))
    limit_w = board.contacts.dim_14a_w

    def power() -> float:
        reading = meter.read()
        return reading.total_power_w if reading is not None else 0.0

    async def main() -> float:
        contacts.start()
        hw.start()
        connector.start()
        try:
            limits.set_boost(boost)
            plant.plug(car)
            await asyncio.sleep(charge_s)
            if power() <= limit_w:
                raise RuntimeError(f"{car.name} was not charging above {limit_w:g} W")
            edge = clock.now()
            plant.set_input(INPUT, True)
            while power() > limit_w:
                if clock.now() - edge > GIVE_UP_S:
                    return GIVE_UP_S
                await asyncio.sleep(POLL_S)
            return clock.now() - edge
        finally:
            connector.shutdown()
            contacts.stop()
            hw.stop()

    try:
        took = run_virtual(main, clock)
    finally:
        store.close()
    return took, car.reaction_s, car.name


def run(runs: int = RUNS, seed: int = 14) -> Result:
    board = _board()
    rng = random.Random(seed)
    slack: list[float] = []     # time beyond the EV's reaction time
    late: list[str] = []
    with tempfile.TemporaryDirectory(prefix="voltpilot-bench-") as tmp:
        for i in range(runs):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            took, reaction_s, car = _once(board, rng, folder)
            slack.append(took - reaction_s)
            if took > 1.0 + reaction_s:
                late.append(f"run {i}: {car}, reaction {reaction_s:.3f} s, took {took:.3f} s")
    within = runs - len(late)
    result = Result(
        SPEC, f"{within}/{runs} runs within ({100 * within / runs:.1f} %); time beyond the "
        f"car's reaction: p50 {percentile(slack, 50):.3f} s, p99 {percentile(slack, 99):.3f} s, "
        f"max {max(slack):.3f} s", not late,
        values={"runs": runs, "within": within, "slack_p50_s": percentile(slack, 50),
                "slack_p99_s": percentile(slack, 99), "slack_max_s": max(slack), "seed": seed})
    result.notes += late[:10]
    result.notes.append(f"cars {', '.join(CARS)}; reaction 0–5 s; boost on in about half the "
                        "runs; seeded, so a rerun repeats the same runs")
    return result
