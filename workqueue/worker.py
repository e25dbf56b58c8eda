"""The worker role: fetch jobs in batches, run them on N consumer coroutines, record outcomes.

Tasks of one worker process:
    fetcher (one per queue)   reserves free slots, XREADGROUP up to that many, hands jobs to consumers
    consumer x concurrency    runs one job at a time; plain-function handlers go to a thread
    recorder                  records finished attempts in batches (one script call per queue)
    heartbeat                 renews this process's lease; while it lives, its jobs are its own
    reaper                    requeues the jobs of workers whose lease expired (crash recovery)
    promoter (one per queue)  moves retries whose backoff has elapsed back onto the stream
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from .config import Settings
from .connection import BLOCK_MS, UNAVAILABLE, Clients
from .job import Job, JobContext
from .logs import EventLog
from .plugins import TaskType
from .queue import Outcome, Queue

# How often the promoter looks for due retries when it knows of none sooner.
PROMOTE_INTERVAL = 0.05
# How long to wait before trying Redis again after it failed.
REDIS_PAUSE = 0.5


class Worker:
    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        clients: Clients,
        tasks: dict[str, TaskType],
        log: EventLog,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.clients = clients
        self.tasks = tasks
        self.log = log
        self.name = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.queues = settings.queues
        self.free = settings.concurrency  # slots neither running nor reserved by a fetch
        self.slot_freed = asyncio.Condition()
        self.ready: asyncio.Queue[Job] = asyncio.Queue()
        self.outcomes: list[tuple[Outcome, float, float]] = []  # with start and finish times
        self.outcome_added = asyncio.Event()
        self.stopping = False
        self.busy: set[asyncio.Task[None]] = set()  # consumers running a job right now
        self.executor = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="workqueue-job")
        self.fetchers: list[asyncio.Task[None]] = []
        self.consumers: list[asyncio.Task[None]] = []
        self.services: list[asyncio.Task[None]] = []
        self.recorder: asyncio.Task[None] | None = None
        self.recorder_done = False

    async def start(self) -> None:
        for queue in self.queues:
            await self.queue.ensure_queue(queue)
        # The first heartbeat comes before the first fetch, so no reaper can mistake us for dead.
        await self.queue.heartbeat(self.queues, self.name, self.settings.lease)
        self.services = [
            asyncio.create_task(self.keep_alive(), name="workqueue-heartbeat"),
            asyncio.create_task(self.reap_forever(), name="workqueue-reaper"),
        ] + [asyncio.create_task(self.promote_forever(q), name=f"workqueue-promoter-{q}") for q in self.queues]
        self.recorder = asyncio.create_task(self.record_forever(), name="workqueue-recorder")
        self.consumers = [
            asyncio.create_task(self.consume_forever(), name=f"workqueue-consumer-{i}")
            for i in range(self.settings.concurrency)
        ]
        self.fetchers = [asyncio.create_task(self.fetch_forever(q), name=f"workqueue-fetcher-{q}") for q in self.queues]
        self.log.emit("worker_started", worker=self.name, queues=list(self.queues), concurrency=self.settings.concurrency)

    async def stop(self) -> None:
        """Graceful shutdown: stop fetching, let running jobs finish within the grace period, hand
        back the rest so another worker starts them at once."""
        self.stopping = True
        await cancel_all(self.fetchers)
        # Jobs fetched but not started are still pending under our name: the requeue below returns them.
        while not self.ready.empty():
            self.ready.get_nowait()
        await cancel_all(c for c in self.consumers if c not in self.busy)
        busy = list(self.busy)
        if busy:
            self.log.emit("draining", worker=self.name, running=len(busy), grace_s=self.settings.grace_period)
            _, unfinished = await asyncio.wait(busy, timeout=self.settings.grace_period)
            await cancel_all(unfinished)
        if self.recorder is not None:
            self.recorder_done = True
            self.outcome_added.set()
            # It records what is left, then returns; if Redis stays away, give up after one lease:
            # those jobs are still pending under our name and another worker recovers them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.recorder, timeout=max(self.settings.lease, 5.0))
        released = 0
        for queue in self.queues:
            try:
                released += max(0, await self.queue.requeue(queue, self.name, only_if_dead=False))
            except UNAVAILABLE as e:
                self.log.emit("release_failed", "error", worker=self.name, queue=queue, error=str(e))
        await cancel_all(self.services)
        with contextlib.suppress(*UNAVAILABLE):
            await self.queue.forget_worker(self.queues, self.name)
        # Threads still running a timed-out or abandoned handler are not waited for.
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.log.emit("worker_stopped", worker=self.name, released=released)

    # -- fetching -----------------------------------------------------------------------------

    async def fetch_forever(self, queue: str) -> None:
        while True:
            async with self.slot_freed:
                await self.slot_freed.wait_for(lambda: self.free > 0)
                count, self.free = self.free, 0
            jobs: list[Job] = []
            try:
                jobs = await self.queue.fetch(self.clients.blocking, queue, self.name, count, BLOCK_MS)
            except UNAVAILABLE as e:
                self.log.emit("redis_unavailable", "warning", worker=self.name, queue=queue, error=str(e))
                await asyncio.sleep(REDIS_PAUSE)
            finally:
                await self.release_slots(count - len(jobs))
            for job in jobs:
                self.ready.put_nowait(job)

    async def release_slots(self, n: int) -> None:
        if n:
            async with self.slot_freed:
                self.free += n
                self.slot_freed.notify_all()

    # -- running ------------------------------------------------------------------------------

    async def consume_forever(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while True:
            job = await self.ready.get()
            self.busy.add(me)
            started = time.time()
            try:
                outcome = await self.run(job)
            finally:
                self.busy.discard(me)
            self.outcomes.append((outcome, started, time.time()))
            self.outcome_added.set()
            if self.stopping:
                return
            await self.release_slots(1)

    async def run(self, job: Job) -> Outcome:
        """One attempt. Returns its outcome; never raises except when this process cancels it."""
        self.log.emit("started", job_id=job.id, type=job.type, queue=job.queue, attempt=job.attempts,
                      wait_ms=round((time.time() - job.enqueued_at) * 1000, 1))
        task = self.tasks.get(job.type)
        if task is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            return Outcome(job, "dead", f"unknown task type {job.type!r} at worker {self.name} (loaded: {known})")
        deadline = asyncio.timeout(job.timeout)
        try:
            async with deadline:
                result = await self.call(task, job)
            return Outcome(job, "succeeded", orjson.dumps(result).decode())
        except TimeoutError as e:
            error = (f"TimeoutError: attempt exceeded its timeout of {job.timeout:g} s" if deadline.expired()
                     else describe(e))
        except Exception as e:  # one job's failure must never stop the worker
            error = describe(e)
        if job.attempts > job.retries:
            return Outcome(job, "dead", error)
        return Outcome(job, "retry", error, retry_at=time.time() + self.backoff(job.attempts))

    def call(self, task: TaskType, job: Job) -> Awaitable[Any]:
        kwargs: dict[str, Any] = {}
        if task.wants_context:
            kwargs["ctx"] = JobContext(job.id, job.type, job.queue, job.attempts, self.settings.plugins.get(job.type, {}))
        if task.is_coroutine:
            return task.handler(job.payload, **kwargs)  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.executor, functools.partial(task.handler, job.payload, **kwargs))

    def backoff(self, attempts: int) -> float:
        """Exponential with 'equal jitter': half fixed, half random, so retries of many jobs that
        failed together spread out instead of returning as a herd."""
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempts - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    # -- recording outcomes -------------------------------------------------------------------

    async def record_forever(self) -> None:
        while True:
            await self.outcome_added.wait()
            await self.flush_outcomes()
            if self.recorder_done and not self.outcomes:
                return

    async def flush_outcomes(self) -> None:
        """Record every finished attempt; on a Redis outage keep them and try again, so none is lost."""
        while self.outcomes:
            self.outcome_added.clear()
            batch, self.outcomes = self.outcomes, []
            try:
                recorded = await self.queue.finish([o for o, _, _ in batch], self.settings.result_ttl,
                                                   self.settings.dead_ttl)
            except UNAVAILABLE as e:
                self.outcomes = batch + self.outcomes
                self.log.emit("redis_unavailable", "warning", worker=self.name, error=str(e))
                await asyncio.sleep(REDIS_PAUSE)
                continue
            for (outcome, started, finished), ok in zip(batch, recorded):
                self.log_outcome(outcome, started, finished, ok)

    def log_outcome(self, outcome: Outcome, started: float, finished: float, recorded: bool) -> None:
        job = outcome.job
        fields: dict[str, Any] = {"job_id": job.id, "type": job.type, "queue": job.queue, "attempt": job.attempts,
                                  "duration_ms": round((finished - started) * 1000, 1)}
        if not recorded:
            self.log.emit("stale_outcome_refused", "warning", **fields,
                          error="the job was recovered by another worker while this one held it")
            return
        if outcome.kind == "succeeded":
            self.log.emit("succeeded", **fields)
        elif outcome.kind == "retry":
            self.log.emit("retrying", "warning", **fields, error=outcome.data,
                          retry_in_ms=round((outcome.retry_at - finished) * 1000))
        else:
            self.log.emit("dead", "error", **fields, error=outcome.data)

    # -- leases -------------------------------------------------------------------------------

    async def keep_alive(self) -> None:
        await every(self.settings.lease / 3, lambda: self.queue.heartbeat(self.queues, self.name, self.settings.lease),
                    self.on_redis_error)

    async def reap_forever(self) -> None:
        await every(max(self.settings.lease / 4, 0.1), self.reap, self.on_redis_error)

    async def reap(self) -> None:
        for queue in self.queues:
            for consumer in await self.queue.consumers(queue):
                if consumer == self.name:
                    continue
                moved = await self.queue.requeue(queue, consumer, only_if_dead=True)
                if moved > 0:
                    self.log.emit("recovered", "warning", queue=queue, worker=self.name, dead_worker=consumer, jobs=moved)

    async def promote_forever(self, queue: str) -> None:
        while True:
            try:
                _, next_due = await self.queue.promote(queue)
                wait = PROMOTE_INTERVAL if next_due is None else min(PROMOTE_INTERVAL, next_due - time.time())
                await asyncio.sleep(max(wait, 0.001))
            except UNAVAILABLE as e:
                await self.on_redis_error(e)

    async def on_redis_error(self, e: BaseException) -> None:
        self.log.emit("redis_unavailable", "warning", worker=self.name, error=str(e))
        await asyncio.sleep(REDIS_PAUSE)


async def every(interval: float, action: Callable[[], Awaitable[Any]],
                on_error: Callable[[BaseException], Awaitable[None]]) -> None:
    while True:
        try:
            await action()
        except UNAVAILABLE as e:
            await on_error(e)
        await asyncio.sleep(interval)


async def cancel_all(tasks: Any) -> None:
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def describe(e: BaseException) -> str:
    """`Type: message` plus the innermost frame, enough to find the bug without a full traceback."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"[:2000]
