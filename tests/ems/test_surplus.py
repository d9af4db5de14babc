"""PV surplus decisions (ems/surplus.py): each rule, the fail-safes, and properties under clouds."""

from __future__ import annotations

import csv
import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ems.model import Mode
from ems.surplus import (
    PvConfig,
    SurplusDecision,
    SurplusState,
    SurplusWhy,
    decide,
    duration,
    kw,
)

V = 230.0
MIN3_W = 6.0 * 3 * V       # 4140 W: the 3-phase minimum power
DATA = Path(__file__).resolve().parents[1] / "data" / "ems"


@dataclass
class Car:
    """Steps one charge point's PV logic through time like the manager does."""

    cfg: PvConfig
    mode: Mode = Mode.PV
    phases: int = 3
    min_a: float = 6.0
    max_a: float = 16.0
    state: SurplusState = field(default_factory=SurplusState)
    now: float = 0.0
    last: SurplusDecision | None = None

    def step(self, surplus_w: float | None, dt: float = 5.0) -> SurplusDecision:
        self.now += dt
        self.state, self.last = decide(self.cfg, self.state, mode=self.mode,
                                       surplus_w=surplus_w, now=self.now, min_a=self.min_a,
                                       max_a=self.max_a, phases=self.phases, voltage_v=V)
        return self.last

    def hold(self, surplus_w: float | None, seconds: float,
             dt: float = 5.0) -> list[SurplusDecision]:
        return [self.step(surplus_w, dt) for _ in range(round(seconds / dt))]


def quick(**changes: float) -> PvConfig:
    """No smoothing, so each rule's timing can be read off directly."""
    values = {"smoothing_s": 0.0, **changes}
    return PvConfig(**values)


def charging_car(cfg: PvConfig, surplus_w: float = 6000.0) -> Car:
    car = Car(cfg)
    car.hold(surplus_w, cfg.enable_delay_s + 5)
    assert car.last is not None and car.last.charging
    return car


# --- modes ---------------------------------------------------------------------------------

def test_off_is_zero_and_stops_at_once_even_within_min_on() -> None:
    car = charging_car(quick(min_on_s=3600))
    car.mode = Mode.OFF
    d = car.step(8000.0)
    assert (d.amps, d.charging, d.why, d.reason) == (0.0, False, SurplusWhy.OFF, "mode off")


def test_now_has_no_pv_limit_whatever_the_surplus() -> None:
    car = Car(quick(), mode=Mode.NOW)
    for surplus in (None, -5000.0, 0.0, 20000.0):
        d = car.step(surplus)
        assert (d.amps, d.charging, d.why) == (None, True, SurplusWhy.NOW)


def test_min_pv_keeps_the_minimum_and_adds_the_surplus() -> None:
    car = Car(quick(), mode=Mode.MIN_PV)
    d = car.step(0.0)
    assert (d.amps, d.charging, d.why) == (6.0, True, SurplusWhy.MINIMUM)
    assert "below the 4.1 kW minimum" in d.reason
    d = car.step(10 * 3 * V)
    assert (d.amps, d.why) == (10.0, SurplusWhy.SURPLUS)
    d = car.step(50_000.0)
    assert d.amps == 16.0


def test_min_pv_starts_at_once_even_within_min_off() -> None:
    car = charging_car(quick(min_off_s=3600))
    car.mode = Mode.OFF
    car.step(6000.0)
    car.mode = Mode.MIN_PV
    d = car.step(0.0)
    assert d.charging and d.amps == 6.0


def test_now_to_pv_keeps_charging_while_the_sun_pays() -> None:
    car = Car(quick(), mode=Mode.NOW)
    car.hold(6000.0, 60)
    car.mode = Mode.PV
    d = car.step(6000.0)
    assert d.charging and d.why is SurplusWhy.SURPLUS


# --- PV start ------------------------------------------------------------------------------

