"""The worker's upkeep loops, besides running jobs: promoting delayed jobs whose time has come,
stopping running jobs that were cancelled or ran past their timeout, and enqueueing periodic jobs.

Periodic jobs have no leader to lose: every worker process computes the same tick instants and
enqueues the tick's job with the idempotency key `schedule:<name>:<tick>`, so the enqueue script
lets the first claim through and turns the others into no-ops, atomically. Ticks come from the
schedule, never from how long a sleep took, so a busy worker does not drift; ticks missed while no
worker ran are skipped, or run once (`missed = "once"`), never replayed as a burst.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace

from ..errors import StoreError
from ..job import JobSpec, Status
from ..logs import EventLog
from ..metrics import Metrics
from ..schedule import Schedule
from ..store import Queue
from .inflight import InFlight, Interruption
from .lifecycle import Lifecycle

# How often a promoter looks for due jobs when it knows of none sooner. Another process may add an
# earlier one at any time, so this bounds how late a delayed job can start.
PROMOTE_INTERVAL = 0.02
# How often the cancel counters are read: the delay before a running job's handler is cancelled.
CANCEL_CHECK_INTERVAL = 0.2
# How often running jobs' deadlines are checked: how late past its timeout an attempt is stopped.
TIMEOUT_CHECK_INTERVAL = 0.05


class Upkeep:
    def __init__(self, queue: Queue, queues: Sequence[str], inflight: InFlight, lifecycle: Lifecycle) -> None:
        self.queue = queue
        self.queues = list(queues)
        self.inflight = inflight
        self.lifecycle = lifecycle

    async def promote_forever(self, queue: str) -> None:
        while self.lifecycle.looping:
            try:
                _, next_due = await self.queue.promote(queue)
                wait = PROMOTE_INTERVAL if next_due is None else min(PROMOTE_INTERVAL, next_due - time.time())
                await asyncio.sleep(max(wait, 0.001))
            except StoreError as e:
                await self.lifecycle.pause_after(e)

    async def enforce_timeouts(self) -> None:
        """One watchdog for every running job's deadline, instead of a timer per job."""
        while self.lifecycle.looping:
            for job_id in self.inflight.overdue(time.time()):
                self.inflight.interrupt(job_id, Interruption.TIMEOUT)
            await asyncio.sleep(TIMEOUT_CHECK_INTERVAL)

    async def watch_cancels(self) -> None:
        """Poll the queues' cancel counters (one cheap read); when one moves, look at our jobs."""
        seen: list[int] | None = None

        async def look() -> None:
            nonlocal seen
            counters = await self.queue.cancel_counters(self.queues)
            if counters != seen and self.inflight.running:
                held = [r.job for r in self.inflight.running.values()]
                for job, status in zip(held, await self.queue.statuses(held)):
                    if status == Status.CANCELLED:
                        self.inflight.interrupt(job.id, Interruption.CANCEL)
            seen = counters

        await self.lifecycle.every(CANCEL_CHECK_INTERVAL, look)


class Scheduler:
    """Runs every schedule in this worker process; any number of processes may run the same ones."""

    def __init__(self, schedules: Sequence[Schedule], jobs: Sequence[JobSpec], queue: Queue, log: EventLog,
                 metrics: Metrics) -> None:
        self.schedules = schedules
        self.jobs = {s.name: job for s, job in zip(schedules, jobs)}  # what each one enqueues
        self.queue = queue
        self.log = log
        self.metrics = metrics

    async def run(self) -> None:
        await asyncio.gather(*(self.keep(s) for s in self.schedules))

    async def keep(self, schedule: Schedule) -> None:
        caught_up = schedule.missed != "once"
        tick = schedule.next_tick(time.time())
        while True:
            try:
                if not caught_up:
                    await self.catch_up(schedule)
                    caught_up = True
                await asyncio.sleep(max(0.0, tick - time.time()))
                await self.fire(schedule, tick)
                tick = schedule.next_tick(max(tick, time.time()))
            except StoreError as e:
                self.log.emit("redis_unavailable", "warning", schedule=schedule.name, error=str(e))
                await asyncio.sleep(0.5)
                tick = schedule.next_tick(time.time())
            except Exception as e:  # e.g. a 409 while a deploy runs two configs: keep the other ticks
                self.log.emit("schedule_failed", "error", schedule=schedule.name, tick=tick,
                              error=f"{type(e).__name__}: {e}")
                tick = schedule.next_tick(max(tick, time.time()))

    async def catch_up(self, schedule: Schedule) -> None:
        """With missed = "once": if ticks passed while no worker ran, run the latest one now."""
        last = await self.queue.last_tick(schedule.queue, schedule.name)
        latest = schedule.previous_tick(time.time())
        if last is not None and last < latest:
            await self.fire(schedule, latest)

    async def fire(self, schedule: Schedule, tick: float) -> None:
        # The key only has to outlast the other workers' claims on this tick.
        spec = replace(self.jobs[schedule.name], key=f"schedule:{schedule.name}:{tick:.3f}",
                       key_ttl=max(60.0, 2 * schedule.period))
        (done,) = await self.queue.enqueue([spec], {})
        await self.queue.set_last_tick(schedule.queue, schedule.name, tick)
        if done.created:
            self.metrics.count_enqueued(spec.queue, spec.type)
            self.log.emit("scheduled_enqueued", job_id=done.id, type=spec.type, queue=spec.queue,
                          schedule=schedule.name, tick=tick)
