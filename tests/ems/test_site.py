"""The site file: what loads, and every mistake named by file, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from ems.config_error import ConfigError
from ems.inputs import FailSafe
from ems.model import Mode, Role
from ems.site import load_site

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[grid]
fuse_a = 25
meter = "grid"

[[meter]]
name = "grid"
role = "grid"
kind = "modbus"
device = "sdm630"
host = "127.0.0.1"

[[charge_point]]
id = "cp1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_the_sim_site_loads() -> None:
    site = load_site(ROOT / "boards/sim/site.toml")
    assert site.name == "sim-home"
    assert site.grid.fuse_a == 25.0 and site.grid.contracted_w == 15_000.0
    assert [m.role for m in site.meters] == [Role.GRID, Role.PV, Role.BATTERY]
    assert site.charge_points[0].mode is Mode.PV
    assert site.meter("grid") is not None and site.meter("grid").fail_safe is \
        FailSafe.WORST_CASE  # type: ignore[union-attr]


def test_defaults(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, MINIMAL))
    cp = site.charge_points[0]
    assert (cp.phases, cp.min_a, cp.max_a, cp.mode, cp.phase_map) == (3, 6.0, 16.0, Mode.PV,
                                                                      (1, 2, 3))
    assert site.cycle_s == 5.0 and site.voltage_v == 230.0
    assert site.meters[0].options == {"device": "sdm630", "host": "127.0.0.1"}


@pytest.mark.parametrize(("change", "key", "expected"), [
    (("fuse_a = 25", "fuse_a = -1"), "grid.fuse_a", "a number in [1, 4000]"),
    (("fuse_a = 25", "fuse_a = 'big'"), "grid.fuse_a", "a number"),
    (('meter = "grid"\n\n[[meter]]', 'meter = "pv"\n\n[[meter]]'), "grid.meter",
     "one of the [[meter]] names"),
    (('role = "grid"', 'role = "sun"'), "meter[0].role", "one of 'grid'"),
    (('kind = "modbus"', 'kind = "zigbee"'), "meter[0].kind", "one of modbus, mqtt, sim"),
    (('id = "cp1"', 'id = "cp 1"'), "charge_point[0].id", "1-32 letters"),
    (('id = "cp1"', 'id = "cp1"\nmax_a = 5'), "charge_point[0].max_a", "a number in [6, 80]"),
    (('id = "cp1"', 'id = "cp1"\nmode = "turbo"'), "charge_point[0].mode", "one of 'off'"),
    (('id = "cp1"', 'id = "cp1"\nphases = 2'), "charge_point[0].phases", "1 or 3"),
    (('id = "cp1"', 'id = "cp1"\nphases = 3.0'), "charge_point[0].phases", "1 or 3"),
    (('id = "cp1"', 'id = "cp1"\nphase_map = [1.0, 2.0, 3.0]'), "charge_point[0].phase_map",
     "a permutation"),
    (('id = "cp1"', 'id = "cp1"\nphase_map = [1, "2", 3]'), "charge_point[0].phase_map",
     "a permutation"),
    (('id = "cp1"', 'id = "cp1"\nphase_map = [1, 1, 2]'), "charge_point[0].phase_map",
     "a permutation"),
    (('id = "cp1"', 'id = "cp1"\ndeparture = "7am"\ntarget_kwh = 10'),
     "charge_point[0].departure", "HH:MM"),
    (('id = "cp1"', 'id = "cp1"\ntarget_kwh = 10'), "charge_point[0].departure",
     "departure and target_kwh given together"),
    (('id = "cp1"', 'id = "cp1"\nphases = 1\nphase_switching = true'),
     "charge_point[0].phase_switching", "false on a 1-phase"),
    (("[grid]", "[grid]\nfailsafe_a = 30"), "grid.failsafe_a", "fits fuse_a"),
    (("[grid]", "[pv_mode]\nmin_on_s = 'long'\n\n[grid]"), "pv_mode.min_on_s", "float"),
    (("[grid]", "[pv_mode]\nwarp = 1\n\n[grid]"), "pv_mode.warp", "one of"),
    (("[grid]", "[site]\ncolour = 1\n\n[grid]"), "site.colour", "one of"),
])
def test_errors_name_file_key_and_expectation(tmp_path: Path, change: tuple[str, str],
                                              key: str, expected: str) -> None:
    old, new = change
    assert old in MINIMAL
    path = write(tmp_path, MINIMAL.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_site(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert expected in err.value.expected
    assert str(path) in str(err.value) and key in str(err.value)


def test_duplicate_ids_and_a_missing_grid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unique charge point ids"):
        load_site(write(tmp_path, MINIMAL + '\n[[charge_point]]\nid = "cp1"\n'))
    with pytest.raises(ConfigError, match=r"\[grid\]: expected a table"):
        load_site(write(tmp_path, '[[charge_point]]\nid = "cp1"\n'))
    with pytest.raises(ConfigError, match="valid TOML"):
        load_site(write(tmp_path, "[grid\n"))
    with pytest.raises(ConfigError, match="readable"):
        load_site(tmp_path / "missing.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[site]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_site(latin)
