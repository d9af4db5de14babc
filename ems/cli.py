"""``voltpilot ems``: run the energy manager as its own process, replay a day, print KPIs.

    voltpilot ems --site FILE              steer the site's charge points over MQTT
    voltpilot ems simulate --site FILE     replay the site's [sim] day (or --day CSV)
    voltpilot ems report FILE              print a KPI file (JSON) as tables

Exit codes as for the controller: 0 done, 1 failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ems.config_error import ConfigError

if TYPE_CHECKING:
    from ems.simulate import DayResult, SimSetup
    from ems.site import SiteConfig

SUBCOMMANDS = ("run", "simulate", "report")


def add_parser(sub: Any) -> None:
    e = sub.add_parser("ems", help="the local energy manager: run it, replay a day, report")
    esub = e.add_subparsers(dest="ems_command", required=True)
    r = esub.add_parser("run", help="steer the site's charge points over MQTT (the default)")
    r.add_argument("--site", type=Path, required=True, help="site file (docs/ems.md)")
    r.add_argument("--data-dir", type=Path, default=Path("var/ems"),
                   help="KPIs and logs (default var/ems)")
    r.add_argument("--duration", type=float, help="stop after this many seconds")
    s = esub.add_parser("simulate", help="replay a day on the site in virtual time")
    s.add_argument("--site", type=Path, required=True)
    s.add_argument("--day", type=Path, help="day profile CSV (default: the site's sim.day)")
    s.add_argument("--json", type=Path, help="write the KPIs (and the oracle's) as JSON")
    s.add_argument("--oracle", action="store_true",
                   help="also solve the day with perfect foresight (needs scipy: "
                   "pip install 'voltpilot[oracle]')")
    rep = esub.add_parser("report", help="print a KPI file")
    rep.add_argument("file", type=Path)


def normalise(argv: list[str]) -> list[str]:
    """``voltpilot ems --site F`` means ``voltpilot ems run --site F``."""
    if len(argv) >= 2 and argv[0] == "ems" and argv[1] not in SUBCOMMANDS and argv[1] not in (
            "-h", "--help"):
        return ["ems", "run", *argv[1:]]
    return argv


def main(args: argparse.Namespace) -> int:
    # Imported here: `voltpilot run` parses this module's options and must start fast.
    from ems.kpi import format_report  # noqa: PLC0415
    from ems.kpi import load as load_kpis  # noqa: PLC0415
    from ems.site import load_site  # noqa: PLC0415

    try:
        if args.ems_command == "report":
            print(format_report(load_kpis(args.file)))
            return 0
        site = load_site(args.site)
        if args.ems_command == "simulate":
            return _simulate(site, args.day, args.json, args.oracle)
        from ems.process import run_process  # noqa: PLC0415 - MQTT only when running
        return asyncio.run(run_process(site, args.data_dir, args.duration))
    except ConfigError as exc:
        print(f"voltpilot ems: {exc}", file=sys.stderr)
        return 2


def _simulate(site: SiteConfig, day: Path | None, out: Path | None, oracle: bool) -> int:
    from ems.kpi import format_report  # noqa: PLC0415
    from ems.simulate import sim_setup, simulate  # noqa: PLC0415

    setup = sim_setup(site, day)
    midnight = 1_767_225_600.0  # 2026-01-01T00:00Z, the virtual clock's default start
    result = simulate(site, setup.day, setup.cars, midnight=midnight, battery=setup.battery)
    data: dict[str, Any] = {"day": setup.day.name, "kpis": json.loads(result.kpis.to_json()),
                            "longest_overload_s": result.longest_overload_s,
                            "phase_switches": result.phase_switches}
    print(f"day {setup.day.name} on site {site.name}")
    print(format_report(result.kpis))
    print(f"longest time above the fuse: {result.longest_overload_s:.0f} s; "
          f"phase switches: {result.phase_switches}")
    if oracle:
        data["oracle"] = _oracle(site, setup, result)
    if out is not None:
        out.write_text(json.dumps(data, indent=2) + "\n")
    return 0


def _oracle(site: SiteConfig, setup: SimSetup, result: DayResult) -> dict[str, Any]:
    from ems.benchmark import compare  # noqa: PLC0415 - scipy only when asked
    comparison = compare(site, setup, result)
    print(comparison.text())
    return comparison.to_dict()


def run(argv: Sequence[str]) -> int:
    """For tests and ``python -m ems.cli``: parse ``argv`` (starting with "ems") and run."""
    p = argparse.ArgumentParser(prog="voltpilot")
    add_parser(p.add_subparsers(dest="command", required=True))
    return main(p.parse_args(normalise(list(argv))))


if __name__ == "__main__":
    sys.exit(run(["ems", *sys.argv[1:]]))
