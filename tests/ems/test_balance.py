"""The site budget shared among charge points (ems.balance): worked cases, then properties that
hold for any budget and any set of demands."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ems.balance import Binding, Budget, Demand, Grant, allocate
from ems.model import Triple

P3 = (0, 1, 2)


def d(cp_id: str, phases: tuple[int, ...] = P3, min_a: float = 6.0, max_a: float = 16.0,
      **kw: Any) -> Demand:
    return Demand(cp_id, phases, min_a, max_a, **kw)


def amps(grants: dict[str, Grant]) -> dict[str, float]:
    return {k: round(g.amps, 6) for k, g in grants.items()}


def phase_loads(grants: dict[str, Grant], demands: Sequence[Demand]) -> list[float]:
    by_id = {x.cp_id: x for x in demands}
    return [math.fsum(g.amps for k, g in grants.items() if p in by_id[k].phases)
            for p in range(3)]


# ---- worked cases ---------------------------------------------------------------------------


def test_one_car_takes_what_it_asks_when_it_fits() -> None:
    g = allocate(Budget((32.0, 32.0, 32.0)), [d("a")])["a"]
    assert (g.amps, g.suspended, g.binding) == (16.0, False, Binding.WISH)


def test_one_car_is_held_to_the_tightest_phase() -> None:
    g = allocate(Budget((32.0, 10.0, 32.0)), [d("a")])["a"]
    assert (g.amps, g.binding) == (10.0, Binding.FUSE)
    assert "L2" in g.reason


def test_one_car_below_its_minimum_is_suspended_not_dipped() -> None:
    g = allocate(Budget((32.0, 4.2, 32.0)), [d("a")])["a"]
    assert (g.amps, g.suspended, g.binding) == (0.0, True, Binding.FUSE)
    assert g.reason == "suspended: 4.2 A left on L2 < 6 A minimum"


def test_two_equal_cars_share_equally() -> None:
    g = allocate(Budget((20.0, 20.0, 20.0)), [d("a"), d("b")])
    assert amps(g) == {"a": 10.0, "b": 10.0}
    assert g["a"].reason == "site fuse: 2 cars share 20.0 A on L1"


def test_fair_share_gives_a_capped_car_its_max_and_the_rest_to_the_other() -> None:
    g = allocate(Budget((25.0, 25.0, 25.0)), [d("a", max_a=8.0), d("b", max_a=32.0)])
    assert amps(g) == {"a": 8.0, "b": 17.0}


def test_a_higher_minimum_is_kept_while_the_others_level_up_to_it() -> None:
    g = allocate(Budget((30.0, 30.0, 30.0)),
                 [d("a", min_a=14.0, max_a=32.0), d("b", max_a=32.0), d("c", max_a=32.0)])
    assert amps(g) == {"a": 14.0, "b": 8.0, "c": 8.0}


def test_higher_priority_gets_its_max_before_lower_gets_more_than_its_minimum() -> None:
    g = allocate(Budget((30.0, 30.0, 30.0)),
                 [d("lo"), d("hi", priority=1, max_a=20.0), d("lo2")])
    assert amps(g) == {"lo": 6.0, "hi": 18.0, "lo2": 6.0}
    assert "higher priority first" in g["lo"].reason
    g = allocate(Budget((40.0, 40.0, 40.0)), [d("lo"), d("hi", priority=1, max_a=20.0)])
    assert amps(g) == {"lo": 16.0, "hi": 20.0}


def test_lowest_priority_is_suspended_first_when_not_all_minimums_fit() -> None:
    g = allocate(Budget((13.0, 13.0, 13.0)),
                 [d("a", priority=0), d("b", priority=2), d("c", priority=1)])
    assert amps(g) == {"a": 0.0, "b": 7.0, "c": 6.0}
    assert g["a"].suspended and not g["b"].suspended and not g["c"].suspended


def test_equal_priorities_are_suspended_in_cp_id_order() -> None:
    g = allocate(Budget((13.0, 13.0, 13.0)), [d("c"), d("a"), d("b")])
    assert [k for k, v in sorted(g.items()) if v.suspended] == ["c"]


def test_single_phase_cars_on_different_phases_use_their_own_phase() -> None:
    demands = [d("l1", (0,), max_a=32.0), d("l2", (1,), max_a=32.0), d("l3", (2,), max_a=32.0)]
    g = allocate(Budget((10.0, 20.0, 30.0)), demands)
    assert amps(g) == {"l1": 10.0, "l2": 20.0, "l3": 30.0}


def test_a_three_phase_car_and_single_phase_cars_share_per_phase() -> None:
    demands = [d("tri", max_a=32.0), d("l1", (0,), max_a=32.0), d("l1b", (0,), max_a=32.0)]
    g = allocate(Budget((24.0, 32.0, 32.0)), demands)
    # L1 is shared three ways; the 3p car is held to 8 A by L1, so L2/L3 stay mostly unused.
    assert amps(g) == {"tri": 8.0, "l1": 8.0, "l1b": 8.0}
    assert phase_loads(g, demands) == [24.0, 8.0, 8.0]


def test_a_two_phase_car_counts_on_both_its_phases() -> None:
    demands = [d("two", (0, 1), max_a=32.0), d("l2", (1,), max_a=32.0)]
    g = allocate(Budget((30.0, 20.0, 0.0)), demands)
    assert amps(g) == {"two": 10.0, "l2": 10.0}
    assert phase_loads(g, demands) == [10.0, 20.0, 0.0]


def test_the_unbalance_limit_holds_single_phase_cars_on_one_phase() -> None:
    demands = [d("a", (0,), max_a=16.0), d("b", (0,), max_a=16.0)]
    g = allocate(Budget((63.0, 63.0, 63.0), unbalance_a=20.0), demands)
    assert amps(g) == {"a": 10.0, "b": 10.0}
    assert g["a"].binding is Binding.UNBALANCE
    g = allocate(Budget((63.0, 63.0, 63.0), unbalance_a=None), demands)
    assert amps(g) == {"a": 16.0, "b": 16.0}


def test_the_unbalance_limit_does_not_hold_back_three_phase_cars() -> None:
    g = allocate(Budget((63.0, 63.0, 63.0), unbalance_a=0.0), [d("a", max_a=32.0)])
    assert amps(g) == {"a": 32.0}


def test_a_car_on_the_least_loaded_phase_lets_the_others_rise() -> None:
    demands = [d("a", (0,), max_a=16.0), d("b", (0,), max_a=16.0), d("c", (2,), max_a=6.0),
               d("e", (1,), max_a=16.0)]
    g = allocate(Budget((63.0, 63.0, 63.0), unbalance_a=20.0), demands)
    assert amps(g) == {"a": 13.0, "b": 13.0, "c": 6.0, "e": 16.0}
    loads = phase_loads(g, demands)
    assert max(loads) - min(loads) == 20.0


def test_a_car_the_unbalance_limit_turns_away_waits_for_balancing_cars() -> None:
    # The fourth L1 car does not fit at its turn (24 A on L1, nothing elsewhere) but does
    # once the (lower-priority) cars on L2 and L3 are in.
    demands = [d(f"l1-{i}", (0,), priority=1) for i in range(4)]
    demands += [d("l2", (1,)), d("l3", (2,))]
    g = allocate(Budget((63.0, 63.0, 63.0), unbalance_a=20.0), demands)
    assert not any(x.suspended for x in g.values())
    demands.append(d("l1-4", (0,), priority=1))
    g = allocate(Budget((63.0, 63.0, 63.0), unbalance_a=20.0), demands)
    assert g["l1-4"].suspended and g["l1-4"].binding is Binding.UNBALANCE
    assert "unbalance limit 20 A" in g["l1-4"].reason


def test_a_suspended_car_resumes_only_with_the_margin_free() -> None:
    running, waiting = d("a"), d("a", suspended=True)
    for budget, keeps, resumes in [(5.9, False, False), (6.0, True, False), (6.9, True, False),
                                   (7.0, True, True), (9.0, True, True)]:
        b = Budget((budget, 32.0, 32.0))
        assert allocate(b, [running])["a"].suspended is not keeps
        assert allocate(b, [waiting])["a"].suspended is not resumes
    g = allocate(Budget((6.9, 32.0, 32.0)), [waiting])["a"]
    assert g.reason == "suspended: 6.9 A left on L1 < 7 A to resume (6 A minimum + 1 A)"
    assert allocate(Budget((6.5, 32, 32)), [waiting], resume_margin_a=0.0)["a"].amps == 6.5


def test_a_wobbling_budget_does_not_switch_a_car_on_and_off() -> None:
    rng = random.Random(7)
    suspended = False
    switches = 0
    for _ in range(500):
        budget = 6.0 + rng.uniform(-0.45, 0.45)   # around the minimum, within the margin
        g = allocate(Budget((budget, 32.0, 32.0)), [d("a", suspended=suspended)])["a"]
        switches += g.suspended != suspended
        suspended = g.suspended
    assert switches <= 1


def test_equal_priorities_go_by_cp_id_whoever_charges_now() -> None:
    # The line is (priority, cp_id) and never the suspension flags: a line that put the
    # charging cars first can make the flags ping-pong under the unbalance limit.
    g = allocate(Budget((12.5, 32.0, 32.0)), [d("a", suspended=True), d("b")])
    assert [g["a"].suspended, g["b"].suspended] == [False, False]
    g = allocate(Budget((10.0, 32.0, 32.0)), [d("a", suspended=True), d("b")])
    assert [g["a"].suspended, g["b"].suspended] == [False, True]
    g = allocate(Budget((6.5, 32.0, 32.0)), [d("a", suspended=True), d("b")])
    assert [g["a"].suspended, g["b"].suspended] == [True, False]


def test_a_suspended_car_of_higher_priority_pushes_out_a_lower_one() -> None:
    g = allocate(Budget((10.0, 32.0, 32.0)),
                 [d("hi", priority=1, suspended=True), d("lo")])
    assert [g["hi"].suspended, g["lo"].suspended] == [False, True]


def test_the_contracted_power_caps_the_sum() -> None:
    demands = [d("a", max_a=32.0), d("b", (1,), max_a=32.0)]
    g = allocate(Budget((63.0, 63.0, 63.0), total_w=11_040.0), demands)
    # 11 040 W / 230 V = 48 A-phases: 3 x 12 A + 1 x 12 A.
    assert amps(g) == {"a": 12.0, "b": 12.0}
    assert g["a"].binding is Binding.POWER
    assert g["a"].reason == "contracted power: 2 cars share 11.0 kW"


def test_the_contracted_power_suspends_below_the_minimum() -> None:
    g = allocate(Budget((63.0, 63.0, 63.0), total_w=4_000.0), [d("a")])["a"]
    assert g.suspended and g.binding is Binding.POWER
    assert "kW of contracted power left" in g.reason
    assert not allocate(Budget((63.0, 63.0, 63.0), total_w=4_140.0), [d("a")])["a"].suspended


def test_the_slack_of_a_car_drawing_less_goes_to_the_others() -> None:
    demands = [d("slow", max_a=32.0, drawing_a=(8.0, 8.0, 7.5)), d("fast", max_a=32.0)]
    g = allocate(Budget((32.0, 32.0, 32.0)), demands)
    assert amps(g) == {"slow": 10.0, "fast": 22.0}
    assert g["slow"].binding is Binding.DRAW
    # Ramping up, it gains the headroom each cycle until the fair share binds again.
    offered = 10.0
    for _ in range(10):
        slow = replace(demands[0], drawing_a=(offered, offered, offered))
        offered = allocate(Budget((32.0, 32.0, 32.0)), [slow, demands[1]])["slow"].amps
    assert offered == 16.0


def test_the_draw_cap_never_goes_below_the_minimum() -> None:
    g = allocate(Budget((32.0, 32.0, 32.0)), [d("a", max_a=32.0, drawing_a=(0.0, 0.0, 0.0))])
    assert g["a"].amps == 6.0
    g = allocate(Budget((32.0, 32.0, 32.0)), [d("a", max_a=32.0, drawing_a=(0.0, 0.0, 0.0))],
                 draw_headroom_a=math.nan)
    assert g["a"].amps == 32.0


def test_the_draw_of_a_single_phase_car_is_read_on_its_own_phase() -> None:
    g = allocate(Budget((32.0, 32.0, 32.0)),
                 [d("a", (1,), max_a=32.0, drawing_a=(30.0, 5.0, 30.0))])
    assert g["a"].amps == 7.0


@pytest.mark.parametrize("phase_a", [(math.nan, 32.0, 32.0), (-5.0, 32.0, 32.0),
                                     (math.inf, 32.0, 32.0), (32.0, 32.0),  # wrong length
                                     (32.0, 32.0, 32.0, 32.0), "abc", None])
def test_a_bad_budget_counts_as_nothing(phase_a: Any) -> None:
    g = allocate(Budget(phase_a), [d("a"), d("b", (1,))])
    if isinstance(phase_a, tuple) and len(phase_a) == 3:
        assert g["a"].suspended and not g["b"].suspended
    else:
        assert g["a"].suspended and g["b"].suspended


@pytest.mark.parametrize("budget", [Budget((32.0, 32.0, 32.0), total_w=math.nan),
                                    Budget((32.0, 32.0, 32.0), total_w=-1.0),
                                    Budget((32.0, 32.0, 32.0), total_w=11e3, voltage_v=0.0),
                                    Budget((32.0, 32.0, 32.0), total_w=11e3,
                                           voltage_v=math.nan)])
def test_a_bad_power_limit_counts_as_nothing(budget: Budget) -> None:
    g = allocate(budget, [d("a")])["a"]
    assert g.suspended and g.binding is Binding.POWER


def test_a_bad_unbalance_limit_counts_as_zero() -> None:
    g = allocate(Budget((32.0, 32.0, 32.0), unbalance_a=math.nan), [d("a", (0,)), d("b")])
    assert g["a"].suspended and not g["b"].suspended


@pytest.mark.parametrize("demand", [
    Demand("x", P3, math.nan, 16.0), Demand("x", P3, 6.0, math.nan),
    Demand("x", (), 6.0, 16.0), Demand("x", (3,), 6.0, 16.0), Demand("x", (-1,), 6.0, 16.0),
    Demand("x", ("0",), 6.0, 16.0),  # type: ignore[arg-type]
    Demand("x", P3, math.inf, 16.0), Demand("x", P3, "6", 16.0),  # type: ignore[arg-type]
])
def test_an_invalid_demand_is_suspended(demand: Demand) -> None:
    g = allocate(Budget((32.0, 32.0, 32.0)), [demand, d("ok")])
    assert g["x"].suspended and g["x"].binding is Binding.INVALID and g["x"].amps == 0.0
    assert g["ok"].amps == 16.0


def test_a_demand_below_its_own_minimum_is_suspended() -> None:
    g = allocate(Budget((32.0, 32.0, 32.0)), [d("a", max_a=0.0), d("b", max_a=4.0)])
    assert g["a"].suspended and g["b"].suspended
    assert g["b"].reason == "suspended: asks for 4 A, below its 6 A minimum"


def test_duplicate_ids_are_all_suspended() -> None:
    g = allocate(Budget((32.0, 32.0, 32.0)), [d("a"), d("a", (0,)), d("b")])
    assert list(g) == ["a", "b"]
    assert g["a"].suspended and g["a"].binding is Binding.INVALID
    assert g["b"].amps == 16.0


def test_bad_margins_never_raise() -> None:
    for margin in (math.nan, -3.0, math.inf):
        g = allocate(Budget((6.0, 32.0, 32.0)), [d("a", suspended=True)],
                     resume_margin_a=margin)
        assert g["a"].amps == 6.0


def test_no_demands_no_grants() -> None:
    assert allocate(Budget((32.0, 32.0, 32.0)), []) == {}


# ---- properties -----------------------------------------------------------------------------

PHASE_SETS = [P3, P3, P3, (0,), (1,), (2,), (0, 1), (1, 2)]
amps_st = st.one_of(st.sampled_from([0.0, 6.0, 8.0, 10.0, 13.0, 16.0, 32.0]),
                    st.floats(0.0, 40.0))


@st.composite
def demand_sets(draw: st.DrawFn, drawing: bool = True) -> list[Demand]:
    n = draw(st.integers(0, 12))
    out = []
    for i in range(n):
        lo = draw(st.sampled_from([0.0, 6.0, 6.0, 6.0, 8.0, 10.0]))
        hi = draw(st.one_of(st.just(lo), st.floats(lo, lo + 30.0), st.floats(0.0, lo)))
        measured: Triple | None = None
        if drawing and draw(st.integers(0, 3)) == 0:
            measured = (draw(amps_st), draw(amps_st), draw(amps_st))
        out.append(Demand(f"cp{i:02d}", draw(st.sampled_from(PHASE_SETS)), lo, hi,
                          priority=draw(st.integers(0, 2)), suspended=draw(st.booleans()),
                          drawing_a=measured))
    return out


budgets = st.builds(
    Budget,
    st.tuples(amps_st, amps_st, amps_st),
    st.one_of(st.none(), st.floats(0.0, 60_000.0)),
    st.one_of(st.none(), st.sampled_from([0.0, 6.0, 16.0, 20.0]), st.floats(0.0, 40.0)),
)
margins = st.sampled_from([0.0, 1.0, 2.5])


def admitted(grants: dict[str, Grant], demands: Sequence[Demand]) -> list[tuple[Demand, float]]:
    return [(x, grants[x.cp_id].amps) for x in demands if not grants[x.cp_id].suspended]


@given(budgets, demand_sets(), margins)
def test_no_limit_is_ever_exceeded(budget: Budget, demands: list[Demand],
                                   margin: float) -> None:
    grants = allocate(budget, demands, resume_margin_a=margin)
    assert list(grants) == [x.cp_id for x in demands]
    for x in demands:
        g = grants[x.cp_id]
        assert g.cp_id == x.cp_id and g.reason
        if g.suspended:
            assert g.amps == 0.0
        else:
            assert x.min_a <= g.amps <= x.max_a
    loads = phase_loads(grants, demands)
    for p in range(3):
        assert loads[p] <= budget.phase_a[p]   # exactly rounded sums: never over the fuse
    watts = math.fsum(a * len(x.phases) * budget.voltage_v for x, a in admitted(grants, demands))
    if budget.total_w is not None:
        assert watts <= budget.total_w * (1 + 1e-12) + 1e-9
    if budget.unbalance_a is not None:
        assert max(loads) - min(loads) <= budget.unbalance_a + 1e-9


@given(st.tuples(st.sampled_from([math.nan, -1.0, math.inf, 0.0, 20.0]),
                 st.sampled_from([math.nan, -1.0, 32.0]), st.floats(allow_nan=True)),
       st.sampled_from([None, math.nan, -5.0, 1e9]),
       st.sampled_from([None, math.nan, -5.0, 10.0]),
       st.sampled_from([230.0, 0.0, -230.0, math.nan, math.inf]),
       demand_sets())
def test_garbage_never_raises_and_fails_safe(phase_a: Triple, total_w: float | None,
                                             unbalance_a: float | None, voltage_v: float,
                                             demands: list[Demand]) -> None:
    grants = allocate(Budget(phase_a, total_w, unbalance_a, voltage_v), demands)
    loads = phase_loads(grants, demands)
    for p in range(3):
        usable = phase_a[p] if math.isfinite(phase_a[p]) and phase_a[p] > 0 else 0.0
        assert loads[p] <= usable


@given(budgets, demand_sets(), margins, st.randoms(use_true_random=False))
def test_the_result_does_not_depend_on_the_order_of_the_demands(
        budget: Budget, demands: list[Demand], margin: float, rng: random.Random) -> None:
    shuffled = list(demands)
    rng.shuffle(shuffled)
    assert allocate(budget, demands, resume_margin_a=margin) == \
        allocate(budget, shuffled, resume_margin_a=margin)


@given(budgets, demand_sets(), margins)
def test_feeding_the_suspensions_back_changes_nothing(budget: Budget, demands: list[Demand],
                                                      margin: float) -> None:
    first = allocate(budget, demands, resume_margin_a=margin)
    again = [replace(x, suspended=first[x.cp_id].suspended) for x in demands]
    second = allocate(budget, again, resume_margin_a=margin)
    assert {k: (g.amps, g.suspended) for k, g in second.items()} == \
        {k: (g.amps, g.suspended) for k, g in first.items()}
    # The reasons may now say "to resume"; from here on everything is a fixed point.
    third = allocate(budget, [replace(x, suspended=second[x.cp_id].suspended) for x in again],
                     resume_margin_a=margin)
    assert third == second


@given(budgets, demand_sets(drawing=False), margins)
def test_priority_comes_first(budget: Budget, demands: list[Demand], margin: float) -> None:
    """For two cars on the same phases, the higher priority one is never worse off: it is not
    suspended while the lower one charges (unless it needs more), and the lower one gets
    nothing above its minimum while the higher one could take it."""
    grants = allocate(budget, demands, resume_margin_a=margin)

    def need(x: Demand) -> float:
        return x.min_a + (margin if x.suspended else 0.0)

    for hi in demands:
        for lo in demands:
            if hi.priority <= lo.priority or set(hi.phases) != set(lo.phases) \
                    or hi.max_a < hi.min_a:
                continue
            g_hi, g_lo = grants[hi.cp_id], grants[lo.cp_id]
            if not g_lo.suspended and hi.min_a <= lo.min_a and need(hi) <= need(lo):
                assert not g_hi.suspended
            if not g_lo.suspended and not g_hi.suspended and g_lo.amps > lo.min_a + 1e-6:
                assert g_hi.amps >= hi.max_a - 1e-6


@given(budgets, demand_sets(drawing=False), margins)
def test_equal_priorities_share_fairly(budget: Budget, demands: list[Demand],
                                       margin: float) -> None:
    """Of two charging cars on the same phases and with the same priority, the one with more
    is either at its minimum or the other has all it asked for."""
    grants = allocate(budget, demands, resume_margin_a=margin)
    for a, x in admitted(grants, demands):
        for b, y in admitted(grants, demands):
            if a.priority == b.priority and set(a.phases) == set(b.phases) and y > x + 1e-6:
                assert x >= a.max_a - 1e-6 or y <= b.min_a + 1e-6


@given(budgets, demand_sets(drawing=False), margins)
def test_nothing_is_left_that_a_charging_car_could_take(budget: Budget, demands: list[Demand],
                                                        margin: float) -> None:
    """Every charging car below its maximum is held by a limit that is used up."""
    grants = allocate(budget, demands, resume_margin_a=margin)
    loads = phase_loads(grants, demands)
    watts = math.fsum(a * len(x.phases) * budget.voltage_v for x, a in admitted(grants, demands))
    for x, a in admitted(grants, demands):
        if a >= x.max_a - 1e-6:
            continue
        full = [budget.phase_a[p] - loads[p] <= 1e-6 for p in x.phases]
        if budget.total_w is not None:
            full.append(budget.total_w - watts <= 1e-3)
        if budget.unbalance_a is not None:
            full += [loads[p] - loads[q] >= budget.unbalance_a - 1e-6
                     for p in x.phases for q in range(3) if q not in x.phases]
        assert any(full), (x, a, grants[x.cp_id].reason)
