"""A worker's lifecycle: one state, and the loop helpers every background loop of the worker uses.

    STARTING ──start()──> RUNNING ──stop()──> DRAINING ──hand-back done──> CLOSING ──> STOPPED

DRAINING: nothing more is fetched, running jobs get the grace period. CLOSING: the background loops
(lease, reaper, promoters, watchers) end. A loop checks the phase as well as being cancelled:
redis-py can swallow a cancellation that lands mid-command, and a loop must not outlive its worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from enum import IntEnum
from typing import Any

from ..errors import StoreError
from ..logs import EventLog

# How long to wait before trying Redis again after it failed.
REDIS_PAUSE = 0.5


class Phase(IntEnum):
    STARTING = 0
    RUNNING = 1
    DRAINING = 2
    CLOSING = 3
    STOPPED = 4


class Lifecycle:
    """The phase of one worker, shared (read-only) by its loops."""

    def __init__(self, name: str, log: EventLog) -> None:
        self.name = name  # the worker's name, for log lines
        self.log = log
        self.phase = Phase.STARTING

    @property
    def fetching(self) -> bool:
        return self.phase <= Phase.RUNNING

    @property
    def looping(self) -> bool:
        """Whether background loops go on."""
        return self.phase < Phase.CLOSING

    def report(self, e: StoreError, **fields: Any) -> None:
        """Log that Redis failed."""
        self.log.emit("redis_unavailable", "warning", worker=self.name, error=str(e), **fields)

    async def pause_after(self, e: StoreError) -> None:
        """Log that Redis failed and wait a little before the caller tries again."""
        self.report(e)
        await asyncio.sleep(REDIS_PAUSE)

    async def every(self, interval: float, action: Callable[[], Awaitable[Any]]) -> None:
        """Run `action` every `interval` seconds until CLOSING, riding out Redis failures."""
        while self.looping:
            try:
                await action()
            except StoreError as e:
                await self.pause_after(e)
            await asyncio.sleep(interval)


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until they are done.

    Cancels again until they are: on Python 3.11, redis-py's connection check runs inside
    `asyncio.timeout(0)`, and a cancellation that lands in that window is swallowed.
    """
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)
