"""The worker role: fetch jobs in batches, run them on N consumer coroutines, record outcomes.

Tasks of one worker process:
    fetcher                   reserves free slots, fetches up to that many jobs from the queues in
                              weighted order, and when there are none waits on XREAD (no polling)
    consumer x concurrency    runs one job at a time; plain-function handlers go to a thread
    recorder                  records finished attempts in batches (one script call per queue)
    heartbeat (a thread)      renews this process's lease even while a handler blocks the loop
    lease watch               stops our jobs if the lease lapsed anyway (the process was paused)
    reaper                    requeues the jobs of workers whose lease expired (crash recovery)
    promoter (one per queue)  moves delayed jobs and retries whose time has come onto the queue
    cancel watcher            cancels running jobs whose cancellation was requested
    scheduler                 enqueues periodic jobs, once per tick across all workers
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import ResponseError

from .config import Settings
from .connection import BLOCK_MS, UNAVAILABLE, Clients
from .errors import PermanentError, ValidationError
from .job import Job, JobContext
from .heartbeat import Heartbeat
from .logs import EventLog
from .metrics import Metrics
from .plugins import TaskType
from .queue import Outcome, Queue
from .schedule import Scheduler, parse_schedules
from .task import check_payload

# How often a promoter looks for due jobs when it knows of none sooner. Another process may add an
# earlier one at any time, so this bounds how late a delayed job can start.
PROMOTE_INTERVAL = 0.02
# Jobs are fetched ahead of free consumers only while attempts typically take less than this (s).
PREFETCH_BELOW = 0.02
# How long to wait before trying Redis again after it failed.
REDIS_PAUSE = 0.5
# How often the cancel counters are read: the delay before a running job's handler is cancelled.
CANCEL_CHECK_INTERVAL = 0.2
# How often running jobs' deadlines are checked: how late past its timeout an attempt is stopped.
TIMEOUT_CHECK_INTERVAL = 0.05


@dataclass(slots=True)
class Running:
    job: Job
    consumer: asyncio.Task[None]
    ctx: JobContext | None
    deadline: float  # epoch seconds


class Worker:
    def __init__(self, settings: Settings, queue: Queue, clients: Clients, tasks: dict[str, TaskType],
                 log: EventLog, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.started_at = time.time()
        self.queue = queue
        self.clients = clients
        self.tasks = tasks
        self.log = log
        self.name = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.weights = settings.queue_weights
        self.queues = [q for q, _ in self.weights]
        self.held = 0  # jobs fetched and not finished: running, or waiting in `ready`
        self.slot_freed = asyncio.Event()
        self.typical_run: float | None = None  # moving average of attempt durations (s)
        self.ready: asyncio.Queue[Job] = asyncio.Queue()
        self.outcomes: list[tuple[Outcome, float, float]] = []  # with start and finish times
        self.outcome_added = asyncio.Event()
        self.recording = asyncio.Lock()
        self.lapses_handled = 0  # lease lapses already dealt with (see watch_lease)
        self.stopping = False  # no more fetching
        self.closing = False  # background services end too (after the hand-back)
        self.recorder_done = False
        self.busy: set[asyncio.Task[None]] = set()  # consumers running a job right now
        self.running: dict[str, Running] = {}  # by job id
        self.interrupted: dict[str, str] = {}  # job id -> 'cancel' or 'timeout'
        self.executor = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="workqueue-job")
        self.fetcher: asyncio.Task[None] | None = None
        self.consumers: list[asyncio.Task[None]] = []
        self.services: list[asyncio.Task[Any]] = []
        self.recorder: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for queue in self.queues:
            await self.queue.ensure_queue(queue)
        self.heartbeat = Heartbeat(self.clients.threaded, self.queues, self.name, self.settings.lease, self.describe,
                                   plugin_sources(self.tasks), self.log)
        await asyncio.to_thread(self.heartbeat.start_beating)
        self.heartbeat.start()
        self.services = [
            asyncio.create_task(self.watch_lease(), name="workqueue-lease-watch"),
            asyncio.create_task(self.reap_forever(), name="workqueue-reaper"),
            asyncio.create_task(self.watch_cancels(), name="workqueue-cancel-watcher"),
            asyncio.create_task(self.enforce_timeouts(), name="workqueue-timeouts"),
            *(asyncio.create_task(self.promote_forever(q), name=f"workqueue-promoter-{q}") for q in self.queues),
        ]
        schedules = parse_schedules(self.settings.schedule)
        if schedules:
            scheduler = Scheduler(schedules, self.queue, self.log, self.settings.default_retries,
                                  self.settings.default_timeout)
            self.services.append(asyncio.create_task(scheduler.run(), name="workqueue-scheduler"))
        self.recorder = asyncio.create_task(self.record_forever(), name="workqueue-recorder")
        self.consumers = [
            asyncio.create_task(self.consume_forever(), name=f"workqueue-consumer-{i}")
            for i in range(self.settings.concurrency)
        ]
        self.fetcher = asyncio.create_task(self.fetch_forever(), name="workqueue-fetcher")
        self.log.emit("worker_started", worker=self.name, queues=list(self.settings.queues),
                      concurrency=self.settings.concurrency)

    async def stop(self) -> None:
        """Graceful shutdown: stop fetching, let running jobs finish within the grace period, hand
        back the rest so another worker starts them at once."""
        self.stopping = True
        if self.fetcher is not None:
            await cancel_all([self.fetcher])
        # Jobs fetched but not started are still pending under our name: the release below returns them.
        while not self.ready.empty():
            self.ready.get_nowait()
        await cancel_all(c for c in self.consumers if c not in self.busy)
        busy = list(self.busy)
        if busy:
            self.log.emit("draining", worker=self.name, running=len(busy), grace_s=self.settings.grace_period)
            _, unfinished = await asyncio.wait(busy, timeout=self.settings.grace_period)
            for held in self.running.values():
                if held.ctx is not None:
                    held.ctx.cancelled.set()
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
                released += (await self.queue.recover(queue, self.name, release=True))[0]
            except UNAVAILABLE as e:
                self.log.emit("release_failed", "error", worker=self.name, queue=queue, error=str(e))
        self.closing = True
        await cancel_all(self.services)
        await asyncio.to_thread(self.heartbeat.stop)
        with contextlib.suppress(*UNAVAILABLE):
            await self.queue.forget_worker(self.queues, self.name)
        # Threads still running a timed-out or abandoned handler are not waited for.
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.log.emit("worker_stopped", worker=self.name, released=released)

    # -- fetching -----------------------------------------------------------------------------

    async def fetch_forever(self) -> None:
        rounds = 0
        while not self.stopping:
            if self.lease_in_doubt():  # watch_lease is handing our jobs back: take no more meanwhile
                await asyncio.sleep(TIMEOUT_CHECK_INTERVAL)
                continue
            while self.held >= self.capacity():
                self.slot_freed.clear()
                await self.slot_freed.wait()
            count = self.capacity() - self.held
            self.held += count  # reserved until the fetch says how many came
            rounds += 1
            # Every `priority_fairness`-th round reads the lowest priority first: under a flood of
            # high-priority work, low priorities still get a share instead of starving.
            lowest_first = rounds % self.settings.priority_fairness == 0
            fetched, cursors = 0, {}
            try:
                for queue in self.weighted_order():
                    if fetched == count:
                        break
                    jobs, cursors[queue], buried = await self.queue.fetch(queue, self.name, count - fetched,
                                                                          lowest_first)
                    for job_id in buried:
                        self.log.emit("dead", "error", job_id=job_id, queue=queue, worker=self.name,
                                      error="exceeded its delivery limit: every worker running it died")
                    fetched += len(jobs)
                    for job in jobs:
                        self.ready.put_nowait(job)
            except UNAVAILABLE as e:
                await self.on_redis_error(e)
                continue
            except ResponseError as e:
                await self.on_lost_groups(e)
                continue
            finally:
                self.release_slots(count - fetched)
            if fetched == 0:
                await self.wait_for_work(cursors)

    def weighted_order(self) -> list[str]:
        """Queues in a random order where each comes first with probability weight / total weight."""
        if len(self.weights) == 1:
            return self.queues
        keyed = [(random.random() ** (1.0 / weight), name) for name, weight in self.weights]
        return [name for _, name in sorted(keyed, reverse=True)]

    async def wait_for_work(self, cursors: dict[str, list[str]]) -> None:
        waits = [asyncio.create_task(self.queue.wait(self.clients.blocking, q, c, BLOCK_MS))
                 for q, c in cursors.items() if c]
        if not waits:
            return
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if isinstance(task.exception(), UNAVAILABLE):
                    await self.on_redis_error(task.exception())  # type: ignore[arg-type]
        finally:
            await cancel_all(waits)  # they only watch, so cutting them short loses nothing

    def release_slots(self, n: int) -> None:
        if n:
            self.held -= n
            self.slot_freed.set()

    def capacity(self) -> int:
        """How many jobs this worker holds at most: one per consumer, plus as many again fetched ahead
        while jobs are short. Then consumers never wait for a Redis round trip between jobs; with long
        jobs, nothing is held back from other workers that could start it now (Celery's prefetch
        trap). Prefetched jobs are pending under our name like running ones: a crash recovers them
        and a shutdown hands them back."""
        concurrency = self.settings.concurrency
        if self.typical_run is not None and self.typical_run < PREFETCH_BELOW:
            return 2 * concurrency
        return concurrency

    # -- running ------------------------------------------------------------------------------

    async def consume_forever(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while True:
            job = await self.ready.get()
            if self.lease_in_doubt():
                self.release_slots(1)  # our lease lapsed while it waited: watch_lease hands it back
                continue
            self.busy.add(me)
            started = time.time()
            task = self.tasks.get(job.type)
            ctx = None
            if task is not None and task.wants_context:
                ctx = JobContext(job.id, job.type, job.queue, job.attempts, self.settings.plugins.get(job.type, {}),
                                 log=functools.partial(self.log.emit_for, job))
            self.running[job.id] = Running(job, me, ctx, started + job.timeout)
            try:
                outcome = await self.run(job, task, ctx)
            except asyncio.CancelledError:
                if job.id not in self.interrupted:
                    raise  # this worker is stopping: the job is handed back
                outcome = Outcome(job, "cancelled", "")  # replaced below by the interruption's outcome
            finally:
                self.busy.discard(me)
                self.running.pop(job.id, None)
            reason = self.interrupted.pop(job.id, None)
            if reason == "lost":
                # Another worker has this job now; any outcome of ours would be refused anyway.
                while me.cancelling():
                    me.uncancel()
                self.release_slots(1)
                continue
            if reason is not None:
                # The cancellation was for this job only (a cancel request or its timeout): the
                # consumer goes on. Whatever the handler returned after it is discarded.
                while me.cancelling():
                    me.uncancel()
                outcome = (Outcome(job, "cancelled", "cancelled on request while running") if reason == "cancel"
                           else self.failure(job, f"TimeoutError: attempt exceeded its timeout of {job.timeout:g} s"))
            finished = time.time()
            self.metrics.observe_job(job.queue, job.type, started - job.due_at, finished - started)
            run = finished - started
            self.typical_run = run if self.typical_run is None else 0.9 * self.typical_run + 0.1 * run
            outcome.wait, outcome.run = max(0.0, started - job.due_at), run
            self.outcomes.append((outcome, started, finished))
            self.outcome_added.set()
            if self.stopping:
                return
            self.release_slots(1)

    async def run(self, job: Job, task: TaskType | None, ctx: JobContext | None) -> Outcome:
        """One attempt. Returns its outcome; raises only when cancelled."""
        if self.log.enabled("started"):
            self.log.emit("started", job_id=job.id, type=job.type, queue=job.queue, attempt=job.attempts,
                          wait_ms=round((time.time() - job.due_at) * 1000, 1))
        if task is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            return Outcome(job, "dead", f"unknown task type {job.type!r} at worker {self.name} (loaded: {known})")
        try:
            # Checked again here: the job may come from an older producer, or from before a deploy.
            check_payload(task.options, job.payload, settings=self.settings.plugins.get(job.type))
            result = await self.call(task, job, ctx)
            return Outcome(job, "succeeded", orjson.dumps(result).decode())
        except (PermanentError, ValidationError) as e:
            return Outcome(job, "dead", describe(e))
        except Exception as e:  # one job's failure must never stop the worker
            return self.failure(job, describe(e))

    def failure(self, job: Job, error: str) -> Outcome:
        """A failed attempt: retried after a backoff while attempts are left, else the job is dead."""
        if job.attempts > job.retries:
            return Outcome(job, "dead", error)
        return Outcome(job, "retry", error, retry_at=time.time() + self.backoff(job.attempts))

    def call(self, task: TaskType, job: Job, ctx: JobContext | None) -> Awaitable[Any]:
        kwargs: dict[str, Any] = {"ctx": ctx} if task.wants_context else {}
        if task.is_coroutine:
            return task.handler(job.payload, **kwargs)  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.executor, functools.partial(task.handler, job.payload, **kwargs))

    def backoff(self, attempts: int) -> float:
        """Exponential with 'equal jitter': half fixed, half random, so retries of many jobs that
        failed together spread out instead of returning as a herd."""
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempts - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    # -- cancelling ---------------------------------------------------------------------------

    def interrupt(self, job_id: str, reason: str) -> None:
        """Stop one running job's handler ('cancel' on request, or 'timeout'); the consumer goes on."""
        held = self.running.get(job_id)
        if held is not None and job_id not in self.interrupted:
            self.interrupted[job_id] = reason
            if held.ctx is not None:
                held.ctx.cancelled.set()  # all a plain function in a thread can be told
            held.consumer.cancel()

    async def enforce_timeouts(self) -> None:
        """One watchdog for every running job's deadline, instead of a timer per job."""
        while not self.closing:
            now = time.time()
            for job_id, held in list(self.running.items()):
                if held.deadline <= now:
                    self.interrupt(job_id, "timeout")
            await asyncio.sleep(TIMEOUT_CHECK_INTERVAL)

    async def watch_cancels(self) -> None:
        """Poll the queues' cancel counters (one cheap read); when one moves, look at our jobs."""
        seen: list[int] | None = None

        async def look() -> None:
            nonlocal seen
            counters = await self.queue.cancel_counters(self.queues)
            if counters != seen and self.running:
                held = [r.job for r in self.running.values()]
                for job, status in zip(held, await self.queue.statuses(held)):
                    if status == "cancelled":
                        self.interrupt(job.id, "cancel")
            seen = counters

        await self.every(CANCEL_CHECK_INTERVAL, look)

    # -- recording outcomes -------------------------------------------------------------------

    async def record_forever(self) -> None:
        while True:
            await self.outcome_added.wait()
            await self.flush_outcomes()
            if self.recorder_done and not self.outcomes:
                return

    async def flush_outcomes(self) -> None:
        """Record every finished attempt; on a Redis outage keep them and try again, so none is lost.
        One caller at a time: whoever returns from here knows no outcome is still on its way."""
        async with self.recording:
            await self.record_all()

    async def record_all(self) -> None:
        while self.outcomes:
            self.outcome_added.clear()
            batch, self.outcomes = self.outcomes, []
            try:
                recorded = await self.queue.finish([o for o, _, _ in batch])
            except UNAVAILABLE as e:
                self.outcomes = batch + self.outcomes
                await self.on_redis_error(e)
                continue
            for (outcome, started, finished), verdict in zip(batch, recorded):
                self.log_outcome(outcome, started, finished, verdict)

    def log_outcome(self, outcome: Outcome, started: float, finished: float, verdict: int) -> None:
        if verdict == 0:
            event, level = "stale_outcome_refused", "warning"
        elif verdict == 2 or outcome.kind == "cancelled":
            event, level = "cancelled", "info"
        else:
            event, level = {"succeeded": ("succeeded", "info"), "retry": ("retrying", "warning")}.get(
                outcome.kind, ("dead", "error"))
        if not self.log.enabled(event, level):
            return
        job = outcome.job
        fields: dict[str, Any] = {"job_id": job.id, "type": job.type, "queue": job.queue, "attempt": job.attempts,
                                  "wait_ms": round(max(0.0, started - job.due_at) * 1000, 1),
                                  "duration_ms": round((finished - started) * 1000, 1)}
        if event == "stale_outcome_refused":
            fields["error"] = "the job was recovered by another worker while this one held it"
        elif event == "retrying":
            fields["error"] = outcome.data
            fields["retry_in_ms"] = round((outcome.retry_at - finished) * 1000)
        elif event == "dead":
            fields["error"] = outcome.data
        self.log.emit(event, level, **fields)

    # -- leases, recovery, scheduled jobs -----------------------------------------------------

    def lease_in_doubt(self) -> bool:
        """Whether the lease expired (now, or at some point not yet handled): our jobs may be
        running on other workers."""
        return self.heartbeat.lapsed() or self.heartbeat.lapses != self.lapses_handled

    def describe(self) -> dict[str, Any]:
        """What /workers shows of this worker (called from the heartbeat thread)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "queues": list(self.settings.queues),
                "concurrency": self.settings.concurrency, "in_flight": len(self.running),
                "started_at": self.started_at}

    async def watch_lease(self) -> None:
        """When the lease lapsed (the process was paused past it), other workers may have taken our
        jobs and run them: stop ours, drop what was fetched ahead, hand back whatever is still ours."""
        while not self.closing:
            await asyncio.sleep(TIMEOUT_CHECK_INTERVAL)
            if not self.lease_in_doubt():
                continue
            self.log.emit("lease_lost", "warning", worker=self.name,
                          error="the heartbeat lapsed (process paused?); other workers may have taken this "
                                "worker's jobs: stopping them here")
            while not self.ready.empty():
                self.ready.get_nowait()
                self.release_slots(1)
            for job_id in list(self.running):
                self.interrupt(job_id, "lost")
            while self.heartbeat.lapsed() and not self.closing:
                await asyncio.sleep(TIMEOUT_CHECK_INTERVAL)
            # Outcomes finished before the lapse are recorded first (or refused, if their jobs
            # moved), so the release below cannot hand back a job that is already done. Until the
            # release is through, nothing is fetched or started (see lease_in_doubt), so all it
            # hands back is what was dropped or interrupted here.
            await self.flush_outcomes()
            released = False
            while not released and not self.closing:
                try:
                    for queue in self.queues:
                        await self.queue.recover(queue, self.name, release=True)
                    released = True
                except UNAVAILABLE as e:
                    await self.on_redis_error(e)
            self.lapses_handled = self.heartbeat.lapses

    async def reap_forever(self) -> None:
        await self.every(max(self.settings.lease / 4, 0.1), self.reap)

    async def reap(self) -> None:
        for queue in self.queues:
            moved, dead_workers = await self.queue.recover(queue, self.name)
            if moved:
                self.log.emit("recovered", "warning", queue=queue, worker=self.name, dead_workers=dead_workers,
                              jobs=moved)

    async def promote_forever(self, queue: str) -> None:
        while not self.closing:
            try:
                _, next_due = await self.queue.promote(queue)
                wait = PROMOTE_INTERVAL if next_due is None else min(PROMOTE_INTERVAL, next_due - time.time())
                await asyncio.sleep(max(wait, 0.001))
            except UNAVAILABLE as e:
                await self.on_redis_error(e)

    async def every(self, interval: float, action: Callable[[], Awaitable[Any]]) -> None:
        # `closing` as well as cancellation ends these loops: redis-py can swallow a cancellation
        # that lands mid-command, and a loop must not outlive its worker because of it.
        while not self.closing:
            try:
                await action()
            except UNAVAILABLE as e:
                await self.on_redis_error(e)
            await asyncio.sleep(interval)

    async def on_redis_error(self, e: BaseException) -> None:
        self.log.emit("redis_unavailable", "warning", worker=self.name, error=str(e))
        await asyncio.sleep(REDIS_PAUSE)

    async def on_lost_groups(self, e: ResponseError) -> None:
        """Redis lost its data (restarted without persistence): recreate streams and groups."""
        if "NOGROUP" not in str(e):
            raise e
        self.log.emit("queues_recreated", "warning", worker=self.name, error=str(e))
        self.queue.forget_queues()
        for queue in self.queues:
            await self.queue.ensure_queue(queue)


async def cancel_all(tasks: Any) -> None:
    """Cancel tasks and wait until they are done.

    Cancels again until they are: on Python 3.11, redis-py's connection check runs inside
    `asyncio.timeout(0)`, and a cancellation that lands in that window is swallowed.
    """
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)


def plugin_sources(tasks: dict[str, TaskType]) -> dict[str, str]:
    """Plugin name -> the directory of its handler's package, to name a plugin from a stack frame."""
    sources = {}
    for task in tasks.values():
        module = sys.modules.get(getattr(task.handler, "__module__", "") or "")
        path = getattr(module, "__file__", None)
        if path:
            sources[task.plugin] = str(Path(path).parent)
    return sources


def describe(e: BaseException) -> str:
    """`Type: message` plus the innermost frame, enough to find the bug without a full traceback."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"[:2000]
