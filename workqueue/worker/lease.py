"""A worker's lease: the heartbeat that renews it, the watch that acts when it lapsed anyway, the
hand-back of the worker's jobs, and the reaper that takes back the jobs of workers whose lease
expired (crash recovery).

The heartbeat is renewed from a thread of its own. Renewing it on the event loop would make the
lease depend on handler code yielding: a plugin that blocks the loop for longer than the lease
would get every other job of the process stolen. In a thread, with its own synchronous Redis
client, the lease lives as long as the process does. The same thread notices two things the loop
cannot report itself:
- the loop has not run for a while: a handler is blocking it. The thread names the plugin from the
  loop thread's current stack and logs `event_loop_blocked`.
- the lease lapsed anyway (the process was paused by SIGSTOP, a VM freeze, a long GC): other
  workers may have taken its jobs. The watch then stops what the worker runs and hands back the rest.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..logs import EventLog
from ..metrics import Metrics
from ..store import Queue
from .inflight import InFlight, Interruption
from .lifecycle import Lifecycle
from .recorder import Recorder

# The loop counts as blocked when a callback scheduled from this thread waits longer than this (s).
BLOCKED_AFTER = 1.0
# How often the watch looks at the lease.
WATCH_INTERVAL = 0.05


class Heartbeat:
    """The thread that renews the lease on every queue served."""

    def __init__(self, queue: Queue, queues: Sequence[str], name: str, lease: float,
                 describe: Callable[[], dict[str, Any]], plugin_sources: dict[str, str], log: EventLog) -> None:
        self.queue = queue
        self.queues = list(queues)
        self.name = name
        self.lease = lease
        self.describe = describe
        self.plugin_sources = plugin_sources  # plugin name -> directory, to name a blocking one
        self.log = log
        self.last_ok = time.monotonic()  # when the lease was last renewed
        self.lapses = 0  # how many times a renewal came after the lease had expired
        self.loop_seen = time.monotonic()  # when the loop last ran a callback of ours
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="workqueue-heartbeat", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = threading.get_ident()
        self.blocked_reported = False

    def beat(self) -> None:
        """Renew the lease on every queue served and publish what the worker is doing."""
        lapsed = self.lapsed()
        self.queue.renew_lease(self.queues, self.name, self.lease, self.describe())
        if lapsed:
            # Latched before the renewal hides it: after a pause this thread may renew the lease
            # before the loop has looked, and the worker must still learn that its jobs may have
            # gone to other workers meanwhile.
            self.lapses += 1
        self.last_ok = time.monotonic()

    def first_beat(self) -> None:
        """The beat that takes the lease: nothing was held before it, so nothing can have lapsed
        (however long the worker waited for Redis before it)."""
        self.queue.renew_lease(self.queues, self.name, self.lease, self.describe())
        self.last_ok = time.monotonic()

    def lapsed(self) -> bool:
        """Whether the lease may have expired: then other workers may hold our jobs."""
        return time.monotonic() - self.last_ok > self.lease

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def run(self) -> None:
        interval = min(self.lease / 3, 0.5)
        while not self.stopping.wait(interval):
            self.watch_loop()
            if time.monotonic() - self.last_ok < self.lease / 3:
                continue
            try:
                self.beat()
            except StoreError as e:
                self.log.emit_threadsafe("redis_unavailable", "warning", worker=self.name, error=f"heartbeat: {e}")

    def watch_loop(self) -> None:
        assert self.loop is not None
        stalled = time.monotonic() - self.loop_seen
        if stalled > BLOCKED_AFTER and not self.blocked_reported:
            self.blocked_reported = True
            # From this thread: the line goes straight into the writer's buffer, which the loop
            # drains when it runs again.
            self.log.emit_threadsafe(
                "event_loop_blocked", "error", worker=self.name, blocked_s=round(stalled, 1),
                plugin=self.blocking_plugin(),
                error="a handler is blocking the event loop; make it async or a plain function (run in a thread)")
        try:
            self.loop.call_soon_threadsafe(self.saw_loop)
        except RuntimeError:  # the loop has closed
            self.stopping.set()

    def saw_loop(self) -> None:
        self.loop_seen = time.monotonic()
        self.blocked_reported = False

    def blocking_plugin(self) -> str | None:
        """The plugin whose code the loop thread is running now, from its innermost frames."""
        frame = sys._current_frames().get(self.loop_thread)
        while frame is not None:
            path = Path(frame.f_code.co_filename)
            for plugin, source in self.plugin_sources.items():
                if str(path).startswith(source):
                    return plugin
            frame = frame.f_back
        return None


class Lease:
    """One worker's lease and what depends on it."""

    def __init__(self, queue: Queue, queues: Sequence[str], lease: float, heartbeat: Heartbeat,
                 lifecycle: Lifecycle, inflight: InFlight, recorder: Recorder, log: EventLog,
                 metrics: Metrics) -> None:
        self.queue = queue
        self.queues = list(queues)
        self.lease = lease
        self.heartbeat = heartbeat
        self.lifecycle = lifecycle
        self.name = lifecycle.name
        self.inflight = inflight
        self.recorder = recorder
        self.log = log
        self.metrics = metrics
        self.lapses_handled = 0  # lease lapses already dealt with (see watch)

    async def start(self) -> None:
        """The first beat, before the first fetch, so no reaper can mistake the worker for dead;
        then the thread."""
        await asyncio.to_thread(self.heartbeat.first_beat)
        self.heartbeat.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.heartbeat.stop)
        try:
            await self.queue.forget_worker(self.queues, self.name)
        except StoreError:
            pass  # the heartbeat expires by itself

    def in_doubt(self) -> bool:
        """Whether the lease expired (now, or at some point not yet handled): our jobs may be
        running on other workers. Nothing is fetched or started meanwhile."""
        return self.heartbeat.lapsed() or self.heartbeat.lapses != self.lapses_handled

    async def watch(self) -> None:
        """When the lease lapsed (the process was paused past it), other workers may have taken our
        jobs and run them: stop ours, drop what was fetched ahead, hand back whatever is still ours."""
        while self.lifecycle.looping:
            await asyncio.sleep(WATCH_INTERVAL)
            if not self.in_doubt():
                continue
            self.log.emit("lease_lost", "warning", worker=self.name,
                          error="the heartbeat lapsed (process paused?); other workers may have taken this "
                                "worker's jobs: stopping them here")
            self.inflight.drop_ready()
            self.inflight.interrupt_all(Interruption.LOST)
            while self.heartbeat.lapsed() and self.lifecycle.looping:
                await asyncio.sleep(WATCH_INTERVAL)
            # Outcomes finished before the lapse are recorded first (or refused, if their jobs
            # moved), so the hand-back cannot return a job that is already done. Until it is
            # through, nothing is fetched or started (see in_doubt), so all it returns is what was
            # dropped or interrupted here.
            await self.recorder.flush()
            await self.hand_back(persist=True)
            self.lapses_handled = self.heartbeat.lapses

    async def hand_back(self, persist: bool) -> int:
        """Requeue every delivery still pending under this worker's name, at the top of its queue.
        With `persist`, retry until Redis takes it (or the worker closes); without, give up on a
        queue whose Redis fails: the reaper of another worker recovers those jobs after the lease."""
        released = 0
        pending = list(self.queues)
        while pending:
            queue = pending[0]
            try:
                released += (await self.queue.recover(queue, self.name, release=True))[0]
                pending.pop(0)
            except StoreError as e:
                if persist and self.lifecycle.looping:
                    await self.lifecycle.pause_after(e)
                    continue
                self.log.emit("release_failed", "error", worker=self.name, queue=queue, error=str(e))
                pending.pop(0)
        return released

    async def reap_forever(self) -> None:
        await self.lifecycle.every(max(self.lease / 4, 0.1), self.reap)

    async def reap(self) -> None:
        failed = None
        for queue in self.queues:
            try:
                await self.reap_queue(queue)
            except StoreError as e:  # this queue's Redis: the others are reaped all the same
                failed = e
        if failed is not None:
            raise failed

    async def reap_queue(self, queue: str) -> None:
        moved, dead_workers = await self.queue.recover(queue, self.name)
        if moved:
            # The recover script says how many jobs it took back, not of which types.
            self.metrics.count_job(queue, "other", "recovered", moved)
            self.log.emit("recovered", "warning", queue=queue, worker=self.name, dead_workers=dead_workers,
                          jobs=moved)
        if self.in_doubt():
            return  # the watch hands back everything not held; orphans are among them
        held = self.inflight.jobs() + self.recorder.jobs()
        orphans = await self.queue.recover_orphans(queue, self.name, held, self.lease)
        if orphans:
            self.metrics.count_job(queue, "other", "recovered", orphans)
            self.log.emit("orphans_recovered", "warning", queue=queue, worker=self.name, jobs=orphans,
                          error="jobs pending under this worker's name that it does not hold (a failover "
                                "lost the last writes of a Redis master?): requeued")
