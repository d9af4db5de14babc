"""The one door through which every adapter (OCPP, EMS, grid operator, user) sets a limit.

Each source holds at most one limit per connector; submitting again replaces it, withdrawing
removes it. Listeners (the connector) are called at once, so a lower limit reaches the PWM in the
same turn of the event loop.

The same door takes the one wish that is not a ceiling: how many phases to charge on (the energy
manager decides when 1p/3p switching pays; the connector decides whether and how it can be done
safely, and shows in its view what it did or why it refused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from firmware.core.limits import Limit, LimitSource
from firmware.core.phase_switch import PhaseRequest

Listener = Callable[[], None]


class LimitPort:
    def __init__(self) -> None:
        self._limits: dict[LimitSource, Limit] = {}
        self._listeners: list[Listener] = []
        self.boost = False
        self._phases: PhaseRequest | None = None
        self._serial = 0

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def submit(self, limit: Limit) -> None:
        self._limits[limit.source] = limit
        self._notify()

    def update(self, submit: Iterable[Limit], withdraw: Iterable[LimitSource]) -> None:
        """Several sources at once, seen by the connector as one change: an adapter replacing
        its set of limits never shows a step in between with some of them missing."""
        changed = False
        for limit in submit:
            self._limits[limit.source] = limit
            changed = True
        for source in withdraw:
            changed = self._limits.pop(source, None) is not None or changed
        if changed:
            self._notify()

    def withdraw(self, source: LimitSource) -> None:
        if self._limits.pop(source, None) is not None:
            self._notify()

    def set_boost(self, on: bool) -> None:
        """The user's boost lifts optimisation- and tariff-class limits, nothing else."""
        if on != self.boost:
            self.boost = on
            self._notify()

    def request_phases(self, n: int | None, reason: str) -> None:
        """Ask to charge on ``n`` phases (1 or 3; None: the board's own count). The request
        stands until replaced, like a limit, so sending the same count every cycle is harmless:
        only a different count is a new request (and a new chance after a failed switch). A
        count the board cannot switch to is refused by the connector, with a reason."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
            raise ValueError(f"phases must be a whole number or None, got {n!r}")
        current = self._phases
        if current is not None and current.phases == n:
            if current.reason != reason:
                self._phases = PhaseRequest(n, reason, current.serial)
            return
        self._serial += 1
        self._phases = PhaseRequest(n, reason, self._serial)
        self._notify()

    def phase_request(self) -> PhaseRequest | None:
        return self._phases

    def limits(self) -> list[Limit]:
        return list(self._limits.values())

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
