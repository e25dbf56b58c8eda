"""The Redis data layer: the only module that knows key names and scripts.

Per queue (all keys share the hash tag `{queue}`, so every script stays in one Redis Cluster slot):

    wq:{q}:stream           Stream of waiting and delivered job ids; consumer group "workers"
    wq:{q}:job:<id>         Hash: the job record (type, payload, status, attempts, timestamps...)
    wq:{q}:scheduled        Sorted set: job ids waiting for a retry backoff, by due time (ms)
    wq:{q}:dead             Sorted set: dead job ids, by time of death
    wq:{q}:stats            Hash: cluster-wide counters (enqueued, done, failed, retried, recovered)
    wq:{q}:worker:<name>    String with a TTL of one lease: the heartbeat of a worker process

and `wq:queues`, the set of queue names ever used. A job leaves the stream only when a worker
acknowledges its outcome, so a crashed worker's jobs stay pending under its name until recovered.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .job import Job, JobSpec, new_id

GROUP = "workers"
QUEUES_KEY = "wq:queues"


def key(queue: str, name: str) -> str:
    return f"wq:{{{queue}}}:{name}"


def job_key(queue: str, job_id: str) -> str:
    return f"wq:{{{queue}}}:job:{job_id}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt, to be recorded by `Queue.finish`."""

    job: Job
    kind: str  # 'succeeded', 'retry' or 'dead'
    data: str  # result JSON, or the error text
    retry_at: float = 0.0  # epoch seconds, for 'retry'


