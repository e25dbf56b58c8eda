"""The worker role: fetch jobs in batches, run them on N consumer coroutines, record outcomes.

Tasks of one worker process, and where each lives:
    fetcher                   here: takes free slots, fetches up to that many jobs from the queues in
                              weighted order, and when there are none waits on XREAD (no polling)
    consumer x concurrency    here: runs one job at a time (`attempt.Attempts` runs the attempt)
    recorder                  recorder.py: records finished attempts in batches
    heartbeat (a thread)      lease.py: renews this process's lease even while a handler blocks the loop
    lease watch, reaper       lease.py: stop our jobs if the lease lapsed; requeue dead workers' jobs
    promoters, watchdogs      upkeep.py: delayed jobs, cancel requests, timeouts
    scheduler                 upkeep.py: periodic jobs, once per tick across all workers
What the worker holds (slots, the ready buffer, running jobs) is one `inflight.InFlight`.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import StoreError
from ..job import JobSpec, Outcome
from ..logs import EventLog
from ..metrics import Metrics
from ..plugins import TaskType
from ..store import BLOCK_MS, Queue
from .attempt import Attempts
from .inflight import InFlight, Interruption
from .lease import Heartbeat, Lease
from .lifecycle import REDIS_PAUSE, Lifecycle, Phase, cancel_all
from .recorder import Recorder
from .upkeep import Scheduler, Upkeep

if TYPE_CHECKING:  # workqueue.tracing imports opentelemetry: only loaded when tracing is on
    from ..tracing import Tracing

# Longest wait between two tries to reach Redis while the worker starts.
START_PAUSE_MAX = 5.0


class Worker:
    def __init__(self, settings: Settings, queue: Queue, tasks: dict[str, TaskType], log: EventLog,
                 metrics: Metrics, scheduled: Sequence[JobSpec] = (), tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = tracing
        self.queue = queue
        self.log = log
        self.metrics = metrics
        self.name = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.started_at = time.time()
        self.weights = settings.queue_weights
        self.queues = [q for q, _ in self.weights]
        self.lifecycle = Lifecycle(self.name, log)
        self.inflight = InFlight(settings.concurrency)
        self.attempts = Attempts(settings, tasks, log, self.name)
        self.recorder = Recorder(queue, log, metrics, self.lifecycle)
        heartbeat = Heartbeat(queue, self.queues, self.name, settings.lease, self.describe, plugin_sources(tasks), log)
        self.lease = Lease(queue, self.queues, settings.lease, heartbeat, self.lifecycle, self.inflight,
                           self.recorder, log, metrics)
        self.upkeep = Upkeep(queue, self.queues, self.inflight, self.lifecycle)
        self.scheduler = Scheduler(settings.schedule, scheduled, queue, log, metrics) if settings.schedule else None
        self.fetcher: asyncio.Task[None] | None = None
        self.consumers: list[asyncio.Task[None]] = []
        self.busy: set[asyncio.Task[None]] = set()  # consumers running a job right now
        self.services: list[asyncio.Task[Any]] = []
        self.recording: asyncio.Task[None] | None = None
        self.starting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin in the background: until Redis answers (and takes the worker's lease) the worker
        waits and tries again, saying so in the log, while the process serves HTTP (/readyz 503)."""
        self.starting = asyncio.create_task(self.begin(), name="workqueue-worker-start")

    async def begin(self) -> None:
        pause = 0.25
        while True:
            try:
                for queue in self.queues:
                    await self.queue.ensure_queue(queue)
                await self.lease.start()
                break
            except StoreError as e:
                self.log.emit("worker_waiting", "warning", worker=self.name, retry_in_s=pause,
                              error=f"{e}; the worker starts once Redis takes its queues and lease")
                await asyncio.sleep(pause)
                pause = min(pause * 2, START_PAUSE_MAX)
        self.lifecycle.phase = Phase.RUNNING

        def spawn(name: str, work: Any) -> asyncio.Task[Any]:
            return asyncio.create_task(work, name=f"workqueue-{name}")

        self.services = [
            spawn("lease-watch", self.lease.watch()),
            spawn("reaper", self.lease.reap_forever()),
            spawn("cancel-watcher", self.upkeep.watch_cancels()),
            spawn("timeouts", self.upkeep.enforce_timeouts()),
            *(spawn(f"promoter-{q}", self.upkeep.promote_forever(q)) for q in self.queues),
        ]
        if self.scheduler is not None:
            self.services.append(spawn("scheduler", self.scheduler.run()))
        self.recording = spawn("recorder", self.recorder.run())
        self.consumers = [spawn(f"consumer-{i}", self.consume()) for i in range(self.settings.concurrency)]
        self.fetcher = spawn("fetcher", self.fetch())
        self.log.emit("worker_started", worker=self.name, queues=list(self.settings.queues),
                      concurrency=self.settings.concurrency)

    async def stop(self) -> None:
        """Graceful shutdown: stop fetching, let running jobs finish within the grace period, hand
        back the rest so another worker starts them at once."""
        if self.lifecycle.phase is Phase.STARTING:  # still waiting for Redis: nothing to hand back
            if self.starting is not None:
                await cancel_all([self.starting])
            await self.lease.stop()
            self.lifecycle.phase = Phase.STOPPED
            self.log.emit("worker_stopped", worker=self.name, released=0)
            return
        self.lifecycle.phase = Phase.DRAINING
        if self.fetcher is not None:
            await cancel_all([self.fetcher])
        self.inflight.drop_ready()  # still pending under our name: the hand-back below returns them
        await cancel_all(c for c in self.consumers if c not in self.busy)
        busy = list(self.busy)
        if busy:
            self.log.emit("draining", worker=self.name, running=len(busy), grace_s=self.settings.grace_period)
            _, unfinished = await asyncio.wait(busy, timeout=self.settings.grace_period)
            self.inflight.tell_cancelled()
            await cancel_all(unfinished)
        if self.recording is not None:
            self.recorder.close()
            # It records what is left, then returns; if Redis stays away, give up after one lease:
            # those jobs are still pending under our name and another worker recovers them.
            try:
                await asyncio.wait_for(self.recording, timeout=max(self.settings.lease, 5.0))
            except TimeoutError:
                pass
        released = await self.lease.hand_back(persist=False)
        self.lifecycle.phase = Phase.CLOSING
        await cancel_all(self.services)
        await self.lease.stop()
        self.attempts.close()
        self.lifecycle.phase = Phase.STOPPED
        self.log.emit("worker_stopped", worker=self.name, released=released)

    # -- fetching -----------------------------------------------------------------------------

    async def fetch(self) -> None:
        rounds = 0
        # Queues whose Redis just failed (a cluster master failing over), skipped until then
        # (monotonic time): the other queues, on other masters, keep flowing meanwhile.
        resting: dict[str, float] = {}
        while self.lifecycle.fetching:
            if self.lease.in_doubt():  # the lease watch is handing our jobs back: take no more meanwhile
                await asyncio.sleep(0.05)
                continue
            count = await self.inflight.reserve()
            rounds += 1
            # Every `priority_fairness`-th round reads the lowest priority first: under a flood of
            # high-priority work, low priorities still get a share instead of starving.
            lowest_first = rounds % self.settings.priority_fairness == 0
            fetched, cursors = 0, {}
            try:
                for queue in self.weighted_order():
                    if fetched == count:
                        break
                    if resting.get(queue, 0.0) > time.monotonic():
                        continue
                    try:
                        got = await self.queue.fetch(queue, self.name, count - fetched, lowest_first)
                    except StoreError as e:
                        self.lifecycle.report(e, queue=queue)
                        resting[queue] = time.monotonic() + REDIS_PAUSE
                        continue
                    cursors[queue] = got.cursors
                    fetched += len(got.jobs)
                    for job in got.jobs:
                        self.inflight.ready.put_nowait(job)
                    if got.buried:
                        await self.buried(queue, got.buried)
            finally:
                self.inflight.release(count - fetched)
            if fetched == 0:
                await self.wait_for_work(cursors, resting)

    async def buried(self, queue: str, ids: list[str]) -> None:
        """Poison jobs the fetch made dead: logged, and counted (as the store counted them: a failed
        attempt and a death) under their types, which the fetch does not return."""
        try:
            types = await self.queue.types(queue, ids)
        except StoreError:
            types = [None] * len(ids)
        for job_id, task_type in zip(ids, types):
            self.log.emit("dead", "error", job_id=job_id, queue=queue, worker=self.name,
                          error="exceeded its delivery limit: every worker running it died")
            for outcome in ("failed", "dead"):
                self.metrics.count_job(queue, task_type or "other", outcome)

    def weighted_order(self) -> list[str]:
        """Queues in a random order where each comes first with probability weight / total weight."""
        if len(self.weights) == 1:
            return self.queues
        keyed = [(random.random() ** (1.0 / weight), name) for name, weight in self.weights]
        return [name for _, name in sorted(keyed, reverse=True)]

    async def wait_for_work(self, cursors: dict[str, list[str]], resting: dict[str, float]) -> None:
        """Block until one of the queues has a new job (one blocking XREAD per queue: a queue's keys
        live in one cluster slot, different queues' in different ones), or a resting queue is due
        to be tried again."""
        waits: dict[asyncio.Task[None], str] = {
            asyncio.create_task(self.queue.wait(q, c, BLOCK_MS)): q for q, c in cursors.items() if c}
        now = time.monotonic()
        due = min((until - now for until in resting.values() if until > now), default=None)
        if due is not None:
            waits[asyncio.create_task(asyncio.sleep(due))] = ""
        if not waits:
            return
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if isinstance(error, StoreError):
                    self.lifecycle.report(error, queue=waits[task])
                    resting[waits[task]] = time.monotonic() + REDIS_PAUSE
        finally:
            await cancel_all(waits)  # they only watch, so cutting them short loses nothing

    # -- running ------------------------------------------------------------------------------

    async def consume(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        inflight = self.inflight
        while True:
            job = await inflight.ready.get()
            if self.lease.in_doubt():
                inflight.release()  # our lease lapsed while it waited: the lease watch hands it back
                continue
            self.busy.add(me)
            started = time.time()
            ctx = self.attempts.context(job)
            inflight.start(job, me, ctx, started)
            outcome: Outcome | None = None
            run = self.tracing.run(job) if self.tracing is not None else None
            try:
                outcome = await self.attempts.run(job, ctx)
            except asyncio.CancelledError:
                if job.id not in inflight.interrupted:
                    if run is not None:
                        run.end(None, "handed back")
                    raise  # this worker is stopping: the job is handed back
            finally:
                self.busy.discard(me)
                finished = time.time()
                why = inflight.end(job.id, finished - started)
                if run is not None:
                    run.leave()
            if why is not None:
                # The cancellation was for this job only (a cancel request, its timeout, a lost
                # lease): the consumer goes on. Whatever the handler returned after it is discarded.
                while me.cancelling():
                    me.uncancel()
                if why is Interruption.LOST:
                    if run is not None:
                        run.end(None, "lost")
                    inflight.release()  # another worker has this job now; our outcome would be refused
                    continue
                outcome = self.attempts.interrupted(job, why)
            assert outcome is not None
            if run is not None:
                run.end(outcome)
            self.metrics.observe_job(job.queue, job.type, started - job.due_at, finished - started)
            outcome.wait, outcome.run = max(0.0, started - job.due_at), finished - started
            self.recorder.add(outcome, started, finished)
            if not self.lifecycle.fetching:
                return
            inflight.release()

    def describe(self) -> dict[str, Any]:
        """What /workers shows of this worker (called from the heartbeat thread)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "queues": list(self.settings.queues),
                "concurrency": self.settings.concurrency, "in_flight": len(self.inflight.running),
                "started_at": self.started_at}


def plugin_sources(tasks: dict[str, TaskType]) -> dict[str, str]:
    """Plugin name -> the directory of its handler's package, to name a plugin from a stack frame."""
    sources = {}
    for task in tasks.values():
        module = sys.modules.get(getattr(task.handler, "__module__", "") or "")
        path = getattr(module, "__file__", None)
        if path:
            sources[task.plugin] = str(Path(path).parent)
    return sources

