"""The home battery's place next to the cars: what of the sun's power the cars may use.

The sun's surplus, with the battery taken out, is ``-grid + cars - battery`` (PV minus the house;
site sign convention: grid + import, battery + discharging). Against it:

- below ``priority_soc`` the battery charges first: ``max_charge_w`` of the sun (or, when that
  is not configured, what the battery charges at right now) is kept for it. Configure
  ``max_charge_w``: a battery that holds the grid at zero gives way to a car that draws more,
  so its present charging power alone lets the car take the battery's share bit by bit;
- above ``support_soc`` the battery may discharge for the cars, up to ``max_support_w`` (PV
  modes only: the caller uses this surplus for PV and min+PV);
- in between, or with both None (the battery not involved), the cars get what the sun leaves:
  the battery's charging counts as available, its discharging never does.

A stale battery (no reading, no power, no SoC) neither supports nor has its charging counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ems.model import Reading
from ems.surplus import kw


@dataclass(frozen=True, slots=True)
class BatteryConfig:
    """The ``[battery]`` table of the site file (SoC in %)."""

    priority_soc: float | None = None
    max_charge_w: float | None = None
    support_soc: float | None = None
    max_support_w: float = 0.0

    def __post_init__(self) -> None:
        for name, soc in (("priority_soc", self.priority_soc), ("support_soc", self.support_soc)):
            if soc is not None and not (math.isfinite(soc) and 0 <= soc <= 100):
                raise ValueError(f"{name} must be a SoC in [0, 100] %, got {soc!r}")
        if self.max_charge_w is not None and not (math.isfinite(self.max_charge_w)
                                                  and self.max_charge_w > 0):
            raise ValueError(f"max_charge_w must be > 0 W, got {self.max_charge_w!r}")
        if not (math.isfinite(self.max_support_w) and self.max_support_w >= 0):
            raise ValueError(f"max_support_w must be >= 0 W, got {self.max_support_w!r}")
        if self.support_soc is not None and self.max_support_w <= 0:
            raise ValueError("max_support_w must be > 0 W when support_soc is set")
        if (self.priority_soc is not None and self.support_soc is not None
                and self.support_soc < self.priority_soc):
            raise ValueError(f"support_soc ({self.support_soc:g} %) must not be below "
                             f"priority_soc ({self.priority_soc:g} %)")

    @property
    def involved(self) -> bool:
        return self.priority_soc is not None or self.support_soc is not None


def available_for_ev(cfg: BatteryConfig, *, grid_w: float | None, ev_w: float,
                     battery: Reading | None) -> tuple[float | None, str]:
    """The surplus power (W) the cars may use, including what they draw now (negative: the
    house alone already imports), and why; None without a usable grid reading. ``ev_w`` is
    the cars' total draw, ``battery`` the battery meter's usable reading (None: stale or none)."""
    if grid_w is None or not math.isfinite(grid_w):
        return None, "no grid reading"
    cars_w = ev_w if math.isfinite(ev_w) and ev_w > 0 else 0.0
    base = cars_w - grid_w
    power = None if battery is None else battery.power_w
    if power is None or not math.isfinite(power):
        if not cfg.involved and battery is None:
            return base, f"PV surplus {kw(base)}"
        # Without its power the battery cannot be taken out of the grid reading: whatever it
        # charges now is already missing from the surplus; whatever it discharges is not
        # known to exist.
        return base, f"PV surplus {kw(base)} (home battery not measured: no support)"
    sun = base - power
    charging = max(0.0, -power)
    soc = battery.soc_pct if battery is not None else None
    if soc is None or not (math.isfinite(soc) and 0 <= soc <= 100):
        return sun - charging, (f"PV surplus {kw(sun - charging)} (home battery SoC unknown: "
                                f"its {kw(charging)} charging kept for it, no support)")
    if cfg.priority_soc is not None and soc < cfg.priority_soc:
        keep = cfg.max_charge_w if cfg.max_charge_w is not None else charging
        return sun - keep, (f"PV surplus {kw(sun - keep)}: home battery at {soc:.0f} %, below "
                            f"its {cfg.priority_soc:g} % priority, {kw(keep)} kept for it")
    if cfg.support_soc is not None and soc > cfg.support_soc:
        total = sun + cfg.max_support_w
        return total, (f"PV surplus {kw(total)}: home battery at {soc:.0f} %, above "
                       f"{cfg.support_soc:g} %, adds up to {kw(cfg.max_support_w)}")
    if not cfg.involved:
        return sun, f"PV surplus {kw(sun)}"
    return sun, f"PV surplus {kw(sun)}: home battery at {soc:.0f} %, neither first nor support"
