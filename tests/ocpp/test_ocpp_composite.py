"""Composite schedules (K08) and the limits the profiles give the arbiter: stacking, TxProfile
over TxDefault, the caps, recurrence across midnight and week boundaries, Relative from the
transaction start, validity edges, W against A, 2.1 purposes and discharge; and a property test
against a brute-force evaluator written here from the spec's rules."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.core.limits import LimitSource, arbitrate
from firmware.ocpp.smart_charging import (
    ChargingProfile,
    OcppVersion,
    OperationMode,
    RateUnit,
    TxContext,
    composite_schedule,
    discharge_limits_at,
    limits_at,
    next_change,
    parse_profile,
)
from hal.clock import iso

T0 = 1767225600.0            # 2026-01-01T00:00:00Z, a Thursday
H = 3600
DAY = 86_400
V = 230.0


def raw(pid: int, *, purpose: str = "TxDefaultProfile", stack: int = 0,
        kind: str = "Absolute", unit: str = "A",
        periods: Any = ((0, 16.0),), start: float | None = T0, duration: int | None = None,
        recurrency: str | None = None, valid_from: float | None = None,
        valid_to: float | None = None, tx: str | None = None) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "id": pid, "chargingRateUnit": unit,
        "chargingSchedulePeriod": [
            p if isinstance(p, dict) else {"startPeriod": p[0], "limit": p[1]}
            for p in periods]}
    if start is not None and kind != "Relative":
        schedule["startSchedule"] = iso(start)
    if duration is not None:
        schedule["duration"] = duration
    out: dict[str, Any] = {"id": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
                           "chargingProfileKind": kind, "chargingSchedule": [schedule]}
    if recurrency is not None:
        out["recurrencyKind"] = recurrency
    if valid_from is not None:
        out["validFrom"] = iso(valid_from)
    if valid_to is not None:
        out["validTo"] = iso(valid_to)
    if tx is not None:
        out["transactionId"] = tx
    return out


def prof(pid: int, *, evse: int = 1, source: str = "CSO", **kw: Any) -> ChargingProfile:
    return parse_profile(raw(pid, **kw), evse_id=evse, source=source)


def steps(profiles: list[ChargingProfile], *, duration: int = DAY, start: float = T0,
          unit: str = "A", tx: TxContext | None = None, phases: int = 3,
          evse: int = 1) -> list[tuple[int, float | None]]:
    schedule = composite_schedule(profiles, evse_id=evse, start=start, duration_s=duration,
                                  unit=unit, tx=tx, phases=phases, voltage_v=V)
    return [(p.start_period, None if p.limit is None else round(p.limit, 3))
            for p in schedule.periods]


TX = TxContext(transaction_id="tx-1", started_at=T0 - 600)


# ---- the cases of the issue -----------------------------------------------------------------


def test_higher_stack_wins_and_the_lower_shows_through_where_it_has_no_period() -> None:
    base = prof(1, stack=0, periods=((0, 16.0),))
    burst = prof(2, stack=1, start=T0 + H, duration=2 * H, periods=((0, 10.0), (H, 12.0)))
    assert steps([base, burst]) == [(0, 16.0), (H, 10.0), (2 * H, 12.0), (3 * H, 16.0)]


def test_lower_stack_shows_through_where_the_higher_is_not_valid() -> None:
    base = prof(1, stack=0, periods=((0, 16.0),))
    upper = prof(2, stack=3, periods=((0, 6.0),), valid_from=T0 + 100, valid_to=T0 + 200)
    assert steps([base, upper], duration=1000) == [(0, 16.0), (100, 6.0), (200, 16.0)]
    # validFrom is inclusive, validTo exclusive
    for t, expected in ((T0 + 99, 16.0), (T0 + 100, 6.0), (T0 + 199, 6.0), (T0 + 200, 16.0)):
        (limit,) = limits_at([base, upper], evse_id=1, now=t, tx=None, phases=3, voltage_v=V)
        assert limit.amps == expected


def test_tx_profile_is_preferred_over_tx_default_where_it_covers() -> None:
    default = prof(1, stack=5, periods=((0, 16.0),))
    tx_profile = prof(2, purpose="TxProfile", stack=0, tx="tx-1", start=T0 + H, duration=H,
                      periods=((0, 20.0),))
    # preferred, not the lower of the two: a TxProfile may raise the default
    assert steps([default, tx_profile], tx=TX) == [(0, 16.0), (H, 20.0), (2 * H, 16.0)]
    # another transaction's TxProfile and no transaction at all leave TxDefault alone
    other = TxContext(transaction_id="tx-2", started_at=T0)
    assert steps([default, tx_profile], tx=other) == [(0, 16.0)]
    assert steps([default, tx_profile]) == [(0, 16.0)]


def test_station_max_caps_and_external_constraints_lower() -> None:
    default = prof(1, periods=((0, 16.0),))
    station = prof(2, evse=0, purpose="ChargingStationMaxProfile", periods=((0, 13.0),))
    external = prof(3, evse=0, source="EMS", purpose="ChargingStationExternalConstraints",
                    start=T0 + H, duration=H, periods=((0, 6.0),))
    own = prof(4, evse=1, source="EMS", purpose="ChargingStationExternalConstraints",
               start=T0 + 3 * H, duration=H, periods=((0, 8.0),))
    assert steps([default, station, external, own]) == [
        (0, 13.0), (H, 6.0), (2 * H, 13.0), (3 * H, 8.0), (4 * H, 13.0)]
    # the caps apply without a transaction profile too
    assert steps([station]) == [(0, 13.0)]


def test_recurring_daily_across_midnight() -> None:
    night = prof(1, kind="Recurring", recurrency="Daily", start=T0 - 2 * H,   # 22:00
                 periods=((0, 6.0), (8 * H, 16.0)))                         # 06:00 onwards
    assert steps([night], duration=2 * DAY) == [
        (0, 6.0), (6 * H, 16.0), (22 * H, 6.0), (30 * H, 16.0), (46 * H, 6.0)]


def test_recurring_daily_with_a_duration_leaves_the_rest_of_the_day_to_lower_stacks() -> None:
    base = prof(1, periods=((0, 32.0),))
    evening = prof(2, stack=1, kind="Recurring", recurrency="Daily", start=T0 + 17 * H,
                   duration=4 * H, periods=((0, 10.0),))
    assert steps([base, evening], duration=2 * DAY) == [
        (0, 32.0), (17 * H, 10.0), (21 * H, 32.0), (41 * H, 10.0), (45 * H, 32.0)]


def test_recurring_weekly_across_the_week_boundary() -> None:
    monday = T0 - 3 * DAY                                                    # 2025-12-29
    weekly = prof(1, kind="Recurring", recurrency="Weekly", start=monday,
                  periods=((0, 10.0), (5 * DAY, 32.0)))                      # weekend: 32 A
    assert steps([weekly], duration=7 * DAY) == [(0, 10.0), (2 * DAY, 32.0), (4 * DAY, 10.0)]


def test_relative_runs_from_the_transaction_start_or_from_now_without_one() -> None:
    ramp = prof(1, kind="Relative", start=None, periods=((0, 6.0), (1800, 16.0)))
    assert steps([ramp], duration=H, tx=TX) == [(0, 6.0), (1200, 16.0)]
    assert steps([ramp], duration=H) == [(0, 6.0), (1800, 16.0)]
    # and for the arbiter: without a transaction a Relative profile sits on its first period
    (limit,) = limits_at([ramp], evse_id=1, now=T0 + 5000, tx=None, phases=3, voltage_v=V)
    assert limit.amps == 6.0 and limit.valid_until is None
    (limit,) = limits_at([ramp], evse_id=1, now=T0, tx=TX, phases=3, voltage_v=V)
    assert limit.amps == 6.0 and limit.valid_until == T0 + 1200


def test_watts_and_amps_combine_per_phase() -> None:
    tx_watts = prof(1, purpose="TxProfile", tx="tx-1", unit="W", periods=((0, 11040.0),))
    station = prof(2, evse=0, purpose="ChargingStationMaxProfile", periods=((0, 10.0),))
    assert steps([tx_watts], tx=TX) == [(0, 16.0)]                      # 11040 / (230 * 3)
    assert steps([tx_watts, station], tx=TX) == [(0, 10.0)]
    assert steps([tx_watts, station], tx=TX, unit="W") == [(0, 6900.0)]
    # K01.FR.140: the lowest numberPhases in force; the W limit keeps its power on one phase
    one_phase = prof(3, purpose="TxProfile", tx="tx-1", unit="W",
                     periods=({"startPeriod": 0, "limit": 7360.0, "numberPhases": 1},))
    schedule = composite_schedule([one_phase, station], evse_id=1, start=T0, duration_s=60,
                                  unit="W", tx=TX, phases=3, voltage_v=V)
    (period,) = schedule.periods
    assert period.number_phases == 1 and period.limit == pytest.approx(2300.0)
    wide = prof(4, evse=0, purpose="ChargingStationMaxProfile", periods=((0, 40.0),))
    schedule = composite_schedule([one_phase, wide], evse_id=1, start=T0, duration_s=60,
                                  unit="A", tx=TX, phases=3, voltage_v=V)
    assert schedule.periods[0].limit == pytest.approx(32.0)             # 7360 W on one phase
    # a one-phase board never counts three
    assert steps([tx_watts], tx=TX, phases=1) == [(0, 48.0)]


def test_local_generation_adds_on_top_of_the_composite() -> None:
    # K27's example: 2 kW of local generation on top of a 5 kW TxDefaultProfile charges 7 kW
    default = prof(1, unit="W", periods=((0, 5000.0),))
    sun = prof(2, evse=0, source="EMS", purpose="LocalGeneration", unit="W", start=T0 + H,
               duration=H, periods=((0, 2000.0),))
    assert steps([default, sun], unit="W") == [(0, 5000.0), (H, 7000.0), (2 * H, 5000.0)]
    limits = limits_at([default, sun], evse_id=1, now=T0 + H, tx=None, phases=3, voltage_v=V)
    assert [(lim.source, lim.watts) for lim in limits] == [(LimitSource.OCPP_TX_DEFAULT, 7000.0)]
    assert "LocalGeneration #2" in limits[0].reason
    # with nothing to raise, local generation sets no limit
    assert steps([sun], unit="W") == [(0, None)]


def test_priority_charging_replaces_the_transaction_profiles_while_requested() -> None:
    tx_profile = prof(1, purpose="TxProfile", tx="tx-1", periods=((0, 8.0),))
    priority = prof(2, evse=0, purpose="PriorityCharging", periods=((0, 32.0),))
    assert steps([tx_profile, priority], tx=TX) == [(0, 8.0)]
    boosted = TxContext(transaction_id="tx-1", started_at=TX.started_at, priority=True)
    assert steps([tx_profile, priority], tx=boosted) == [(0, 32.0)]
    (limit,) = limits_at([tx_profile, priority], evse_id=1, now=T0, tx=boosted, phases=3,
                         voltage_v=V)
    assert limit.source is LimitSource.OCPP_TX and "PriorityCharging #2" in limit.reason


def test_nothing_installed_means_no_limit() -> None:
    assert steps([]) == [(0, None)]
    assert limits_at([], evse_id=1, now=T0, tx=None, phases=3, voltage_v=V) == []
    assert next_change([], evse_id=1, now=T0, tx=None) is None


def test_station_composite_for_evse_zero_has_the_caps_only() -> None:
    default = prof(1, periods=((0, 16.0),))
    station = prof(2, evse=0, purpose="ChargingStationMaxProfile", periods=((0, 40.0),))
    assert steps([default, station], evse=0) == [(0, 40.0)]


def test_dynamic_profile_holds_its_period_until_updates_stop() -> None:
    dynamic = raw(1, kind="Dynamic", start=None, duration=600, periods=((0, 11.0),))
    dynamic["dynUpdateTime"] = iso(T0)
    p = parse_profile(dynamic, evse_id=1)
    base = prof(2, stack=0, periods=((0, 16.0),))
    p = replace(p, stack_level=1)
    assert steps([p, base], duration=H) == [(0, 11.0), (600, 16.0)]    # K28.FR.13


# ---- limits for the arbiter -----------------------------------------------------------------


def test_limits_name_their_profile_and_last_until_their_value_changes() -> None:
    default = prof(12, stack=2, periods=((0, 16.0), (2 * H, 10.0)))
    station = prof(3, evse=0, purpose="ChargingStationMaxProfile", valid_to=T0 + 5 * H,
                   periods=((0, 25.0),))
    external = prof(-4, evse=0, source="EMS", purpose="ChargingStationExternalConstraints",
                    unit="W", periods=((0, 9000.0),))
    limits = {lim.source: lim for lim in limits_at(
        [default, station, external], evse_id=1, now=T0 + H, tx=None, phases=3, voltage_v=V)}
    tx_default = limits[LimitSource.OCPP_TX_DEFAULT]
    assert tx_default.amps == 16.0 and tx_default.reason == "OCPP TxDefaultProfile #12 (stack 2)"
    assert tx_default.valid_until == T0 + 2 * H
    assert limits[LimitSource.OCPP_STATION_MAX].valid_until == T0 + 5 * H
    assert limits[LimitSource.OCPP_EXTERNAL].watts == 9000.0
    assert limits[LimitSource.OCPP_EXTERNAL].valid_until is None
    effective = arbitrate(limits.values(), T0 + H, phases=3, voltage_v=V)
    assert effective.amps == pytest.approx(9000 / (3 * V))
    assert effective.binding is limits[LimitSource.OCPP_EXTERNAL]
    assert next_change([default, station, external], evse_id=1, now=T0 + H, tx=None) == (
        T0 + 2 * H)


def test_tx_default_limit_only_where_no_tx_profile_covers() -> None:
    default = prof(1, periods=((0, 16.0),))
    tx_profile = prof(2, purpose="TxProfile", tx="tx-1", start=T0, duration=H,
                      periods=((0, 8.0),))
    (limit,) = limits_at([default, tx_profile], evse_id=1, now=T0 + 10, tx=TX, phases=3,
                         voltage_v=V)
    assert (limit.source, limit.amps, limit.valid_until) == (LimitSource.OCPP_TX, 8.0, T0 + H)
    (limit,) = limits_at([default, tx_profile], evse_id=1, now=T0 + H, tx=TX, phases=3,
                         voltage_v=V)
    assert (limit.source, limit.amps) == (LimitSource.OCPP_TX_DEFAULT, 16.0)


def test_the_lower_external_constraint_is_the_one_reported() -> None:
    wide = prof(-1, evse=0, source="EMS", purpose="ChargingStationExternalConstraints",
                periods=((0, 20.0),))
    own = prof(-2, evse=1, source="SO", purpose="ChargingStationExternalConstraints",
               unit="W", periods=((0, 4140.0),))                           # 6 A on 3 phases
    (limit,) = limits_at([wide, own], evse_id=1, now=T0, tx=None, phases=3, voltage_v=V)
    assert limit.watts == 4140.0 and "#-2" in limit.reason


def test_next_change_sees_recurrences_far_behind_a_long_validity() -> None:
    daily = prof(1, kind="Recurring", recurrency="Daily", start=T0 + 6 * H,
                 periods=((0, 16.0), (12 * H, 6.0)), valid_to=T0 + 400 * DAY)
    assert next_change([daily], evse_id=1, now=T0, tx=None) == T0 + 6 * H
    assert next_change([daily], evse_id=1, now=T0 + 7 * H, tx=None) == T0 + 18 * H
    # a recurring profile with a single period never changes value, only expires
    flat = prof(2, kind="Recurring", recurrency="Weekly", start=T0, periods=((0, 16.0),),
                valid_to=T0 + 30 * DAY)
    assert next_change([flat], evse_id=1, now=T0 + 1, tx=None) == T0 + 30 * DAY


def test_idle_and_setpoints_reach_the_arbiter_as_charge_ceilings() -> None:
    idle = prof(1, purpose="TxProfile", tx="tx-1", periods=(
        {"startPeriod": 0, "operationMode": "Idle"},
        {"startPeriod": 600, "limit": 16.0, "operationMode": "CentralSetpoint",
         "setpoint": 10.0},
        {"startPeriod": 1200, "limit": 16.0, "operationMode": "CentralSetpoint",
         "setpoint": -8.0, "dischargeLimit": -12.0}))
    amps = [limits_at([idle], evse_id=1, now=T0 + t, tx=TX, phases=3, voltage_v=V)[0].amps
            for t in (0, 600, 1200)]
    assert amps == [0.0, 10.0, 0.0]


def test_discharge_is_reported_apart_from_the_limits() -> None:
    v2g = prof(1, purpose="TxProfile", tx="tx-1", unit="W", periods=(
        {"startPeriod": 0, "limit": 11000.0, "operationMode": "CentralSetpoint",
         "setpoint": -5000.0, "dischargeLimit": -7000.0},))
    cap = prof(-2, evse=0, source="EMS", purpose="ChargingStationExternalConstraints",
               unit="W", periods=({"startPeriod": 0, "limit": 11000.0,
                                   "dischargeLimit": -3000.0},))
    state = discharge_limits_at([v2g, cap], evse_id=1, now=T0, tx=TX, phases=3)
    assert state.allowed and state.mode is OperationMode.CENTRAL_SETPOINT
    assert state.setpoint == -5000.0 and state.setpoint_unit is RateUnit.W
    assert sorted((d.source.key, d.watts) for d in state.limits) == [
        ("ocpp_external", 3000.0), ("ocpp_tx", 7000.0)]
    charge = {lim.source: lim.watts for lim in limits_at(
        [v2g, cap], evse_id=1, now=T0, tx=TX, phases=3, voltage_v=V)}
    assert charge == {LimitSource.OCPP_TX: 0.0, LimitSource.OCPP_EXTERNAL: 11000.0}
    schedule = composite_schedule([v2g, cap], evse_id=1, start=T0, duration_s=60, unit="W",
                                  tx=TX, phases=3, voltage_v=V)
    payload = schedule.to_payload(rating_a=32.0, voltage_v=V, version=None)
    assert payload["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 0.0, "numberPhases": 3}]
    payload = schedule.to_payload(rating_a=32.0, voltage_v=V, version=OcppVersion.V21)
    assert payload["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 0.0, "numberPhases": 3, "operationMode": "CentralSetpoint",
         "setpoint": -5000.0, "dischargeLimit": -3000.0}]


def test_legacy_negative_limit_means_discharge_and_charging_only_forbids_it() -> None:
    legacy = prof(1, purpose="TxProfile", tx="tx-1", periods=((0, -10.0),))
    state = discharge_limits_at([legacy], evse_id=1, now=T0, tx=TX, phases=3)
    assert state.allowed and [d.amps for d in state.limits] == [10.0]
    assert limits_at([legacy], evse_id=1, now=T0, tx=TX, phases=3, voltage_v=V)[0].amps == 0.0
    plain = prof(2, periods=((0, 16.0),))
    assert not discharge_limits_at([plain], evse_id=1, now=T0, tx=None, phases=3).allowed
    assert not discharge_limits_at([], evse_id=1, now=T0, tx=None, phases=3).allowed


# ---- property: the composite against a brute-force evaluator --------------------------------


def _t(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def _ref_period(p: dict[str, Any], t: float, rel: float) -> dict[str, Any] | None:
    """The spec's rules, the slow way: which period of ``p`` is in force at ``t``."""
    if "validFrom" in p and t < _t(p["validFrom"]):
        return None
    if "validTo" in p and t >= _t(p["validTo"]):
        return None
    s = p["chargingSchedule"][0]
    anchor = rel if p["chargingProfileKind"] == "Relative" else _t(s["startSchedule"])
    end = math.inf
    if p["chargingProfileKind"] == "Recurring":
        step = DAY if p["recurrencyKind"] == "Daily" else 7 * DAY
        while anchor > t:
            anchor -= step
        while anchor + step <= t:
            anchor += step
        end = anchor + step
    if "duration" in s:
        end = min(end, anchor + s["duration"])
    if not anchor <= t < end:
        return None
    found = None
    for period in s["chargingSchedulePeriod"]:
        if anchor + period["startPeriod"] <= t:
            found = period
    return found


