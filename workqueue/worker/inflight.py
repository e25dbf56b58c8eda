"""What one worker holds, with one owner: its slots, the jobs fetched and waiting for a consumer
(the ready buffer), the jobs running, and the interruptions asked of them.

Every job the worker holds is pending under its name in Redis, whether it runs or waits in the
ready buffer: a crash recovers both, and a hand-back returns both. A slot is taken when a fetch is
sent and given back when the job's outcome is queued for recording (or the job is dropped).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

from ..job import Job, JobContext

# Jobs are fetched ahead of free consumers only while attempts typically take less than this (s).
PREFETCH_BELOW = 0.02


class Interruption(StrEnum):
    """Why a running job's handler was stopped while its consumer goes on."""

    CANCEL = "cancel"  # cancelled on request
    TIMEOUT = "timeout"  # ran past its timeout
    LOST = "lost"  # the lease lapsed: another worker may run it now


@dataclass(slots=True)
class Running:
    job: Job
    consumer: asyncio.Task[None]
    ctx: JobContext | None
    deadline: float  # epoch seconds


class InFlight:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.held = 0  # slots taken: jobs fetched (or being fetched) and not finished
        self.slot_freed = asyncio.Event()
        self.typical_run: float | None = None  # moving average of attempt durations (s)
        self.ready: asyncio.Queue[Job] = asyncio.Queue()
        self.running: dict[str, Running] = {}  # by job id
        self.interrupted: dict[str, Interruption] = {}  # job id -> why its handler was stopped

    def capacity(self) -> int:
        """How many jobs this worker holds at most: one per consumer, plus as many again fetched ahead
        while jobs are short. Then consumers never wait for a Redis round trip between jobs; with long
        jobs, nothing is held back from other workers that could start it now (Celery's prefetch
        trap)."""
        if self.typical_run is not None and self.typical_run < PREFETCH_BELOW:
            return 2 * self.concurrency
        return self.concurrency

    async def reserve(self) -> int:
        """Wait for free slots and take all of them; the fetch then gives back what it did not use."""
        while self.held >= self.capacity():
            self.slot_freed.clear()
            await self.slot_freed.wait()
        count = self.capacity() - self.held
        self.held += count
        return count

    def release(self, n: int = 1) -> None:
        if n:
            self.held -= n
            self.slot_freed.set()

    def drop_ready(self) -> int:
        """Forget the jobs fetched ahead and not started (they stay pending under this worker's name
        in Redis, so a hand-back or the reaper returns them); their slots come back."""
        dropped = 0
        while not self.ready.empty():
            self.ready.get_nowait()
            dropped += 1
        self.release(dropped)
        return dropped

    def start(self, job: Job, consumer: asyncio.Task[None], ctx: JobContext | None, now: float) -> None:
        self.running[job.id] = Running(job, consumer, ctx, now + job.timeout)

    def end(self, job_id: str, seconds: float) -> Interruption | None:
        """The job is no longer running; returns the interruption that stopped it, if any."""
        self.running.pop(job_id, None)
        self.typical_run = seconds if self.typical_run is None else 0.9 * self.typical_run + 0.1 * seconds
        return self.interrupted.pop(job_id, None)

    def interrupt(self, job_id: str, why: Interruption) -> None:
        """Stop one running job's handler; its consumer goes on (see `worker.Worker.consume`)."""
        held = self.running.get(job_id)
        if held is not None and job_id not in self.interrupted:
            self.interrupted[job_id] = why
            if held.ctx is not None:
                held.ctx.cancelled.set()  # all a plain function in a thread can be told
            held.consumer.cancel()

    def interrupt_all(self, why: Interruption) -> None:
        for job_id in list(self.running):
            self.interrupt(job_id, why)

    def jobs(self) -> list[Job]:
        """Every job held here: running, or fetched ahead and waiting for a consumer."""
        waiting: list[Job] = list(self.ready._queue)  # type: ignore[attr-defined]  # asyncio.Queue's deque
        return [r.job for r in self.running.values()] + waiting

    def overdue(self, now: float) -> list[str]:
        return [job_id for job_id, held in self.running.items() if held.deadline <= now]

    def tell_cancelled(self) -> None:
        """Set every running job's `ctx.cancelled`: the worker gives up on them (shutdown)."""
        for held in self.running.values():
            if held.ctx is not None:
                held.ctx.cancelled.set()
