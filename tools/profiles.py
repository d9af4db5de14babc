"""Generate the day profiles the EMS tests and benchmarks run on (tests/data/ems/).

``python -m tools.profiles tests/data/ems`` rewrites them byte for byte (seeded). The model is
ours, documented here and in tests/data/ems/README.md, so the data is free of licence questions:

- PV: a 10 kWp south-facing roof at 50° N. Clear-sky irradiance is 1000 W/m² × sin(elevation)^1.15
  (a Haurwitz-like air-mass attenuation), the sun's elevation from the declination of the day and
  the hour angle (no equation of time: noon is 12:00 UTC), times a 0.8 performance ratio. Clouds
  are a Markov chain per minute over clear / thin / thick sky whose switching odds set the kind
  of day; thin cloud keeps 55–80 % of the light, thick cloud 10–30 %.
- House: a 200 W base, a 120 W fridge cycling 20 min in 60, morning (06:30–08:00), lunch and
  evening (18:00–21:30) activity, and random appliance runs (kettle 2 kW × 3 min, oven 2.5 kW ×
  40 min, washing machine 2 kW × 25 min then 200 W), seeded.
- Prices: a dynamic tariff in 15-minute slots: 0.28 €/kWh base, cheaper at night (−0.06) and at
  midday in proportion to the day's clear-sky PV (down to −0.12), dearer in the evening peak
  (+0.10), plus ±0.01 of seeded noise.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MINUTES = 1440
LATITUDE = 50.0
PEAK_W = 10_000.0
PERFORMANCE_RATIO = 0.8


@dataclass(frozen=True, slots=True)
class DayKind:
    name: str
    day_of_year: int
    seed: int
    # Per-minute odds of leaving the clear / thin / thick states.
    leave_clear: float
    leave_thin: float
    leave_thick: float
    start: str = "clear"


DAYS = (
    DayKind("sunny-june", 172, 11, leave_clear=0.002, leave_thin=0.08, leave_thick=0.3),
    DayKind("cloudy-april", 105, 23, leave_clear=0.06, leave_thin=0.08, leave_thick=0.06,
            start="thin"),
    DayKind("mixed-september", 258, 37, leave_clear=0.02, leave_thin=0.05, leave_thick=0.1),
    DayKind("grey-december", 350, 41, leave_clear=0.05, leave_thin=0.04, leave_thick=0.03,
            start="thick"),
)


def elevation_sin(day_of_year: int, minute: int) -> float:
    decl = math.radians(-23.44 * math.cos(2 * math.pi * (day_of_year + 10) / 365))
    hour_angle = math.radians((minute / 60.0 - 12.0) * 15.0)
    lat = math.radians(LATITUDE)
    return (math.sin(lat) * math.sin(decl)
            + math.cos(lat) * math.cos(decl) * math.cos(hour_angle))


def clear_sky_w(day_of_year: int, minute: int) -> float:
    s = elevation_sin(day_of_year, minute)
    return 0.0 if s <= 0 else PEAK_W * PERFORMANCE_RATIO * s ** 1.15


def pv_series(kind: DayKind) -> list[float]:
    rng = random.Random(kind.seed)
    state = kind.start
    out: list[float] = []
    level = 1.0
    for minute in range(MINUTES):
        leave = {"clear": kind.leave_clear, "thin": kind.leave_thin,
                 "thick": kind.leave_thick}[state]
        if rng.random() < leave:
            state = rng.choice([s for s in ("clear", "thin", "thick") if s != state])
            level = {"clear": 1.0, "thin": rng.uniform(0.55, 0.8),
                     "thick": rng.uniform(0.1, 0.3)}[state]
        jitter = 1.0 if state == "clear" else rng.uniform(0.9, 1.1)
        out.append(round(clear_sky_w(kind.day_of_year, minute) * min(1.0, level * jitter), 1))
    return out


def house_series(seed: int) -> list[float]:
    rng = random.Random(seed * 7919)
    load = [200.0 + (120.0 if (m % 60) < 20 else 0.0) for m in range(MINUTES)]

    def add(start: int, minutes: int, watts: float) -> None:
        for m in range(start, min(MINUTES, start + minutes)):
            load[m] += watts

    for start, end, watts in ((390, 480, 450.0), (720, 780, 300.0), (1080, 1290, 600.0)):
        add(start, end - start, watts * rng.uniform(0.8, 1.2))
    for _ in range(rng.randint(3, 6)):
        add(rng.randint(360, 1320), 3, 2000.0)                 # kettle
    add(rng.randint(1050, 1110), 40, 2500.0)                    # oven
    wash = rng.randint(540, 900)
    add(wash, 25, 2000.0)                                       # washing machine heating
    add(wash + 25, 60, 200.0)
    return [round(w + rng.uniform(-15.0, 15.0), 1) for w in load]


def price_series(kind: DayKind) -> list[float]:
    rng = random.Random(kind.seed * 104729)
    peak_clear = max(clear_sky_w(kind.day_of_year, m) for m in range(MINUTES)) or 1.0
    out: list[float] = []
    for slot in range(MINUTES // 15):
        minute = slot * 15 + 7
        price = 0.28
        if minute < 360:
            price -= 0.06
        if 1020 <= minute < 1260:
            price += 0.10
        price -= 0.12 * clear_sky_w(kind.day_of_year, minute) / peak_clear
        price += rng.uniform(-0.01, 0.01)
        out.extend([round(price, 4)] * 15)
    return out


def write_day(kind: DayKind, folder: Path) -> Path:
    pv, house, prices = pv_series(kind), house_series(kind.seed), price_series(kind)
    path = folder / f"day-{kind.name}.csv"
    lines = ["minute,pv_w,house_w,price_eur_kwh"]
    lines += [f"{m},{pv[m]},{house[m]},{prices[m]}" for m in range(MINUTES)]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.profiles", description=__doc__)
    p.add_argument("folder", type=Path)
    args = p.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    for kind in DAYS:
        path = write_day(kind, args.folder)
        pv = sum(float(line.split(",")[1]) for line in path.read_text().splitlines()[1:])
        print(f"{path}: PV {pv / 60000:.1f} kWh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
