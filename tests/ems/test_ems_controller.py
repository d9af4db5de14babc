"""The energy manager in the controller's process on the sim board, in virtual time: the real
connector, the real plant, the real arbiter — PV surplus reaches the car as a limit with a
reason, and a silent EMS leaves a fail-safe current, never the last one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from rig import Rig

from ems.site import SiteConfig, load_site
from firmware.core.limits import LimitSource
from firmware.ems_port import LocalEms
from hal.sim.ev import PROFILES

ROOT = Path(__file__).resolve().parents[2]
SIM_SITE = ROOT / "boards/sim/site.toml"


def site_at(tmp_path: Path, start: str, extra: str = "") -> SiteConfig:
    """The sim site with its profile starting at ``start`` (the virtual clock starts at 00:00)."""
    text = SIM_SITE.read_text().replace('[sim]\n', f'[sim]\nstart = "{start}"\n')
    text = text.replace('day = "../../tests/data/ems/',
                        f'day = "{ROOT}/tests/data/ems/') + extra
    path = tmp_path / "site.toml"
    path.write_text(text)
    return load_site(path)


def run_with_ems(site: SiteConfig, scenario: Path, data_dir: Path,
                 log: Path) -> subprocess.CompletedProcess[str]:
    """`voltpilot run` on the sim board in virtual time with the in-process EMS."""
    return subprocess.run(
        [sys.executable, "-m", "firmware.cli", "run", "--board", "sim", "--virtual-time",
         "--ems", str(site.path), "--scenario", str(scenario), "--data-dir", str(data_dir),
         "--status", "off", "--log", str(log)],
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_pv_surplus_drives_the_car_and_a_silent_ems_fails_safe(tmp_path: Path) -> None:
    site = site_at(tmp_path, "11:00")

    async def scenario(rig: Rig) -> None:
        ems = LocalEms(site, rig.connector, rig.limits, rig.clock, tmp_path)
        ems.start()
        service, port = ems.service, ems.port
        try:
            # Before the EMS has spoken, the fail-safe current binds.
            assert rig.connector.limit.binding is not None
            assert rig.connector.limit.binding.source is LimitSource.SITE_FUSE
            rig.plant.plug(PROFILES["compact_3p"])
            # PV mode waits for the surplus to hold (enable delay) before it starts.
            await rig.until(30.0)
            assert not rig.plant.contactor_closed
            await rig.wait_for(lambda: rig.plant.contactor_closed, 200.0, step_s=1.0)
            await rig.until(600.0)
            limit = rig.connector.limit
            assert limit.binding is not None
            assert limit.binding.source is LimitSource.PV_SURPLUS, limit.binding
            assert 6.0 <= limit.amps <= 16.0
            assert "surplus" in limit.binding.reason.lower()
            assert rig.plant.contactor_closed
            drawn = rig.connector.view().meter
            assert drawn is not None and max(drawn.current_a) > 5.0
            report = service.last_report
            assert report is not None and all(s.ok for s in report.inputs)
            # The grid meter reports what the real plant's car draws: the site nearly
            # balances (PV covers car, house and battery within a few hundred watts).
            grid = service._readings["grid"]
            assert grid.power_w is not None and abs(grid.power_w) < 1500.0
        finally:
            await service.stop()
            await ems.inputs.close()
        # The EMS is gone: within its validity the limits fall back to the fail-safe.
        await rig.until(rig.t + 3 * site.cycle_s + 1.0)
        limit = rig.connector.limit
        assert limit.binding is not None and limit.binding.source is LimitSource.SITE_FUSE
        assert limit.amps == site.grid.failsafe_a
        assert "energy manager silent" in limit.binding.reason
        assert port.failsafe_active
        port.stop()

    Rig.run(tmp_path, scenario)


def test_a_dead_grid_meter_means_the_failsafe_current(tmp_path: Path) -> None:
    site = site_at(tmp_path, "11:00", extra="")

    async def scenario(rig: Rig) -> None:
        ems = LocalEms(site, rig.connector, rig.limits, rig.clock, tmp_path)
        ems.start()
        service = ems.service
        grid = next(m for m in service.meters if m.name == "grid")
        try:
            rig.plant.plug(PROFILES["compact_3p"])
            await rig.until(300.0)
            assert rig.plant.contactor_closed

            async def dead(now: float) -> object:
                from ems.service import Poll
                return Poll(None, "timeout")

            grid.poll = dead  # type: ignore[method-assign]
            await rig.until(rig.t + 10.0 + 2 * site.cycle_s)
            limit = rig.connector.limit
            assert limit.binding is not None
            assert limit.binding.source is LimitSource.SITE_FUSE
            assert limit.amps == site.grid.failsafe_a
            assert "grid meter" in limit.binding.reason
            assert "fail-safe worst_case" in limit.binding.reason
        finally:
            await ems.stop()

    Rig.run(tmp_path, scenario)


def test_voltpilot_run_with_ems_charges_from_the_sun(tmp_path: Path) -> None:
    site = site_at(tmp_path, "10:00")
    scenario = tmp_path / "plug.toml"
    scenario.write_text('[[action]]\nat = 5\ncmd = "plug"\nprofile = "compact_3p"\n'
                        '[[action]]\nat = 3590\ncmd = "unplug"\n'
                        '[[action]]\nat = 3600\ncmd = "stop"\n')
    log = tmp_path / "log.jsonl"
    done = run_with_ems(site, scenario, tmp_path / "var", log)
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert '"event": "ems_decision"' in text
    kwh = re.search(r"([\d.]+) kWh", done.stdout)
    assert kwh is not None and float(kwh.group(1)) > 3.0, done.stdout
    assert (tmp_path / "var" / "ems-kpis.json").exists()


def test_the_user_changes_the_mode_with_the_ems_command(tmp_path: Path) -> None:
    site = site_at(tmp_path, "10:00")
    scenario = tmp_path / "modes.toml"
    scenario.write_text('[[action]]\nat = 5\ncmd = "plug"\nprofile = "compact_3p"\n'
                        '[[action]]\nat = 900\ncmd = "ems"\nmode = "off"\n'
                        '[[action]]\nat = 1200\ncmd = "ems"\nmode = "now"\n'
                        'departure = "17:00"\ntarget_kwh = 30\nnever_switch = true\n'
                        '[[action]]\nat = 1500\ncmd = "stop"\n')
    log = tmp_path / "log.jsonl"
    done = run_with_ems(site, scenario, tmp_path / "var", log)
    assert done.returncode == 0, done.stderr
    decisions = [line for line in log.read_text().splitlines() if "ems_decision" in line]
    assert any('"mode": "off"' in d and '"reason": "mode off"' in d for d in decisions)
    assert '"mode": "now"' in decisions[-1]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[action]]\nat = 5\ncmd = "ems"\ndeparture = "7am"\n'
                   '[[action]]\nat = 6\ncmd = "stop"\n')
    done = run_with_ems(site, bad, tmp_path / "var2", tmp_path / "log2.jsonl")
    assert done.returncode == 1 and "departure: expected HH:MM" in done.stderr


def test_a_crashing_cycle_is_counted_and_the_next_one_runs(tmp_path: Path) -> None:
    site = site_at(tmp_path, "11:00")

    async def scenario(rig: Rig) -> None:
        ems = LocalEms(site, rig.connector, rig.limits, rig.clock, tmp_path)
        ems.start()
        try:
            await rig.until(20.0)
            real = ems.service.cps.states
            calls = {"n": 0}

            def flaky() -> dict[str, object]:
                calls["n"] += 1
                if calls["n"] <= 5:
                    raise RuntimeError("a bug")
                return real()  # type: ignore[return-value]

            ems.service.cps.states = flaky  # type: ignore[method-assign]
            went_failsafe = []
            rig.limits.subscribe(lambda: went_failsafe.append(any(
                "energy manager silent" in lim.reason for lim in rig.limits.limits())))
            await rig.wait_for(lambda: ems.service.cycle_errors == 5, 6 * site.cycle_s,
                               step_s=0.5)
            # Five cycles in a row failed: the commands expired into the fail-safe, visibly.
            assert any(went_failsafe)
            await rig.until(rig.t + 2 * site.cycle_s)
            assert ems.service.cycle_errors == 5
            assert not ems.port.failsafe_active   # and the EMS carried on
        finally:
            await ems.stop()

    Rig.run(tmp_path, scenario)


def test_the_port_keeps_other_limits_and_the_fuse_and_the_lower_failsafe(tmp_path: Path) -> None:
    from ems.model import Command, EmsLimit
    from firmware.core.limits import Limit
    from firmware.ems_port import EmsPort

    async def scenario(rig: Rig) -> None:
        # Its own fail-safe is 16 A; the EMS's (checked against the fuse) is 6 A.
        port = EmsPort("cp1", rig.connector, rig.limits, 16.0)
        rig.limits.submit(Limit.of(LimitSource.USER, "the driver's own 10 A", amps=10.0))
        seen: list[set[LimitSource]] = []
        rig.limits.subscribe(lambda: seen.append({lim.source for lim in rig.limits.limits()}))
        port.apply(Command("cp1", (EmsLimit("site_fuse", 12.0, "fuse"),
                                   EmsLimit("pv_surplus", 8.0, "sun")), failsafe_a=6.0), 15.0)
        port.apply(Command("cp1", (EmsLimit("pv_surplus", 7.0, "sun"),)), 15.0)
        port.apply(None, None, why="test")
        # The driver's limit stays; every change carried a site-fuse limit; one update each.
        assert all(LimitSource.USER in s and LimitSource.SITE_FUSE in s for s in seen)
        assert len(seen) == 3
        fuse = next(lim for lim in rig.limits.limits() if lim.source is LimitSource.SITE_FUSE)
        assert fuse.amps == 6.0 and "energy manager silent (test)" in fuse.reason
        port.stop()

    Rig.run(tmp_path, scenario)
