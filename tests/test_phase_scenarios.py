"""1p/3p switching on the simulated board in virtual time: the real connector, plant, store and
event loop. The plant counts every move of its phase relay with the contactor closed or
commanded closed; that count must stay 0 in every scenario."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import sim_board
from rig import Rig

from firmware.core.iec61851 import Phase
from firmware.core.limits import Limit, LimitSource
from firmware.core.phase_switch import Abort, Outcome, PhaseEventKind, Refusal, Stage
from firmware.core.reasons import FaultCode, SuspendReason
from firmware.store.db import Store
from hal.board import Board
from hal.sim.ev import PROFILES, Output, Quirk
from hal.sim.plant import PlantError, PlantFault

SWITCHING = sim_board(charging={"phase_switching": True})
V = 230.0


def watch_relay(rig: Rig) -> list[tuple[float, int, bool, Output]]:
    """Record every relay command: (time, phases, contactor closed, pilot output)."""
    relay = rig.hw.phase_switch
    assert relay is not None
    moves: list[tuple[float, int, bool, Output]] = []
    setter = relay.set_phases

    def record(n: int) -> None:
        moves.append((rig.t, n, rig.plant.contactor_closed, rig.plant.output))
        setter(n)

    relay.set_phases = record  # type: ignore[method-assign]
    return moves


def currents(rig: Rig) -> tuple[float, ...]:
    sample = rig.plant.meter_sample
    assert sample is not None
    return tuple(round(a, 2) for a in sample.current_a)


def pv(watts: float) -> Limit:
    return Limit.of(LimitSource.PV_SURPLUS, f"pv surplus {watts:g} W", watts=watts)


def test_a_charging_car_is_switched_to_one_phase_and_back(tmp_path: Path) -> None:
    moves: list[tuple[float, int, bool, Output]] = []
    timeline: dict[str, float] = {}

    async def scenario(rig: Rig) -> None:
        watched = watch_relay(rig)
        rig.limits.submit(pv(20 * 3 * V))  # 20 A: the car takes its 16 A
        await rig.charging("compact_3p")
        await rig.until(rig.t + 5)
        assert currents(rig) == (16.0, 16.0, 16.0)
        session = rig.connector.session
        assert session is not None

        timeline["ask_1p"] = rig.t
        rig.limits.request_phases(1, "surplus below 4.1 kW")
        rig.limits.submit(pv(20 * V))  # 6.7 A over three phases, 20 A over one
        assert rig.plant.output is Output.X1  # the pause is at once
        assert rig.connector.state.suspend is SuspendReason.PHASE_SWITCH
        await rig.wait_for(lambda: not rig.plant.contactor_closed, 6.5)
        timeline["opened_1p"] = rig.t
        await rig.wait_for(lambda: rig.plant.contactor_closed, 30.0)
        timeline["charging_1p"] = rig.t
        await rig.until(rig.t + 3)
        assert currents(rig) == (16.0, 0.0, 0.0)
        view = rig.connector.view()
        assert view.phases == 1 and rig.connector.limit.amps == pytest.approx(20.0)
        assert (view.phase_switch.switches, view.phase_switch.outcome) == (1, Outcome.RESUMED)
        assert rig.phase is Phase.CHARGING and session.phase_switches == 1

        await rig.until(timeline["ask_1p"] + 75)  # past the minimum interval
        timeline["ask_3p"] = rig.t
        rig.limits.request_phases(3, "surplus above 4.6 kW")
        rig.limits.submit(pv(20 * 3 * V))
        await rig.wait_for(lambda: not rig.plant.contactor_closed, 6.5)
        await rig.wait_for(lambda: rig.plant.contactor_closed, 30.0)
        timeline["charging_3p"] = rig.t
        await rig.until(rig.t + 3)
        assert currents(rig) == (16.0, 16.0, 16.0)
        view = rig.connector.view()
        assert view.phases == 3 and view.phase_switch.switches == 2
        assert view.phase_switch.stage is Stage.IDLE and session.phase_switches == 2
        moves.extend(watched)

    rig = Rig.run(tmp_path, scenario, SWITCHING)
    assert rig.plant.switched_under_load == 0 and rig.plant.relay_switches == 2
    assert [(n, closed, out) for _, n, closed, out in moves] == [
        (1, False, Output.X1), (3, False, Output.X1)]
    t = SWITCHING.timing
    # X1 at once; the car stops after its 2 s reaction and the contactor opens with it; the
    # relay moves after the dwell, PWM after the settle time, and the car asks again 2 s later.
    assert timeline["opened_1p"] - timeline["ask_1p"] == pytest.approx(2.0, abs=0.05)
    assert moves[0][0] - timeline["opened_1p"] == pytest.approx(t.phase_switch_dwell_s, abs=0.05)
    assert timeline["charging_1p"] - timeline["ask_1p"] == pytest.approx(
        2.0 + t.phase_switch_dwell_s + t.phase_switch_settle_s + 2.0, abs=0.1)
    assert timeline["charging_3p"] - timeline["ask_3p"] == pytest.approx(
        timeline["charging_1p"] - timeline["ask_1p"], abs=0.1)
    assert len(rig.close_commands) == 3
    [session] = rig.finished
    assert session.phase_switches == 2 and not session.faults
    store = Store(tmp_path / "voltpilot.db")
    [rec] = store.sessions()
    events = [(kind, data) for _, kind, data in store.events(rec.id)
              if kind in {k.value for k in PhaseEventKind}]
    store.close()
    assert [kind for kind, _ in events] == [
        "phase_switch_started", "phases_switched", "phase_switch_finished",
        "phase_switch_started", "phases_switched", "phase_switch_finished"]
    assert events[1][1] == {"target": 1, "phases": 1, "count": 1,
                            "reason": "surplus below 4.1 kW"}
    assert events[2][1]["outcome"] == "resumed"


def test_a_request_during_a_fault_is_refused_with_a_reason(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.plant.set_fault(PlantFault.RCD_TRIP, True)
        await rig.wait_for(lambda: not rig.plant.contactor_closed, 0.1, step_s=0.001)
        rig.limits.request_phases(1, "pv surplus low")
        await rig.until(rig.t + 120)
        view = rig.connector.view()
        assert view.phase_switch.refused is Refusal.FAULT
        assert view.phases == 3 and rig.plant.relay_switches == 0
        assert FaultCode.RCD_TRIPPED in view.state.faults
        # Cleared by an operator: the request still stands and is carried out.
        rig.plant.set_fault(PlantFault.RCD_TRIP, False)
        rig.connector.reset_faults()
        await rig.wait_for(lambda: rig.plant.contactor_closed, 30.0)
        await rig.until(rig.t + 3)
        assert currents(rig) == (16.0, 0.0, 0.0)
        assert rig.connector.view().phase_switch.refused is None

    rig = Rig.run(tmp_path, scenario, SWITCHING)
    assert rig.plant.switched_under_load == 0 and rig.plant.relay_switches == 1
    store = Store(tmp_path / "voltpilot.db")
    [rec] = store.sessions()
    refusals = [data for _, kind, data in store.events(rec.id)
                if kind == "phase_switch_refused"]
    store.close()
    assert refusals == [{"target": 1, "phases": 3, "refusal": "fault",
                         "reason": "pv surplus low"}]


def test_a_fault_during_the_dwell_aborts_with_everything_open(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.limits.request_phases(1, "pv")
        await rig.wait_for(lambda: rig.connector.phase_switch.stage is Stage.DWELL, 10.0)
        rig.plant.set_fault(PlantFault.RCD_TRIP, True)
        await rig.until(rig.t + 30)
        s = rig.connector.phase_switch
        assert (s.stage, s.outcome, s.abort) == (Stage.IDLE, Outcome.ABORTED, Abort.FAULT)
        assert rig.phase is Phase.FAULT and not rig.plant.contactor_closed
        assert rig.plant.energised_phases() == 3 and s.refused is Refusal.FAULT

    rig = Rig.run(tmp_path, scenario, SWITCHING)
    assert rig.plant.switched_under_load == 0 and rig.plant.relay_switches == 0


def test_a_stuck_relay_aborts_and_charging_goes_on_on_three_phases(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.plant.set_fault(PlantFault.PHASE_RELAY_STUCK, True)
        rig.limits.request_phases(1, "pv")
        await rig.wait_for(lambda: rig.connector.phase_switch.abort is not None, 20.0)
        assert rig.connector.phase_switch.abort is Abort.RELAY_NOT_FOLLOWING
        await rig.wait_for(lambda: rig.plant.contactor_closed, 30.0)
        await rig.until(rig.t + 120)
        assert currents(rig) == (16.0, 16.0, 16.0)
        view = rig.connector.view()
        assert view.phases == 3 and view.phase_switch.refused is Refusal.FAILED_BEFORE
        assert rig.phase is Phase.CHARGING

    rig = Rig.run(tmp_path, scenario, SWITCHING)
    assert rig.plant.switched_under_load == 0 and len(rig.close_commands) == 2


def test_a_relay_driver_that_raises_gives_the_request_up_without_failing_steps(
        tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        relay = rig.hw.phase_switch
        assert relay is not None

        def broken(n: int) -> None:
            raise OSError("relay driver: i2c timeout")

        relay.set_phases = broken  # type: ignore[method-assign]
        await rig.charging()
        rig.limits.request_phases(1, "pv")
        await rig.wait_for(lambda: rig.connector.phase_switch.abort is not None, 20.0)
        assert rig.connector.phase_switch.abort is Abort.RELAY_NOT_FOLLOWING
        await rig.wait_for(lambda: rig.plant.contactor_closed, 30.0)
        assert rig.plant.output is Output.PWM and not rig.connector.state.faults

    rig = Rig.run(tmp_path, scenario, SWITCHING)
    assert len(rig.close_commands) == 2 and rig.plant.relay_switches == 0


def test_a_relay_feedback_the_meter_contradicts_is_not_trusted(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        relay = rig.hw.phase_switch
        assert relay is not None
        relay.phases = lambda: 1  # type: ignore[method-assign]  # says 1; all 3 are live
        rig.limits.submit(pv(16 * V))  # 16 A on one phase, 5.3 A on three
        assert rig.connector.view().phases == 1
        await rig.charging()
        await rig.until(rig.t + 120)
        view = rig.connector.view()
        assert view.phases == 3 and rig.connector.limit.amps == pytest.approx(16 / 3)
        assert (rig.phase, view.state.suspend) == (Phase.PAUSED_EVSE,
                                                   SuspendReason.LIMIT_BELOW_MINIMUM)
        rig.plant.unplug()
        await rig.until(rig.t + 2)
        assert rig.connector.view().phases == 1  # a new session trusts it again, until ...

    rig = Rig.run(tmp_path, scenario)
    assert len(rig.close_commands) == 1  # no pause-resume flapping on the wrong feedback


def test_a_board_without_switching_refuses_and_keeps_charging(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.charging()
        rig.limits.request_phases(1, "pv")
        await rig.until(rig.t + 60)
        assert rig.connector.view().phase_switch.refused is Refusal.DISABLED
        assert rig.plant.contactor_closed and currents(rig) == (16.0, 16.0, 16.0)

    rig = Rig.run(tmp_path, scenario, sim_board(charging={"phase_switching": False}))
    assert rig.plant.relay_switches == 0 and len(rig.close_commands) == 1


@pytest.mark.parametrize(("pause", "wakeups"), [("x1", 1), ("f", 0)])
def test_state_f_in_the_dwell_wakes_a_car_that_would_not_resume(tmp_path: Path, pause: str,
                                                                 wakeups: int) -> None:
    board = sim_board(charging={"phase_switching": True, "phase_switch_pause": pause})

    async def scenario(rig: Rig) -> None:
        await rig.charging("sleepy_3p")
        rig.limits.request_phases(1, "pv")
        await rig.wait_for(lambda: not rig.plant.contactor_closed, 6.5)
        took = await rig.wait_for(lambda: rig.plant.contactor_closed, 120.0)
        t = board.timing
        settled = t.phase_switch_dwell_s + t.phase_switch_settle_s + 2.0
        if pause == "f":
            assert took == pytest.approx(settled, abs=0.1)
        else:  # the car slept through X1: the ordinary wake-up brings it back
            assert took > settled + t.wakeup_after_s
        assert rig.connector.state.wakeups_total == wakeups
        assert rig.connector.phase_switch.outcome is Outcome.RESUMED

    rig = Rig.run(tmp_path, scenario, board)
    assert rig.plant.switched_under_load == 0


def soak(tmp_path: Path, seed: int, hours: float, board: Board) -> None:
    """Random phase requests, watt limits, cars, stops and faults: the relay never moves with
    the contactor closed, and the core's safety invariants hold after every step."""
    rng = random.Random(seed)
    violations: list[str] = []

    async def scenario(rig: Rig) -> None:
        plant = rig.plant

        def check(_: object) -> None:
            if plant.switched_under_load:
                violations.append(f"{rig.t:.1f}: phase relay switched under load")
            st = rig.connector.state
            if st.contactor and (st.faults or rig.connector.phase_switch.stage in (
                    Stage.DWELL, Stage.SWITCHING)):
                violations.append(f"{rig.t:.1f}: contactor closed in {st.phase} "
                                  f"{rig.connector.phase_switch.stage}")

        rig.connector.step_listeners.append(check)
        end = hours * 3600.0
        while rig.t < end:
            await rig.until(rig.t + rng.expovariate(1 / 60.0))
            roll = rng.random()
            try:
                if roll < 0.15:
                    if plant.ev is None:
                        plant.plug(PROFILES[rng.choice(sorted(PROFILES))].with_overrides(
                            {"soc": rng.uniform(0.0, 0.9),
                             "quirks": ["no_resume"] if rng.random() < 0.1 else []}))
                    elif rng.random() < 0.3:
                        plant.unplug()
                        for fault in (PlantFault.PHASE_RELAY_STUCK, PlantFault.PP_CUT):
                            plant.set_fault(fault, False)
                elif roll < 0.45:
                    rig.limits.request_phases(rng.choice([1, 3, None]), "soak")
                elif roll < 0.7:
                    rig.limits.submit(pv(rng.choice([0.0, 1400.0, 3000.0, 4200.0, 7400.0,
                                                     11000.0, 22000.0])))
                elif roll < 0.8:
                    (plant.ev_stop if rng.random() < 0.3 else plant.ev_resume)()
                elif roll < 0.9:
                    fault = rng.choice([PlantFault.PHASE_RELAY_STUCK, PlantFault.PP_CUT,
                                        PlantFault.CONTACTOR_NO_CLOSE])
                    plant.set_fault(fault, rng.random() < 0.3)
                else:
                    plant.set_quirk(Quirk.OVERDRAW, rng.random() < 0.1)
            except PlantError:
                pass
        if plant.ev is not None:
            plant.unplug()
        await rig.until(rig.t + 5)

    rig = Rig.run(tmp_path, scenario, board)
    assert not violations, violations[:5]
    assert rig.plant.switched_under_load == 0
    assert rig.plant.relay_switches > 10
    assert any(s.phase_switches for s in rig.finished)


@pytest.mark.parametrize("seed", [1, 2])
def test_phase_soak_bounded(tmp_path: Path, seed: int) -> None:
    soak(tmp_path, seed, hours=6.0, board=SWITCHING)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(10, 13))
def test_phase_soak_days(tmp_path: Path, seed: int) -> None:
    soak(tmp_path, seed, hours=48.0, board=SWITCHING)