class Queue:
    """Job storage and delivery on one Redis (or the embedded store)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.scripts = {
            name: client.register_script(resources.files(__package__).joinpath(f"lua/{name}.lua").read_text())
            for name in ("enqueue", "start", "finish", "promote", "requeue")
        }
        self.known_queues: set[str] = set()

    async def ensure_queue(self, queue: str) -> None:
        """Create the queue's consumer group once per process; id 0 so no earlier job is skipped."""
        if queue in self.known_queues:
            return
        try:
            await self.client.xgroup_create(key(queue, "stream"), GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        await self.client.sadd(QUEUES_KEY, queue)
        self.known_queues.add(queue)

    async def queues(self) -> list[str]:
        names = await self.client.smembers(QUEUES_KEY)
        return sorted(n.decode() for n in names)

    async def enqueue(self, specs: Sequence[JobSpec]) -> list[str]:
        """Store and publish jobs; each queue's share is one atomic script call. Returns the ids."""
        ids = [new_id() for _ in specs]
        now = repr(time.time())
        by_queue: dict[str, list[int]] = {}
        for i, spec in enumerate(specs):
            by_queue.setdefault(spec.queue, []).append(i)
        for queue, indexes in by_queue.items():
            await self.ensure_queue(queue)
            args: list[Any] = [queue, now]
            for i in indexes:
                s = specs[i]
                args += [ids[i], s.type, orjson.dumps(s.payload), s.retries, repr(s.timeout)]
            keys = [key(queue, "stream"), key(queue, "stats")] + [job_key(queue, ids[i]) for i in indexes]
            await self.scripts["enqueue"](keys=keys, args=args)
        return ids

    async def fetch(self, client: aioredis.Redis, queue: str, consumer: str, count: int, block_ms: int) -> list[Job]:
        """Wait up to `block_ms` for up to `count` new deliveries and mark them active.

        `client` is a connection kept for blocking reads, so they never hold up other commands.
        """
        reply = await client.xreadgroup(GROUP, consumer, {key(queue, "stream"): ">"}, count=count, block=block_ms)
        if not reply:
            return []
        entries = reply[0][1]
        deliveries = [entry_id.decode() for entry_id, _ in entries]
        job_ids = [fields[b"id"].decode() for _, fields in entries]
        rows = await self.scripts["start"](
            keys=[key(queue, "stream")] + [job_key(queue, j) for j in job_ids],
            args=[GROUP, consumer, repr(time.time())] + deliveries,
        )
        jobs = []
        for job_id, delivery, row in zip(job_ids, deliveries, rows):
            if row is None:
                continue
            task_type, payload, retries, attempts, timeout, enqueued_at = row
            jobs.append(
                Job(
                    id=job_id,
                    delivery=delivery,
                    type=task_type.decode(),
                    queue=queue,
                    payload=orjson.loads(payload),
                    retries=int(retries),
                    attempts=int(attempts),
                    timeout=float(timeout),
                    enqueued_at=float(enqueued_at),
                )
            )
        return jobs

    async def finish(self, outcomes: Sequence[Outcome], result_ttl: float, dead_ttl: float) -> list[bool]:
        """Record outcomes and ack their deliveries, one script call per queue.

        Returns, in order, whether each was recorded; False means the delivery had been taken
        from this worker (recovered after its heartbeat lapsed) and the outcome was refused.
        """
        recorded: dict[int, bool] = {}
        by_queue: dict[str, list[int]] = {}
        for i, outcome in enumerate(outcomes):
            by_queue.setdefault(outcome.job.queue, []).append(i)
        now = repr(time.time())
        for queue, indexes in by_queue.items():
            args: list[Any] = [GROUP, now, int(result_ttl * 1000), int(dead_ttl * 1000)]
            keys = [key(queue, n) for n in ("stream", "stats", "scheduled", "dead")]
            for i in indexes:
                o = outcomes[i]
                args += [o.job.id, o.job.delivery, o.kind, o.data, int(o.retry_at * 1000)]
                keys.append(job_key(queue, o.job.id))
            flags = await self.scripts["finish"](keys=keys, args=args)
            recorded.update({i: bool(flag) for i, flag in zip(indexes, flags)})
        return [recorded[i] for i in range(len(outcomes))]

    async def promote(self, queue: str, limit: int = 500) -> tuple[int, float | None]:
        """Move due retries onto the stream. Returns (moved, epoch seconds of the next one or None)."""
        moved, next_ms = await self.scripts["promote"](
            keys=[key(queue, "scheduled"), key(queue, "stream")],
            args=[int(time.time() * 1000), limit, key(queue, "job:")],
        )
        next_due = float(next_ms)
        return int(moved), (next_due / 1000 if next_due >= 0 else None)

    async def heartbeat(self, queues: Iterable[str], consumer: str, lease: float) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.set(key(queue, f"worker:{consumer}"), "1", px=int(lease * 1000))
            await pipe.execute()

    async def forget_worker(self, queues: Iterable[str], consumer: str) -> None:
        await self.client.delete(*(key(q, f"worker:{consumer}") for q in queues))

    async def requeue(self, queue: str, consumer: str, *, only_if_dead: bool, limit: int = 1000) -> int:
        """Put `consumer`'s unfinished deliveries back on the stream.

        With only_if_dead, nothing happens (returns -1) while the consumer's heartbeat exists.
        """
        moved = await self.scripts["requeue"](
            keys=[key(queue, "stream"), key(queue, "stats"), key(queue, f"worker:{consumer}")],
            args=[GROUP, consumer, key(queue, "job:"), limit, "recovered" if only_if_dead else "released",
                  "1" if only_if_dead else "0"],
        )
        return int(moved)

    async def consumers(self, queue: str) -> list[str]:
        """Names of the consumers that hold deliveries on `queue`."""
        info = await self.client.xinfo_consumers(key(queue, "stream"), GROUP)
        return [c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in info]

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job record from whichever known queue holds it, decoded; None if unknown."""
        for queue in await self.queues():
            raw = await self.client.hgetall(job_key(queue, job_id))
            if raw:
                return {k.decode(): v.decode() for k, v in raw.items()}
        return None

    async def stats(self) -> dict[str, dict[str, int]]:
        """Per queue: waiting, active, scheduled and dead counts plus the cumulative counters."""
        queues = await self.queues()
        async with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.xlen(key(queue, "stream"))
                pipe.xpending(key(queue, "stream"), GROUP)
                pipe.zcard(key(queue, "scheduled"))
                pipe.zcard(key(queue, "dead"))
                pipe.hgetall(key(queue, "stats"))
            replies = await pipe.execute(raise_on_error=False)
        out = {}
        for i, queue in enumerate(queues):
            length, pending, scheduled, dead, counters = replies[i * 5 : i * 5 + 5]
            active = pending["pending"] if isinstance(pending, dict) else 0
            row = {
                "waiting": max(0, length - active) if isinstance(length, int) else 0,
                "active": active,
                "scheduled": scheduled if isinstance(scheduled, int) else 0,
                "dead": dead if isinstance(dead, int) else 0,
            }
            for field in ("enqueued", "done", "failed", "retried", "recovered", "released"):
                row[field] = int(counters.get(field.encode(), 0)) if isinstance(counters, dict) else 0
            out[queue] = row
        return out
