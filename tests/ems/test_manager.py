"""One EMS cycle, case by case: who gets what, under which limit, and the reason a user reads."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ems.manager import CpSettings, cycle, initial_state, record_reading
from ems.model import ChargePointState, Command, Mode, Reading
from ems.site import SiteConfig, parse_site
from ems.tariff import PricePlan, Slot

NOW = 1_767_261_600.0   # 2026-01-01T10:00Z


def site(cps: str, grid: str = 'fuse_a = 25\nmeter = "grid"') -> SiteConfig:
    text = f"""
[grid]
{grid}
[[meter]]
name = "grid"
role = "grid"
kind = "sim"
[[meter]]
name = "pv"
role = "pv"
kind = "sim"
[pv]
meter = "pv"
{cps}
"""
    return parse_site(tomllib.loads(text), Path("site.toml"))


TWO_NOW = """
[[charge_point]]
id = "a"
mode = "now"
[[charge_point]]
id = "b"
mode = "now"
"""


def car(cp: str, amps: float = 0.0, **kw: object) -> ChargePointState:
    return ChargePointState(cp, NOW, connected=True, charging=amps > 0,
                            currents_a=(amps, amps, amps), power_w=amps * 3 * 230,
                            **kw)  # type: ignore[arg-type]


def run(s: SiteConfig, grid_a: float, cars: list[ChargePointState], pv_w: float = 0.0,
        **kw: object) -> dict[str, Command]:
    state = initial_state(s)
    grid_w = grid_a * 3 * 230 - pv_w
    state = record_reading(state, "grid", Reading(NOW, power_w=grid_w,
                                                  currents_a=(grid_a, grid_a, grid_a)), NOW)
    state = record_reading(state, "pv", Reading(NOW, power_w=pv_w), NOW)
    _, commands, _ = cycle(s, state, NOW, {c.id: c for c in cars}, **kw)  # type: ignore[arg-type]
    return {c.cp_id: c for c in commands}


def limit(cmd: Command, source: str) -> float:
    return next(lim.amps for lim in cmd.limits if lim.source == source)


def reason(cmd: Command, source: str) -> str:
    return next(lim.reason for lim in cmd.limits if lim.source == source)


def test_two_cars_share_what_the_house_leaves() -> None:
    # 9 A of house on each phase; both cars draw nothing yet: 16 A left, 8 A each.
    cmds = run(site(TWO_NOW), 9.0, [car("a"), car("b")])
    assert limit(cmds["a"], "site_fuse") == limit(cmds["b"], "site_fuse") == 8.0
    assert "pv_surplus" not in {lim.source for lim in cmds["a"].limits}


def test_the_cars_own_draw_is_not_counted_as_house_load() -> None:
    # The meter shows 9 A of house plus 8 A per car: still 8 A each, not less.
    cmds = run(site(TWO_NOW), 25.0, [car("a", 8.0), car("b", 8.0)])
    assert limit(cmds["a"], "site_fuse") == 8.0


def test_a_car_that_cannot_have_its_minimum_is_suspended_not_dipped() -> None:
    cmds = run(site(TWO_NOW), 15.0, [car("a"), car("b")])
    amps = sorted([limit(cmds["a"], "site_fuse"), limit(cmds["b"], "site_fuse")])
    assert amps == [0.0, 10.0]


def test_a_stale_grid_meter_gives_every_car_the_failsafe_current() -> None:
    s = site(TWO_NOW)
    state = record_reading(initial_state(s), "grid", Reading(NOW - 60, power_w=0.0,
                                                             currents_a=(0, 0, 0)), NOW - 60)
    _, commands, report = cycle(s, state, NOW, {"a": car("a"), "b": car("b")})
    for cmd in commands:
        assert limit(cmd, "site_fuse") == 6.0
        assert reason(cmd, "site_fuse") == \
            "grid meter no reading for 60 s: fail-safe worst_case: 6 A"
    assert report.budget_a is None


def test_pv_surplus_binds_and_the_fuse_shows_its_real_headroom() -> None:
    s = site("""
[[charge_point]]
id = "a"
mode = "minpv"
""")
    cmds = run(s, 2.0, [car("a")], pv_w=3000.0)
    assert limit(cmds["a"], "pv_surplus") == 6.0   # min+PV: the minimum while the sun is low
    assert limit(cmds["a"], "site_fuse") == 16.0   # the fuse is not what binds
    assert reason(cmds["a"], "site_fuse").startswith("site fuse: 16.0 A free")


def test_mode_off_and_a_user_boost() -> None:
    s = site("""
[[charge_point]]
id = "a"
mode = "pv"
""")
    cmds = run(s, 2.0, [car("a")], settings={"a": CpSettings(Mode.OFF)})
    assert limit(cmds["a"], "user") == 0.0 and reason(cmds["a"], "user") == "mode off"
    # A boosted PV car shares the fuse as if it wanted its maximum (no sun here).
    cmds = run(s, 2.0, [car("a", boost=True)])
    assert limit(cmds["a"], "site_fuse") == 16.0


def test_mode_now_waits_for_the_cheap_slot_of_its_plan() -> None:
    s = site("""
[[charge_point]]
id = "a"
mode = "now"
departure = "18:00"
target_kwh = 5
""")
    prices = PricePlan((Slot(NOW, NOW + 3600, 0.40), Slot(NOW + 3600, NOW + 7 * 3600, 0.10)))
    cmds = run(s, 2.0, [car("a")], prices=prices)
    assert limit(cmds["a"], "price") == 0.0
    assert "11:00" in reason(cmds["a"], "price") or "cheapest" in reason(cmds["a"], "price")


def test_a_charge_point_that_reports_nothing_is_bounded_by_the_headroom() -> None:
    cmds = run(site(TWO_NOW), 9.0, [car("a")])
    # b is silent (no car as far as we know): a starting car there still fits the fuse.
    assert limit(cmds["a"], "site_fuse") + limit(cmds["b"], "site_fuse") <= 16.0 + 1e-9
