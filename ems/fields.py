"""Typed access to TOML tables that fails with the file, the key and the expectation: the base
the site file and the device maps read their tables through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ems.config_error import ConfigError


class Fields:
    def __init__(self, file: str) -> None:
        self.file = file

    def only(self, table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                prefix = f"{where}." if where else ""
                raise ConfigError(self.file, f"{prefix}{key}",
                                  f"one of {', '.join(sorted(allowed))}", "an unknown key")

    def table(self, data: Mapping[str, Any], key: str, required: bool = False) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            if required:
                raise ConfigError(self.file, f"[{key}]", "a table", None)
            return {}
        if not isinstance(value, dict):
            raise ConfigError(self.file, key, "a table", value)
        return value
