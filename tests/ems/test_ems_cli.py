"""`voltpilot ems simulate` and `voltpilot ems report` as a user runs them: a whole recorded
day on the sim site, the KPIs written and printed, bad input refused with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def voltpilot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firmware.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_whole_day_is_replayed_and_reported(tmp_path: Path) -> None:
    out = tmp_path / "day.json"
    done = voltpilot("ems", "simulate", "--site", "boards/sim/site.toml", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "day sunny-june on site sim-home" in done.stdout
    data = json.loads(out.read_text())
    assert data["longest_overload_s"] == 0.0
    kpi = data["kpis"]["days"][0]
    assert kpi["pv_wh"] > 60_000.0 and kpi["ev_wh"] > 40_000.0
    # PV went to the car: on a sunny day nearly all of its energy is from the roof.
    assert kpi["ev_pv_wh"] / kpi["ev_wh"] > 0.95
    kpis = tmp_path / "kpis.json"
    kpis.write_text(json.dumps(data["kpis"]))
    report = voltpilot("ems", "report", str(kpis))
    assert report.returncode == 0, report.stderr
    assert "EV PV share" in report.stdout and "cp1" in report.stdout


def test_bad_input_is_refused_with_the_file_and_key(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[grid]\nfuse_a = 0\n[[charge_point]]\nid = "cp1"\n')
    done = voltpilot("ems", "simulate", "--site", str(site))
    assert done.returncode == 2
    assert f"{site}: grid.fuse_a: expected a number in [1, 4000], got 0" in done.stderr
    garbage = tmp_path / "kpis.json"
    garbage.write_text("{not json")
    done = voltpilot("ems", "report", str(garbage))
    assert done.returncode == 2 and str(garbage) in done.stderr
    done = voltpilot("run", "--board", "sim", "--ems", str(site), "--data-dir",
                     str(tmp_path / "var"))
    assert done.returncode == 2 and "grid.fuse_a" in done.stderr
