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
    assert limit(cmds["a"], "ems_mode") == 0.0 and reason(cmds["a"], "ems_mode") == "mode off"
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


def run_power_only(s: SiteConfig, grid_w: float, pv_w: float | None,
                   cars: list[ChargePointState]) -> dict[str, Command]:
    state = record_reading(initial_state(s), "grid", Reading(NOW, power_w=grid_w), NOW)
    if pv_w is not None:
        state = record_reading(state, "pv", Reading(NOW, power_w=pv_w), NOW)
    _, commands, _ = cycle(s, state, NOW, {c.id: c for c in cars})
    return {c.cp_id: c for c in commands}


ONE_PHASE = """
[[charge_point]]
id = "a"
mode = "now"
phases = 1
max_a = 32
"""


def test_a_power_only_grid_meter_counts_what_pv_may_hide() -> None:
    # 5 kW of house on L1 behind 6 kW of PV: the meter reads -1 kW. The 1-phase car on L1
    # must not get the whole fuse: PV may hide load on any one phase.
    s = site(ONE_PHASE)
    cmds = run_power_only(s, -1000.0, 6000.0, [car("a")])
    assert limit(cmds["a"], "site_fuse") <= 25.0 - 5000.0 / 230.0 + 1e-9
    # Without a healthy PV reading nothing bounds the hidden load: the fail-safe current.
    cmds = run_power_only(s, -1000.0, None, [car("a")])
    assert limit(cmds["a"], "site_fuse") == 6.0
    assert "without per-phase currents" in reason(cmds["a"], "site_fuse")


def test_signed_export_on_a_phase_never_earns_more_than_the_fuse() -> None:
    s = site(ONE_PHASE)
    state = record_reading(initial_state(s), "grid", Reading(
        NOW, power_w=-4600.0, currents_a=(-20.0, 0.0, 0.0)), NOW)
    state = record_reading(state, "pv", Reading(NOW, power_w=4600.0), NOW)
    _, commands, _ = cycle(s, state, NOW, {"a": car("a")})
    assert limit(commands[0], "site_fuse") == 25.0


def test_a_grid_sample_older_than_the_cars_report_is_not_trusted_with_their_draw() -> None:
    s = site(TWO_NOW)
    state = record_reading(initial_state(s), "grid", Reading(
        NOW, power_w=0.0, currents_a=(10.0, 10.0, 10.0)), NOW)
    _, _, _ = cycle(s, state, NOW, {"a": car("a"), "b": car("b")})
    state2, _, _ = cycle(s, state, NOW, {"a": car("a"), "b": car("b")})
    # Car a now reports 16 A, but the grid sample (10 A of house) predates it.
    later = NOW + 5
    _, commands, _ = cycle(s, state2, later, {"a": car("a", 16.0), "b": car("b")})
    assert sum(limit(c, "site_fuse") for c in commands) <= 25.0 - 10.0 + 1e-9


def test_a_daily_departure_rolls_over_to_the_next_day() -> None:
    s = site("""
[[charge_point]]
id = "a"
mode = "pv"
departure = "07:00"
target_kwh = 20
""")
    tomorrow_10 = NOW + 86_400.0   # 10:00 the next day: 21 hours to the next 07:00
    state = record_reading(initial_state(s), "grid", Reading(
        tomorrow_10, power_w=460.0, currents_a=(2.0, 2.0, 2.0)), tomorrow_10)
    state = record_reading(state, "pv", Reading(tomorrow_10, power_w=0.0), tomorrow_10)
    _, commands, _ = cycle(s, state, tomorrow_10, {"a": ChargePointState(
        "a", tomorrow_10, connected=True)})
    notes = " ".join(commands[0].notes)
    assert "not reachable" not in notes
    assert limit(commands[0], "pv_surplus") == 0.0   # no sun, no cheap slot: it waits


def test_a_boosted_car_shows_the_reason_that_still_binds() -> None:
    s = site("""
[[charge_point]]
id = "a"
mode = "pv"
""")
    state = initial_state(s)
    state = record_reading(state, "grid", Reading(NOW, power_w=460.0,
                                                  currents_a=(2.0, 2.0, 2.0)), NOW)
    state = record_reading(state, "pv", Reading(NOW, power_w=0.0), NOW)
    _, _, report = cycle(s, state, NOW, {"a": car("a", boost=True)})
    assert report.cps[0].reason.startswith("site fuse")


def test_reasons_fit_the_protocol() -> None:
    s = site(TWO_NOW, grid='fuse_a = 25\nmeter = "grid"')
    state = record_reading(initial_state(s), "grid", None, NOW, "timeout: " + "x" * 400)
    _, commands, _ = cycle(s, state, NOW, {"a": car("a"), "b": car("b")})
    assert all(len(lim.reason) <= 200 for c in commands for lim in c.limits)