def test_pv_does_not_start_without_surplus() -> None:
    car = Car(quick())
    decisions = car.hold(MIN3_W - 50, 3600)
    assert not any(d.charging for d in decisions)
    assert decisions[-1].why is SurplusWhy.WAITING
    assert decisions[-1].reason == "PV surplus 4.1 kW below 4.1 kW minimum for 60 min"


def test_pv_starts_only_after_enable_delay_of_unbroken_surplus() -> None:
    car = Car(quick(enable_delay_s=60))
    first = car.step(6000.0)
    assert not first.charging and first.why is SurplusWhy.START_DELAY
    assert "waiting 60 s of surplus before start" in first.reason
    car.hold(6000.0, 30)
    car.step(1000.0)                       # a break: the delay starts over
    waiting = car.hold(6000.0, 55)
    assert not any(d.charging for d in waiting)
    d = car.hold(6000.0, 10)[-1]
    assert d.charging and d.why is SurplusWhy.SURPLUS
    assert d.amps == pytest.approx(6000.0 / (3 * V))


def test_start_cover_is_relative_to_the_cars_minimum() -> None:
    one_phase_min = 6.0 * V
    car = Car(quick(start_cover=0.5, enable_delay_s=0), phases=1)
    assert not car.step(0.45 * one_phase_min).charging
    d = car.step(0.55 * one_phase_min)
    assert d.charging and d.amps == 6.0
    assert "start threshold" not in d.reason


def test_min_off_holds_a_restart_and_says_how_long() -> None:
    cfg = quick(min_on_s=0, min_off_s=300, enable_delay_s=10, stop_import_wh=10)
    car = charging_car(cfg)
    stop = car.hold(0.0, 60)
    assert any(d.why is SurplusWhy.STOP_IMPORT for d in stop)
    d = car.hold(6000.0, 60)[-1]
    assert not d.charging and d.why is SurplusWhy.MIN_OFF
    assert d.reason.startswith("minimum off time, ") and d.reason.endswith(" left")
    later = car.hold(6000.0, 300)
    assert later[-1].charging


# --- PV run --------------------------------------------------------------------------------

def test_current_moves_only_past_the_deadband() -> None:
    car = charging_car(quick(deadband_a=1.0), surplus_w=8 * 3 * V)
    assert car.last is not None and car.last.amps == pytest.approx(8.0)
    assert car.step(8.9 * 3 * V).amps == pytest.approx(8.0)
    assert car.step(7.2 * 3 * V).amps == pytest.approx(8.0)
    assert car.step(9.1 * 3 * V).amps == pytest.approx(9.1)


def test_smoothing_rides_out_a_single_spike() -> None:
    car = charging_car(PvConfig(smoothing_s=30.0, enable_delay_s=0, deadband_a=1.0),
                       surplus_w=8 * 3 * V)
    car.hold(8 * 3 * V, 300)
    d = car.step(13 * 3 * V)               # one 5-second sample of 5 A more sun
    assert d.amps == pytest.approx(8.0)
    assert car.step(8 * 3 * V).amps == pytest.approx(8.0)


def test_current_is_clamped_to_the_range() -> None:
    car = charging_car(quick(), surplus_w=100_000.0)
    assert car.last is not None and car.last.amps == 16.0
    car.max_a = 10.0                       # the range changes: the offer follows at once
    assert car.step(100_000.0).amps == 10.0


# --- PV stop -------------------------------------------------------------------------------

def test_short_deep_cloud_is_ridden_out_on_the_minimum() -> None:
    cfg = quick(min_on_s=0, stop_import_wh=150)
    car = charging_car(cfg)
    # 100 s with no sun at all costs 4.14 kW × 100 s = 115 Wh < 150 Wh.
    cloud = car.hold(0.0, 100)
    assert all(d.charging and d.amps == 6.0 for d in cloud)
    assert cloud[-1].why is SurplusWhy.SHORTFALL
    assert "below 4.1 kW minimum for" in cloud[-1].reason and "Wh grid import used" in \
        cloud[-1].reason
    assert car.step(8000.0).why is SurplusWhy.SURPLUS


