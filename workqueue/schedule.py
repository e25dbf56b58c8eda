"""Periodic jobs: `[[schedule]]` entries enqueued exactly once per tick by any number of workers.

There is no leader to lose. Every worker process computes the same tick instants (multiples of
`every` since the epoch, or the cron expression's times in UTC) and enqueues the tick's job with
the idempotency key `schedule:<name>:<tick>`: the enqueue script lets the first claim through and
turns the others into no-ops, atomically. Ticks are computed from the schedule, never from how long
a sleep took, so a busy worker does not drift; ticks missed while no worker ran are skipped, or
run once (`missed = "once"`), never replayed as a burst.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from croniter import croniter

from .errors import ConfigError
from .job import MAX_PRIORITY, JobSpec

if TYPE_CHECKING:
    from .logs import EventLog
    from .queue import Queue

FIELDS = {"name", "type", "payload", "cron", "every", "queue", "retries", "timeout", "priority", "missed"}


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    every: float | None = None
    cron: str | None = None
    queue: str = "default"
    retries: int | None = None
    timeout: float | None = None
    priority: int = 0
    missed: str = "skip"  # or "once"

    def next_tick(self, after: float) -> float:
        """The first tick strictly after `after`."""
        if self.every is not None:
            return (math.floor(after / self.every) + 1) * self.every
        return float(croniter(self.cron, after).get_next(float))

    def previous_tick(self, at: float) -> float:
        """The last tick at or before `at`."""
        if self.every is not None:
            return math.floor(at / self.every) * self.every
        # Cron ticks fall on whole seconds, and get_prev from a whole second is strictly before it.
        return float(croniter(self.cron, math.floor(at) + 1).get_prev(float))

    @property
    def period(self) -> float:
        if self.every is not None:
            return self.every
        first = self.next_tick(time.time())
        return self.next_tick(first) - first


def parse_schedules(entries: Sequence[Mapping[str, Any]]) -> list[Schedule]:
    """Validate `[[schedule]]` tables; ConfigError names the entry and field."""
    from .config import valid_queue_name  # config imports this module

    out: list[Schedule] = []
    for i, entry in enumerate(entries):
        where = f"schedule[{i}]"

        def fail(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{where}.{name}: expected {expected} (got {entry.get(name)!r})")

        unknown = set(entry) - FIELDS
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(FIELDS))})")
        if not isinstance(entry.get("type"), str) or not entry["type"]:
            raise fail("type", "the task type to enqueue")
        payload = entry.get("payload", {})
        if not isinstance(payload, Mapping):
            raise fail("payload", "a table")
        if ("cron" in entry) == ("every" in entry):
            raise ConfigError(f"{where}: give exactly one of cron (a cron expression) or every (seconds)")
        every = entry.get("every")
        if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0):
            raise fail("every", "a number of seconds > 0")
        cron = entry.get("cron")
        if cron is not None and (not isinstance(cron, str) or not croniter.is_valid(cron)):
            raise fail("cron", "a cron expression such as '*/5 * * * *' (UTC)")
        queue = entry.get("queue", "default")
        if not isinstance(queue, str) or not valid_queue_name(queue):
            raise fail("queue", "a queue name")
        missed = entry.get("missed", "skip")
        if missed not in ("skip", "once"):
            raise fail("missed", "'skip' or 'once'")
        retries = entry.get("retries")
        if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
            raise fail("retries", "an integer >= 0")
        timeout = entry.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise fail("timeout", "a number of seconds > 0")
        priority = entry.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
            raise fail("priority", f"an integer from 0 to {MAX_PRIORITY}")
        name = entry.get("name", f"{entry['type']}@{cron or every}")
        if not isinstance(name, str) or not name:
            raise fail("name", "a non-empty string")
        if any(s.name == name for s in out):
            raise ConfigError(f"{where}.name: {name!r} is used by another schedule; give each a unique name")
        out.append(Schedule(name=name, type=entry["type"], payload=dict(payload),
                            every=float(every) if every is not None else None, cron=cron, queue=queue,
                            retries=retries, timeout=float(timeout) if timeout is not None else None,
                            priority=priority, missed=missed))
    return out


class Scheduler:
    """Runs every schedule in this worker process; any number of processes may run the same ones."""

    def __init__(self, schedules: Sequence[Schedule], queue: Queue, log: EventLog, default_retries: int,
                 default_timeout: float) -> None:
        self.schedules = schedules
        self.queue = queue
        self.log = log
        self.default_retries = default_retries
        self.default_timeout = default_timeout

    async def run(self) -> None:
        await asyncio.gather(*(self.keep(s) for s in self.schedules))

    async def keep(self, schedule: Schedule) -> None:
        from .connection import UNAVAILABLE

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
            except UNAVAILABLE as e:
                self.log.emit("redis_unavailable", "warning", schedule=schedule.name, error=str(e))
                await asyncio.sleep(0.5)
                tick = schedule.next_tick(time.time())
            except Exception as e:  # e.g. a 409 while a deploy runs two configs: keep the other ticks
                self.log.emit("schedule_failed", "error", schedule=schedule.name, tick=tick, error=f"{type(e).__name__}: {e}")
                tick = schedule.next_tick(max(tick, time.time()))

    async def catch_up(self, schedule: Schedule) -> None:
        """With missed = "once": if ticks passed while no worker ran, run the latest one now."""
        last = await self.queue.last_tick(schedule.queue, schedule.name)
        latest = schedule.previous_tick(time.time())
        if last is not None and last < latest:
            await self.fire(schedule, latest)

    async def fire(self, schedule: Schedule, tick: float) -> None:
        spec = JobSpec(
            type=schedule.type,
            payload=schedule.payload,
            retries=self.default_retries if schedule.retries is None else schedule.retries,
            queue=schedule.queue,
            timeout=schedule.timeout or self.default_timeout,
            priority=schedule.priority,
            key=f"schedule:{schedule.name}:{tick:.3f}",
            # The key only has to outlast the other workers' claims on this tick.
            key_ttl=max(60.0, 2 * schedule.period),
        )
        (done,) = await self.queue.enqueue([spec], {})
        await self.queue.set_last_tick(schedule.queue, schedule.name, tick)
        if done.created:
            self.log.emit("scheduled_enqueued", job_id=done.id, type=spec.type, queue=spec.queue,
                          schedule=schedule.name, tick=tick)
