"""The installation's OCPP settings file (``voltpilot run --ocpp FILE``): where the CSMS is and
who we are to it. Everything else lives in the device model, where the CSMS can change it.

Values here seed the device model on the first start (security profile, password); after that
the device model's persisted values win, so a password the CSMS rotated with SetVariables is not
reverted by the file on the next boot.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware import __version__ as voltpilot_version

KNOWN_VERSIONS = ("ocpp2.1", "ocpp2.0.1")


class OcppSettingsError(Exception):
    """The settings file is missing, unreadable or wrong (exit code 2)."""


@dataclass(frozen=True, slots=True)
class OcppSettings:
    csms_url: str
    identity: str
    security_profile: int = 1
    password: str | None = field(default=None, repr=False)  # never in a log or a traceback
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    versions: tuple[str, ...] = KNOWN_VERSIONS
    vendor: str = "voltpilot"
    model: str = "voltpilot"
    serial_number: str | None = None
    firmware_version: str = voltpilot_version
    organization: str = "voltpilot"


_FIELDS: dict[str, tuple[type, ...]] = {
    "csms_url": (str,), "identity": (str,), "security_profile": (int,), "password": (str,),
    "ca_file": (str,), "client_cert_file": (str,), "client_key_file": (str,),
    "versions": (list,), "vendor": (str,), "model": (str,), "serial_number": (str,),
    "firmware_version": (str,), "organization": (str,),
}


def load_settings(path: Path) -> OcppSettings:
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise OcppSettingsError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise OcppSettingsError(f"{where}: not valid TOML: {exc}") from exc
    section = data.get("ocpp")
    if not isinstance(section, dict):
        raise OcppSettingsError(f"{where}: expected an [ocpp] section")
    return settings_from(section, where)


def settings_from(section: dict[str, Any], where: str = "[ocpp]") -> OcppSettings:
    for key, value in section.items():
        if key not in _FIELDS:
            raise OcppSettingsError(f"{where}: [ocpp] {key}: unknown key; expected one of "
                                    f"{', '.join(_FIELDS)}")
        if not isinstance(value, _FIELDS[key]) or isinstance(value, bool):
            shown = "a value of another type" if key == "password" else repr(value)
            raise OcppSettingsError(f"{where}: [ocpp] {key}: expected "
                                    f"{_FIELDS[key][0].__name__}, got {shown}")
    for key in ("csms_url", "identity"):
        if not section.get(key):
            raise OcppSettingsError(f"{where}: [ocpp] {key}: required")
    identity = section["identity"]
    # OCPP-J: the identity is a URL path segment of at most 48 characters (OCPP 2.0.1 part 4).
    if len(identity) > 48 or not all(c.isalnum() or c in "-_.:*" for c in identity):
        raise OcppSettingsError(f"{where}: [ocpp] identity: expected up to 48 characters of "
                                f"letters, digits and -_.:*, got {identity!r}")
    url = section["csms_url"]
    if not url.startswith(("ws://", "wss://")):
        raise OcppSettingsError(f"{where}: [ocpp] csms_url: expected ws:// or wss://, "
                                f"got {url!r}")
    profile = section.get("security_profile", 1)
    if profile not in (1, 2, 3):
        raise OcppSettingsError(f"{where}: [ocpp] security_profile: expected 1, 2 or 3, "
                                f"got {profile}")
    password = section.get("password")
    if profile in (1, 2) and not password:
        raise OcppSettingsError(f"{where}: [ocpp] password: security profile {profile} "
                                "authenticates with HTTP Basic auth; give the password the CSMS "
                                "expects (16 to 64 characters)")
    if password is not None and not 16 <= len(password) <= 64:
        raise OcppSettingsError(f"{where}: [ocpp] password: expected 16 to 64 characters, "
                                f"got {len(password)}")
    versions = tuple(section.get("versions", KNOWN_VERSIONS))
    if not versions or any(v not in KNOWN_VERSIONS for v in versions):
        raise OcppSettingsError(f"{where}: [ocpp] versions: expected a list drawn from "
                                f"{', '.join(KNOWN_VERSIONS)}, got {list(versions)}")

    def path_of(key: str) -> Path | None:
        value = section.get(key)
        if value is None:
            return None
        path = Path(value)
        if not path.is_file():
            raise OcppSettingsError(f"{where}: [ocpp] {key}: no such file {value!r}")
        return path

    if profile == 3 and (section.get("client_cert_file") is None) != (
            section.get("client_key_file") is None):
        raise OcppSettingsError(f"{where}: [ocpp] client_cert_file and client_key_file go "
                                "together")
    return OcppSettings(
        csms_url=url, identity=identity, security_profile=profile,
        password=section.get("password"), ca_file=path_of("ca_file"),
        client_cert_file=path_of("client_cert_file"),
        client_key_file=path_of("client_key_file"), versions=versions,
        vendor=section.get("vendor", "voltpilot"), model=section.get("model", "voltpilot"),
        serial_number=section.get("serial_number"),
        firmware_version=section.get("firmware_version", voltpilot_version),
        organization=section.get("organization", "voltpilot"))
