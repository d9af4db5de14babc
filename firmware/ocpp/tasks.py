"""Background tasks kept alive and accounted for: asyncio holds only weak references to tasks,
so a task nobody keeps can vanish mid-run, and a failure nobody awaits is never seen."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterator
from typing import Any

from firmware import logs


class Tasks:
    def __init__(self, log: logging.Logger, event: str = "task_failed",
                 level: int = logging.ERROR) -> None:
        self._log = log
        self._event = event
        self._level = level
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``work`` as a kept task; its failure is logged."""

        async def run() -> Any:
            return await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logs.log(self._log, self._event, self._level, error=repr(task.exception()))

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(set(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        for task in set(self._tasks):
            task.cancel()

    async def cancel_and_wait(self) -> None:
        """Cancel them all and wait, also for tasks they spawn while being cancelled."""
        while self._tasks:
            self.cancel()
            await asyncio.gather(*set(self._tasks), return_exceptions=True)
