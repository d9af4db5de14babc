"""PV captured by the car against the oracle's best, on every shipped day, and the site's cost
against the cheapest plan for the same car energy (the sim board's site: 10 kWp, 10 kWh
battery, one 3-phase car 08:00–18:00 with 1p/3p switching).

The oracle maximises PV into the car and lets the grid top it up, which is what min+PV does;
PV mode also refuses grid import, an objective the oracle does not share, so its figures are
shown beside but the target is judged on min+PV."""

from __future__ import annotations

import tomllib
from typing import Any

from bench import ROOT, Result, Spec
from ems.benchmark import compare
from ems.simulate import sim_setup, simulate
from ems.site import parse_site

SPEC = Spec("ems_capture", "EMS: PV into the car vs the oracle's best, per shipped day",
            "min+PV ≥ 95 % on every day")
TARGET = 0.95
DAYS = ("sunny-june", "cloudy-april", "mixed-september", "grey-december")
MODES = ("minpv", "pv")
MIDNIGHT = 1_767_225_600.0


def run() -> Result:
    path = ROOT / "boards" / "sim" / "site.toml"
    raw = tomllib.loads(path.read_text())
    parts: list[str] = []
    values: dict[str, Any] = {}
    met = True
    for mode in MODES:
        raw["charge_point"][0]["mode"] = mode
        site = parse_site(raw, path)
        line: list[str] = []
        for name in DAYS:
            setup = sim_setup(site, ROOT / "tests" / "data" / "ems" / f"day-{name}.csv")
            result = simulate(site, setup.day, setup.cars, midnight=MIDNIGHT,
                              battery=setup.battery)
            c = compare(site, setup, result)
            values[f"{mode}/{name}"] = c.to_dict()
            ratio = c.capture_ratio
            if mode == "minpv" and ratio is not None and ratio < TARGET:
                met = False
            shown = "-" if ratio is None else f"{ratio:.0%}"
            line.append(f"{name} {shown} ({c.ev_pv_wh / 1000:.1f}/"
                        f"{c.oracle_ev_pv_wh / 1000:.1f} kWh, cost {c.cost:.2f} vs "
                        f"{c.oracle_cost or 0.0:.2f} €)")
        parts.append(f"{mode}: " + "; ".join(line))
    return Result(SPEC, " — ".join(parts), met, values)