def _ref_amps(p: dict[str, Any], period: dict[str, Any]) -> float:
    unit = p["chargingSchedule"][0]["chargingRateUnit"]
    limit = float(period["limit"])
    return limit if unit == "A" else limit / (V * 3)


def _ref_limit(items: list[tuple[dict[str, Any], int]], t: float, tx: TxContext | None,
               rel: float) -> float | None:
    def winner(purpose: str, evses: tuple[int, ...], tx_id: str | None = None) -> float | None:
        best: tuple[int, float] | None = None
        for p, evse in items:
            if p["chargingProfilePurpose"] != purpose or evse not in evses:
                continue
            if tx_id is not None and p.get("transactionId") != tx_id:
                continue
            period = _ref_period(p, t, rel)
            if period is not None and (best is None or p["stackLevel"] > best[0]):
                best = (p["stackLevel"], _ref_amps(p, period))
        return None if best is None else best[1]

    tx_level = None if tx is None else winner("TxProfile", (1,), tx.transaction_id)
    if tx_level is None:
        tx_level = winner("TxDefaultProfile", (0, 1))
    values = [tx_level, winner("ChargingStationMaxProfile", (0,)),
              winner("ChargingStationExternalConstraints", (0,)),
              winner("ChargingStationExternalConstraints", (1,))]
    present = [v for v in values if v is not None]
    return min(present) if present else None


