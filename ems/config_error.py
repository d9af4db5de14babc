"""The one error for a bad EMS file (site, device map, tariff, profile): it names the file, the
key and what was expected, so an integrator can fix it without reading code."""

from __future__ import annotations

_MISSING = object()


class ConfigError(ValueError):
    def __init__(self, file: str, key: str, expected: str, got: object = _MISSING) -> None:
        self.file, self.key, self.expected = file, key, expected
        text = f"{file}: {key}: expected {expected}"
        if got is not _MISSING:
            text += f", got {got!r}"
        super().__init__(text)
