"""The one door through which every adapter (OCPP, EMS, grid operator, user) sets a limit.

Each source holds at most one limit per connector; submitting again replaces it, withdrawing
removes it. Listeners (the connector) are called at once, so a lower limit reaches the PWM in the
same turn of the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

from firmware.core.limits import Limit, LimitSource

Listener = Callable[[], None]


class LimitPort:
    def __init__(self) -> None:
        self._limits: dict[LimitSource, Limit] = {}
        self._listeners: list[Listener] = []
        self.boost = False

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def submit(self, limit: Limit) -> None:
        self._limits[limit.source] = limit
        self._notify()

    def withdraw(self, source: LimitSource) -> None:
        if self._limits.pop(source, None) is not None:
            self._notify()

    def set_boost(self, on: bool) -> None:
        """The user's boost lifts optimisation- and tariff-class limits, nothing else."""
        if on != self.boost:
            self.boost = on
            self._notify()

    def limits(self) -> list[Limit]:
        return list(self._limits.values())

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
