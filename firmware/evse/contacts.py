"""The shell around firmware.core.contacts: reads the board's dry-contact inputs on every edge
and hands the limits to the limit port, in the same turn of the event loop.

No polling: the inputs role calls back on an edge, and a timer wakes this only when a debounce
or a randomised release delay ends. An input whose read fails counts as unreadable, so it gets
its meaning's fail-safe rather than crashing the controller.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping

from firmware import logs
from firmware.core import contacts
from firmware.core.contacts import ContactsState
from firmware.core.limits import Limit, LimitSource
from firmware.evse.limit_port import LimitPort
from hal.board import Board
from hal.roles import DigitalInputs


class ContactInputs:
    def __init__(self, board: Board, inputs: DigitalInputs, limits: LimitPort,
                 now: Callable[[], float], seed: int | None = None) -> None:
        self.board = board
        self.inputs = inputs
        self.limits = limits
        self.now = now
        # Each charger needs its own seed, or a neighbourhood would draw the same delays.
        self.seed = random.SystemRandom().getrandbits(64) if seed is None else seed
        self.state: ContactsState | None = None
        self.read_errors = 0
        self.log = logs.get("contacts")
        self._sources = contacts.sources(board)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Read the inputs, apply their limits, and follow their edges (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self.state = contacts.start(self.board, self._read(), self.now(), self.seed)
        self._apply({})
        self.inputs.subscribe(self.step)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._loop = None

    def view(self) -> dict[str, str]:
        """Each input's debounced reading (open, closed, unreadable), for the status."""
        if self.state is None:
            return {}
        return {name: s.stable.value for name, s in self.state.inputs.items()}

    def step(self) -> None:
        if self.state is None or self._loop is None:
            return
        before = self.state.applied
        self.state = contacts.step(self.board, self.state, self._read(), self.now())
        self._apply(before)

    def _read(self) -> dict[str, bool | None]:
        out: dict[str, bool | None] = {}
        for name in self.board.inputs:
            try:
                out[name] = self.inputs.read(name)
            except Exception as exc:  # a backend failing must give the fail-safe, not a crash
                self.read_errors += 1
                logs.log(self.log, "contact_read_failed", name=name, error=repr(exc))
                out[name] = None
        return out

    def _apply(self, before: Mapping[LimitSource, Limit]) -> None:
        assert self.state is not None
        applied = self.state.applied
        if applied != before:
            self.limits.update(applied.values(), self._sources - applied.keys())
            for source in self._sources:
                new = applied.get(source)
                if before.get(source) != new:
                    logs.log(self.log, "contact_limit", source=source.key,
                             reason=None if new is None else new.reason,
                             amps=None if new is None else new.amps,
                             watts=None if new is None else new.watts)
        self._schedule()

    def _schedule(self) -> None:
        assert self.state is not None and self._loop is not None
        due = contacts.next_due(self.board, self.state)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = self._loop.call_later(max(0.0, due - self.now()), self.step)
