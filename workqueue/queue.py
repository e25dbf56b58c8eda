"""The Redis data layer: the only module that knows key names and scripts.

Per queue (all keys share the hash tag `{q}`, so every script stays in one Redis Cluster slot):

    wq:{q}:stream:<level>   Stream per priority level (0-9) of waiting and delivered job ids;
                            consumer group "workers"; an entry is deleted once its job is acked
    wq:{q}:job:<id>         Hash: the job record (type, payload, status, attempts, timestamps...)
    wq:{q}:scheduled        Sorted set: delayed jobs and retry backoffs, by due time (epoch ms)
    wq:{q}:dead             Sorted set: dead job ids, by time of death
    wq:{q}:stats            Hash: cluster-wide counters (enqueued, done, failed, retried, ...) and
                            per task type 'outcome|type' counters (succeeded, failed, dead, ...)
    wq:{q}:timings          List: "type wait_ms run_ms" of the most recent attempts (a window)
    wq:{q}:worker:<name>    String with a TTL of one lease: the heartbeat of a worker process
    wq:{q}:cancels          Counter bumped when a running job is cancelled; workers watch it
    wq:{q}:key:<digest>     String "<job id> <fingerprint>": an idempotency key and its job
    wq:{q}:schedule:<name>  String: the last tick a periodic schedule enqueued (epoch seconds)

plus `wq:queues`, the set of queue names ever used, and `wq:workers`, a hash of worker name to
its description and last heartbeat (JSON), for GET /workers.
A job leaves its stream only when a worker acknowledges its outcome, so a crashed worker's jobs
stay pending under its name until another worker recovers them.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .errors import QueueFull, ValidationError
from .job import Job, JobSpec, new_ids

GROUP = "workers"
QUEUES_KEY = "wq:queues"
WORKERS_KEY = "wq:workers"
TIMINGS_KEPT = 1000  # attempts per queue behind the JSON percentiles
JOBS_PER_SCRIPT = 5000  # most jobs one enqueue script writes (more requests wait for the next)
LEVELS = 10  # priorities 0-9, one stream each


def key(queue: str, name: str) -> str:
    return f"wq:{{{queue}}}:{name}"


def job_key(queue: str, job_id: str) -> str:
    return f"wq:{{{queue}}}:job:{job_id}"


def streams(queue: str) -> list[str]:
    """The queue's level streams, lowest priority first."""
    return [key(queue, f"stream:{level}") for level in range(LEVELS)]


def idempotency_key(queue: str, user_key: str) -> str:
    # Hashed so any client string makes a short, safe key name.
    return key(queue, "key:" + hashlib.sha256(user_key.encode()).hexdigest()[:40])