def test_long_deep_cloud_stops_when_the_import_budget_is_spent() -> None:
    cfg = quick(min_on_s=0, stop_import_wh=150, disable_delay_s=3600)
    car = charging_car(cfg)
    cloud = car.hold(0.0, 300)
    stopped = next(i for i, d in enumerate(cloud) if not d.charging)
    # 150 Wh at 4.14 kW take 130 s.
    assert 125 <= (stopped + 1) * 5 <= 140
    d = cloud[stopped]
    assert d.why is SurplusWhy.STOP_IMPORT and d.amps == 0.0
    assert d.reason.startswith("PV paused: ") and "budget 150 Wh" in d.reason


def test_house_load_beyond_the_sun_is_not_charged_to_the_car() -> None:
    """The import counted is what the car's minimum costs, at most the minimum itself."""
    def stop_time(surplus_w: float) -> int:
        car = charging_car(quick(min_on_s=0, disable_delay_s=3600))
        cloud = car.hold(surplus_w, 600)
        return next(i for i, d in enumerate(cloud) if not d.charging)
    assert stop_time(-8000.0) == stop_time(0.0)


def test_shallow_shortfall_stops_after_disable_delay() -> None:
    cfg = quick(min_on_s=0, stop_import_wh=1000, disable_delay_s=600)
    car = charging_car(cfg)
    decisions = car.hold(MIN3_W - 300, 700)
    stopped = next(i for i, d in enumerate(decisions) if not d.charging)
    assert stopped * 5 == 600              # from the first short sample
    d = decisions[stopped]
    assert d.why is SurplusWhy.STOP_SHORTFALL
    assert d.reason == "PV paused: PV surplus 3.8 kW below 4.1 kW minimum for 10 min"


def test_min_on_holds_a_due_stop() -> None:
    cfg = quick(min_on_s=600, stop_import_wh=10, enable_delay_s=0)
    car = Car(cfg)
    car.step(6000.0)
    d = car.hold(0.0, 60)[-1]
    assert d.charging and d.amps == 6.0 and d.why is SurplusWhy.MIN_ON
    assert d.reason.startswith("minimum on time, 9 min left: ")
    assert car.now == 65.0
    rest = car.hold(0.0, 600)
    stopped = next(i for i, d in enumerate(rest) if not d.charging)
    assert 65.0 + (stopped + 1) * 5 == 5.0 + 600     # started at 5 s, on for 600 s
    assert rest[stopped].why is SurplusWhy.STOP_IMPORT


def test_spent_budget_does_not_stop_while_the_sun_is_back() -> None:
    cfg = quick(min_on_s=600, stop_import_wh=10, enable_delay_s=0)
    car = Car(cfg)
    car.step(6000.0)
    car.hold(0.0, 120)                      # budget spent inside the minimum on time
    after = car.hold(6000.0, 900)
    assert all(d.charging for d in after)


# --- fail-safes and bad input --------------------------------------------------------------

def test_stale_surplus_never_starts_pv() -> None:
    car = Car(quick(enable_delay_s=0))
    d = car.step(None)
    assert not d.charging and d.why is SurplusWhy.STALE
    assert "inputs stale" in d.reason


def test_stale_surplus_while_charging_is_no_surplus() -> None:
    cfg = quick(min_on_s=0, stop_import_wh=150, disable_delay_s=3600)
    car = charging_car(cfg, surplus_w=12 * 3 * V)
    stale = car.hold(None, 300)
    assert stale[0].amps == 6.0             # the minimum at once, not the last surplus
    stopped = next(i for i, d in enumerate(stale) if not d.charging)
    assert 125 <= (stopped + 1) * 5 <= 140  # as a cloud with no sun at all


def test_stale_surplus_min_pv_charges_the_minimum() -> None:
    car = Car(quick(), mode=Mode.MIN_PV)
    car.step(12 * 3 * V)
    d = car.step(None)
    assert (d.amps, d.charging, d.why) == (6.0, True, SurplusWhy.STALE)