_PURPOSES = [("TxDefaultProfile", 0), ("TxDefaultProfile", 1), ("TxProfile", 1),
             ("ChargingStationMaxProfile", 0), ("ChargingStationExternalConstraints", 0),
             ("ChargingStationExternalConstraints", 1)]


@st.composite
def _profile(draw: st.DrawFn, index: int) -> tuple[dict[str, Any], int]:
    purpose, evse = draw(st.sampled_from(_PURPOSES))
    kinds = ["Absolute", "Recurring"] + ([] if purpose == "ChargingStationMaxProfile"
                                         else ["Relative"])
    kind = draw(st.sampled_from(kinds))
    unit = draw(st.sampled_from(["A", "W"]))
    starts = sorted(draw(st.sets(st.integers(1, 2 * DAY // 600), max_size=3)))
    limits = draw(st.lists(st.integers(0, 40), min_size=len(starts) + 1,
                           max_size=len(starts) + 1))
    scale = 1 if unit == "A" else 3 * V
    periods = [(0, limits[0] * scale)] + [(s * 600, lim * scale)
                                          for s, lim in zip(starts, limits[1:], strict=True)]
    start = T0 + draw(st.integers(-3 * DAY // 600, 3 * DAY // 600)) * 600
    duration = draw(st.one_of(st.none(), st.integers(1, 3 * DAY // 600).map(lambda d: d * 600)))
    valid_from = draw(st.one_of(st.none(), st.integers(-DAY, 3 * DAY).map(lambda d: T0 + d)))
    valid_to = draw(st.one_of(st.none(), st.integers(1, 4 * DAY).map(
        lambda d: (valid_from or T0) + d)))
    tx = draw(st.sampled_from(["tx-1", "tx-2"])) if purpose == "TxProfile" else None
    return raw(index, purpose=purpose, stack=draw(st.integers(0, 3)) * 10 + index, kind=kind,
               unit=unit, periods=periods, start=start, duration=duration,
               recurrency=draw(st.sampled_from(["Daily", "Weekly"])) if kind == "Recurring"
               else None, valid_from=valid_from, valid_to=valid_to, tx=tx), evse


@st.composite
def _installed(draw: st.DrawFn) -> list[tuple[dict[str, Any], int]]:
    n = draw(st.integers(1, 6))
    return [draw(_profile(i + 1)) for i in range(n)]


@given(items=_installed(), has_tx=st.booleans(),
       tx_age=st.integers(0, 2 * DAY), instants=st.lists(st.integers(0, 4 * DAY - 1),
                                                         min_size=1, max_size=12))
def test_composite_equals_the_lowest_purpose_of_a_brute_force_evaluation(
        items: list[tuple[dict[str, Any], int]], has_tx: bool, tx_age: int,
        instants: list[int]) -> None:
    tx = TxContext(transaction_id="tx-1", started_at=T0 - tx_age) if has_tx else None
    rel = T0 if tx is None else tx.started_at
    profiles = [parse_profile(p, evse_id=evse, source="CSO" if "External" not in
                              p["chargingProfilePurpose"] else "EMS") for p, evse in items]
    schedule = composite_schedule(profiles, evse_id=1, start=T0, duration_s=4 * DAY, unit="A",
                                  tx=tx, phases=3, voltage_v=V)
    starts = [p.start_period for p in schedule.periods]
    assert starts == sorted(set(starts)) and starts[0] == 0
    for offset in instants:
        got = schedule.period_at(T0 + offset).limit
        expected = _ref_limit(items, T0 + offset, tx, rel)
        assert (got is None) == (expected is None), (offset, got, expected)
        if got is not None:
            assert got == pytest.approx(expected), offset


@given(items=_installed(), has_tx=st.booleans(), tx_age=st.integers(0, 2 * DAY),
       offset=st.integers(0, 4 * DAY))
def test_limits_at_agree_with_the_composite_at_now(
        items: list[tuple[dict[str, Any], int]], has_tx: bool, tx_age: int,
        offset: int) -> None:
    tx = TxContext(transaction_id="tx-1", started_at=T0 - tx_age) if has_tx else None
    now = T0 + offset
    profiles = [parse_profile(p, evse_id=evse) for p, evse in items]
    schedule = composite_schedule(profiles, evse_id=1, start=now, duration_s=60, unit="A",
                                  tx=tx, phases=3, voltage_v=V)
    limits = limits_at(profiles, evse_id=1, now=now, tx=tx, phases=3, voltage_v=V)
    assert len({lim.source for lim in limits}) == len(limits)
    effective = [lim.per_phase_amps(3, V) for lim in limits if lim.active(now)]
    expected = schedule.periods[0].limit
    assert (min(effective) if effective else None) == (
        None if expected is None else pytest.approx(expected))
    change = next_change(profiles, evse_id=1, now=now, tx=tx)
    for lim in limits:
        assert lim.valid_until is None or (change is not None and change <= lim.valid_until)
    # the station re-evaluates at next_change: nothing may move before it (without a
    # transaction a Relative profile stays on its first period for the arbiter, while the
    # composite shows what a transaction starting now would get)
    if tx is None and any(p.kind.value == "Relative" for p in profiles):
        return
    ahead = composite_schedule(profiles, evse_id=1, start=now, duration_s=8 * DAY, unit="A",
                               tx=tx, phases=3, voltage_v=V)
    if len(ahead.periods) > 1:
        assert change is not None and change <= now + ahead.periods[1].start_period