def fingerprint(spec: JobSpec) -> str:
    return hashlib.sha256(orjson.dumps([spec.type, spec.payload], option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Enqueued:
    id: str
    status: str  # 'queued' or 'scheduled' (or, for an existing job, whatever it is now)
    created: bool  # False when an idempotency key named an existing job
    spec: JobSpec


@dataclass(slots=True)  # not frozen: one per attempt on the hot path; the worker fills in wait and run
class Outcome:
    """The end of one attempt, to be recorded by `Queue.finish`."""

    job: Job
    kind: str  # 'succeeded', 'retry', 'dead' or 'cancelled'
    data: str  # result JSON, or the error text
    retry_at: float = 0.0  # epoch seconds, for 'retry'
    wait: float = 0.0  # seconds from due to the real start (not the fetch: jobs may be fetched ahead)
    run: float = 0.0  # seconds the attempt ran


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished things are kept, and how much of them."""

    result_ttl: float
    dead_ttl: float
    dead_max: int
    key_ttl: float


class Queue:
    """Job storage and delivery on one Redis (or the embedded store)."""

    def __init__(self, client: aioredis.Redis, retention: Retention) -> None:
        self.client = client
        self.retention = retention
        self.scripts = {
            name: client.register_script(resources.files(__package__).joinpath(f"lua/{name}.lua").read_text())
            for name in ("enqueue", "fetch", "finish", "promote", "recover", "cancel", "redrive", "stats")
        }
        self.known_queues: set[str] = set()
        # Requests waiting to be enqueued together, per queue, and the queues being flushed now.
        self.waiting: dict[str, list[tuple[list[JobSpec], int, asyncio.Future[list[Enqueued]]]]] = {}
        self.flushing: set[str] = set()

    async def ensure_queue(self, queue: str) -> None:
        """Create the queue's streams and consumer groups once per process (id 0: no job skipped)."""
        if queue in self.known_queues:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for stream in streams(queue):
                pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            pipe.sadd(QUEUES_KEY, queue)
            for reply in await pipe.execute(raise_on_error=False):
                if isinstance(reply, ResponseError) and "BUSYGROUP" not in str(reply):
                    raise reply
        self.known_queues.add(queue)

    def forget_queues(self) -> None:
        """After Redis lost its data (a restart without persistence), recreate groups on next use."""
        self.known_queues.clear()

    async def queues(self) -> list[str]:
        names = await self.client.smembers(QUEUES_KEY)
        return sorted(n.decode() for n in names)

    # -- producing ----------------------------------------------------------------------------

    async def enqueue(self, specs: Sequence[JobSpec], max_lengths: Mapping[str, int]) -> list[Enqueued]:
        """Store and publish one request's jobs, all or nothing.

        Raises ValidationError (409) when an idempotency key names different work, QueueFull when a
        queue is at its maximum length; either way nothing is enqueued.
        """
        by_queue: dict[str, list[int]] = {}
        for i, spec in enumerate(specs):
            by_queue.setdefault(spec.queue, []).append(i)
        if len(by_queue) == 1:
            (queue,) = by_queue
            return await self.join(queue, list(specs), max_lengths.get(queue, 0))
        # One script per queue (separate cluster slots), so check every queue before writing any.
        for queue, indexes in by_queue.items():
            (verdict,) = await self.run_enqueue(queue, [[specs[i] for i in indexes]], max_lengths.get(queue, 0), True)
            if isinstance(verdict, Exception):
                raise verdict
        answers: dict[int, Enqueued] = {}
        for queue, indexes in by_queue.items():
            (done,) = await self.run_enqueue(queue, [[specs[i] for i in indexes]], max_lengths.get(queue, 0))
            if isinstance(done, Exception):
                raise done
            answers.update(zip(indexes, done))
        return [answers[i] for i in range(len(specs))]

    async def join(self, queue: str, specs: list[JobSpec], max_length: int) -> list[Enqueued]:
        """Enqueue together with the other requests that arrive meanwhile: one script call carries
        them all (each still all or nothing), so concurrent requests share one round trip."""
        future: asyncio.Future[list[Enqueued]] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(queue, []).append((specs, max_length, future))
        if queue not in self.flushing:
            self.flushing.add(queue)
            asyncio.create_task(self.flush(queue), name=f"workqueue-enqueue-{queue}")
        return await future

    async def flush(self, queue: str) -> None:
        try:
            while self.waiting.get(queue):
                waiting = self.waiting[queue]
                # Bound one script's work: Redis runs nothing else while a script runs.
                size, cut = 0, 0
                while cut < len(waiting) and (cut == 0 or size + len(waiting[cut][0]) <= JOBS_PER_SCRIPT):
                    size += len(waiting[cut][0])
                    cut += 1
                batch, self.waiting[queue] = waiting[:cut], waiting[cut:]
                try:
                    results = await self.run_enqueue(queue, [specs for specs, _, _ in batch], batch[0][1])
                except BaseException as e:  # Redis unreachable: every request of the batch hears it
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    if isinstance(e, asyncio.CancelledError):
                        raise
                    continue
                for (_, _, future), result in zip(batch, results):
                    if not future.done():
                        if isinstance(result, Exception):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
        finally:
            self.flushing.discard(queue)

    async def run_enqueue(self, queue: str, requests: list[list[JobSpec]], max_length: int,
                          dry_run: bool = False) -> list[list[Enqueued] | Exception]:
        """One enqueue script call for several requests; per request its jobs, or the error refusing it."""
        await self.ensure_queue(queue)
        now = time.time()
        payload: list[list[list[Any]]] = []
        for specs in requests:
            ids = new_ids(len(specs))
            payload.append([
                [job_id, s.type, orjson.dumps(s.payload).decode(), s.retries, s.timeout, s.priority,
                 math.ceil(s.run_at * 1000) if s.run_at is not None and s.run_at > now else 0,  # never early
                 idempotency_key(queue, s.key) if s.key else "", fingerprint(s) if s.key else "", ms(s.key_ttl or 0)]
                for job_id, s in zip(ids, specs)
            ])
        replies = await self.scripts["enqueue"](
            keys=[key(queue, "stats"), key(queue, "scheduled")],
            args=[queue, max_length, LEVELS, key(queue, ""), "1" if dry_run else "0", orjson.dumps(payload)],
        )
        out: list[list[Enqueued] | Exception] = []
        for specs, reply in zip(requests, replies):
            verdict = reply[0].decode()
            if verdict == "conflict":
                index, existing = int(reply[1]) - 1, reply[2].decode()
                out.append(ValidationError(
                    f"key: idempotency key {specs[index].key!r} already belongs to job {existing}, "
                    "which has a different type or payload", 409))
            elif verdict == "full":
                out.append(QueueFull(f"queue {queue!r} is at its maximum length ({max_length}); try again later"))
            else:
                rows = reply[1:]
                out.append([Enqueued(rows[i * 3].decode(), rows[i * 3 + 1].decode(), bool(int(rows[i * 3 + 2])), spec)
                            for i, spec in enumerate(specs)] if not dry_run else [])
        return out

    # -- consuming ----------------------------------------------------------------------------

    async def fetch(self, queue: str, consumer: str, count: int,
                    lowest_first: bool = False) -> tuple[list[Job], list[str], list[str]]:
        """Deliver up to `count` waiting jobs, highest priority first (lowest first when asked, so
        low priorities are never starved for good). Returns (jobs, cursors for `wait`, ids of poison
        jobs made dead instead of delivered)."""
        order = streams(queue) if lowest_first else streams(queue)[::-1]
        jobs_flat, cursors, buried = await self.scripts["fetch"](
            keys=order, args=[GROUP, consumer, count, key(queue, ""), ms(self.retention.dead_ttl),
                              ms(self.retention.key_ttl)]
        )

        jobs = []
        for i in range(0, len(jobs_flat), 10):
            job_id, delivery, level, task_type, payload, retries, attempts, timeout, due_at, priority = jobs_flat[i : i + 10]
            jobs.append(
                Job(
                    id=job_id.decode(),
                    delivery=delivery.decode(),
                    level=int(level),
                    type=task_type.decode(),
                    queue=queue,
                    payload=orjson.loads(payload),
                    retries=int(retries),
                    attempts=int(attempts),
                    timeout=float(timeout),
                    due_at=float(due_at),
                    priority=int(priority or 0),
                )
            )
        # `wait` takes cursors highest level first, whatever order this fetch read the levels in.
        ordered = [c.decode() for c in cursors][:: -1 if lowest_first else 1]
        return jobs, ordered if not jobs else [], [b.decode() for b in buried]

    async def wait(self, client: aioredis.Redis, queue: str, cursors: list[str], block_ms: int) -> None:
        """Block until an entry newer than the cursors appears on one of the queue's streams.

        A plain XREAD only watches, it delivers nothing, so cancelling it can never strand a job.
        """
        order = streams(queue)[::-1]
        await client.xread(dict(zip(order, cursors)), count=1, block=block_ms)

    async def finish(self, outcomes: Sequence[Outcome]) -> list[int]:
        """Record outcomes and ack their deliveries, one script call per queue.

        Returns per outcome 1 (recorded), 2 (the job had been cancelled: acknowledged, result
        discarded) or 0 (the delivery had been taken from this worker: outcome refused).
        """
        r = self.retention
        recorded: dict[int, int] = {}
        by_queue: dict[str, list[int]] = {}
        for i, outcome in enumerate(outcomes):
            by_queue.setdefault(outcome.job.queue, []).append(i)
        for queue, indexes in by_queue.items():
            batch = [(o.job.id, o.job.delivery, o.kind, o.data, ms(o.retry_at), o.job.type, o.job.level,
                      round(o.wait * 1000, 1), round(o.run * 1000, 1))
                     for o in (outcomes[i] for i in indexes)]
            flags = await self.scripts["finish"](
                keys=[key(queue, "stats"), key(queue, "scheduled"), key(queue, "dead")],
                args=[GROUP, ms(r.result_ttl), ms(r.dead_ttl), r.dead_max, ms(r.key_ttl), key(queue, ""), TIMINGS_KEPT,
                      orjson.dumps(batch)],
            )
            recorded.update(zip(indexes, (int(f) for f in flags)))
        return [recorded[i] for i in range(len(outcomes))]

    async def promote(self, queue: str, limit: int = 1000) -> tuple[int, float | None]:
        """Move due delayed jobs and retries onto their streams.

        Returns (moved, epoch seconds of the next scheduled job or None)."""
        moved, next_ms = await self.scripts["promote"](
            keys=[key(queue, "scheduled")], args=[int(time.time() * 1000), limit, key(queue, "")]
        )
        next_due = float(next_ms)
        return int(moved), (next_due / 1000 if next_due >= 0 else None)

    # -- leases -------------------------------------------------------------------------------

    async def heartbeat(self, queues: Iterable[str], consumer: str, lease: float, about: dict[str, Any]) -> None:
        """Renew a worker's lease (what the worker's heartbeat thread does, for async callers)."""
        async with self.client.pipeline(transaction=False) as pipe:
            queue_heartbeat(pipe, queues, consumer, lease, about)
            await pipe.execute()

    async def forget_worker(self, queues: Iterable[str], consumer: str) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(*(key(q, f"worker:{consumer}") for q in queues))
            pipe.hdel(WORKERS_KEY, consumer)
            await pipe.execute()

    async def workers(self) -> list[dict[str, Any]]:
        """Live workers from their heartbeats; entries of workers gone for a lease are removed."""
        now = time.time()
        live, gone = [], []
        for name, raw in (await self.client.hgetall(WORKERS_KEY)).items():
            about = orjson.loads(raw)
            if now - about["last_heartbeat"] > about["lease"]:
                gone.append(name)
            else:
                live.append({"name": name.decode(), **about})
        if gone:
            await self.client.hdel(WORKERS_KEY, *gone)
        return sorted(live, key=lambda w: w["name"])

    async def recover(self, queue: str, me: str, release: bool = False, limit: int = 1000) -> tuple[int, list[str]]:
        """Requeue unfinished deliveries: of every worker whose heartbeat expired (the reaper), or,
        with release, this worker's own (graceful shutdown). Returns (moved, reaped worker names)."""
        reply = await self.scripts["recover"](
            keys=[*streams(queue), key(queue, "stats")],
            args=[GROUP, me, key(queue, ""), limit, "release" if release else "reap"],
        )
        return int(reply[0]), [n.decode() for n in reply[1:]]

    # -- control ------------------------------------------------------------------------------

    async def locate(self, job_id: str) -> str | None:
        """The queue holding the job, or None."""
        queues = await self.queues()
        async with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.exists(job_key(queue, job_id))
            found = await pipe.execute()
        return next((q for q, n in zip(queues, found) if n), None)

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job record, decoded; None if unknown (or expired)."""
        queue = await self.locate(job_id)
        if queue is None:
            return None
        raw = await self.client.hgetall(job_key(queue, job_id))
        return {k.decode(): v.decode() for k, v in raw.items()} or None

    async def cancel(self, job_id: str) -> tuple[str, str] | None:
        """Cancel a job. Returns (previous status, status now), or None for an unknown job."""
        queue = await self.locate(job_id)
        if queue is None:
            return None
        r = self.retention
        before, after = await self.scripts["cancel"](
            keys=[job_key(queue, job_id), key(queue, "scheduled"), key(queue, "stats")],
            args=[ms(r.result_ttl), ms(r.key_ttl), key(queue, ""), job_id],
        )
        if before is None:
            return None
        return before.decode(), after.decode()

    async def cancel_counters(self, queues: Sequence[str]) -> list[int]:
        """How many running jobs have been cancelled on each queue, ever: a cheap thing to watch."""
        values = await self.client.mget([key(q, "cancels") for q in queues]) if len(queues) == 1 else [
            await self.client.get(key(q, "cancels")) for q in queues]  # separate slots in a cluster
        return [int(v or 0) for v in values]

    async def statuses(self, jobs: Iterable[Job]) -> list[str | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hget(job_key(job.queue, job.id), "status")
            return [s.decode() if s else None for s in await pipe.execute()]

    async def last_tick(self, queue: str, schedule: str) -> float | None:
        value = await self.client.get(key(queue, f"schedule:{schedule}"))
        return float(value) if value is not None else None

    async def set_last_tick(self, queue: str, schedule: str, tick: float) -> None:
        await self.client.set(key(queue, f"schedule:{schedule}"), repr(tick))

    # -- dead letters -------------------------------------------------------------------------

    async def dead(self, queue: str | None, task_type: str | None, limit: int, before: float | None) -> list[dict[str, str]]:
        """Dead job records, most recent death first, that died before `before` (a cursor)."""
        queues = [queue] if queue else await self.queues()
        found: list[tuple[float, str, str]] = []
        for q in queues:
            top = f"({before}" if before is not None else "+inf"
            # Type filtering happens on the records, so read more than `limit` ids per step.
            offset = 0
            while True:
                page = await self.client.zrevrangebyscore(key(q, "dead"), top, "-inf", start=offset, num=limit * 4,
                                                          withscores=True)
                offset += len(page)
                if task_type is None:
                    found += [(score, q, member.decode()) for member, score in page]
                else:
                    kinds = await self.types(q, [m.decode() for m, _ in page])
                    found += [(s, q, m.decode()) for (m, s), t in zip(page, kinds) if t == task_type]
                if len(page) < limit * 4 or sum(1 for f in found if f[1] == q) >= limit:
                    break
        found.sort(reverse=True)
        records = []
        for score, q, job_id in found[:limit]:
            raw = await self.client.hgetall(job_key(q, job_id))
            if raw:
                record = {k.decode(): v.decode() for k, v in raw.items()}
                record["died_at"] = repr(score)
                records.append(record)
        return records

    async def types(self, queue: str, ids: list[str]) -> list[str | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(job_key(queue, job_id), "type")
            return [t.decode() if t else None for t in await pipe.execute()]

    async def redrive(self, queue: str, ids: Sequence[str]) -> list[str]:
        """Send dead jobs back to their queue with a fresh set of attempts. Returns the ids moved."""
        if not ids:
            return []
        moved = await self.scripts["redrive"](
            keys=[key(queue, "dead"), key(queue, "stats")], args=[key(queue, ""), *ids]
        )
        return [m.decode() for m in moved]

    async def drop_dead(self, queue: str, job_id: str) -> bool:
        """Delete a dead job; any other job is left alone. Whoever removes the id from the dead set
        owns the record: a concurrent re-drive cannot have it."""
        if not await self.client.zrem(key(queue, "dead"), job_id):
            return False
        await self.client.delete(job_key(queue, job_id))
        return True

    # -- numbers ------------------------------------------------------------------------------

    async def stats(self) -> dict[str, dict[str, Any]]:
        """Per queue: waiting, active, scheduled and dead counts plus the cumulative counters."""
        out = {}
        for queue in await self.queues():
            reply = await self.scripts["stats"](
                keys=[*streams(queue), key(queue, "scheduled"), key(queue, "dead"), key(queue, "stats")],
                args=[GROUP, ms(self.retention.dead_ttl)],
            )
            row: dict[str, Any] = dict(zip(("waiting", "active", "scheduled", "dead"), (int(v) for v in reply[:4])))
            oldest = int(reply[4])
            row["oldest_waiting_age_seconds"] = round(max(0.0, time.time() - oldest / 1000), 3) if oldest >= 0 else 0.0
            counters = {reply[i].decode(): int(reply[i + 1]) for i in range(5, len(reply), 2)}
            for field in ("enqueued", "done", "failed", "retried", "recovered", "released", "cancelled", "redriven"):
                row[field] = counters.get(field, 0)
            by_type: dict[str, dict[str, int]] = {}
            for field, n in counters.items():
                outcome, sep, task_type = field.partition("|")
                if sep:
                    by_type.setdefault(task_type, {})[outcome] = n
            row["types"] = by_type
            out[queue] = row
        return out

    async def timings(self, queue: str) -> list[tuple[str, float, float]]:
        """(type, wait ms, run ms) of the queue's most recent attempts."""
        rows = []
        for raw in await self.client.lrange(key(queue, "timings"), 0, -1):
            task_type, wait, run = raw.decode().rsplit(" ", 2)
            rows.append((task_type, float(wait), float(run)))
        return rows


def queue_heartbeat(pipe: Any, queues: Iterable[str], consumer: str, lease: float, about: dict[str, Any]) -> None:
    """Queue on a pipeline (sync or async) the commands that renew a worker's lease on every queue
    it serves and publish what it is doing."""
    for queue in queues:
        pipe.set(key(queue, f"worker:{consumer}"), "1", px=ms(lease))
    pipe.hset(WORKERS_KEY, consumer, orjson.dumps({**about, "last_heartbeat": time.time(), "lease": lease}))


def ms(seconds: float) -> int:
    return int(seconds * 1000)
