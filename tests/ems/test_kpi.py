"""KPIs (ems/kpi.py): the PV-into-EV definition, per-day and per-session totals, the billing
peak, bad steps, and the saved file."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ems.config_error import ConfigError
from ems.kpi import KpiFault, Kpis, format_report, load, pv_to_ev_w

MIDNIGHT = datetime(2025, 6, 22, tzinfo=UTC).timestamp()
T0 = MIDNIGHT - 12 * 3600.0       # 2025-06-21 12:00 UTC
H = 3600.0


def step(k: Kpis, at: float, dt: float = H, *, grid: float = 0.0, pv: float = 0.0,
         house: float = 0.0, battery: float = 0.0, ev: dict[str, float] | None = None,
         price: float | None = 0.30) -> None:
    k.add(at, dt, grid_w=grid, pv_w=pv, house_w=house, battery_w=battery, ev_w=ev or {},
          price=price)


@pytest.mark.parametrize(("pv", "house", "ev", "into_ev"), [
    (5000, 1000, 6000, 4000),     # PV covers the house, the EVs get the rest
    (5000, 1000, 2000, 2000),     # all of the EV's power is PV
    (800, 1000, 6000, 0),         # the house takes all the PV
    (0, 0, 3000, 0),
    (5000, 0, 0, 0),
    (-5, 300, 100, 0),            # an inverter drawing standby power at night
    (5000, -200, 7000, 5000),     # a house meter reading a little below zero counts as zero
])
def test_pv_into_ev(pv: float, house: float, ev: float, into_ev: float) -> None:
    assert pv_to_ev_w(pv, house, ev) == into_ev


def test_one_hour_of_charging() -> None:
    k = Kpis()
    step(k, T0, grid=2000, pv=5000, house=1000, ev={"cp1": 6000})
    [day] = k.days.values()
    assert day.day == "2025-06-21"
    assert (day.pv_wh, day.pv_used_wh, day.import_wh, day.export_wh) == (5000, 5000, 2000, 0)
    assert (day.ev_wh, day.ev_pv_wh, day.house_wh) == (6000, 4000, 1000)
    assert day.ev_pv_share == pytest.approx(2 / 3)
    assert day.self_consumption == 1.0
    assert day.cost == pytest.approx(0.6)
    assert day.peak_w == 2000


def test_self_consumption_with_export() -> None:
    k = Kpis()
    step(k, T0, grid=-4000, pv=5000, house=1000)
    [day] = k.days.values()
    assert day.self_consumption == pytest.approx(0.2)
    assert day.export_wh == 4000 and day.import_wh == 0 and day.cost == 0
    assert day.ev_pv_share is None


def test_pv_shared_between_charge_points_in_proportion() -> None:
    k = Kpis()
    k.session_start("a", T0, None)
    k.session_start("b", T0, None)
    step(k, T0, grid=4000, pv=5000, house=1000, ev={"a": 6000, "b": 2000})
    a, b = k.sessions
    assert (a.ev_wh, a.ev_pv_wh, a.ev_grid_wh) == (6000, 3000, 3000)
    assert (b.ev_wh, b.ev_pv_wh, b.ev_grid_wh) == (2000, 1000, 1000)
    assert a.cost == pytest.approx(0.9) and b.cost == pytest.approx(0.3)


def test_the_non_pv_part_splits_between_grid_and_battery() -> None:
    k = Kpis()
    k.session_start("cp1", T0, None)
    # House 1 kW, EV 7 kW, PV 2 kW: 6 kW not PV, from 3 kW battery and 3 kW grid.
    step(k, T0, grid=3000, pv=2000, house=1000, battery=3000, ev={"cp1": 7000})
    [s] = k.sessions
    assert (s.ev_pv_wh, s.ev_grid_wh) == (1000, 3000)
    assert k.days["2025-06-21"].battery_discharge_wh == 3000


def test_days_split_at_utc_midnight() -> None:
    k = Kpis()
    step(k, MIDNIGHT - 30, 60.0, grid=6000, house=6000)
    assert sorted(k.days) == ["2025-06-21", "2025-06-22"]
    assert k.days["2025-06-21"].import_wh == pytest.approx(50)
    assert k.days["2025-06-22"].import_wh == pytest.approx(50)
    assert k.days["2025-06-21"].covered_s == 30 and k.days["2025-06-22"].covered_s == 30


def test_peak_is_the_highest_15_minute_mean_import() -> None:
    k = Kpis()
    t = MIDNIGHT + 10 * 60       # 00:10
    step(k, t, 300.0, grid=9000)            # 00:10-00:15: 9 kW for 5 min -> 3 kW mean
    step(k, t + 300, 300.0, grid=6000)      # 00:15-00:20: 6 kW for 5 min
    step(k, t + 600, 600.0, grid=-2000)     # export does not lower the import peak
    day = k.days["2025-06-22"]
    assert day.peak_w == pytest.approx(3000)
    step(k, t + 1200, 600.0, grid=9000)     # 00:30-00:40
    assert day.peak_w == pytest.approx(6000)
    step(k, t + 1800, 1200.0, grid=3000)    # 00:40-01:00, cut at 00:45
    assert day.peak_w == pytest.approx(6000 + 3000 * 5 / 15)


def test_import_without_a_price_is_counted_apart() -> None:
    k = Kpis()
    step(k, T0, grid=1000, price=None)
    step(k, T0 + H, grid=1000, price=0.2)
    day = k.days["2025-06-21"]
    assert day.unpriced_import_wh == 1000 and day.cost == pytest.approx(0.2)
    assert "+1.00 kWh unpriced" in format_report(k)


def test_sessions_energy_against_target() -> None:
    k = Kpis()
    k.session_start("cp1", T0, 10_000.0)
    step(k, T0, grid=11_000, ev={"cp1": 11_000, "cp2": 3000}, house=3000)
    k.session_end("cp1", T0 + H)
    step(k, T0 + H, grid=11_000, ev={"cp1": 11_000})        # after the session
    [s] = k.sessions
    assert (s.ev_wh, s.target_wh, s.reached, s.end) == (11_000, 10_000, True, T0 + H)
    assert k.days["2025-06-21"].ev_wh == 11_000 + 3000 + 11_000
    k.session_start("cp1", T0 + 2 * H, 50_000.0)
    assert k.sessions[-1].reached is False and k.sessions[-1].end is None
    k.session_start("cp2", T0 + 2 * H, None)
    assert k.sessions[-1].reached is None


def test_session_faults() -> None:
    k = Kpis()
    k.session_end("cp1", T0)
    k.session_start("cp1", T0, None)
    k.session_start("cp1", T0 + 10, math.nan)
    assert k.faults == {KpiFault.NO_SESSION: 1, KpiFault.RESTARTED: 1}
    assert [s.end for s in k.sessions] == [T0 + 10, None]
    assert k.sessions[1].target_wh is None


@pytest.mark.parametrize(("args", "fault"), [
    ({"grid_w": math.nan}, KpiFault.BAD_VALUE),
    ({"pv_w": math.inf}, KpiFault.BAD_VALUE),
    ({"ev_w": {"cp1": math.nan}}, KpiFault.BAD_VALUE),
    ({"price": math.nan}, KpiFault.BAD_VALUE),
    ({"dt": 0.0}, KpiFault.BAD_VALUE),
    ({"dt": -1.0}, KpiFault.BAD_VALUE),
    ({"at": math.nan}, KpiFault.BAD_VALUE),
    ({"at": 1e300}, KpiFault.BAD_VALUE),
    ({"at": T0 - 1}, KpiFault.OUT_OF_ORDER),
    ({"dt": 7200.0}, KpiFault.LONG_STEP),
])
def test_bad_steps_are_left_out_and_counted(args: dict[str, Any], fault: KpiFault) -> None:
    k = Kpis()
    step(k, T0, grid=1000)
    before = k.days["2025-06-21"].import_wh
    values: dict[str, Any] = {"at": T0 + 60, "dt": 60.0, "grid_w": 5000.0, "pv_w": 0.0,
                              "house_w": 5000.0, "battery_w": 0.0, "ev_w": {}, "price": 0.3}
    values.update(args)
    at, dt = values.pop("at"), values.pop("dt")
    k.add(at, dt, **values)
    assert k.faults == {fault: 1}
    assert k.days["2025-06-21"].import_wh == before
    assert k.days["2025-06-21"].gap_s == (7200.0 if fault is KpiFault.LONG_STEP else 0.0)
    assert fault.value in format_report(k)


def test_gaps_are_recorded_per_day() -> None:
    k = Kpis()
    k.gap(MIDNIGHT - 60, 120.0)
    assert k.days["2025-06-21"].gap_s == 60 and k.days["2025-06-22"].gap_s == 60
    assert "1 min without usable data" in format_report(k)


def minutes(k: Kpis, first: int, last: int) -> None:
    """Minutes ``first..last-1`` after T0 of a made-up afternoon, a charging car included."""
    for m in range(first, last):
        pv = max(0.0, 6000 * math.sin(math.pi * m / 200))
        ev = 4000.0 if m % 3 else 0.0
        step(k, T0 + 60 * m, 60.0, grid=800 + ev - pv, pv=pv, house=800, ev={"cp1": ev},
             price=0.1 + m % 7 / 100)


def test_json_round_trip_and_resume(tmp_path: Path) -> None:
    whole = Kpis()
    whole.session_start("cp1", T0, 20_000.0)
    minutes(whole, 0, 200)
    part = Kpis()
    part.session_start("cp1", T0, 20_000.0)
    minutes(part, 0, 100)
    path = tmp_path / "kpi.json"
    path.write_text(part.to_json())
    resumed = load(path)
    assert resumed.to_json() == part.to_json()
    minutes(resumed, 100, 200)      # the open session and the 15-minute interval carry on
    assert _close(json.loads(whole.to_json()), json.loads(resumed.to_json()))
    assert resumed.sessions[0].ev_wh > 0


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return bool(a == pytest.approx(b))
    return bool(a == b)


def saved() -> dict[str, Any]:
    k = Kpis()
    k.session_start("cp1", T0, None)
    step(k, T0, grid=1000, ev={"cp1": 1000})
    data: dict[str, Any] = json.loads(k.to_json())
    return data


@pytest.mark.parametrize(("change", "key", "expected"), [
    (lambda d: d.update(version=2), "version", "1"),
    (lambda d: d.update(currency="€"), "currency", "ISO 4217"),
    (lambda d: d.update(days={}), "days", "a list"),
    (lambda d: d["days"][0].update(pv_wh="5"), "days[0].pv_wh", "a finite number"),
    (lambda d: d["days"][0].update(pv_wh=10**400), "days[0].pv_wh", "a finite number"),
    (lambda d: d["days"][0].pop("ev_wh"), "days[0].ev_wh", "present"),
    (lambda d: d["days"][0].update(sunshine=1), "days[0].sunshine", "one of"),
    (lambda d: d["sessions"][0].update(cp_id=""), "sessions[0].cp_id", "a non-empty string"),
    (lambda d: d["sessions"][0].update(start=None), "sessions[0].start", "a finite number"),
    (lambda d: d["faults"].update(hiccup=1), "faults.hiccup", "one of bad_value"),
    (lambda d: d["faults"].update(bad_value=-1), "faults.bad_value", "a count >= 0"),
    (lambda d: d.update(interval=[1]), "interval", "[interval index, import Wh]"),
    (lambda d: d.update(extra=True), "extra", "one of"),
])
def test_saved_file_errors_name_file_and_key(tmp_path: Path, change: Any, key: str,
                                             expected: str) -> None:
    data = saved()
    change(data)
    path = tmp_path / "kpi.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.file == str(path) and err.value.key == key
    assert expected in err.value.expected


def test_unreadable_or_garbled_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.json: \(file\)"):
        load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match=r"bad\.json: \(file\): expected KPI JSON"):
        load(bad)
    bad.write_text("[]")
    with pytest.raises(ConfigError, match=r"bad\.json: \(top\): expected an object"):
        load(bad)


def test_report_table() -> None:
    k = Kpis()
    k.session_start("garage", T0, 5000.0)
    step(k, T0, grid=2000, pv=5000, house=1000, ev={"garage": 6000})
    k.session_end("garage", T0 + H)
    step(k, T0 + H, grid=-3000, pv=4000, house=1000)
    text = format_report(k)
    lines = text.splitlines()
    assert lines[0] == "Days (UTC)"
    assert lines[1].split() == ["day", "PV", "kWh", "self-use", "import", "kWh", "export", "kWh",
                                "peak", "kW", "cost", "EV", "kWh", "EV", "PV", "share"]
    assert lines[2].split() == ["2025-06-21", "9.00", "67", "%", "2.00", "3.00", "2.00",
                                "0.60", "€", "6.00", "67", "%"]
    row = next(line for line in lines if line.startswith("garage"))
    assert row.split() == ["garage", "2025-06-21", "12:00", "2025-06-21", "13:00", "6.00", "5.00",
                           "yes", "67", "%", "0.60", "€"]
    assert "Steps left out" not in text
    assert format_report(Kpis()).count("(none)") == 2
