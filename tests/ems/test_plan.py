"""The departure planner (ems/plan.py): cheapest slots, the guarantee, the safe defaults, and
stability when it is run again every cycle."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ems.plan import GUARANTEE_MARGIN_S, Plan, PlanKind, Window, plan_charging
from ems.tariff import PricePlan, Slot

T0 = datetime(2025, 6, 21, tzinfo=UTC).timestamp()     # 00:00 UTC
H = 3600.0
POWER = 11_000.0


def hourly(prices: Sequence[float | None], start: float = T0) -> PricePlan:
    """One slot per hour from ``start``; None leaves the hour out (price unknown)."""
    return PricePlan(tuple(Slot(start + i * H, start + (i + 1) * H, p)
                           for i, p in enumerate(prices) if p is not None))


NIGHT = hourly([0.30, 0.25, 0.21, 0.22, 0.30, 0.35, 0.40])   # 00:00..07:00


def plan(prices: PricePlan | None, energy_wh: float, *, now: float = T0,
         departure: float = T0 + 7 * H, **kw: float) -> Plan:
    return plan_charging(prices, now=now, departure=departure, energy_wh=energy_wh,
                         power_w=POWER, **kw)


def test_cheapest_slots_before_departure() -> None:
    p = plan(NIGHT, 2 * POWER)
    assert p.kind is PlanKind.CHEAPEST
    assert p.windows == (Window(T0 + 2 * H, T0 + 3 * H, 0.21), Window(T0 + 3 * H, T0 + 4 * H, 0.22))
    assert p.reason == "cheapest 2 h before 07:00: waiting for 02:00 (0.21 €/kWh)"
    assert not p.charge_now(T0) and not p.guaranteed
    assert p.charge_now(T0 + 2 * H) and p.charge_now(T0 + 4 * H - 1)
    assert not p.charge_now(T0 + 4 * H)
    assert p.energy_wh == pytest.approx(2 * POWER)
    assert p.cost == pytest.approx(11 * 0.21 + 11 * 0.22)


def test_partial_last_slot_uses_its_beginning() -> None:
    p = plan(NIGHT, 1.5 * POWER)
    assert p.windows == (Window(T0 + 2 * H, T0 + 3 * H, 0.21),
                         Window(T0 + 3 * H, T0 + 3.5 * H, 0.22))
    assert p.reason.startswith("cheapest 1 h 30 min before 07:00")


def test_charging_now_when_now_is_cheapest() -> None:
    p = plan(NIGHT, 0.5 * POWER, now=T0 + 2.25 * H)
    assert p.charge_now(T0 + 2.25 * H)
    assert p.reason == "cheapest 30 min before 07:00: charging now (0.21 €/kWh)"


def test_equal_prices_choose_the_earliest() -> None:
    flat = hourly([0.3] * 7)
    p = plan(flat, 2 * POWER)
    assert p.windows == (Window(T0, T0 + 2 * H, 0.3),)
    assert p.charge_now(T0)


def test_unknown_prices_come_after_known_ones() -> None:
    partly = hourly([0.30, None, None, 0.35, None, None, None])
    p = plan(partly, 2.5 * POWER)
    assert p.windows == (Window(T0, T0 + H, 0.30), Window(T0 + H, T0 + 1.5 * H, None),
                         Window(T0 + 3 * H, T0 + 4 * H, 0.35))
    assert p.cost is None


def test_guarantee_charges_now_regardless_of_price() -> None:
    p = plan(NIGHT, 6.9 * POWER)       # 6 h 54 min of 7 h: within the 15-minute margin
    assert p.kind is PlanKind.GUARANTEE and p.guaranteed
    assert p.charge_now(T0)
    assert p.reason == ("energy guarantee: just enough time left before 07:00, charging now "
                        "regardless of price")
    assert p.energy_wh == pytest.approx(6.9 * POWER)
    assert plan(NIGHT, 6.7 * POWER).kind is PlanKind.CHEAPEST     # 18 min to spare
    assert plan(NIGHT, 6.7 * POWER, margin_s=30 * 60).kind is PlanKind.GUARANTEE


def test_guarantee_holds_while_charging_at_full_power() -> None:
    """Both the need and the time left shrink by the same amount: no flapping at the edge."""
    need = 7 * POWER - GUARANTEE_MARGIN_S / H * POWER       # exactly at the latest start
    now = T0
    while need > 0:
        p = plan(NIGHT, need, now=now)
        assert p.kind is PlanKind.GUARANTEE and p.charge_now(now), (now - T0, p.reason)
        now += 7.0
        need -= POWER * 7.0 / H
    assert plan(NIGHT, need, now=now).kind is PlanKind.DONE


def test_no_prices_charges_now() -> None:
    p = plan(None, 2 * POWER)
    assert p.kind is PlanKind.NO_PRICES and not p.guaranteed
    assert p.charge_now(T0) and p.reason == "no price plan: charging now"
    assert p.windows == (Window(T0, T0 + 2 * H, None),)
    stale = hourly([0.2, 0.2], start=T0 - 5 * H)
    p = plan(stale, 2 * POWER)
    assert p.kind is PlanKind.NO_PRICES and p.charge_now(T0)
    assert p.reason == "no prices before 07:00: charging now"


def test_infeasible_charges_now_and_says_how_much_is_missing() -> None:
    p = plan(NIGHT, 80_000.0)
    assert p.kind is PlanKind.INFEASIBLE and p.guaranteed and p.charge_now(T0)
    assert p.shortfall_wh == pytest.approx(80_000 - 7 * POWER)
    assert p.reason == "target not reachable by departure: 3.0 kWh short"
    late = plan(NIGHT, 1000.0, now=T0 + 8 * H)
    assert late.kind is PlanKind.INFEASIBLE and late.charge_now(T0 + 8 * H)
    assert late.reason == "target not reachable by departure: 1.0 kWh short"


def test_nothing_needed() -> None:
    p = plan(NIGHT, 0.0)
    assert p.kind is PlanKind.DONE and not p.charge_now(T0) and p.reason == "target reached"


@pytest.mark.parametrize(("field", "value"), [
    ("now", math.nan), ("departure", math.inf), ("energy_wh", math.nan), ("power_w", 0.0),
    ("power_w", -5.0), ("power_w", math.nan), ("slot_s", 0.0), ("margin_s", -1.0),
])
def test_unusable_inputs_charge_now(field: str, value: float) -> None:
    args = {"now": T0, "departure": T0 + 7 * H, "energy_wh": 10_000.0, "power_w": POWER,
            "slot_s": 900.0, "margin_s": 900.0}
    args[field] = value
    p = plan_charging(NIGHT, **args)
    assert p.kind is PlanKind.INVALID and p.charge_now(T0)
    assert field in p.reason and p.reason.endswith("charging now")


def test_departure_far_ahead_is_refused_not_planned() -> None:
    p = plan(NIGHT, 10_000.0, departure=T0 + 400 * 24 * H)
    assert p.kind is PlanKind.INVALID and p.charge_now(T0)


def test_weekday_shown_for_a_departure_a_day_away() -> None:
    p = plan(hourly([0.2] * 30), 2 * POWER, departure=T0 + 30 * H)
    assert "before Sun 06:00" in p.reason


def simulate(prices: PricePlan | None, need_wh: float, *, now: float, departure: float,
             step_s: float = 60.0, power_w: float = POWER) -> tuple[list[bool], float]:
    """Re-plan every ``step_s`` as the manager does; the car draws ``power_w`` while the plan
    says so. The decision per step and the energy delivered by departure."""
    decisions: list[bool] = []
    delivered = 0.0
    t = now
    while t < departure - 1e-9:
        p = plan_charging(prices, now=t, departure=departure, energy_wh=need_wh - delivered,
                          power_w=POWER)
        on = need_wh - delivered > 1e-9 and p.charge_now(t)
        decisions.append(on)
        if on:
            delivered += power_w * step_s / H
        t += step_s
    return decisions, delivered


def switches(decisions: list[bool]) -> int:
    return sum(1 for a, b in itertools.pairwise(decisions) if a != b)


def test_replanning_follows_the_first_plan() -> None:
    ties = hourly([0.30, 0.20, 0.20, 0.20, 0.20, 0.30, 0.30, 0.30, 0.30, 0.30])
    first = plan(ties, 2 * POWER, departure=T0 + 10 * H)
    assert first.windows == (Window(T0 + H, T0 + 3 * H, 0.20),)
    decisions, delivered = simulate(ties, 2 * POWER, now=T0, departure=T0 + 10 * H)
    planned = [first.charge_now(T0 + i * 60.0) for i in range(len(decisions))]
    assert decisions == planned
    assert switches(decisions) == 2
    assert delivered == pytest.approx(2 * POWER)


def test_flat_prices_charge_at_once_without_pausing() -> None:
    decisions, delivered = simulate(hourly([0.3] * 10), 3 * POWER, now=T0 + 17.0,
                                    departure=T0 + 10 * H)
    assert decisions[0] and switches(decisions) == 1
    assert delivered == pytest.approx(3 * POWER)


def test_a_slow_car_still_gets_its_energy() -> None:
    """The car draws 70 % of what the plan assumes: the guarantee makes up for it."""
    need = 4 * POWER
    _, delivered = simulate(NIGHT, need, now=T0, departure=T0 + 7 * H, power_w=0.7 * POWER)
    assert delivered >= need - 1e-6


prices_st = st.lists(st.one_of(st.none(), st.integers(-10, 60).map(lambda c: c / 100)),
                     min_size=1, max_size=30)


@given(prices_st, st.floats(0, 3 * H), st.floats(0.05, 30), st.floats(0.0, 1.2),
       st.sampled_from([900.0, 3600.0]))
def test_planned_energy_covers_the_need_when_feasible(prices: list[float | None],
                                                      offset: float, hours: float,
                                                      fill: float, slot_s: float) -> None:
    now = T0 + offset
    departure = now + hours * H
    energy = fill * hours * POWER
    p = plan_charging(hourly(prices), now=now, departure=departure, energy_wh=energy,
                      power_w=POWER, slot_s=slot_s)
    assert p.reason
    if energy <= 0:
        return
    if energy <= hours * POWER:
        assert p.kind is not PlanKind.INFEASIBLE
        assert p.energy_wh >= energy * (1 - 1e-9) - 1e-6
        assert p.energy_wh <= energy * (1 + 1e-9) + 1e-6
    else:
        assert p.kind is PlanKind.INFEASIBLE and p.shortfall_wh > 0
    ends = [now] + [x for w in p.windows for x in (w.start, w.end)] + [departure]
    assert ends == sorted(ends)                      # in time, disjoint, before departure
    if p.kind is PlanKind.CHEAPEST:
        chosen = [w.price for w in p.windows if w.price is not None]
        taken = sum(w.end - w.start for w in p.windows if w.price is not None)
        for slot in hourly(prices).slots:            # nothing cheaper was left out
            inside = max(0.0, min(slot.end, departure) - max(slot.start, now))
            used = sum(max(0.0, min(w.end, slot.end) - max(w.start, slot.start))
                       for w in p.windows)
            if inside - used > 1e-6 and chosen and taken > 0:
                assert slot.price >= max(chosen)


@given(prices_st, st.floats(0.5, 20), st.floats(0.05, 0.95))
def test_replanning_delivers_the_need(prices: list[float | None], hours: float,
                                      fill: float) -> None:
    need = fill * hours * POWER
    _, delivered = simulate(hourly(prices), need, now=T0, departure=T0 + hours * H,
                            step_s=300.0)
    assert delivered >= need - 1e-6
