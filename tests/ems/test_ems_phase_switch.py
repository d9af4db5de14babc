"""1p/3p switching (ems/phase_switch.py): each rule, the session budget, and properties under
clouds (no flapping, always back to 3 phases when the sun returns)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ems.phase_switch import PhaseConfig, PhaseDecision, PhaseState, PhaseWhy, decide_phases

V = 230.0
MIN3_W = 3 * 6.0 * V                     # 4140 W
HIGH, LOW = 8000.0, 2000.0


@dataclass
class Board:
    """A charge point that carries out a phase switch ``lag`` cycles after it is asked."""

    cfg: PhaseConfig
    phases: int = 3
    lag: int = 1
    connected: bool = True
    state: PhaseState = field(default_factory=PhaseState)
    now: float = 0.0
    asked: int | None = None
    waited: int = 0
    switches: list[tuple[float, int]] = field(default_factory=list)
    last: PhaseDecision | None = None

    def step(self, available_w: float | None, dt: float = 5.0) -> PhaseDecision:
        self.now += dt
        if self.asked is not None and self.asked != self.phases:
            self.waited += 1
            if self.waited > self.lag:
                self.phases, self.waited = self.asked, 0
        self.state, d = decide_phases(self.cfg, self.state, available_w=available_w,
                                      current_phases=self.phases, now=self.now,
                                      connected=self.connected, min_a=6.0, max_a=16.0,
                                      voltage_v=V)
        if d.why in (PhaseWhy.SWITCH_UP, PhaseWhy.SWITCH_DOWN):
            self.switches.append((self.now, d.phases))
        if d.phases != self.asked:
            self.asked, self.waited = d.phases, 0
        self.last = d
        return d

    def hold(self, available_w: float | None, seconds: float,
             dt: float = 5.0) -> list[PhaseDecision]:
        return [self.step(available_w, dt) for _ in range(round(seconds / dt))]


def quick(**changes: float | int | bool) -> PhaseConfig:
    """No smoothing, so the delays can be read off directly."""
    values: dict[str, float | int | bool] = {"smoothing_s": 0.0, **changes}
    return PhaseConfig(**values)  # type: ignore[arg-type]


def test_goes_down_after_the_delay_and_back_up_when_the_sun_returns() -> None:
    board = Board(quick(down_delay_s=120, up_delay_s=180, min_dwell_s=600), phases=3)
    first = board.step(LOW)
    assert first.phases == 3 and first.why is PhaseWhy.PENDING
    assert "switching to 1 phase if it lasts" in first.reason
    board.hold(LOW, 115)
    d = board.step(LOW)
    assert (d.phases, d.why) == (1, PhaseWhy.SWITCH_DOWN)
    assert board.step(LOW).why is PhaseWhy.FOLLOWING
    board.hold(LOW, 60)
    assert board.phases == 1
    up = board.hold(HIGH, 900)
    assert board.phases == 3
    switched = next(i for i, d in enumerate(up) if d.why is PhaseWhy.SWITCH_UP)
    assert up[switched - 1].why is PhaseWhy.DWELL
    assert "the next in" in up[switched - 1].reason


def test_hysteresis_band_keeps_either_count() -> None:
    cfg = quick(up_margin_w=400, down_margin_w=200)
    for start in (1, 3):
        board = Board(cfg, phases=start)
        for w in (MIN3_W - 199, MIN3_W, MIN3_W + 399):
            d = board.hold(w, 3600)[-1]
            assert (d.phases, d.why) == (start, PhaseWhy.STAY)
    assert "below the 4.5 kW for 3 phases" in Board(cfg, phases=1).step(MIN3_W).reason


def test_a_break_restarts_the_delay() -> None:
    board = Board(quick(up_delay_s=180), phases=1)
    board.hold(HIGH, 170)
    board.step(LOW)
    assert not any(d.phases == 3 for d in board.hold(HIGH, 175))
    assert board.hold(HIGH, 10)[-1].phases == 3


def test_smoothing_ignores_a_short_burst() -> None:
    board = Board(PhaseConfig(up_delay_s=60, smoothing_s=60.0), phases=1)
    board.hold(LOW, 600)
    board.hold(HIGH, 30)
    assert not board.switches
    board.hold(LOW, 600)
    assert not board.switches


def test_the_session_budget_keeps_a_switch_to_come_back_up() -> None:
    cfg = quick(max_switches_per_session=3, min_dwell_s=0, up_delay_s=10, down_delay_s=10)
    board = Board(cfg, phases=3)
    for _ in range(4):
        board.hold(LOW, 60)
        board.hold(HIGH, 60)
    assert [p for _, p in board.switches] == [1, 3]
    d = board.hold(LOW, 60)[-1]
    assert (d.phases, d.why) == (3, PhaseWhy.BUDGET)
    assert d.reason.endswith("2 of 3 switches used this session (the last one is kept to "
                             "come back to 3 phases)")


def test_one_switch_per_session_is_one_way_up() -> None:
    cfg = quick(max_switches_per_session=1, up_delay_s=10, down_delay_s=10)
    board = Board(cfg, phases=1)
    board.hold(HIGH, 60)
    assert board.phases == 3
    assert board.hold(LOW, 3600)[-1].why is PhaseWhy.BUDGET


def test_a_new_session_resets_the_budget() -> None:
    cfg = quick(max_switches_per_session=2, min_dwell_s=0, up_delay_s=10, down_delay_s=10)
    board = Board(cfg, phases=3)
    board.hold(LOW, 60)
    board.hold(HIGH, 60)
    assert board.state.switches == 2
    board.connected = False
    d = board.step(LOW)
    assert (d.phases, d.why) == (3, PhaseWhy.NO_CAR)
    board.connected = True
    board.step(LOW)
    assert board.state.switches == 0 and board.state.session_start == board.now
    board.hold(LOW, 60)
    assert board.phases == 1


def test_stale_input_never_switches_and_needs_fresh_evidence() -> None:
    board = Board(quick(down_delay_s=120), phases=3)
    board.hold(LOW, 100)
    d = board.step(None)
    assert (d.phases, d.why) == (3, PhaseWhy.STALE)
    assert all(x.phases == 3 for x in board.hold(None, 600))
    assert all(x.phases == 3 for x in board.hold(LOW, 115))
    assert board.hold(LOW, 10)[-1].phases == 1


@pytest.mark.parametrize(("changes", "why"), [({"enabled": False}, PhaseWhy.DISABLED),
                                              ({"never_switch": True}, PhaseWhy.NEVER_SWITCH)])
def test_disabled_or_never_switch_keeps_what_is_energised(
        changes: dict[str, bool], why: PhaseWhy) -> None:
    for phases, w in ((3, LOW), (1, HIGH)):
        board = Board(quick(**changes), phases=phases)
        decisions = board.hold(w, 3600)
        assert all((d.phases, d.why) == (phases, why) for d in decisions)


def test_a_charge_point_that_does_not_follow_is_left_alone() -> None:
    board = Board(quick(down_delay_s=10, follow_timeout_s=60), phases=3, lag=10**9)
    board.hold(LOW, 15)
    assert board.asked == 1 and board.phases == 3
    decisions = board.hold(LOW, 120)
    gave_up = next(d for d in decisions if d.why is PhaseWhy.NOT_FOLLOWED)
    assert gave_up.phases == 3 and "no more switching this session" in gave_up.reason
    assert all(d.phases == 3 for d in board.hold(LOW, 3600))
    board.connected = False
    board.step(LOW)
    board.connected = True
    board.hold(LOW, 15)
    assert board.asked == 1                 # the next session tries again


def test_a_switch_by_someone_else_is_where_we_are() -> None:
    board = Board(quick(up_delay_s=60), phases=3)
    board.hold(MIN3_W, 60)
    board.phases = 1                        # a user switched at the charge point
    d = board.step(MIN3_W)
    assert (d.phases, d.why) == (1, PhaseWhy.STAY)


def test_unlimited_available_goes_to_three_phases() -> None:
    board = Board(PhaseConfig(up_delay_s=30), phases=1)
    board.hold(math.inf, 60)
    assert board.phases == 3
    assert "unlimited" in board.hold(math.inf, 5)[-1].reason
    board.hold(LOW, 5)
    assert board.state.smoothed_w == LOW


def test_bad_input_never_switches() -> None:
    state = PhaseState(connected=True, phases=3)
    for kwargs in ({"now": math.nan}, {"current_phases": 2}, {"min_a": math.nan},
                   {"voltage_v": 0.0}, {"min_a": 20.0}):
        args: dict[str, float] = {"now": 10.0, "current_phases": 3, "min_a": 6.0,
                                  "max_a": 16.0, "voltage_v": V, **kwargs}
        _, d = decide_phases(quick(down_delay_s=0), state, available_w=0.0, connected=True,
                             now=args["now"], current_phases=int(args["current_phases"]),
                             min_a=args["min_a"], max_a=args["max_a"],
                             voltage_v=args["voltage_v"])
        assert (d.phases, d.why) == (3, PhaseWhy.BAD_INPUT)
    _, d = decide_phases(quick(), PhaseState(), available_w=math.nan, connected=True,
                         now=1.0, current_phases=3, min_a=6.0, max_a=16.0, voltage_v=V)
    assert d.why is PhaseWhy.STALE


@pytest.mark.parametrize("changes", [
    {"up_margin_w": 0.0, "down_margin_w": 0.0}, {"min_dwell_s": -1.0},
    {"smoothing_s": math.nan}, {"max_switches_per_session": -1}, {"follow_timeout_s": 0.0}])
def test_config_rejects_impossible_values(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        PhaseConfig(**changes)  # type: ignore[arg-type]


# --- properties ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sky:
    """Available power for a car: a random walk with clouds, stale gaps and unplugging."""

    seed: int
    level_w: float
    walk_w: float
    p_cloud: float
    p_stale: float
    p_unplug: float

    def samples(self, n: int) -> list[tuple[float | None, bool]]:
        rnd = random.Random(self.seed)
        level, cloud, out = self.level_w, 0, []
        connected = True
        for _ in range(n):
            level = min(15_000.0, max(0.0, level + rnd.gauss(0.0, self.walk_w)))
            if cloud == 0 and rnd.random() < self.p_cloud:
                cloud = rnd.randint(1, 80)
            cloud = max(0, cloud - 1)
            if rnd.random() < self.p_unplug:
                connected = not connected
            value = level * (0.2 if cloud else 1.0) + rnd.gauss(0.0, self.walk_w)
            out.append((None if rnd.random() < self.p_stale else value, connected))
        return out


skies = st.builds(Sky, seed=st.integers(0, 2**32 - 1), level_w=st.floats(0.0, 12_000.0),
                  walk_w=st.floats(10.0, 1500.0), p_cloud=st.floats(0.0, 0.1),
                  p_stale=st.sampled_from([0.0, 0.0, 0.02]),
                  p_unplug=st.sampled_from([0.0, 0.0, 0.002, 0.01]))
configs = st.builds(PhaseConfig, up_margin_w=st.floats(0.0, 1000.0),
                    down_margin_w=st.floats(1.0, 1000.0),
                    smoothing_s=st.sampled_from([0.0, 30.0, 60.0]),
                    up_delay_s=st.floats(0.0, 300.0), down_delay_s=st.floats(0.0, 300.0),
                    min_dwell_s=st.floats(0.0, 900.0),
                    max_switches_per_session=st.integers(0, 8))


@given(cfg=configs, sky=skies, start=st.sampled_from([1, 3]), lag=st.integers(0, 3))
def test_clouds_never_flap_or_exceed_the_budget(cfg: PhaseConfig, sky: Sky, start: int,
                                                lag: int) -> None:
    board = Board(cfg, phases=start, lag=lag)
    session: list[float] = []
    for available, connected in sky.samples(1440):
        if connected and not board.connected:
            session = []
        board.connected = connected
        d = board.step(available)
        assert d.phases in (1, 3)
        if d.why in (PhaseWhy.SWITCH_UP, PhaseWhy.SWITCH_DOWN):
            assert available is not None and connected
            if session:
                assert board.now - session[-1] >= cfg.min_dwell_s
            session.append(board.now)
            assert len(session) <= cfg.max_switches_per_session


@given(cfg=configs, sky=skies, start=st.sampled_from([1, 3]), lag=st.integers(0, 3))
def test_after_the_clouds_it_returns_to_three_phases(cfg: PhaseConfig, sky: Sky, start: int,
                                                     lag: int) -> None:
    board = Board(cfg, phases=start, lag=lag)
    for available, _ in sky.samples(720):
        board.step(available)
    settle = cfg.up_delay_s + cfg.min_dwell_s + 10 * cfg.smoothing_s + 60
    board.hold(MIN3_W + cfg.up_margin_w + 2000.0, settle)
    if cfg.max_switches_per_session == 0 and start == 1:
        assert board.phases == 1
    else:
        assert board.phases == 3 and board.last is not None
        assert board.last.why is PhaseWhy.STAY
