"""A 24 h day in virtual time on the simulated home (one car, PV, house, battery), steered by
the real energy manager every 5 s: wall time per day (`ems.simulate`, the sim board's site)."""

from __future__ import annotations

import time

from bench import ROOT, Result, Spec, percentile
from ems.simulate import sim_setup, simulate
from ems.site import load_site

SPEC = Spec("ems_day", "EMS: 24 h virtual day, one car + PV + house + battery (4 days × 2)",
            "max ≤ 5 s")
TARGET_S = 5.0
RUNS = 2
DAYS = ("sunny-june", "cloudy-april", "mixed-september", "grey-december")
MIDNIGHT = 1_767_225_600.0


def run() -> Result:
    site = load_site(ROOT / "boards" / "sim" / "site.toml")
    walls: list[float] = []
    notes: list[str] = []
    for name in DAYS:
        setup = sim_setup(site, ROOT / "tests" / "data" / "ems" / f"day-{name}.csv")
        for _ in range(RUNS):
            start = time.perf_counter()
            result = simulate(site, setup.day, setup.cars, midnight=MIDNIGHT,
                              battery=setup.battery)
            walls.append(time.perf_counter() - start)
        if result.longest_overload_s > site.cycle_s + setup.cars[0].reaction_s:
            notes.append(f"{name}: fuse exceeded for {result.longest_overload_s:.0f} s")
    worst = max(walls)
    return Result(SPEC, f"p50 {percentile(walls, 50):.2f} s, max {worst:.2f} s",
                  worst <= TARGET_S and not notes, {"wall_s": walls}, notes)