def test_nan_surplus_counts_as_stale() -> None:
    car = Car(quick(enable_delay_s=0))
    assert car.step(math.nan).why is SurplusWhy.STALE


def test_nan_clock_changes_nothing() -> None:
    cfg = quick()
    state = SurplusState(charging=True, on_since=0.0, offered_a=8.0)
    new, d = decide(cfg, state, mode=Mode.PV, surplus_w=5000.0, now=math.nan, min_a=6.0,
                    max_a=16.0, phases=3, voltage_v=V)
    assert new == state and d.why is SurplusWhy.BAD_INPUT and not d.charging


@pytest.mark.parametrize(("min_a", "max_a", "phases", "voltage"), [
    (10.0, 6.0, 3, V), (math.nan, 16.0, 3, V), (6.0, 16.0, 0, V), (6.0, 16.0, 3, -1.0),
    (0.0, 16.0, 3, V), (6.0, math.inf, 3, V)])
def test_impossible_electrics_pause_pv_but_not_off_or_now(min_a: float, max_a: float,
                                                         phases: int, voltage: float) -> None:
    for mode, expect in ((Mode.PV, (0.0, False, SurplusWhy.BAD_INPUT)),
                         (Mode.MIN_PV, (0.0, False, SurplusWhy.BAD_INPUT)),
                         (Mode.OFF, (0.0, False, SurplusWhy.OFF)),
                         (Mode.NOW, (None, True, SurplusWhy.NOW))):
        _, d = decide(quick(), SurplusState(), mode=mode, surplus_w=9000.0, now=1.0,
                      min_a=min_a, max_a=max_a, phases=phases, voltage_v=voltage)
        assert (d.amps, d.charging, d.why) == expect


@pytest.mark.parametrize("changes", [
    {"min_on_s": -1.0}, {"smoothing_s": math.nan}, {"start_cover": 0.0},
    {"stop_window_s": 0.0}, {"deadband_a": math.inf}])
