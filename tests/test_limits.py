"""Limit arbitration: the lowest active limit applies and names its source."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.core.limits import BOOSTABLE, Limit, LimitClass, LimitSource, arbitrate


def lim(source: LimitSource, amps: float | None = None, **kw: float) -> Limit:
    return Limit.of(source, "test", amps=amps, **kw)  # type: ignore[arg-type]


def test_lowest_wins_and_is_named() -> None:
    eff = arbitrate([lim(LimitSource.BOARD_RATING, 32), lim(LimitSource.GRID_14A, 6),
                     lim(LimitSource.PV_SURPLUS, 10)], 0.0, phases=3, voltage_v=230)
    assert eff.amps == 6 and eff.binding is not None
    assert eff.binding.source is LimitSource.GRID_14A and eff.binding.cls is LimitClass.GRID


def test_watts_become_amps_per_phase() -> None:
    eff = arbitrate([lim(LimitSource.BOARD_RATING, 32),
                     Limit.of(LimitSource.GRID_14A, "4.2 kW", watts=4200)], 0.0, phases=3,
                    voltage_v=230)
    assert eff.amps == pytest.approx(4200 / 690)


def test_a_one_phase_wish_never_inflates_a_watt_limit() -> None:
    eff = arbitrate([lim(LimitSource.BOARD_RATING, 32), lim(LimitSource.OCPP_TX, 32, phases=1),
                     Limit.of(LimitSource.SITE_FUSE, "7 kW", watts=7000)], 0.0,
                    phases=3, voltage_v=230)
    assert eff.amps == pytest.approx(7000 / 690)  # over the 3 energised phases


def test_the_next_validity_edge_is_reported() -> None:
    limits = [lim(LimitSource.BOARD_RATING, 32),
              Limit.of(LimitSource.VPP, "activation", amps=8, valid_from=100, valid_until=200)]
    assert arbitrate(limits, 50, phases=3, voltage_v=230).changes_at == 100
    assert arbitrate(limits, 150, phases=3, voltage_v=230).changes_at == 200
    assert arbitrate(limits, 250, phases=3, voltage_v=230).changes_at is None


def test_validity_window() -> None:
    limits = [lim(LimitSource.BOARD_RATING, 32),
              Limit.of(LimitSource.VPP, "activation", amps=8, valid_from=100, valid_until=200)]
    assert arbitrate(limits, 99.9, phases=3, voltage_v=230).amps == 32
    assert arbitrate(limits, 100.0, phases=3, voltage_v=230).amps == 8
    assert arbitrate(limits, 200.0, phases=3, voltage_v=230).amps == 32


def test_boost_lifts_only_tariff_and_optimisation() -> None:
    limits = [lim(LimitSource.BOARD_RATING, 32), lim(LimitSource.PRICE, 6),
              lim(LimitSource.PV_SURPLUS, 8), lim(LimitSource.GRID_14A, 12)]
    assert arbitrate(limits, 0, phases=3, voltage_v=230).amps == 6
    boosted = arbitrate(limits, 0, phases=3, voltage_v=230, boost=True)
    assert boosted.amps == 12 and boosted.binding is not None
    assert boosted.binding.source is LimitSource.GRID_14A and boosted.boosted


def test_ties_name_the_more_important_class() -> None:
    eff = arbitrate([lim(LimitSource.PRICE, 10), lim(LimitSource.GRID_14A, 10)], 0,
                    phases=3, voltage_v=230)
    assert eff.binding is not None and eff.binding.source is LimitSource.GRID_14A


def test_no_limit_means_zero() -> None:
    eff = arbitrate([], 0, phases=3, voltage_v=230)
    assert eff.amps == 0 and eff.binding is None


@pytest.mark.parametrize("kwargs", [{}, {"amps": 1, "watts": 1}, {"amps": -1},
                                    {"amps": math.inf}, {"amps": 6, "phases": 4},
                                    {"amps": 6, "valid_from": 5, "valid_until": 5}])
def test_malformed_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Limit.of(LimitSource.USER, "bad", **kwargs)  # type: ignore[arg-type]


def test_source_keys_round_trip() -> None:
    for source in LimitSource:
        assert LimitSource.from_key(source.key) is source
    with pytest.raises(ValueError):
        LimitSource.from_key("nope")


limit_strategy = st.builds(
    lambda source, amps, watts, use_watts, phases, start, length: Limit.of(
        source, "p", amps=None if use_watts else amps, watts=watts if use_watts else None,
        phases=phases, valid_from=start, valid_until=None if length is None else start + length),
    st.sampled_from(list(LimitSource)), st.floats(0, 100), st.floats(0, 60000), st.booleans(),
    st.sampled_from([None, 1, 3]), st.floats(-100, 100),
    st.one_of(st.none(), st.floats(0.1, 100)))


@given(st.lists(limit_strategy, max_size=12), st.floats(-50, 150), st.booleans())
def test_effective_is_the_minimum_of_the_active_limits(limits: list[Limit], now: float,
                                                       boost: bool) -> None:
    eff = arbitrate(limits, now, phases=3, voltage_v=230, boost=boost)
    active = [x for x in limits if x.active(now) and not (boost and x.cls in BOOSTABLE)]
    assert set(eff.active) == set(active)
    if not active:
        assert eff.amps == 0 and eff.binding is None
        return
    amps = [x.per_phase_amps(3, 230) for x in active]
    assert eff.amps == min(amps)
    assert eff.binding in active
    assert eff.binding.per_phase_amps(3, 230) == eff.amps
