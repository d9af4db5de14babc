"""Structured logs: one JSON object per line, stamped in UTC from the controller's one clock.

Records carry an event name and typed fields (``log(logger, "contactor_opened", connector=1)``)
rather than prose, so a rig, a jig or a support engineer can filter them without regexes. The
time comes from the injected clock, so a virtual-time run logs virtual time.
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from typing import Any, TextIO

from hal.clock import Clock, iso

ROOT = "voltpilot"


class JsonFormatter(logging.Formatter):
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self._clock = clock

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": iso(self._clock.now()), "level": record.levelname.lower(),
                               "logger": record.name, "event": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=_plain, sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return sorted(_plain(v) for v in value)
    return str(value)


def setup(clock: Clock, stream: TextIO, level: int = logging.INFO) -> logging.Logger:
    root = logging.getLogger(ROOT)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(clock))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return root


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{ROOT}.{name}")


def log(logger: logging.Logger, event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
