"""GET /jobs/{id}?wait=N: requests waiting for their jobs to end.

Waiting requests do not poll their jobs: per queue with waiters, one task blocks on the queue's
stream of ended jobs (which the scripts that end jobs write to) and wakes the requests whose jobs
are among them. 10,000 requests waiting on one producer cost one blocking read per queue, as one
request does, plus one status read per request when it starts waiting.
"""

from __future__ import annotations

import asyncio

from ..errors import StoreError
from ..job import TERMINAL
from ..store import Queue

# How long one blocking read waits: the longest a request waits for a job that ended in the instant
# between its own read of the job and joining the waiters.
BLOCK_MS = 250


class Waiter:
    def __init__(self, store: Queue) -> None:
        self.store = store
        self.waiting: dict[str, dict[str, list[asyncio.Future[None]]]] = {}  # queue -> job id -> waiters
        self.watchers: dict[str, asyncio.Task[None]] = {}
        self.closed = False

    async def wait(self, queue: str, job_id: str, seconds: float) -> None:
        """Return when the job ends, or after `seconds`; the caller reads the job again either way."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        jobs = self.waiting.setdefault(queue, {})
        jobs.setdefault(job_id, []).append(future)
        if queue not in self.watchers:
            self.watchers[queue] = asyncio.create_task(self.watch(queue), name=f"workqueue-waiter-{queue}")
        try:
            await asyncio.wait_for(asyncio.shield(future), seconds)
        except TimeoutError:
            pass
        finally:
            waiters = jobs.get(job_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                jobs.pop(job_id, None)

    def wake(self, queue: str, job_ids: list[str]) -> None:
        jobs = self.waiting.get(queue, {})
        for job_id in job_ids:
            for future in jobs.pop(job_id, []):
                if not future.done():
                    future.set_result(None)

    async def watch(self, queue: str) -> None:
        try:
            cursor = await self.store.ended_cursor(queue)  # first, so nothing ending from now on is missed
            looked: set[str] = set()
            while self.waiting.get(queue):
                jobs = self.waiting[queue]
                # Jobs that joined since the last look may have ended before they joined.
                fresh = [job_id for job_id in jobs if job_id not in looked]
                if fresh:
                    statuses = await self.store.job_statuses(queue, fresh)
                    self.wake(queue, [j for j, s in zip(fresh, statuses) if s is None or s in TERMINAL])
                    looked = (looked | set(fresh)) & set(jobs)
                cursor, ended = await self.store.watch_ended(queue, cursor, BLOCK_MS)
                self.wake(queue, ended)
        except StoreError:
            # Redis is away: the waiting requests answer with what they read when their wait runs out.
            await asyncio.sleep(BLOCK_MS / 1000)
        finally:
            del self.watchers[queue]
            if self.waiting.get(queue) and not self.closed:  # a request joined while this one was ending
                self.watchers[queue] = asyncio.create_task(self.watch(queue), name=f"workqueue-waiter-{queue}")

    async def close(self) -> None:
        self.closed = True
        for task in list(self.watchers.values()):
            task.cancel()
        await asyncio.gather(*self.watchers.values(), return_exceptions=True)
