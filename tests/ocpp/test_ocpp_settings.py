"""The OCPP settings file: every mistake is named with its file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware.ocpp.settings import OcppSettingsError, load_settings

GOOD = '[ocpp]\ncsms_url = "ws://127.0.0.1:9000/ocpp"\nidentity = "CP1"\n' \
       'password = "0123456789abcdef"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ocpp.toml"
    path.write_text(text)
    return path


def test_good_file_and_the_password_stays_out_of_repr(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.identity == "CP1" and settings.versions == ("ocpp2.1", "ocpp2.0.1")
    assert "0123456789abcdef" not in repr(settings)


@pytest.mark.parametrize(("text", "words"), [
    ("", "[ocpp] section"),
    ("[ocpp", "not valid TOML"),
    (GOOD + "colour = 1\n", "colour: unknown key"),
    (GOOD.replace("ws://", "http://"), "csms_url"),
    (GOOD.replace('"CP1"', '"a b/c"'), "identity"),
    (GOOD + "security_profile = 4\n", "security_profile"),
    (GOOD.replace("0123456789abcdef", "short"), "16 to 64"),
    ('[ocpp]\ncsms_url = "ws://x/ocpp"\nidentity = "CP1"\n', "password"),
    (GOOD + 'versions = ["ocpp1.6"]\n', "versions"),
    (GOOD + 'ca_file = "/nonexistent/ca.pem"\n', "ca_file: no such file"),
    (GOOD + "security_profile = true\n", "security_profile: expected int"),
])
def test_mistakes_name_the_file_and_key(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(OcppSettingsError) as err:
        load_settings(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OcppSettingsError, match="cannot read"):
        load_settings(tmp_path / "nope.toml")