def test_config_rejects_impossible_values(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        PvConfig(**changes)


def test_site_file_error_names_file_and_table() -> None:
    from ems.config_error import ConfigError
    from ems.site import parse_site
    raw = {"grid": {"fuse_a": 25}, "charge_point": [{"id": "cp1"}],
           "pv_mode": {"min_off_s": -5}}
    with pytest.raises(ConfigError, match=r"site\.toml: pv_mode: .*min_off_s"):
        parse_site(raw, Path("site.toml"))


def test_wording() -> None:
    assert (kw(2140.0), kw(math.inf)) == ("2.1 kW", "unlimited")
    assert [duration(s) for s in (0.2, 59.0, 119.5, 125.0, 240.0)] == [
        "1 s", "59 s", "120 s", "2 min", "4 min"]


# --- real days -----------------------------------------------------------------------------

def day(name: str) -> list[float]:
    """The day's surplus per minute with no car (PV − house), from tests/data/ems."""
    with (DATA / f"day-{name}.csv").open() as f:
        return [float(r["pv_w"]) - float(r["house_w"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", ["sunny-june", "cloudy-april", "mixed-september",
                                  "grey-december"])
def test_a_whole_day_in_pv_mode(name: str) -> None:
    cfg = PvConfig()
    car = Car(cfg)
    decisions: list[tuple[float, SurplusDecision]] = []
    for surplus in day(name):
        for _ in range(6):
            decisions.append((surplus, car.step(surplus, dt=10.0)))
    starts = 0
    for (_, a), (surplus, b) in itertools.pairwise(decisions):
        if b.charging and not a.charging:
            starts += 1
            # Never a start without surplus (the smoothed value covered the minimum for a
            # minute, so the sample itself is never far below it).
            assert surplus > 0.5 * MIN3_W
    assert starts <= 86_400 / (cfg.min_on_s + cfg.min_off_s) + 1
    charged_min = sum(1 for _, d in decisions if d.charging) / 6
    if name == "sunny-june":
        assert starts == 1 and charged_min > 8 * 60
    if name == "grey-december":
        assert charged_min < 60


# --- properties ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sky:
    """A cloudy hour: a random walk of the surplus with sudden drops (clouds) and stale gaps."""

    seed: int
    level_w: float
    walk_w: float
    p_cloud: float
    p_stale: float

    def samples(self, n: int) -> list[float | None]:
        rnd = random.Random(self.seed)
        level, out = self.level_w, []
        cloud = 0
        for _ in range(n):
            level = min(15_000.0, max(-3000.0, level + rnd.gauss(0.0, self.walk_w)))
            if cloud == 0 and rnd.random() < self.p_cloud:
                cloud = rnd.randint(1, 60)
            cloud = max(0, cloud - 1)
            value = level * (0.2 if cloud else 1.0) + rnd.gauss(0.0, self.walk_w)
            out.append(None if rnd.random() < self.p_stale else value)
        return out


skies = st.builds(Sky, seed=st.integers(0, 2**32 - 1), level_w=st.floats(0.0, 12_000.0),
                  walk_w=st.floats(10.0, 800.0), p_cloud=st.floats(0.0, 0.1),
                  p_stale=st.sampled_from([0.0, 0.0, 0.01, 0.05]))
configs = st.builds(PvConfig, smoothing_s=st.sampled_from([0.0, 10.0, 30.0, 60.0]),
                    start_cover=st.floats(0.5, 1.5), enable_delay_s=st.floats(0.0, 120.0),
                    stop_import_wh=st.floats(0.0, 400.0), stop_window_s=st.floats(60.0, 1800.0),
                    disable_delay_s=st.floats(0.0, 900.0), min_on_s=st.floats(30.0, 600.0),
                    min_off_s=st.floats(30.0, 600.0), deadband_a=st.floats(0.0, 3.0))


@given(cfg=configs, sky=skies, phases=st.sampled_from([1, 3]), mode=st.sampled_from(
    [Mode.PV, Mode.MIN_PV]))
def test_clouds_bound_the_transitions_and_the_current(cfg: PvConfig, sky: Sky, phases: int,
                                                      mode: Mode) -> None:
    car = Car(cfg, mode=mode, phases=phases)
    dt = 5.0
    started = stopped = None
    starts = 0
    previous: SurplusDecision | None = None
    for surplus in sky.samples(720):
        d = car.step(surplus, dt)
        if d.charging:
            assert d.amps is not None and car.min_a <= d.amps <= car.max_a
        else:
            assert d.amps == 0.0
        if previous is not None and previous.charging and d.charging and surplus is not None:
            assert previous.amps is not None and d.amps is not None
            change = abs(d.amps - previous.amps)
            assert change == 0.0 or change >= cfg.deadband_a
        if d.charging and (previous is None or not previous.charging):
            starts += 1
            if stopped is not None:
                assert car.now - stopped >= cfg.min_off_s
            started = car.now
        if not d.charging and previous is not None and previous.charging:
            assert started is not None and car.now - started >= cfg.min_on_s
            stopped = car.now
        previous = d
    if mode is Mode.MIN_PV:
        assert starts == 1
    assert starts <= 720 * dt / (cfg.min_on_s + cfg.min_off_s) + 1


@given(sky=skies, modes=st.lists(st.sampled_from(list(Mode)), min_size=1, max_size=12))
def test_modes_hold_under_any_sky(sky: Sky, modes: list[Mode]) -> None:
    cfg = PvConfig(enable_delay_s=10.0, min_on_s=30.0, min_off_s=30.0)
    car = Car(cfg)
    samples = sky.samples(240)
    for i, surplus in enumerate(samples):
        car.mode = modes[i * len(modes) // len(samples)]
        d = car.step(surplus)
        if car.mode is Mode.OFF:
            assert (d.amps, d.charging) == (0.0, False)
        elif car.mode is Mode.NOW:
            assert (d.amps, d.charging) == (None, True)
        elif car.mode is Mode.MIN_PV:
            assert d.charging and d.amps is not None and d.amps >= car.min_a
        elif d.charging:
            assert d.amps is not None and d.amps >= car.min_a
