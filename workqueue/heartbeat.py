"""A worker's heartbeat, renewed from a thread of its own, and a watch on the event loop.

The heartbeat is the worker's lease: while it is fresh, nobody takes the worker's jobs. Renewing it
on the event loop would make the lease depend on handler code yielding: a plugin that blocks the
loop for longer than the lease would get every other job of the process stolen. In a thread, with
its own synchronous Redis client, the lease lives as long as the process does.

The same thread notices two things the loop cannot report itself:
- the loop has not run for a while: a handler is blocking it. The thread names the plugin from the
  loop thread's current stack and logs `event_loop_blocked`.
- the lease lapsed anyway (the process was paused by SIGSTOP, a VM freeze, a long GC): other
  workers may have taken its jobs. `last_ok` tells the worker, which then stops what it runs.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis

from .logs import EventLog
from .queue import queue_heartbeat

# The loop counts as blocked when a callback scheduled from this thread waits longer than this (s).
BLOCKED_AFTER = 1.0


class Heartbeat:
    def __init__(
        self,
        client: redis.Redis,
        queues: Iterable[str],
        name: str,
        lease: float,
        describe: Callable[[], dict[str, Any]],
        plugin_sources: dict[str, str],
        log: EventLog,
    ) -> None:
        self.client = client
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
        pipe = self.client.pipeline(transaction=False)
        queue_heartbeat(pipe, self.queues, self.name, self.lease, self.describe())
        pipe.execute()
        if lapsed:
            # Latched before the renewal hides it: after a pause this thread may renew the lease
            # before the loop has looked, and the worker must still learn that its jobs may have
            # gone to other workers meanwhile.
            self.lapses += 1
        self.last_ok = time.monotonic()

    def lapsed(self) -> bool:
        """Whether the lease may have expired: then other workers may hold our jobs."""
        return time.monotonic() - self.last_ok > self.lease

    def start_beating(self) -> None:
        """The first beat, before the first fetch, so no reaper can mistake the worker for dead."""
        self.beat()

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def run(self) -> None:
        interval = min(self.lease / 3, 0.5)
        while not self.stopping.wait(interval):
            self.watch_loop()
            if time.monotonic() - self.last_ok < self.lease / 3:
                continue
            try:
                self.beat()
            except (redis.RedisError, OSError) as e:
                self.emit("redis_unavailable", "warning", worker=self.name, error=f"heartbeat: {e}")

    def watch_loop(self) -> None:
        assert self.loop is not None
        stalled = time.monotonic() - self.loop_seen
        if stalled > BLOCKED_AFTER and not self.blocked_reported:
            self.blocked_reported = True
            self.emit("event_loop_blocked", "error", worker=self.name, blocked_s=round(stalled, 1),
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

    def emit(self, event: str, level: str, **fields: Any) -> None:
        # Called from this thread: hand the line to the loop, or, if it is blocked, straight to the
        # writer's buffer (a list append is atomic), which it drains when it runs again.
        self.log.emit_threadsafe(event, level, **fields)
