"""An asyncio event loop that runs on virtual time, as fast as the CPU allows.

Whenever the loop would sleep until its next timer, it instead polls I/O without waiting and moves
the virtual clock forward by the time it would have slept. Code written for the real loop
(``asyncio.sleep``, ``call_later``, ``wait_for``) therefore runs unchanged, deterministically and
without waiting. When no timer is pending the loop blocks on I/O for real, as there is nothing to
simulate until someone talks to it.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from hal.clock import VirtualClock

T = TypeVar("T")

# The loop's time is the clock's elapsed seconds (see VirtualClock.elapsed); stepping a hair
# past the timeout guarantees the timer that set it is due when the loop looks.
_OVERSHOOT_S = 1e-9


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self, clock: VirtualClock) -> None:
        self._inner = selectors.DefaultSelector()
        self._clock = clock

    def register(
        self, fileobj: Any, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            return self._inner.select(None)
        ready = self._inner.select(0)
        if not ready and timeout > 0:
            self._clock.advance(timeout + _OVERSHOOT_S)
        return ready

    def close(self) -> None:
        self._inner.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(_VirtualSelector(clock))
        self.clock = clock

    def time(self) -> float:
        return self.clock.elapsed()


def run_virtual(
    main: Callable[[], Awaitable[T]], clock: VirtualClock | None = None
) -> T:
    """Run ``main()`` to completion on a fresh virtual-time loop."""
    vclock = clock or VirtualClock()

    async def _call() -> T:
        return await main()

    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(vclock)) as runner:
        return runner.run(_call())
