"""The perfect-foresight oracle: wall time of one 24 h day at 1-minute steps (1440 steps) for
each objective, over the four recorded days, with a home battery, prices and a 30 kWh car."""

from __future__ import annotations

import csv
import time

from bench import ROOT, Result, Spec, percentile
from ems.oracle import EvWindow, HomeBattery, Objective, optimise

SPEC = Spec("ems_oracle", "oracle: 1440-step day, both objectives (4 days × 5 runs)", "max ≤ 5 s")
TARGET_S = 5.0
RUNS = 5
DAYS = ("sunny-june", "cloudy-april", "mixed-september", "grey-december")


def _day(name: str) -> tuple[list[float], list[float], list[float]]:
    with (ROOT / "tests" / "data" / "ems" / f"day-{name}.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return ([float(r["pv_w"]) for r in rows], [float(r["house_w"]) for r in rows],
            [float(r["price_eur_kwh"]) for r in rows])


def run() -> Result:
    ev = EvWindow(8 * 60, 18 * 60, 30_000.0, 11_000.0, 4140.0)
    battery = HomeBattery(10_000.0, 5000.0, 5000.0, 5000.0, 0.9)
    times: dict[Objective, list[float]] = {o: [] for o in Objective}
    for name in DAYS:
        pv, house, prices = _day(name)
        for objective in Objective:
            for _ in range(RUNS):
                start = time.perf_counter()
                optimise(pv, house, dt_s=60.0, ev=ev, objective=objective, prices=prices,
                         battery=battery, import_limit_w=11_000.0)
                times[objective].append(time.perf_counter() - start)
    worst = max(max(t) for t in times.values())
    text = ", ".join(f"{o.value}: p50 {percentile(t, 50):.2f} s, max {max(t):.2f} s"
                     for o, t in times.items())
    return Result(SPEC, text, worst <= TARGET_S,
                  {f"{o.value}_s": t for o, t in times.items()})
